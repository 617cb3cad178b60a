-- Migration version strings: a normalized key for identity and a digit-aware ordering.
local version = {}

-- The parts of a version: the runs between `.`, `_` and `-` separators.
local function parts(v)
  local out = {}
  for part in (v .. "."):gmatch("([^._%-]*)[._%-]") do out[#out + 1] = part end
  return out
end

local function check(v, n)
  if math.type(v) == "integer" then return tostring(v) end
  if type(v) ~= "string" then
    error(string.format("bad argument #%d (version string expected, got %s)", n, type(v)), 3)
  end
  return v
end

-- A numeric part without its leading zeros ("0" stays "0").
local function strip_zeros(digits)
  return (digits:match("^0*(%d+)$"))
end

--- The normalized key of a version, equal for every spelling of one version: parts split
-- on `.`, `_` and `-`, leading zeros dropped from numeric parts, joined by `.`.
-- "0001" -> "1", "1.01" -> "1.1", "2019-02-26-002946" -> "2019.2.26.2946".
-- @param v string: a version as written (an integer is accepted too)
-- @return string
function version.key(v)
  if type(v) ~= "string" then v = check(v, 1) end
  local digits = v:match("^0*(%d+)$")
  if digits then return digits end
  local ps = parts(v)
  for i, p in ipairs(ps) do
    if p:match("^%d+$") then ps[i] = strip_zeros(p) end
  end
  return table.concat(ps, ".")
end

-- Compares two different strings byte by byte, whatever the C locale says (`<` uses strcoll).
local function bytewise(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = a:byte(i), b:byte(i)
    if x ~= y then return x < y and -1 or 1 end
  end
  return #a < #b and -1 or 1
end

-- Compares two numeric parts of any length without converting them to numbers.
local function compare_digits(a, b)
  a, b = strip_zeros(a), strip_zeros(b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  if a == b then return 0 end
  return a < b and -1 or 1
end

--- Orders two versions part by part: numeric parts by value (any number of digits), a
-- numeric part before a non-numeric one, non-numeric parts bytewise; when every shared part
-- is equal, the version with fewer parts comes first.
-- @param a string: a version
-- @param b string: another version
-- @return integer: -1 when a sorts first, 0 when both are the same version, 1 otherwise
function version.compare(a, b)
  if type(a) ~= "string" then a = check(a, 1) end
  if type(b) ~= "string" then b = check(b, 2) end
  -- The common case, two all-digit versions, without splitting.
  local da, db = a:match("^0*(%d+)$"), b:match("^0*(%d+)$")
  if da and db then
    if #da ~= #db then return #da < #db and -1 or 1 end
    if da == db then return 0 end
    return da < db and -1 or 1 -- digits collate the same in every locale
  end
  local pa, pb = 1, 1
  while true do
    if pa > #a + 1 then return pb > #b + 1 and 0 or -1 end
    if pb > #b + 1 then return 1 end
    local sa, sb = a:find("[._%-]", pa) or #a + 1, b:find("[._%-]", pb) or #b + 1
    local x, y = a:sub(pa, sa - 1), b:sub(pb, sb - 1)
    pa, pb = sa + 1, sb + 1
    local xn, yn = x:find("^%d+$") ~= nil, y:find("^%d+$") ~= nil
    local c = 0
    if xn and yn then
      c = compare_digits(x, y)
    elseif xn ~= yn then
      c = xn and -1 or 1
    elseif x ~= y then
      c = bytewise(x, y)
    end
    if c ~= 0 then return c end
  end
end

--- True when a sorts before b; a comparator for table.sort.
-- @param a string: a version
-- @param b string: another version
-- @return boolean
function version.less(a, b)
  return version.compare(a, b) < 0
end

return version
