-- Finds migrations on disk: reads every supported layout into one ordered, validated set.
--
-- Policy, in one place (moonshift(1) repeats it):
-- * Layouts: native/golang-migrate/sqlx (`0003_x.up.sql`, `0003_x.down.sql`, a lone
--   `0003_x.sql` is up-only), dbmate (a lone `.sql` with `-- migrate:up` / `-- migrate:down`
--   sections), goose (a lone `.sql` with `-- +goose Up` / `-- +goose Down` sections),
--   sql-migrate (a lone `.sql` with `-- +migrate Up` / `-- +migrate Down` sections, also
--   named `20240101120000-x.sql`), Flyway
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
-- * Scripts over STREAM_SIZE are streamed: checked, hashed and later run statement by
--   statement, COPY data in pieces, without holding their text, so memory stays flat
--   whatever their size. Those with CRLF line endings or dbmate/goose sections are read
--   whole (and must then fit MAX_FILE_SIZE).
-- * An empty or comment-only up script is allowed: it is recorded as applied, nothing is
--   sent (the set carries a warning).
local fs = require("moonshift.fs")
local hash = require("moonshift.hash")
local host = require("moonshift.host")
local statement = require("moonshift.statement")
local layouts = require("moonshift.layouts")
local scripttext = require("moonshift.scripttext")
local cache = require("moonshift.cache")
local scan = require("moonshift.scan")
local version = require("moonshift.version")
local errors = require("moonshift.errors")
local ui = require("moonshift.ui")

local fmt = string.format

local source = {}

--- Names ignored unless `opts.ignore` says otherwise.
source.DEFAULT_IGNORE = { "README*", "*.md", "*.txt" }

--- Largest script read whole, in bytes (one that cannot be streamed); larger ones are
-- refused before reading.
source.MAX_FILE_SIZE = 256 * 1024 * 1024

--- Scripts larger than this, in bytes, are streamed (see above).
source.STREAM_SIZE = 8 * 1024 * 1024

--- What says a file is still the one that was read (see scripttext.identity).
source.identity = scripttext.identity

-- The facts of a file that must be read whole after all (see Loader:scan_script).
local WHOLE = scripttext.WHOLE

local FORMATS = { auto = true, native = true, flyway = true, dbmate = true, diesel = true,
  goose = true, ["sql-migrate"] = true }

-- Migrations whose scripts are not split yet, and what that needs (weak: a migration nobody
-- holds takes its entry with it). Their statements are read on first use.
local unread = setmetatable({}, { __mode = "k" })
local LAZY = { statements = true, down_statements = true, up_sql = true, down_sql = true }
local Migration = {}
Migration.__index = function(m, k)
  if LAZY[k] and unread[m] then
    local ok, err = source.check(m)
    if not ok then error(err, 2) end
    return rawget(m, k)
  end
  return nil
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

-- The normalized text of a script (see scripttext.read), or nil and a problem.
function Loader:read(path, st)
  local text, problem = scripttext.read(path, st, self)
  if not text then self:problem(problem, path) end
  return text
end

-- The facts of a script over stream_size (see scripttext.scan), WHOLE, or nil and a
-- problem.
function Loader:scan_script(e)
  local f, problem = scripttext.scan(e)
  if not f then self:problem(problem, e.path) end
  return f
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

-- The facts of a script file: from the checksum cache when its stat is unchanged, else
-- from its text (then also kept on the entry as e.up_sql and e.down_sql). nil (and a
-- problem) when refused.
function Loader:load_script(e)
  if not self:claim(e.path, e.st) then return nil end
  local known = self.files:lookup(e.path, e.st)
  if known then return known end
  if e.st.size > self.stream_size then
    local f = self:scan_script(e)
    if not f then return nil end
    if f ~= WHOLE then
      e.stream = true
      self.files:store(e.path, e.st, f)
      return f
    end
  end
  local text = self:read(e.path, e.st)
  if not text then return nil end
  local f, up, down = layouts.facts(e, text)
  if not f then
    self:problem(up, e.path)
    return nil
  end
  e.up_sql, e.down_sql = up, down
  self.files:store(e.path, e.st, f)
  return f
end

