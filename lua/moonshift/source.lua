-- Finds migrations on disk: reads every supported layout into one ordered, validated set.
--
-- Policy, in one place (moonshift(1) repeats it):
-- * Layouts: native/golang-migrate/sqlx (`0003_x.up.sql`, `0003_x.down.sql`, a lone
--   `0003_x.sql` is up-only), dbmate (a lone `.sql` with `-- migrate:up` / `-- migrate:down`
--   sections), goose (a lone `.sql` with `-- +goose Up` / `-- +goose Down` sections), Flyway
--   (`V3__x.sql`, `U3__x.sql` undo, `R__x.sql` repeatable, `V3__x.sql.conf`), diesel (a
--   directory `<version>_<name>/` with `up.sql`, `down.sql`, `metadata.toml`). One layout
--   per directory.
-- * Beside a migration: `<id>.lua` (companion) and `<id>.verify.sql`; in a diesel
--   directory `migration.lua` and `verify.sql`.
-- * Names starting with "." are ignored, and names matching an ignore pattern (default
--   README*, *.md, *.txt). Every other name must fit the layout: a file that looks almost
--   like a migration is an error, never skipped.
-- * Symlinks are followed (the directory and files); a dangling link or a loop is an error;
--   the same file reached twice is an error; a file outside the directory is a warning.
-- * Text must be UTF-8 without NUL bytes. A BOM is stripped and CRLF read as LF before
--   anything else, and the checksum is SHA-256 of that text, so a Windows checkout is not
--   drift. Files over MAX_FILE_SIZE are refused rather than read.
-- * An empty or comment-only up script is allowed: it is recorded as applied, nothing is
--   sent (the set carries a warning).
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")
local hash = require("moonshift.hash")
local host = require("moonshift.host")
local records = require("moonshift.records")
local sql = require("moonshift.sql")
local statement = require("moonshift.statement")
local version = require("moonshift.version")
local errors = require("moonshift.errors")

local fmt = string.format

local source = {}

--- Names ignored unless `opts.ignore` says otherwise.
source.DEFAULT_IGNORE = { "README*", "*.md", "*.txt" }

--- Largest script read, in bytes; larger files are refused before reading (no streaming).
source.MAX_FILE_SIZE = 256 * 1024 * 1024

local FORMATS = { auto = true, native = true, flyway = true, dbmate = true, diesel = true,
  goose = true }

local DIRECTIVE = "`-- moonshift:no-transaction`"

-- Files a diesel migration directory may hold, and what each is.
local DIESEL_FILES = {
  ["up.sql"] = "up", ["down.sql"] = "down", ["metadata.toml"] = "metadata",
  ["migration.lua"] = "companion", ["verify.sql"] = "verify",
}

local function join(dir, name)
  return dir == "/" and "/" .. name or dir .. "/" .. name
end

