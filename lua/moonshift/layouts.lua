-- The migration layouts moonshift reads: what a file name is, how a lone file splits into
-- up and down sections (dbmate, goose, sql-migrate), and what takes a migration out of a
-- transaction (directives, and in some layouts its statements). Pure functions of names and
-- texts; source.lua walks the directory.
local hash = require("moonshift.hash")
local sql = require("moonshift.sql")
local statement = require("moonshift.statement")

local fmt = string.format

local layouts = {}

-- The layouts in which a script whose every statement cannot run inside a transaction block
-- runs without one, as its own tool runs it: golang-migrate never opens a transaction (its
-- layout is moonshift's native one, NNN_name.up.sql / .down.sql, and a lone NNN_name.sql
-- reads the same way), and Flyway detects such statements (PostgreSQLParser
-- detectCanExecuteInTransaction) and runs the script outside one. dbmate, goose, diesel and
-- sql-migrate wrap each migration unless their own marker says not to, so there the marker
-- is required, as it is by those tools.
local AUTO = { native = true, flyway = true }

-- Each layout's own way to take a migration out of a transaction, for messages.
local NO_TX_HINT = {
  native = { up = "`-- moonshift:no-transaction` to the file",
    down = "`-- moonshift:no-transaction` to the file" },
  flyway = { up = "`executeInTransaction=false` to its .sql.conf file (or " ..
    "`-- moonshift:no-transaction` to the script)",
    down = "`-- moonshift:no-transaction` to the undo script" },
  dbmate = { up = "`transaction:false` to its `-- migrate:up` line",
    down = "`transaction:false` to its `-- migrate:down` line" },
  goose = { up = "`-- +goose NO TRANSACTION` to the file",
    down = "`-- +goose NO TRANSACTION` to the file" },
  diesel = { up = "`run_in_transaction = false` to its metadata.toml",
    down = "`run_in_transaction = false` to its metadata.toml" },
  ["sql-migrate"] = { up = "`notransaction` to its `-- +migrate Up` line",
    down = "`notransaction` to its `-- +migrate Down` line" },
}

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
  -- sql-migrate's own `new` names files 20240101120000-name.sql; such a file must then
  -- have its sections (layouts.facts)
  v, n = name:match("^(%d+)%-([^.].*)%.sql$")
  if v then
    return { kind = "up", lone = true, dash = true, version = v, name = n, id = v .. "-" .. n }
  end
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

-- sql-migrate's section lines, as its parser reads them (github.com/rubenv/sql-migrate,
-- sqlparse/sqlparse.go): `-- +migrate Up` or `Down` at the start of a line, exactly so
-- spelled, then options separated by blanks (`notransaction`).
local function sql_migrate_marker(line)
  local which, rest = line:match("^%-%- %+migrate (%a+)(.*)$")
  if which == "Up" or which == "Down" then return which:lower(), rest end
  return nil
end

-- Which section layout a lone file uses, from its text: "dbmate", "goose", "sql-migrate"
-- or "native".
local function lone_layout(text)
  local low = "\n" .. text:lower()
  if low:find("\n[ \t]*%-%-[ \t]*migrate:up") then return "dbmate" end
  if low:find("\n[ \t]*%-%-[ \t]*%+goose[ \t]+up[ \t]*\n") or
      low:find("\n[ \t]*%-%-[ \t]*%+goose[ \t]+up[ \t]*$") then
    return "goose"
  end
  if ("\n" .. text):find("\n%-%- %+migrate Up%f[%s%z]") then return "sql-migrate" end
  return "native"
end

local MARKERS = { dbmate = dbmate_marker, goose = goose_marker,
  ["sql-migrate"] = sql_migrate_marker }
local LABELS = { dbmate = "-- migrate:", goose = "-- +goose ", ["sql-migrate"] = "-- +migrate " }

-- True when a section line's options hold this layout's no-transaction option.
local function tx_off(layout, options)
  if layout == "dbmate" then return options:find("transaction:%s*false") ~= nil end
  if layout == "sql-migrate" then
    for word in options:gmatch("%S+") do
      if word == "notransaction" then return true end
    end
  end
  return false
end

-- Splits a dbmate, goose or sql-migrate file into its up and down sections: { up,
-- up_offset, up_options, down, down_offset, down_options }; nil and the problem when the
-- sections are not one up followed by one down.
local function sections(e, layout, text)
  local marks = marker_lines(text, MARKERS[layout])
  local label = LABELS[layout]
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

