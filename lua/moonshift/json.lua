-- JSON for documents people diff and scripts parse: sorted keys, [] for empty lists.
local cjson = require("cjson")

local json = {}

local ARRAY = {}

--- Marks t as a JSON array, so an empty one encodes as [] rather than {}.
-- @return t
function json.array(t)
  return setmetatable(t or {}, ARRAY)
end

--- JSON's null, for a field that is there with no value (`"current": null`).
json.null = cjson.null

-- cjson writes "/" as "\/"; plain "/" is as valid and what people grep for. Every "\/" in
-- its output is an escaped slash: a backslash is always written "\\", never before "/".
local function string_text(s)
  return (cjson.encode(s):gsub("\\/", "/"))
end

local function encode(v, out)
  local t = type(v)
  if t == "table" then
    if getmetatable(v) == ARRAY or (#v > 0 and next(v, #v) == nil) then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then out[#out + 1] = "," end
        encode(v[i], out)
      end
      out[#out + 1] = "]"
      return
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    out[#out + 1] = "{"
    for i, k in ipairs(keys) do
      if i > 1 then out[#out + 1] = "," end
      out[#out + 1] = string_text(k)
      out[#out + 1] = ":"
      local val = v[k]
      if val == nil then val = v[tonumber(k)] end
      encode(val, out)
    end
    out[#out + 1] = "}"
  elseif t == "string" then
    out[#out + 1] = string_text(v)
  elseif t == "number" or t == "boolean" then
    out[#out + 1] = cjson.encode(v)
  else
    out[#out + 1] = "null" -- nil, pg.null, cjson.null
  end
end

--- Encodes a value; tables with keys 1..n are arrays, others objects with sorted keys.
-- @return string
function json.encode(v)
  local out = {}
  encode(v, out)
  return table.concat(out)
end

json.decode = cjson.decode

return json
