-- The migration layouts moonshift reads: what a file name is, how a lone file splits into
-- up and down sections (dbmate, goose), and which directives take a migration out of a
-- transaction. Pure functions of names and texts; source.lua walks the directory.
local hash = require("moonshift.hash")

local fmt = string.format

local layouts = {}

--- Files a diesel migration directory may hold, and what each is.
layouts.DIESEL_FILES = {
  ["up.sql"] = "up", ["down.sql"] = "down", ["metadata.toml"] = "metadata",
  ["migration.lua"] = "companion", ["verify.sql"] = "verify",
}

-- True for a Flyway version: digit runs separated by single dots or underscores.
local function flyway_version(v)
  if v == "" then return false end
  for part in (v:gsub("_", ".") .. "."):gmatch("([^.]*)%.") do
    if not part:match("^%d+$") then return false end
  end
  return true
end

local NATIVE = { up = "^(%d+)_([^.].*)%.up%.sql$", down = "^(%d+)_([^.].*)%.down%.sql$" }

--- What a file name in the migrations directory is: a table (kind, layout, version, name,
-- id, lone, base), or nil when no layout fits.
function layouts.classify(name)
  local base = name:match("^(.+)%.verify%.sql$")
  if base then return { kind = "verify", base = base } end
  base = name:match("^(.+)%.lua$")
  if base then return { kind = "companion", base = base } end
  base = name:match("^(.+)%.sql%.conf$")
  if base then return { kind = "conf", base = base } end
  for kind, pattern in pairs(NATIVE) do
    local v, n = name:match(pattern)
    if v then
      return { kind = kind, layout = "native", version = v, name = n, id = v .. "_" .. n }
    end
  end
  local prefix, fv, fn = name:match("^([VU])(.-)__(.+)%.sql$")
  if prefix and flyway_version(fv) then
    return { kind = prefix == "V" and "up" or "down", layout = "flyway",
      version = (fv:gsub("_", ".")), name = fn, id = "V" .. fv .. "__" .. fn }
  end
  fn = name:match("^R__(.+)%.sql$")
  if fn then return { kind = "repeatable", layout = "flyway", name = fn, id = "R__" .. fn } end
  local v, n = name:match("^(%d+)_([^.].*)%.sql$")
  if v then return { kind = "up", lone = true, version = v, name = n, id = v .. "_" .. n } end
  return nil
end

-- The lines of text that a function picks out: { value, line, first, after } each.
local function marker_lines(text, pick)
  local found, pos, lineno = {}, 1, 0
  while pos <= #text do
    local nl = text:find("\n", pos, true)
    local stop = nl or #text + 1
    lineno = lineno + 1
    local value, rest = pick(text:sub(pos, stop - 1))
    if value then
      found[#found + 1] = { value = value, rest = rest, line = lineno, first = pos,
        after = stop + 1 }
    end
    pos = stop + 1
  end
  return found
end

local function dbmate_marker(line)
  local which, rest = line:lower():match("^%s*%-%-%s*migrate:(%a+)(.*)$")
  if which == "up" or which == "down" then return which, rest end
  return nil
end

local function goose_marker(line)
  local which = line:lower():match("^%s*%-%-%s*%+goose%s+(%a+)%s*$")
  if which == "up" or which == "down" then return which, "" end
  return nil
end

-- Which section layout a lone file uses, from its text: "dbmate", "goose" or "native".
local function lone_layout(text)
  local low = "\n" .. text:lower()
  if low:find("\n[ \t]*%-%-[ \t]*migrate:up") then return "dbmate" end
  if low:find("\n[ \t]*%-%-[ \t]*%+goose[ \t]+up[ \t]*\n") or
      low:find("\n[ \t]*%-%-[ \t]*%+goose[ \t]+up[ \t]*$") then
    return "goose"
  end
  return "native"
end