-- Splits a script into statements and checks them; nil (and problems) when it is refused.
-- A streamed one (text nil; identity, what source.identity said when it was hashed) is
-- checked as it streams past, its statements not kept; it must not change meanwhile.
function Loader:statements(path, text, offset, transaction, layout, direction, identity)
  local stmts, problems
  if text then
    stmts, problems = statement.script(path, text, offset, transaction, {
      hint = layouts.no_transaction_hint(layout, direction), alone = layouts.auto(layout) })
  else
    stmts, problems = statement.stream_script(path, path, transaction)
    local st = fs.stat(path)
    if stmts and not (st and source.identity(st) == identity) then
      stmts, problems = nil, { fmt("%s changed while moonshift was reading it; run the " ..
        "command again", path) }
    end
    if stmts then stmts.identity = identity end
  end
  for _, p in ipairs(problems) do self:problem(p, path) end
  return stmts
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

-- Reads the texts of an entry whose facts came from the cache; refuses it when the file no
-- longer has those facts (it changed after it was listed).
function Loader:texts(e)
  if e.up_sql or e.stream then return true end
  local st, msg = fs.stat(e.path)
  if not st then
    self:problem(fmt("cannot read %s", msg), e.path)
    return false
  end
  if st.size > self.stream_size then
    local f = self:scan_script(e)
    if not f then return false end
    if f ~= WHOLE then
      if cache.encode_facts(f) ~= cache.encode_facts(e.facts) then
        self:problem(fmt("%s changed while moonshift was reading it; run the command again",
          e.path), e.path)
        return false
      end
      e.stream = true
      return true
    end
  end
  local text = self:read(e.path, st)
  if not text then return false end
  local f, up, down = layouts.facts(e, text)
  if not f then
    self:problem(up, e.path)
    return false
  end
  if cache.encode_facts(f) ~= cache.encode_facts(e.facts) then
    self:problem(fmt("%s changed while moonshift was reading it; run the command again",
      e.path), e.path)
    return false
  end
  e.up_sql, e.down_sql = up, down
  return true
end

-- Splits and checks the statements of a migration, reading its texts first when its facts
-- came from a cache; false (and problems) when refused. Most of the work of loading is
-- here, which is why `lazy` leaves it to source.check: migrations whose checksum matches
-- what ran then cost only a stat. (rawset: the fields it fills are the lazy ones.)
local function split(loader, m)
  local u = unread[m]
  local e, down = u.e, u.down
  if not loader:texts(e) or (down and not loader:texts(down)) then return false end
  local f = e.facts
  local stmts = loader:statements(e.path, e.up_sql, f.up_offset, m.transaction, f.layout, "up",
    e.identity)
  rawset(m, "up_sql", e.up_sql)
  rawset(m, "statements", stmts)
  if stmts and #stmts == 0 then
    loader:warn(fmt("%s has no statements: it is recorded as applied, nothing is sent",
      e.path))
  end
  local down_stmts
  if m.down_path then
    local down_sql = down and down.up_sql or e.down_sql
    down_stmts = loader:statements(m.down_path, down_sql, f.down_offset, m.down_transaction,
      f.layout, "down", down and down.identity)
    rawset(m, "down_sql", down_sql)
    rawset(m, "down_statements", down_stmts)
  end
  if not stmts or (m.down_path and not down_stmts) then return false end
  unread[m] = nil
  return true
end

-- Loads a migration's Lua companion, whose `transaction = false` changes what its SQL may
-- hold; false (and a problem) when it fails.
function Loader:attach_companion(m)
  if not (m.companion_path and self.load_companion) then return true end
  local companion, err = self.load_companion(m.companion_path)
  if not companion then
    if type(err) == "table" and err.kind == "interrupted" then self.stopped = err end
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
  local down_marked, down_auto = false, false
  if down then
    down_marked, down_auto = layouts.down_no_transaction(down.facts)
  elseif f.has_down then
    down_marked = f.down_directive
  end
  local why
  e.tx, why = layouts.transactional(e)
  e.auto = why == "statements" or nil
  -- moonshift's directives that take the up script out of a transaction take its down out
  -- too; morph's marker and the statements of the up script decide only for the up script
  local marked = (not e.tx and not why) or down_marked or f.down_tx_off
  e.down_tx = not (marked or down_auto)
  e.down_auto = (down_auto and not marked) or nil
  local m = setmetatable({
    version = e.version, key = e.key, name = e.name, id = e.id, format = e.layout,
    up_path = e.path, up_sql = e.up_sql, checksum = f.checksum, transaction = e.tx,
    companion_path = e.companion_path, verify_path = e.verify_path,
    no_transaction_auto = e.auto, down_no_transaction_auto = e.down_auto,
  }, Migration)
  unread[m] = { e = e, down = down, ctx = self.ctx }
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