-- morph (Mattermost's tool, github.com/mattermost/morph, drivers/postgres/postgres.go)
-- leaves out the transaction when the file's text begins with this, byte for byte.
local MORPH = "-- morph:nontransactional"

-- Words one of which every statement statement.no_transaction knows holds: a script with
-- none of them is not split to find out.
local NO_TX_WORDS = { "concurrently", "vacuum", "database", "tablespace", "system", "reindex" }

-- True when text has at least one statement and every one of them cannot run inside a
-- transaction block (CREATE INDEX CONCURRENTLY, VACUUM, ...).
local function only_no_transaction(text, low)
  local any = false
  for _, w in ipairs(NO_TX_WORDS) do
    if low:find(w, 1, true) then
      any = true
      break
    end
  end
  -- the first statement's head words decide most scripts without splitting them
  if not any or not statement.no_transaction(text) then return false end
  local stmts = sql.split(text)
  if not stmts or not stmts[1] then return false end
  for _, stmt in ipairs(stmts) do
    if stmt.kind ~= "sql" or not statement.no_transaction(stmt.text) then return false end
  end
  return true
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
    if e.dash and f.layout ~= "sql-migrate" then
      return nil, fmt("%s matches no migration layout (a name like 0003-add_email.sql is " ..
        "sql-migrate's, and then its file has a `-- +migrate Up` line)", e.path)
    end
    if f.layout ~= "native" then
      local sec, problem = sections(e, f.layout, text)
      if not sec then return nil, problem end
      up, down, f.up_offset, f.down_offset = sec.up, sec.down, sec.up_offset, sec.down_offset
      f.has_down = down ~= nil
      f.up_tx_off = tx_off(f.layout, sec.up_options)
      f.down_tx_off = tx_off(f.layout, sec.down_options or "")
    end
  end
  local low = up:lower()
  f.checksum = hash.sha256(up)
  f.directive = has_directive(low)
  -- morph reads only NNN_name.up.sql / .down.sql (models/parse.go)
  f.morph = f.layout == "native" and not e.lone and up:sub(1, #MORPH) == MORPH
  f.only_no_tx = AUTO[f.layout] and only_no_transaction(up, low) or false
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
    directive = false, goose = false, down_directive = false, morph = false, only_no_tx = false }
  local first = true
  for chunk in chunks do
    local low = chunk:lower()
    if first then -- morph's marker opens the file (a large file is never judged by its
      -- statements: one that mixes them is refused statement by statement)
      f.morph = f.layout == "native" and not e.lone and chunk:sub(1, #MORPH) == MORPH
      first = false
    end
    if e.lone and lone_layout(low) ~= "native" then return nil end
    f.directive = f.directive or has_directive(low)
    f.goose = f.goose or has_goose_directive(low)
  end
  return f
end

--- Whether a migration runs in a transaction, from every directive its layout knows, and
-- in the layouts whose own tool runs it so (see AUTO), from its statements.
-- @return boolean, and why not when it is not for a reason that is the up script's own
--   (its down script decides for itself then, as morph and golang-migrate have it):
--   "morph" (the file starts with morph's marker) or "statements" (every one of them cannot
--   run inside a transaction block)
function layouts.transactional(e)
  local f = e.facts
  if f.directive or f.up_tx_off or f.goose or e.no_transaction then return false end
  if e.conf and e.conf.text and e.conf.text:lower():find(
      "%f[%w]executeintransaction%s*=%s*false") then
    return false
  end
  if f.morph then return false, "morph" end
  if f.only_no_tx and AUTO[f.layout] then return false, "statements" end
  return true
end

--- What takes a down script of its own (a .down.sql, a Flyway undo script) out of a
-- transaction by its own text: a directive (first value), or (second value; see AUTO) only
-- statements that cannot run in one.
-- @return boolean marked, boolean only_no_transaction
function layouts.down_no_transaction(f)
  return f.directive or f.morph or false, (f.only_no_tx and AUTO[f.layout]) or false
end

--- Whether a script of only statements that cannot run inside a transaction block runs
-- without one in this layout (see AUTO).
function layouts.auto(layout)
  return AUTO[layout] == true
end

--- How to take a migration of this layout out of a transaction, for messages: its own
-- tool's marker where it has one (a file that keeps it still works with that tool).
function layouts.no_transaction_hint(layout, direction)
  return NO_TX_HINT[layout] and NO_TX_HINT[layout][direction or "up"] or NO_TX_HINT.native.up
end

return layouts
