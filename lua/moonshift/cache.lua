-- The checksum caches: what reading a migrations directory learned, kept between runs in
-- private files under MOONSHIFT_CACHE_DIR (~/.cache/moonshift; empty turns them off).
--
-- * Per file (`<name>.cache`): a script's facts (layout, checksum, directives) keyed by its
--   stat, so an unchanged file is not read again.
-- * Whole set (`<name>.set`): every migration of a directory as one record a line, kept
--   under the fingerprint of the directory (names and stats of every file) and of the
--   options it was loaded with, so an unchanged directory costs one listing.
--
-- What they save (bench/results/devices-*.md): 38 % of `status` at 1,000 applied, 78 % at
-- 10,000, 39 % of a no-op `up` at 1,000.
-- Both are written only for files last changed well before the run began: a file written
-- in the same timestamp tick as it was read could otherwise keep its key with new content
-- (git's "racy clean" problem); two seconds covers the coarsest timestamps (FAT, some
-- network file systems). Stat keys include ctime, which no tool can set back.
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")
local records = require("moonshift.records")

local fmt = string.format

local cache = {}

--- How long ago a file must have last changed for its stat to be trusted. The specs set
-- MOONSHIFT_TEST_RACY_SECONDS=-1 to run the e2e suite with the caches answering.
cache.RACY_SECONDS = tonumber(os.getenv("MOONSHIFT_TEST_RACY_SECONDS") or "") or 2

local FILES_HEADER = "moonshift checksum cache 3\n"

-- A script's facts, in the order they are written.
local FLAGS = { "has_down", "up_tx_off", "down_tx_off", "directive", "goose", "down_directive",
  "morph", "only_no_tx" }

--- The fields of a set record, in the order they are written; the set cache's header
-- carries this list, so changing it makes every older cache a miss.
cache.RECORD_FIELDS = { "version", "key", "name", "id", "format", "up_path", "checksum",
  "flags", "down_path", "companion_path", "verify_path", "source" }
local SET_HEADER = "moonshift set cache 3 " .. table.concat(cache.RECORD_FIELDS, ",")

local function stat_key(st)
  return fmt("%d:%d.%d:%d.%d:%d:%d", st.size, st.mtime, st.mtime_nsec, st.ctime or 0,
    st.ctime_nsec or 0, st.ino, st.dev)
end

--- A script's facts as one line: "layout checksum flags up_offset down_offset".
-- @param f table: layout, checksum, up_offset, down_offset and the FLAGS booleans
-- @return string
function cache.encode_facts(f)
  local flags = {}
  for i, name in ipairs(FLAGS) do flags[i] = f[name] and "1" or "0" end
  return fmt("%s %s %s %d %d", f.layout, f.checksum, table.concat(flags), f.up_offset,
    f.down_offset)
end

--- The facts of a line made by cache.encode_facts; nil when it is damaged.
-- @return table | nil
function cache.decode_facts(s)
  local layout, checksum, flags, up_offset, down_offset =
    s:match("^([%a-]+) (%x+) ([01]+) (%d+) (%d+)$")
  if not layout or #flags ~= #FLAGS then return nil end
  local a, b, c, d, e, g, h, i = flags:byte(1, 8) -- FLAGS, in order
  return { layout = layout, checksum = checksum, up_offset = tonumber(up_offset),
    down_offset = tonumber(down_offset), has_down = a == 49, up_tx_off = b == 49,
    down_tx_off = c == 49, directive = d == 49, goose = e == 49, down_directive = g == 49,
    morph = h == 49, only_no_tx = i == 49 }
end