-- A migration's record in the set cache. Its `source` says what reading its files again
-- needs (source.check): whether the up file is a lone file, its facts without the
-- checksum (the record has it) and the facts of a down file of its own. Its `flags`: r a
-- repeatable, t transactional, d a transactional down (what the files say, before a
-- companion has its say), a and b: the up and the down script run without a transaction
-- for their statements alone.
local function record_of(m)
  local u = unread[m]
  local e, down = u.e, u.down
  return { version = m.version, key = m.key, name = m.name, id = m.id, format = m.format,
    up_path = m.up_path, checksum = m.checksum,
    flags = (m.repeatable and "r" or "") .. (e.tx and "t" or "") .. (e.down_tx and "d" or "") ..
      (e.auto and "a" or "") .. (e.down_auto and "b" or ""),
    down_path = m.down_path, companion_path = m.companion_path, verify_path = m.verify_path,
    source = (e.lone and "1" or "0") .. ";" .. cache.encode_facts(e.facts):gsub(" %x+ ", " ", 1)
      .. (down and ";" .. cache.encode_facts(down.facts) or "") }
end

-- The entries a record's `source` describes, for source.check; nil when it is damaged.
local function entries_of(m, src)
  local lone, layout, up, down = (src or ""):match("^([01]);([%a-]+)( [^;]+);?(.*)$")
  if not lone then return nil end
  local f = cache.decode_facts(layout .. " " .. m.checksum .. up)
  local df = down ~= "" and cache.decode_facts(down)
  if not f or (down ~= "" and not df) then return nil end
  local e = { path = m.up_path, lone = lone == "1", layout = f.layout, facts = f }
  return e, df and { path = m.down_path, layout = df.layout, facts = df } or nil
end