-- Splits a dbmate or goose file into its up and down sections: { up, up_offset, up_options,
-- down, down_offset, down_options }; nil and the problem when the sections are not one up
-- followed by one down.
local function sections(e, layout, text)
  local marks = marker_lines(text, layout == "dbmate" and dbmate_marker or goose_marker)
  local label = layout == "dbmate" and "-- migrate:" or "-- +goose "
  local up, down
  for _, m in ipairs(marks) do
    if (m.value == "up" and up) or (m.value == "down" and down) then
      return nil, fmt("%s:%d: a second `%s%s` section", e.path, m.line, label, m.value)
    end
    if m.value == "up" then up = m else down = m end
  end
  if not up then
    return nil, fmt("%s: no `%sup` line starts a section", e.path, label)
  end
  if down and down.line < up.line then
    return nil, fmt("%s:%d: the `%sdown` section comes before `%sup`", e.path, down.line,
      label, label)
  end
  local lineno = 0
  for line in text:sub(1, up.first - 1):gmatch("([^\n]*)\n") do
    lineno = lineno + 1
    if not line:match("^%s*$") and not line:match("^%s*%-%-") then
      return nil, fmt("%s:%d: text before `%sup` belongs to no section", e.path, lineno,
        label)
    end
  end
  local sec = { up = text:sub(up.after, down and down.first - 1 or #text), up_offset = up.line,
    up_options = up.rest }
  if down then
    sec.down, sec.down_offset, sec.down_options = text:sub(down.after), down.line, down.rest
  end
  return sec
end

-- True when lowercased text has `-- moonshift:no-transaction` as a line of its own.
local function has_directive(low)
  local init = 1
  while true do
    local s, e = low:find("moonshift:no-transaction", init, true)
    if not s then return false end
    local line_start = low:sub(1, s - 1):match(".*\n()") or 1
    if low:sub(line_start, s - 1):match("^%s*%-%-%s*$") and
        not low:sub(e + 1, e + 1):match("[%w_%-]") then
      return true
    end
    init = e + 1
  end
end

-- True when lowercased text has goose's `-- +goose NO TRANSACTION` line.
local function has_goose_directive(low)
  return low:find("^[ \t]*%-%-[ \t]*%+goose[ \t]+no[ \t]+transaction") ~= nil or
    low:find("\n[ \t]*%-%-[ \t]*%+goose[ \t]+no[ \t]+transaction") ~= nil
end

-- What loading needs of a script's text, small enough to keep in the checksum cache: the
-- layout (of a lone file), the checksum of the up part, the directives that decide whether
-- it runs in a transaction, and where a down section starts. Also returns the up and down
-- texts; nil and the problem when the file's sections are wrong.
function layouts.facts(e, text)
  local f = { layout = e.layout or "native", checksum = "", up_offset = 0, down_offset = 0 }
  local up, down = text, nil
  if e.lone then
    f.layout = lone_layout(text)
    if f.layout ~= "native" then
      local sec, problem = sections(e, f.layout, text)
      if not sec then return nil, problem end
      up, down, f.up_offset, f.down_offset = sec.up, sec.down, sec.up_offset, sec.down_offset
      f.has_down = down ~= nil
      if f.layout == "dbmate" then
        f.up_tx_off = sec.up_options:find("transaction:%s*false") ~= nil
        f.down_tx_off = (sec.down_options or ""):find("transaction:%s*false") ~= nil
      end
    end
  end
  local low = up:lower()
  f.checksum = hash.sha256(up)
  f.directive = has_directive(low)
  -- goose writes it anywhere in the file, also above `-- +goose Up`
  f.goose = has_goose_directive(f.layout == "goose" and text:lower() or low)
  f.down_directive = down ~= nil and has_directive(down:lower())
  return f, up, down
end

--- The facts of a large file, read a chunk of whole lines at a time (layouts.facts reads
-- them from the whole text), without the checksum: the caller hashes the file as it is.
-- @param chunks function: an iterator of strings, each ending at a newline but the last
-- @return facts | nil when the file has dbmate or goose sections (those need the whole text)
function layouts.scan_facts(e, chunks)
  local f = { layout = e.layout or "native", checksum = "", up_offset = 0, down_offset = 0,
    directive = false, goose = false, down_directive = false }
  for chunk in chunks do
    local low = chunk:lower()
    if e.lone and lone_layout(low) ~= "native" then return nil end
    f.directive = f.directive or has_directive(low)
    f.goose = f.goose or has_goose_directive(low)
  end
  return f
end

--- Whether a migration runs in a transaction, from every directive its layout knows.
function layouts.transactional(e)
  local f = e.facts
  if f.directive or f.up_tx_off or f.goose or e.no_transaction then return false end
  if e.conf and e.conf.text and e.conf.text:lower():find(
      "%f[%w]executeintransaction%s*=%s*false") then
    return false
  end
  return true
end

return layouts