-- The text of a cache file that starts with header; nil when it is missing, foreign or not
-- private to this user.
local function read_private(path, header)
  local st = fs.stat(path)
  if not st or st.type ~= "file" or st.uid ~= proc.getuid() or st.mode & 18 ~= 0 then
    return nil
  end
  local data = fs.read(path)
  if not data or data:sub(1, #header) ~= header then return nil end
  return data
end

-- Writes a cache file, private to this user; failing is no error (the next run reads the
-- files again).
local function write_private(path, data)
  local dir = path:match("^(.*)/[^/]*$")
  if dir and dir ~= "" then fs.mkdir_p(dir, tonumber("700", 8)) end
  fs.write_atomic(path, data, tonumber("600", 8))
end

local Files = {}
Files.__index = Files

--- The per-file cache kept at path (nil: a cache that never answers and never writes).
-- @param path string|nil
-- @param started number: when the run began (fs.now()), for the racy-clean rule
-- @return Files
function cache.files(path, started)
  local self = setmetatable({ path = path, started = started, entries = {}, keep = {},
    hits = 0 }, Files)
  local data = path and read_private(path, FILES_HEADER)
  if not data then return self end
  self.data = data
  for p, rest in data:gmatch("([^\t\n]+)\t([^\n]*)\n", #FILES_HEADER + 1) do
    self.entries[p] = rest
  end
  return self
end

--- The facts kept for a file whose stat is unchanged; nil when there are none.
-- @param path string
-- @param st table: fs.stat of path
-- @return table | nil
function Files:lookup(path, st)
  local hit = self.entries[path]
  if not hit then return nil end
  local key = stat_key(st)
  if hit:sub(1, #key + 1) ~= key .. "\t" then return nil end
  local f = cache.decode_facts(hit:sub(#key + 2))
  if f then
    self.keep[#self.keep + 1] = path .. "\t" .. hit
    self.hits = self.hits + 1
  end
  return f
end

--- Keeps a file's facts, unless it changed too recently to trust its stat.
function Files:store(path, st, facts)
  if not self.path or path:find("[\t\n]") then return end
  if math.max(st.mtime, st.ctime or math.huge) >= self.started - cache.RACY_SECONDS then return end
  self.keep[#self.keep + 1] = path .. "\t" .. stat_key(st) .. "\t" .. cache.encode_facts(facts)
end

--- Writes the cache when what it should hold differs from what it holds.
function Files:save()
  if not self.path then return end
  local size = 0
  for _ in pairs(self.entries) do size = size + 1 end
  if self.hits == #self.keep and self.hits == size then return end
  table.sort(self.keep)
  local data = FILES_HEADER .. table.concat(self.keep, "\n") .. (#self.keep > 0 and "\n" or "")
  if data ~= self.data then write_private(self.path, data) end
end

local Sets = {}
Sets.__index = Sets

--- The whole-set cache kept at path (nil: a cache that never answers and never writes).
function cache.sets(path)
  return setmetatable({ path = path }, Sets)
end

--- The set kept, as records (tables of cache.RECORD_FIELDS), and the key it was kept under.
-- @return { key, format, warnings, records } | nil
function Sets:lookup()
  local data = self.path and read_private(self.path, SET_HEADER .. "\t")
  if not data then return nil end
  local key, format, nwarn, pos = data:match("^(%x+)\t([%a-]+)\t(%d+)\n()", #SET_HEADER + 2)
  if not key then return nil end
  local warnings = {}
  for _ = 1, tonumber(nwarn) do
    local w, after = data:match("^([^\n]*)\n()", pos)
    if not w then return nil end
    warnings[#warnings + 1], pos = w, after
  end
  local list = records.parse(data, pos, cache.RECORD_FIELDS)
  if not list then return nil end
  return { key = key, format = format, warnings = warnings, records = list }
end

--- Keeps a set under key: its format, warnings and records (tables of cache.RECORD_FIELDS).
-- A value holding a tab or a line break cannot be kept: then nothing is.
function Sets:store(key, format, warnings, list)
  if not self.path then return end
  local lines = { fmt("%s\t%s\t%s\t%d", SET_HEADER, key, format, #warnings) }
  for _, w in ipairs(warnings) do
    if w:find("\n", 1, true) then return end
    lines[#lines + 1] = w
  end
  local fields = {}
  for _, r in ipairs(list) do
    for i, name in ipairs(cache.RECORD_FIELDS) do
      local v = r[name] or ""
      if v:find("[\t\n]") then return end
      fields[i] = v
    end
    lines[#lines + 1] = table.concat(fields, "\t")
  end
  write_private(self.path, table.concat(lines, "\n") .. "\n")
end

--- Removes the kept set (a record was found damaged).
function Sets:forget()
  if self.path then fs.remove(self.path) end
end

return cache