-- The set the cache holds and the key it was kept under; nil when there is none. Its
-- companions are not loaded yet (that is code: only once the key is known to match).
function Loader:cached_set()
  local kept = self.sets:lookup()
  if not kept then return nil end
  local set = { dir = self.dir, format = kept.format, migrations = {}, repeatables = {},
    by_key = {}, warnings = kept.warnings }
  local migrations, repeatables, by_key, ctx = set.migrations, set.repeatables, set.by_key,
    self.ctx
  local find = string.find
  for _, r in ipairs(kept.records) do
    local flags, src = r.flags or "", r.source
    r.flags, r.source = nil, nil
    local m = setmetatable(r, Migration)
    ui.untrusted(m.id) -- as scan.directory does for names it lists
    unread[m] = { src = src, ctx = ctx }
    m.transaction = find(flags, "t", 1, true) ~= nil
    if m.down_path then m.down_transaction = find(flags, "d", 1, true) ~= nil end
    m.no_transaction_auto = find(flags, "a", 1, true) ~= nil or nil
    m.down_no_transaction_auto = find(flags, "b", 1, true) ~= nil or nil
    if find(flags, "r", 1, true) then
      m.repeatable = true
      repeatables[#repeatables + 1] = m
    else
      migrations[#migrations + 1] = m
      by_key[m.key] = m
    end
  end
  return set, kept.key
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

--- Checks a migration loaded with `lazy`: reads and splits its scripts, refusing what
-- cannot run (idempotent; its statements are there afterwards). A migration not checked
-- is read on first use of its statements, and raises if that fails.
-- @return true, warnings | nil, err (kind usage)
function source.check(m)
  local u = unread[m]
  if not u then return true, {} end
  local ctx = u.ctx
  local loader = setmetatable({ problems = {}, warnings = {}, max_size = ctx.max_size,
    stream_size = ctx.stream_size }, Loader)
  if not u.e then
    u.e, u.down = entries_of(m, u.src)
    if not u.e then
      ctx.sets:forget()
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
--   "diesel", "goose", "sql-migrate"), `ignore` (array of glob patterns matched against
--   names; default source.DEFAULT_IGNORE; names starting with "." are always ignored),
--   `max_file_size` (bytes, default source.MAX_FILE_SIZE), `load_companion`
--   (function(path) -> table | nil, err: loads a `.lua` companion, whose
--   `transaction = false` applies before validation),
--   `lazy` (statements are split and checked by source.check(m), or on first use), `cache` (path of
--   a checksum cache file, `<name>.cache`: files whose stat matches are not read until
--   source.check or first use; with `lazy`, a whole set
--   is also kept in `<name>.set` and used while no file of the directory changes; both are
--   rewritten when stale)
-- @return set table: { dir, format, migrations (sorted by version.compare), repeatables
--   (sorted by name), by_key (version key -> migration), warnings (array of strings) }; each
--   migration { version, key, name, id, format, up_path, up_sql, checksum, statements,
--   transaction, down_path, down_sql, down_statements, down_transaction, companion_path,
--   verify_path, no_transaction_auto and down_no_transaction_auto (true when the script
--   runs without a transaction for its statements alone, no directive saying so) }; a
--   repeatable has `repeatable = true` and its id as version; `fingerprint` (for
--   source.unchanged)
-- @return nil, err: kind "usage", a message naming the file(s) (and line), `file` when one
--   file is at fault, `files` when several, `problems` ({ message, files } each)
--   (both from :finish())
function source.load_begin(dir, opts)
  if type(dir) ~= "string" then error("source.load: dir must be a string", 2) end
  opts = opts or {}
  local format = opts.format or "auto"
  if not FORMATS[format] then
    error(fmt("source.load: unknown format %q (auto, native, flyway, dbmate, diesel, goose, " ..
      "sql-migrate)", tostring(format)), 2)
  end
  local ignore = {}
  for i, glob in ipairs(opts.ignore or source.DEFAULT_IGNORE) do
    if type(glob) ~= "string" then error(fmt("source.load: ignore[%d] is not a string", i), 2) end
    ignore[i] = scan.glob_pattern(glob)
  end
  local self = setmetatable({
    dir = dir, base = dir:match("^(.-)/*$"), format = format, ignore = ignore,
    max_size = opts.max_file_size or source.MAX_FILE_SIZE, problems = {}, warnings = {},
    stream_size = opts.stream_size or source.STREAM_SIZE,
    load_companion = opts.load_companion, lazy = opts.lazy, started = fs.now(),
    entries = {}, inodes = {}, ups = {}, repeatables = {},
  }, Loader)
  if self.base == "" then self.base = "/" end
  -- what source.check needs of this load, shared by every migration
  self.ctx = { dir = dir, max_size = self.max_size, stream_size = self.stream_size }

  local st, _, code = fs.stat(dir)
  if not st then
    local lst = fs.stat(dir, false)
    if lst and lst.type == "link" then
      scan.resolve(self, dir)
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
  self.sets = cache.sets(opts.cache and opts.lazy and opts.cache:gsub("%.cache$", "") .. ".set")
  self.ctx.sets = self.sets
  self.cached, self.cached_key = self:cached_set()
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
  local cached, cached_key = self.cached, self.cached_key
  local fingerprint, newest = self.job:wait()
  local set_key = fingerprint and hash.sha256(table.concat({ host.version, fingerprint, dir,
    -- paths in the set are spelled from dir, so a relative dir is read from where it was
    dir:sub(1, 1) == "/" and "" or (fs.realpath(".") or "?"), format, self.max_size,
    self.load_companion and "companions" or "", table.concat(ignore, "\0") }, "\n"))
  if cached and cached_key == set_key then
    for _, list in ipairs({ cached.migrations, cached.repeatables }) do
      for _, m in ipairs(list) do
        if m.companion_path and not self:attach_companion(m) then
          return nil, self.stopped or failure(dir, self.problems)
        end
      end
    end
    cached.fingerprint = fingerprint
    return cached
  end
  self.files = cache.files(opts.cache, self.started)

  scan.directory(self, dir)
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
  if #self.problems > 0 then return nil, self.stopped or failure(dir, self.problems) end
  self.files:save()
  sort_migrations(set.migrations)
  table.sort(set.repeatables, function(a, b) return a.name < b.name end)
  if self.lazy and set_key and newest < self.started - cache.RACY_SECONDS then
    local list = {}
    for _, m in ipairs(set.migrations) do list[#list + 1] = record_of(m) end
    for _, m in ipairs(set.repeatables) do list[#list + 1] = record_of(m) end
    self.sets:store(set_key, set.format, set.warnings, list)
  end
  return set
end

--- Reads and validates a migrations directory at once: source.load_begin(dir, opts):finish().
function source.load(dir, opts)
  return source.load_begin(dir, opts):finish()
end

return source