-- A glob (`*`, `?`, `[abc]`, `[!abc]`) as an anchored Lua pattern.
local function glob_pattern(glob)
  local out, i = { "^" }, 1
  while i <= #glob do
    local c = glob:sub(i, i)
    local close = c == "[" and glob:find("]", i + 2, true)
    if c == "*" then
      out[#out + 1] = ".*"
    elseif c == "?" then
      out[#out + 1] = "."
    elseif close then
      local body = glob:sub(i + 1, close - 1):gsub("^!", "^"):gsub("%%", "%%%%")
      out[#out + 1] = "[" .. body .. "]"
      i = close
    elseif c:match("%p") then
      out[#out + 1] = "%" .. c
    else
      out[#out + 1] = c
    end
    i = i + 1
  end
  out[#out + 1] = "$"
  return table.concat(out)
end

local function line_of(text, pos)
  local _, n = text:sub(1, pos - 1):gsub("\n", "")
  return n + 1
end

-- The loader state of one source.load call: options and the problems found so far.
local Loader = {}
Loader.__index = Loader

function Loader:problem(message, ...)
  self.problems[#self.problems + 1] = { message = message, files = { ... } }
end

function Loader:warn(message)
  self.warnings[#self.warnings + 1] = message
end

function Loader:skipped(name)
  if name:sub(1, 1) == "." then return true end
  for _, pattern in ipairs(self.ignore) do
    if name:find(pattern) then return true end
  end
  return false
end

-- The stat of path, following a symlink; nil (and a problem) for a dangling link or a loop.
function Loader:resolve(path)
  local st, msg = fs.stat(path, false)
  if not st then
    self:problem(fmt("cannot read %s", msg), path)
    return nil
  end
  if st.type ~= "link" then return st end
  local target = fs.readlink(path) or "?"
  local tst, tmsg, code = fs.stat(path)
  if not tst then
    if code == "ELOOP" then
      self:problem(fmt("symlink loop: %s -> %s", path, target), path)
    elseif code == "ENOENT" or code == "ENOTDIR" then
      self:problem(fmt("dangling symlink: %s -> %s (the target does not exist)", path,
        target), path)
    else
      self:problem(fmt("cannot follow symlink %s -> %s: %s", path, target, tmsg), path)
    end
    return nil
  end
  local real = fs.realpath(path)
  if real and self.root and real:sub(1, #self.root + 1) ~= self.root .. "/" then
    self:warn(fmt("%s is a symlink to %s, outside %s", path, real, self.dir))
  end
  return tst
end

-- The normalized text of a script (BOM stripped, CRLF as LF), or nil and a problem.
function Loader:read(path, st)
  if st.size > self.max_size then
    self:problem(fmt("%s is %d bytes, over the limit of %d bytes for one migration file",
      path, st.size, self.max_size), path)
    return nil
  end
  local raw, msg = fs.read(path)
  if not raw then
    self:problem(fmt("cannot read %s", msg), path)
    return nil
  end
  local nul = raw:find("\0", 1, true)
  if nul then
    self:problem(fmt("%s: NUL byte at byte offset %d (line %d); migrations must be UTF-8 " ..
      "text", path, nul - 1, line_of(raw, nul)), path)
    return nil
  end
  local ok, bad = utf8.len(raw)
  if not ok then
    self:problem(fmt("%s: not valid UTF-8 at byte offset %d (line %d, byte 0x%02X); save " ..
      "the file as UTF-8", path, bad - 1, line_of(raw, bad), raw:byte(bad)), path)
    return nil
  end
  if raw:sub(1, 3) == "\239\187\191" then raw = raw:sub(4) end
  if raw:find("\r", 1, true) then raw = raw:gsub("\r\n", "\n") end
  return raw
end

-- Checks that a file that is part of a migration is not reached twice; true when it is not.
function Loader:claim(path, st)
  local id = st.dev .. ":" .. st.ino
  local first = self.inodes[id]
  if first then
    self:problem(fmt("%s and %s are the same file (%s); a file may hold one migration",
      first, path, fs.realpath(path) or path), first, path)
    return false
  end
  self.inodes[id] = path
  return true
end

-- True for a Flyway version: digit runs separated by single dots or underscores.
local function flyway_version(v)
  if v == "" then return false end
  for part in (v:gsub("_", ".") .. "."):gmatch("([^.]*)%.") do
    if not part:match("^%d+$") then return false end
  end
  return true
end

local NATIVE = { up = "^(%d+)_([^.].*)%.up%.sql$", down = "^(%d+)_([^.].*)%.down%.sql$" }

-- What a file name in the migrations directory is: a table, or nil when no layout fits.
local function classify(name)
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
-- down, down_offset, down_options }; nil and a problem when the sections are not one up
-- followed by one down.
function Loader:sections(e, layout, text)
  local marks = marker_lines(text, layout == "dbmate" and dbmate_marker or goose_marker)
  local label = layout == "dbmate" and "-- migrate:" or "-- +goose "
  local up, down
  for _, m in ipairs(marks) do
    if (m.value == "up" and up) or (m.value == "down" and down) then
      self:problem(fmt("%s:%d: a second `%s%s` section", e.path, m.line, label, m.value),
        e.path)
      return nil
    end
    if m.value == "up" then up = m else down = m end
  end
  if not up then
    self:problem(fmt("%s: no `%sup` line starts a section", e.path, label), e.path)
    return nil
  end
  if down and down.line < up.line then
    self:problem(fmt("%s:%d: the `%sdown` section comes before `%sup`", e.path, down.line,
      label, label), e.path)
    return nil
  end
  local lineno = 0
  for line in text:sub(1, up.first - 1):gmatch("([^\n]*)\n") do
    lineno = lineno + 1
    if not line:match("^%s*$") and not line:match("^%s*%-%-") then
      self:problem(fmt("%s:%d: text before `%sup` belongs to no section", e.path, lineno,
        label), e.path)
      return nil
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
-- texts.
function Loader:facts(e, text)
  local f = { layout = e.layout or "native", checksum = "", up_offset = 0, down_offset = 0 }
  local up, down = text, nil
  if e.lone then
    f.layout = lone_layout(text)
    if f.layout ~= "native" then
      local sec = self:sections(e, f.layout, text)
      if not sec then return nil end
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

-- The checksum cache: a file's facts keyed by its stat, so that a file unchanged since the
-- last run is not read again. Stat keys include ctime, which no tool can set back, and only
-- files last changed well before the run began are cached: a file written in the same
-- timestamp tick as it was read could otherwise keep its key with new content (git's
-- "racy clean" problem). Two seconds covers the coarsest timestamps (FAT, some network
-- file systems).
local CACHE_HEADER = "moonshift checksum cache 2\n"
source.RACY_SECONDS = 2
local FLAGS = { "has_down", "up_tx_off", "down_tx_off", "directive", "goose", "down_directive" }

local function stat_key(st)
  return fmt("%d:%d.%d:%d.%d:%d:%d", st.size, st.mtime, st.mtime_nsec, st.ctime or 0,
    st.ctime_nsec or 0, st.ino, st.dev)
end

local function encode_facts(f)
  local flags = {}
  for i, name in ipairs(FLAGS) do flags[i] = f[name] and "1" or "0" end
  return fmt("%s %s %s %d %d", f.layout, f.checksum, table.concat(flags), f.up_offset,
    f.down_offset)
end

local function decode_facts(s)
  local layout, checksum, flags, up_offset, down_offset =
    s:match("^(%a+) (%x+) ([01]+) (%d+) (%d+)$")
  if not layout or #flags ~= #FLAGS then return nil end
  local a, b, c, d, e, g = flags:byte(1, 6) -- FLAGS, in order
  return { layout = layout, checksum = checksum, up_offset = tonumber(up_offset),
    down_offset = tonumber(down_offset), has_down = a == 49, up_tx_off = b == 49,
    down_tx_off = c == 49, directive = d == 49, goose = e == 49, down_directive = g == 49 }
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

-- The cache file's entries (path -> "key\tfacts"); empty when it is missing, foreign or
-- not private to this user.
local function read_cache(path)
  local entries = {}
  local data = read_private(path, CACHE_HEADER)
  if not data then return entries, nil end
  for p, rest in data:gmatch("([^\t\n]+)\t([^\n]*)\n", #CACHE_HEADER + 1) do
    entries[p] = rest
  end
  return entries, data
end

-- The facts of a script file: from the cache when its stat key matches, else from its text
-- (then also kept on the entry as e.up_sql and e.down_sql). nil (and a problem) when refused.
function Loader:load_script(e)
  if not self:claim(e.path, e.st) then return nil end
  local key = stat_key(e.st)
  local cache = self.cache
  if cache then
    local hit = cache.entries[e.path]
    if hit and hit:sub(1, #key + 1) == key .. "\t" then
      local f = decode_facts(hit:sub(#key + 2))
      if f then
        cache.keep[#cache.keep + 1] = e.path .. "\t" .. hit
        cache.hits = cache.hits + 1
        return f
      end
    end
  end
  local text = self:read(e.path, e.st)
  if not text then return nil end
  local f, up, down = self:facts(e, text)
  if not f then return nil end
  e.up_sql, e.down_sql = up, down
  if cache and math.max(e.st.mtime, e.st.ctime or math.huge) < self.started - source.RACY_SECONDS
      and not e.path:find("[\t\n]") then
    cache.keep[#cache.keep + 1] = e.path .. "\t" .. key .. "\t" .. encode_facts(f)
  end
  return f
end

-- Writes the cache when what it should hold differs from what it holds.
local function write_cache(cache)
  local size = 0
  for _ in pairs(cache.entries) do size = size + 1 end
  if cache.hits == #cache.keep and cache.hits == size then return end
  table.sort(cache.keep)
  local data = CACHE_HEADER .. table.concat(cache.keep, "\n") .. (#cache.keep > 0 and "\n" or "")
  if data ~= cache.data then write_private(cache.path, data) end
end

-- The name of a psql meta-command statement, like `\i`.
local function meta_name(stmt)
  local m = type(stmt.meta) == "string" and stmt.meta or stmt.text
  local name = m:match("\\([%a!?]+)") or m:match("^%s*([%a!?]+)") or "?"
  return "\\" .. name
end

-- Splits a script into statements and checks them; nil (and problems) when it is refused.
function Loader:statements(path, text, offset, transaction)
  local stmts, err = sql.split(text)
  if not stmts then
    self:problem(fmt("%s:%d: %s", path, (tonumber(err.line) or 1) + offset,
      err.message or tostring(err)), path)
    return nil
  end
  local ok = true
  for _, stmt in ipairs(stmts) do
    stmt.line = stmt.line + offset
    if stmt.end_line then stmt.end_line = stmt.end_line + offset end
    if stmt.kind == "meta" then
      self:problem(fmt("%s:%d: psql meta-command %s cannot run on the server", path,
        stmt.line, meta_name(stmt)), path)
      ok = false
    elseif transaction then
      local name, pos = statement.no_transaction(stmt.text)
      if name then
        self:problem(fmt("%s:%d: %s cannot run inside a transaction; add %s to this " ..
          "migration", path, line_of(stmt.text, pos) + stmt.line - 1, name, DIRECTIVE), path)
        ok = false
      end
      name, pos = statement.transaction_control(stmt.text)
      if name then
        self:problem(fmt("%s:%d: %s: moonshift runs each migration in its own transaction " ..
          "and records it in the same one; remove this statement (or add %s to this " ..
          "migration)", path, line_of(stmt.text, pos) + stmt.line - 1, name, DIRECTIVE), path)
        ok = false
      end
    end
  end
  return ok and stmts or nil
end

-- Lists the migrations directory and classifies every entry into self.entries.
function Loader:scan(dir)
  local names, msg = fs.list(dir)
  if not names then
    self:problem(fmt("cannot list the migrations directory: %s", msg), dir)
    return
  end
  for _, name in ipairs(names) do
    if not self:skipped(name) then
      local path = join(self.base, name)
      local st = self:resolve(path)
      if st and st.type == "directory" then
        self:scan_diesel(name, path)
      elseif st and st.type ~= "file" then
        self:problem(fmt("%s is not a regular file or directory", path), path)
      elseif st then
        local e = classify(name)
        if not e then
          self:problem(fmt("%s matches no migration layout (expected names like " ..
            "0003_add_email.up.sql, 0003_add_email.sql, V3__add_email.sql, or an ignore " ..
            "pattern)", path), path)
        else
          e.path, e.st = path, st
          self.entries[#self.entries + 1] = e
        end
      end
    end
  end
end

-- Reads a diesel directory `<version>_<name>/` into self.entries.
function Loader:scan_diesel(name, path)
  local v, n = name:match("^(%d[%d%-]*)_([^.].*)$")
  if not v then
    self:problem(fmt("%s is a directory that matches no migration layout (diesel " ..
      "migrations are directories named like 2019-02-26-002946_create_user)", path), path)
    return
  end
  local names, msg = fs.list(path)
  if not names then
    self:problem(fmt("cannot list %s", msg), path)
    return
  end
  local e = { kind = "up", layout = "diesel", version = v, name = n, id = name, dir = path }
  local files = {}
  for _, file in ipairs(names) do
    if not self:skipped(file) then
      local fpath = path .. "/" .. file
      local st = self:resolve(fpath)
      if st and (st.type ~= "file" or not DIESEL_FILES[file]) then
        self:problem(fmt("%s does not belong in a diesel migration directory (it may hold " ..
          "up.sql, down.sql, metadata.toml, migration.lua and verify.sql)", fpath), fpath)
      elseif st then
        files[DIESEL_FILES[file]] = { path = fpath, st = st }
      end
    end
  end
  if not files.up then
    if files.down then
      self:problem(fmt("%s has no up.sql beside it", files.down.path), files.down.path)
    else
      self:problem(fmt("%s has no up.sql", path), path)
    end
    return
  end
  e.path, e.st = files.up.path, files.up.st
  if files.down then e.down = { path = files.down.path, st = files.down.st } end
  e.companion_path = files.companion and files.companion.path
  e.verify_path = files.verify and files.verify.path
  if files.metadata then
    local text = self:read(files.metadata.path, files.metadata.st)
    for line in (text or ""):gmatch("[^\n]+") do
      if line:match("^%s*run_in_transaction%s*=%s*false%s*$") or
          line:match("^%s*run_in_transaction%s*=%s*false%s*#") then
        e.no_transaction = true
      end
    end
  end
  self.entries[#self.entries + 1] = e
end

-- Reads the scripts of every entry (or their facts from the cache); decides the layout of
-- lone files from their text.
function Loader:read_entries()
  for _, e in ipairs(self.entries) do
    if e.kind == "up" or e.kind == "down" or e.kind == "repeatable" then
      e.facts = self:load_script(e)
      if e.facts and e.lone then e.layout = e.facts.layout end
      if e.facts and e.down then
        e.down.facts = self:load_script(e.down)
        if not e.down.facts then e.facts = nil end
      end
    elseif e.kind == "conf" then
      e.text = self:read(e.path, e.st)
    end
  end
end

-- The layout of the set; nil (and a problem) when the directory mixes layouts or does not
-- match the one asked for.
function Loader:layout()
  local first = {}
  local order = {}
  for _, e in ipairs(self.entries) do
    if e.layout then
      if self.format ~= "auto" and e.layout ~= self.format then
        self:problem(fmt("%s is a %s migration, but the format is set to %s", e.path,
          e.layout, self.format), e.path)
      elseif not first[e.layout] then
        first[e.layout] = e
        order[#order + 1] = e.layout
      end
    end
  end
  if self.format ~= "auto" then return self.format end
  if #order > 1 then
    local a, b = first[order[1]], first[order[2]]
    self:problem(fmt("%s mixes migration layouts: %s is %s, %s is %s; keep one layout per " ..
      "directory", self.dir, a.path, a.layout, b.path, b.layout), a.path, b.path)
    return nil
  end
  return order[1] or "native"
end

-- Pairs up scripts by version, attaches downs and companions; fills self.ups and
-- self.repeatables.
function Loader:group()
  local by_key, by_id = {}, {}
  for _, e in ipairs(self.entries) do
    if e.kind == "up" and e.facts then
      e.key = version.key(e.version)
      local other = by_key[e.key]
      if other then
        self:problem(fmt("duplicate version %s: %s and %s", e.key, other.path, e.path),
          other.path, e.path)
      else
        by_key[e.key] = e
        by_id[e.id] = e
        self.ups[#self.ups + 1] = e
      end
    elseif e.kind == "repeatable" and e.facts then
      by_id[e.id] = e
      self.repeatables[#self.repeatables + 1] = e
    end
  end
  for _, e in ipairs(self.entries) do
    if e.kind == "down" and e.facts then
      local up = by_key[version.key(e.version)]
      if not up or (e.layout == "native" and up.id ~= e.id) then
        self:problem(fmt("%s is %s without an up script (%s)", e.path,
          e.layout == "flyway" and "an undo script" or "a down script", e.layout == "flyway" and
          fmt("V%s__*.sql", e.version) or e.id .. ".up.sql"), e.path)
      elseif up.down or up.facts.has_down then
        self:problem(fmt("%s has more than one down script: %s and %s", up.path,
          up.down and up.down.path or up.path, e.path), up.path, e.path)
      else
        up.down = e
      end
    end
  end
  for _, e in ipairs(self.entries) do
    local field = ({ companion = "companion_path", verify = "verify_path",
      conf = "conf" })[e.kind]
    if field then
      local owner = by_id[e.base]
      if not owner then
        self:problem(fmt("%s belongs to no migration (no migration named %s)", e.path,
          e.base), e.path)
      elseif e.kind == "conf" then
        owner.conf = e
      else
        owner[field] = e.path
      end
    end
  end
end

-- Whether a migration runs in a transaction, from every directive its layout knows.
local function transactional(e)
  local f = e.facts
  if f.directive or f.up_tx_off or f.goose or e.no_transaction then return false end
  if e.conf and e.conf.text and e.conf.text:lower():find(
      "%f[%w]executeintransaction%s*=%s*false") then
    return false
  end
  return true
end

-- Reads the texts of an entry whose facts came from the cache; refuses it when the file no
-- longer has those facts (it changed after it was listed).
function Loader:texts(e)
  if e.up_sql then return true end
  local st, msg = fs.stat(e.path)
  if not st then
    self:problem(fmt("cannot read %s", msg), e.path)
    return false
  end
  local text = self:read(e.path, st)
  if not text then return false end
  local f, up, down = self:facts(e, text)
  if not f then return false end
  if encode_facts(f) ~= encode_facts(e.facts) then
    self:problem(fmt("%s changed while moonshift was reading it; run the command again",
      e.path), e.path)
    return false
  end
  e.up_sql, e.down_sql = up, down
  return true
end

-- Splits and checks the statements of a migration, reading its texts first when its facts
-- came from a cache; false (and problems) when refused. Most of the work of loading is
-- here, which is why `lazy` leaves it to source.prepare: migrations whose checksum
-- matches what ran then cost only a stat.
local function split(loader, m)
  local e, down = m._e, m._down
  if not loader:texts(e) or (down and not loader:texts(down)) then return false end
  local f = e.facts
  m.up_sql = e.up_sql
  m.statements = loader:statements(e.path, m.up_sql, f.up_offset, m.transaction)
  if m.statements and #m.statements == 0 then
    loader:warn(fmt("%s has no statements: it is recorded as applied, nothing is sent",
      e.path))
  end
  if m.down_path then
    m.down_sql = down and down.up_sql or e.down_sql
    m.down_statements = loader:statements(m.down_path, m.down_sql, f.down_offset,
      m.down_transaction)
  end
  if not m.statements or (m.down_path and not m.down_statements) then return false end
  m._e, m._down, m._src = nil, nil, nil
  return true
end

-- Loads a migration's Lua companion, whose `transaction = false` changes what its SQL may
-- hold; false (and a problem) when it fails.
function Loader:attach_companion(m)
  if not (m.companion_path and self.load_companion) then return true end
  local companion, err = self.load_companion(m.companion_path)
  if not companion then
    self:problem(tostring(err), m.companion_path)
    return false
  end
  m.companion = companion
  if companion.transaction == false then
    m.transaction = false
    if m.down_path then m.down_transaction = false end
  end
  return true
end

-- The migration (or repeatable) record of a grouped entry; nil when a script is refused.
-- e.tx and e.down_tx keep what the files say, before a companion has its say (the set
-- cache stores those).
function Loader:build(e)
  local f = e.facts
  local down = e.down -- a down script in a file of its own
  local down_directive
  if down then
    down_directive = down.facts.directive
  elseif f.has_down then
    down_directive = f.down_directive
  end
  e.tx = transactional(e)
  e.down_tx = e.tx and not down_directive and not f.down_tx_off
  local m = {
    version = e.version, key = e.key, name = e.name, id = e.id, format = e.layout,
    up_path = e.path, up_sql = e.up_sql, checksum = f.checksum, transaction = e.tx,
    companion_path = e.companion_path, verify_path = e.verify_path, _e = e, _down = down,
    _ctx = self.ctx,
  }
  if e.kind == "repeatable" then
    m.repeatable, m.version, m.key = true, e.id, nil
  end
  if down then
    m.down_path, m.down_sql = down.path, down.up_sql
  elseif f.has_down then
    m.down_path, m.down_sql = e.path, e.down_sql
  end
  if m.down_path then m.down_transaction = e.down_tx end
  if not self:attach_companion(m) then return nil end
  if self.lazy then return m end
  return split(self, m) and m or nil
end

-- Sorts by version.compare. When every version is all digits (the usual case) it sorts
-- precomputed keys that order the same instead: with 10,000 migrations a Lua comparator
-- is a noticeable part of `status`.
local function sort_migrations(list)
  local keys, by_key = {}, {}
  for i, m in ipairs(list) do
    local digits = m.version:match("^0*(%d+)$")
    if not digits then
      table.sort(list, function(a, b) return version.compare(a.version, b.version) < 0 end)
      return
    end
    keys[i] = fmt("%09d", #digits) .. digits
    by_key[keys[i]] = m
  end
  table.sort(keys) -- digits and lengths: unique (duplicates were refused), any locale
  for i, k in ipairs(keys) do list[i] = by_key[k] end
end

-- The error for the problems found: one message, or a numbered list of all of them.
local function failure(dir, problems)
  local files, seen = {}, {}
  for _, p in ipairs(problems) do
    for _, f in ipairs(p.files) do
      if not seen[f] then
        seen[f] = true
        files[#files + 1] = f
      end
    end
  end
  local message = problems[1].message
  if #problems > 1 then
    local lines = { fmt("%d problems with the migrations in %s:", #problems, dir) }
    for i, p in ipairs(problems) do
      if i > 20 then
        lines[#lines + 1] = fmt("  ... and %d more", #problems - 20)
        break
      end
      lines[#lines + 1] = "  " .. p.message
    end
    message = table.concat(lines, "\n")
  end
  local fields = {}
  if #files == 1 then fields.file = files[1] elseif #files > 1 then fields.files = files end
  fields.problems = problems
  return errors.new("usage", message, fields)
end

-- The set cache: a whole loaded set, kept under the fingerprint of its directory (names and
-- stats of every file, fs.fingerprint) and of the options it was loaded with, so that an
-- unchanged directory costs one listing, and its migrations one line each. Stored only when
-- every file was last changed well before the run began, as for the checksum cache; a
-- companion's Lua is loaded again each time (it is code, not a fact about a file).
local SET_HEADER = "moonshift set cache 1"
local RECORD_FIELDS = { "version", "key", "name", "id", "format", "up_path", "checksum",
  "_flags", "down_path", "companion_path", "verify_path", "_src" }

-- A record's last field says what source.prepare needs to read its files again: whether
-- the up file is a lone file, its facts without the checksum (the record has it) and the
-- facts of a down file of its own.
local function encode_record(m)
  local e, down = m._e, m._down
  local src = (e.lone and "1" or "0") .. ";" .. encode_facts(e.facts):gsub(" %x+ ", " ", 1) ..
    (down and ";" .. encode_facts(down.facts) or "")
  return table.concat({ m.version, m.key or "", m.name, m.id, m.format, m.up_path, m.checksum,
    (m.repeatable and "r" or "") .. (e.tx and "t" or "") .. (e.down_tx and "d" or ""),
    m.down_path or "", m.companion_path or "", m.verify_path or "", src }, "\t")
end

-- The entries of a record from the set cache, for source.prepare.
local function decode_source(m)
  local lone, layout, up, down = (m._src or ""):match("^([01]);(%a+)( [^;]+);?(.*)$")
  if not lone then return nil end
  local f = decode_facts(layout .. " " .. m.checksum .. up)
  local df = down ~= "" and decode_facts(down)
  if not f or (down ~= "" and not df) then return nil end
  local e = { path = m.up_path, lone = lone == "1", layout = f.layout, facts = f }
  return e, df and { path = m.down_path, layout = df.layout, facts = df } or nil
end

local function write_set(path, set, key)
  local lines = { fmt("%s\t%s\t%s\t%d", SET_HEADER, key, set.format, #set.warnings) }
  for _, w in ipairs(set.warnings) do lines[#lines + 1] = w end
  for _, list in ipairs({ set.migrations, set.repeatables }) do
    for _, m in ipairs(list) do lines[#lines + 1] = encode_record(m) end
  end
  local data = table.concat(lines, "\n") .. "\n"
  local _, n = data:gsub("\n", "")
  if n ~= #lines then return end -- a name or message with a line break: not cached
  for i = #set.warnings + 2, #lines do
    local _, tabs = lines[i]:gsub("\t", "")
    if tabs ~= 11 then return end -- a tab in a name
  end
  write_private(path, data)
end

-- The set the cache holds and the key it was kept under; nil when there is none. Its
-- companions are not loaded yet (that is code: only once the key is known to match).
function Loader:cached_set(path)
  local data = read_private(path, SET_HEADER .. "\t")
  if not data then return nil end
  local set_key, format, nwarn, pos = data:match("^(%x+)\t(%a+)\t(%d+)\n()",
    #SET_HEADER + 2)
  if not set_key then return nil end
  local set = { dir = self.dir, format = format, migrations = {}, repeatables = {},
    by_key = {}, warnings = {} }
  for _ = 1, tonumber(nwarn) do
    local w, after = data:match("^([^\n]*)\n()", pos)
    if not w then return nil end
    set.warnings[#set.warnings + 1], pos = w, after
  end
  local list = records.parse(data, pos, RECORD_FIELDS)
  if not list then return nil end
  local migrations, repeatables, by_key, ctx = set.migrations, set.repeatables, set.by_key,
    self.ctx
  local find = string.find
  for _, m in ipairs(list) do
    local flags = m._flags or ""
    m._flags, m._ctx = nil, ctx
    m.transaction = find(flags, "t", 1, true) ~= nil
    if m.down_path then m.down_transaction = find(flags, "d", 1, true) ~= nil end
    if find(flags, "r", 1, true) then
      m.repeatable = true
      repeatables[#repeatables + 1] = m
    else
      migrations[#migrations + 1] = m
      by_key[m.key] = m
    end
  end
  return set, set_key
end

--- Whether the files a set was read from are still the same (names, sizes, times,
-- inodes): a cheap re-check under the run lock instead of reading everything again.
-- @return boolean
function source.unchanged(set)
  return source.unchanged_begin(set):wait()
end

--- source.unchanged with the files stat'ed on a thread meanwhile; :wait() answers.
function source.unchanged_begin(set)
  local job = set.fingerprint ~= nil and fs.fingerprint_begin(set.dir)
  return { wait = function() return job and job:wait() == set.fingerprint or false end }
end

--- Splits and checks the statements of a migration loaded with `lazy` (idempotent).
-- @return true, warnings | nil, err (kind usage)
function source.prepare(m)
  if not (m._e or m._src) then return true, {} end
  local ctx = m._ctx
  local loader = setmetatable({ problems = {}, warnings = {}, max_size = ctx.max_size }, Loader)
  if not m._e then
    m._e, m._down = decode_source(m)
    if not m._e then
      if ctx.set_path then fs.remove(ctx.set_path) end
      return nil, errors.new("usage", fmt("the cache entry of %s was damaged and is now " ..
        "removed; run the command again", m.up_path), { file = m.up_path })
    end
  end
  if split(loader, m) then return true, loader.warnings end
  return nil, failure(ctx.dir, loader.problems)
end

--- Starts reading and validating a migrations directory: the directory's fingerprint is
-- taken on a thread while the set cache is parsed; :finish() returns the set, so the
-- caller may do other work (read the history) meanwhile. source.load does both at once.
-- @param dir string: the migrations directory (a symlink to one is followed)
-- @param opts table|nil: `format` ("auto" (default), "native", "flyway", "dbmate",
--   "diesel", "goose"), `ignore` (array of glob patterns matched against names; default
--   source.DEFAULT_IGNORE; names starting with "." are always ignored), `max_file_size`
--   (bytes, default source.MAX_FILE_SIZE), `load_companion` (function(path) -> table | nil, err:
--   loads a `.lua` companion, whose `transaction = false` applies before validation),
--   `lazy` (statements are split and checked only by source.prepare(m)), `cache` (path of
--   a checksum cache file, `<name>.cache`: files whose stat matches are not read until
--   source.prepare, so up_sql and down_sql may be nil before it; with `lazy`, a whole set
--   is also kept in `<name>.set` and used while no file of the directory changes; both are
--   rewritten when stale)
-- @return set table: { dir, format, migrations (sorted by version.compare), repeatables
--   (sorted by name), by_key (version key -> migration), warnings (array of strings) }; each
--   migration { version, key, name, id, format, up_path, up_sql, checksum, statements,
--   transaction, down_path, down_sql, down_statements, down_transaction, companion_path,
--   verify_path }; a repeatable has `repeatable = true` and its id as version; `fingerprint`
--   (for source.unchanged)
-- @return nil, err: kind "usage", a message naming the file(s) (and line), `file` when one
--   file is at fault, `files` when several, `problems` ({ message, files } each)
--   (both from :finish())
function source.load_begin(dir, opts)
  if type(dir) ~= "string" then error("source.load: dir must be a string", 2) end
  opts = opts or {}
  local format = opts.format or "auto"
  if not FORMATS[format] then
    error(fmt("source.load: unknown format %q (auto, native, flyway, dbmate, diesel, goose)",
      tostring(format)), 2)
  end
  local ignore = {}
  for i, glob in ipairs(opts.ignore or source.DEFAULT_IGNORE) do
    if type(glob) ~= "string" then error(fmt("source.load: ignore[%d] is not a string", i), 2) end
    ignore[i] = glob_pattern(glob)
  end
  local self = setmetatable({
    dir = dir, base = dir:match("^(.-)/*$"), format = format, ignore = ignore,
    max_size = opts.max_file_size or source.MAX_FILE_SIZE, problems = {}, warnings = {},
    load_companion = opts.load_companion, lazy = opts.lazy, started = fs.now(),
    entries = {}, inodes = {}, ups = {}, repeatables = {},
  }, Loader)
  if self.base == "" then self.base = "/" end
  -- what source.prepare needs of this load, shared by every migration
  self.ctx = { dir = dir, max_size = self.max_size }

  local st, _, code = fs.stat(dir)
  if not st then
    local lst = fs.stat(dir, false)
    if lst and lst.type == "link" then
      self:resolve(dir)
      self.failed = failure(dir, self.problems)
      return self
    end
    self.failed = errors.new("usage", code == "ENOENT" and
      "migrations directory not found: " .. dir or
      fmt("cannot read the migrations directory %s (%s)", dir, tostring(code)), { file = dir })
    return self
  end
  if st.type ~= "directory" then
    self.failed = errors.new("usage", "the migrations path is not a directory: " .. dir,
      { file = dir })
    return self
  end
  self.root = fs.realpath(dir)

  -- The directory's fingerprint is taken on a thread while the set cache is read (and
  -- whatever the caller does before :finish()); it then decides whether that set may be used.
  self.job = fs.fingerprint_begin(dir)
  self.opts = opts
  if opts.cache and opts.lazy then
    self.set_path = opts.cache:gsub("%.cache$", "") .. ".set"
    self.ctx.set_path = self.set_path
    self.cached, self.cached_key = self:cached_set(self.set_path)
  end
  return self
end

--- Whether a set cache was found (it answers unless a file changed since it was kept).
function Loader:has_cached_set()
  return self.cached ~= nil
end

--- Completes source.load_begin.
-- @return what source.load returns
function Loader:finish()
  if self.failed then return nil, self.failed end
  local dir, format, ignore, opts = self.dir, self.format, self.ignore, self.opts
  local set_path, cached, cached_key = self.set_path, self.cached, self.cached_key
  local fingerprint, newest = self.job:wait()
  local set_key = fingerprint and hash.sha256(table.concat({ host.version, fingerprint, dir,
    -- paths in the set are spelled from dir, so a relative dir is read from where it was
    dir:sub(1, 1) == "/" and "" or (fs.realpath(".") or "?"), format, self.max_size,
    self.load_companion and "companions" or "", table.concat(ignore, "\0") }, "\n"))
  if cached and cached_key == set_key then
    for _, list in ipairs({ cached.migrations, cached.repeatables }) do
      for _, m in ipairs(list) do
        if m.companion_path and not self:attach_companion(m) then
          return nil, failure(dir, self.problems)
        end
      end
    end
    cached.fingerprint = fingerprint
    return cached
  end
  if opts.cache then
    local entries, data = read_cache(opts.cache)
    self.cache = { path = opts.cache, entries = entries, data = data, keep = {}, hits = 0 }
  end

  self:scan(dir)
  self:read_entries()
  local layout = self:layout()
  if not layout then return nil, failure(dir, self.problems) end
  self:group()

  local set = { dir = dir, format = layout, migrations = {}, repeatables = {}, by_key = {},
    warnings = self.warnings, fingerprint = fingerprint }
  for _, e in ipairs(self.ups) do
    local m = self:build(e)
    if m then
      set.migrations[#set.migrations + 1] = m
      set.by_key[m.key] = m
    end
  end
  for _, e in ipairs(self.repeatables) do
    local r = self:build(e)
    if r then set.repeatables[#set.repeatables + 1] = r end
  end
  if #self.problems > 0 then return nil, failure(dir, self.problems) end
  if self.cache then write_cache(self.cache) end
  sort_migrations(set.migrations)
  table.sort(set.repeatables, function(a, b) return a.name < b.name end)
  if set_path and set_key and newest < self.started - source.RACY_SECONDS then
    write_set(set_path, set, set_key)
  end
  return set
end

--- Reads and validates a migrations directory at once: source.load_begin(dir, opts):finish().
function source.load(dir, opts)
  return source.load_begin(dir, opts):finish()
end

return source
