-- Other migration tools' history tables: which exist, what they say is applied, how an
-- entry matches a file, and (compat) keeping one in step. One module per tool in peers/.
local pg = require("moonshift.pg")
local fs = require("moonshift.fs")
local version = require("moonshift.version")
local errors = require("moonshift.errors")
local sqlstate = require("moonshift.sqlstate")

local fmt = string.format

local peers = {}

--- The tools, in the order detection reports them; each is moonshift.peers.<module>.
peers.MODULES = { "golang_migrate", "dbmate", "rails", "flyway", "diesel", "goose", "sqlx",
  "sql_migrate", "node_pg_migrate", "postgrator", "sqitch", "alembic", "django" }

local by_name
local function tools()
  if by_name then return by_name end
  by_name = {}
  for i, mod in ipairs(peers.MODULES) do
    local t = require("moonshift.peers." .. mod)
    t.order = i
    by_name[t.name] = t
  end
  return by_name
end

--- The tool called name ("golang-migrate", "dbmate", ...), or nil.
function peers.get(name)
  return tools()[name]
end

--- The names of every tool, in order.
function peers.names()
  local out = {}
  for _, mod in ipairs(peers.MODULES) do out[#out + 1] = require("moonshift.peers." .. mod).name end
  return out
end

--- The tools `compat` may name (those with a writer).
function peers.compat_names()
  local out = {}
  for _, name in ipairs(peers.names()) do
    if peers.get(name).compat then out[#out + 1] = name end
  end
  return out
end

-- "schema.table" or "table" split; nil schema when not given.
local function split_name(text)
  local s, t = text:match("^([^.]+)%.([^.]+)$")
  if s then return s, t end
  return nil, text
end
peers.split_name = split_name

-- Where each tool's table may be, from the peer's own configuration file in the project
-- (cfg.root) or the environment: { [tool name] = { table =, schema = } }.
local function configured(cfg)
  local out = {}
  local root = cfg.root or "."
  for _, t in pairs(tools()) do
    if t.configured then
      local where = t.configured(function(path)
        local text = fs.read(root .. "/" .. path)
        return text
      end, cfg.env or os.getenv)
      if where then out[t.name] = where end
    end
  end
  return out
end

--- Where the tool's table is for compat: its own configuration's table and schema when
-- the project has them, else its usual name (in `schema`, the tracking schema).
-- @return schema, table
function peers.location(cfg, name, schema)
  local t = peers.get(name)
  local c = configured(cfg)[name] or {}
  return c.schema or t.schema or schema, c.table or t.table
end

-- The tables of the given names in the given schemas, with their columns.
local TABLES_SQL = [[
  SELECT n.nspname AS schema, c.relname AS name,
         pg_catalog.array_to_string(pg_catalog.array_agg(a.attname::text ORDER BY a.attnum),
                                    ',') AS cols
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  WHERE c.relkind IN ('r', 'p') AND c.relname = ANY ($1::text[])
    AND n.nspname = ANY ($2::text[])
  GROUP BY n.nspname, c.relname]]

local function pg_array(list)
  local out = {}
  for i, v in ipairs(list) do out[i] = '"' .. v:gsub('[\\"]', "\\%0") .. '"' end
  return "{" .. table.concat(out, ",") .. "}"
end

local function has_columns(cols, want)
  for _, c in ipairs(want) do
    if not cols[c] then return false end
  end
  return true
end

--- Reads what a found table says is applied: entries { version, key, name, checksum,
-- failed, kind } plus `newest` (the newest applied entry) and `count`.
-- @return found (filled) | nil, err (kind sql)
function peers.read(conn, found)
  local entries, err = found.tool.read(conn, found.qualified, found)
  if not entries then
    if type(err) == "table" and err.sqlstate == sqlstate.INSUFFICIENT_PRIVILEGE then
      found.unreadable = tostring(err.message or err)
    end
    return nil, errors.wrap("sql", err, "cannot read " .. found.label)
  end
  local newest, count = nil, 0
  for _, e in ipairs(entries) do
    e.key = e.key or (e.version and version.key(e.version))
    if not e.failed then
      count = count + 1
      if e.version and (not newest or version.compare(e.version, newest.version) > 0) then
        newest = e
      end
    end
  end
  found.entries, found.newest, found.count = entries, newest, count
  return found
end

--- The other tools' history tables in the database, with what each says is applied. Looks
-- in the schemas of the search_path, each tool's usual schema and the schema its own
-- configuration names.
-- @param conn a moonshift.pg connection
-- @param cfg table: root and env (for the peers' configuration files)
-- @param opts table|nil: `from` (one tool's name), `from_table` ("[schema.]table"), `all`
--   (also tables that hold nothing)
-- @return array of found { tool, schema, table, qualified, label, entries, newest, count },
--   array of found that this role may not read (`unreadable`, the server's message) | nil, err
function peers.detect(conn, cfg, opts)
  opts = opts or {}
  local rows, err = conn:query("SELECT pg_catalog.unnest(pg_catalog.current_schemas(false)) " ..
    "AS s")
  if not rows then return nil, errors.wrap("sql", err, "cannot read the search_path") end
  local schemas, seen = {}, {}
  local function add_schema(s)
    if s and not seen[s] then seen[s], schemas[#schemas + 1] = true, s end
  end
  for _, r in ipairs(rows) do add_schema(r.s) end
  local conf = configured(cfg)
  local wanted, names_seen = {}, {}
  local function want(schema, name)
    add_schema(schema)
    if not names_seen[name] then names_seen[name], wanted[#wanted + 1] = true, name end
  end
  local list = {}
  for _, t in pairs(tools()) do
    if not opts.from or opts.from == t.name then list[#list + 1] = t end
  end
  table.sort(list, function(a, b) return a.order < b.order end)
  local places = {}
  for _, t in ipairs(list) do
    local c = conf[t.name] or {}
    local schema, name = c.schema or t.schema, c.table or t.table
    if opts.from_table then schema, name = split_name(opts.from_table) end
    places[t] = { schema = schema, table = name }
    want(schema, name)
    for _, extra in ipairs(t.also or {}) do want(nil, extra) end
  end
  local trows
  trows, err = conn:query(TABLES_SQL, pg_array(wanted), pg_array(schemas))
  if not trows then return nil, errors.wrap("sql", err, "cannot look for other tools' tables") end
  local present = {}
  for _, r in ipairs(trows) do
    local cols = {}
    for c in r.cols:gmatch("[^,]+") do cols[c] = true end
    present[r.schema .. "." .. r.name] = cols
  end
  local out, unreadable = {}, {}
  for _, t in ipairs(list) do
    local p = places[t]
    for _, schema in ipairs(p.schema and { p.schema } or schemas) do
      local cols = present[schema .. "." .. p.table]
      if cols and has_columns(cols, t.columns) and
          not (t.without and has_columns(cols, t.without)) and
          (not t.claims or t.claims(present, schema, cols)) then
        local q = conn:escape_identifier(schema) .. "." .. conn:escape_identifier(p.table)
        local found = { tool = t, schema = schema, table = p.table, qualified = q,
          label = fmt("%s's table %s", t.name, q) }
        local ok, rerr = peers.read(conn, found)
        if ok then
          if found.count > 0 or #found.entries > 0 or opts.all then out[#out + 1] = found end
        elseif found.unreadable then
          unreadable[#unreadable + 1] = found
        else
          return nil, rerr
        end
        break -- the first schema of the search_path that has it, as the tool would find it
      end
    end
  end
  return out, unreadable
end

--- What a found table says, in a few words: "3 applied, newest 3" or "at version 3".
function peers.summary(found)
  local t, n = found.tool, found.newest
  local failed = 0
  for _, e in ipairs(found.entries) do if e.failed then failed = failed + 1 end end
  local text
  if t.newest_only then
    text = n and fmt("at version %s", n.version) or "nothing applied"
  else
    text = fmt("%d applied%s", found.count, n and (", newest " .. n.version) or "")
  end
  if failed > 0 then text = text .. fmt(", %d failed or dirty", failed) end
  return text
end

--- The refusal when moonshift has no history of its own but another tool's table says
-- migrations are applied: running would apply them again.
-- @param list array of found (peers.detect)
-- @param own string: moonshift's tracking table, quoted
-- @return error (kind refused)
-- @param said boolean|nil: for status, which refuses nothing itself
function peers.refusal(list, own, said)
  local parts, adopt = {}
  for _, f in ipairs(list) do
    parts[#parts + 1] = fmt("%s says %s", f.label, peers.summary(f))
  end
  if #list == 1 then
    adopt = fmt("moonshift adopt --from %s", list[1].tool.name)
  else
    adopt = "moonshift adopt --from TOOL (one of: " .. table.concat((function()
      local n = {}
      for i, f in ipairs(list) do n[i] = f.tool.name end
      return n
    end)(), ", ") .. ")"
  end
  return errors.new("refused", fmt("this database was migrated by another tool: %s; " ..
    "moonshift's own history (%s) is empty, so it would run those migrations again. Record " ..
    "them first with `%s`%s", table.concat(parts, "; "), own, adopt,
    said and "" or "; nothing was changed"),
    { peers = list })
end

-- CRC-32 (IEEE, as java.util.zip.CRC32).
local CRC_TABLE
local function crc32(text)
  if not CRC_TABLE then
    CRC_TABLE = {}
    for i = 0, 255 do
      local c = i
      for _ = 1, 8 do
        if c & 1 == 1 then c = 0xEDB88320 ~ (c >> 1) else c = c >> 1 end
      end
      CRC_TABLE[i] = c
    end
  end
  local crc = 0xFFFFFFFF
  for i = 1, #text do
    crc = CRC_TABLE[(crc ~ text:byte(i)) & 0xFF] ~ (crc >> 8)
  end
  return crc ~ 0xFFFFFFFF
end
peers.crc32 = crc32

--- The text of a migration's up file as its tool read it (a BOM kept), or nil, err.
function peers.file_text(m)
  return fs.read(m.up_path)
end

--- The file name of a path.
function peers.basename(path)
  return (path:match("([^/]+)$"))
end

--- Matches a found table's entries with the migrations on disk.
-- @param found table: from peers.detect (entries read)
-- @param set table: the loaded migrations
-- @param conn the connection (checksums some tools keep are computed by the server)
-- @return { record = { {m, entry} }, no_file = { entry }, no_entry = { m }, drift =
--   { {m, entry, expected, actual} }, failed = { entry } } | nil, err
function peers.match(found, set, conn)
  local t = found.tool
  local res = { record = {}, no_file = {}, no_entry = {}, drift = {}, failed = {} }
  local by_key = {}
  for _, m in ipairs(set.migrations) do
    if not m.repeatable then by_key[t.key_of and t.key_of(m) or m.key] = m end
  end
  local matched = {}
  for _, e in ipairs(found.entries) do
    if e.failed then
      res.failed[#res.failed + 1] = e
    elseif not e.skip then
      local m = e.key and by_key[e.key]
      if not m and t.find then m = t.find(e, set) end
      if m then
        if not matched[m] then
          matched[m] = e
          res.record[#res.record + 1] = { m = m, entry = e }
        end
      else
        res.no_file[#res.no_file + 1] = e
      end
    end
  end
  -- the newest migration an entry names (an entry with no file says nothing of the gaps)
  local newest_m
  for _, r in ipairs(res.record) do
    if not newest_m or version.compare(r.m.version, newest_m.version) > 0 then newest_m = r.m end
  end
  -- a table that keeps only the newest (golang-migrate), or a baseline (Flyway), says that
  -- everything before it is applied
  -- (golang-migrate's newest version says so even when its file is gone)
  local limit = newest_m or (t.newest_only and found.newest)
  local upto = found.baseline or (t.newest_only and limit)
  for _, m in ipairs(set.migrations) do
    if not m.repeatable and not matched[m] and limit and
        version.compare(m.version, limit.version) < 0 then
      if upto and version.compare(m.version, upto.version) <= 0 then
        matched[m] = upto
        res.record[#res.record + 1] = { m = m, entry = upto, implied = true }
      else
        res.no_entry[#res.no_entry + 1] = m
      end
    end
  end
  table.sort(res.record, function(a, b) return version.less(a.m.version, b.m.version) end)
  if t.checksum then
    for _, r in ipairs(res.record) do
      if not r.implied and r.entry.checksum and r.entry.checksum ~= pg.null then
        local actual, err = t.checksum(r.m, conn)
        if not actual then return nil, err end
        if tostring(actual) ~= tostring(r.entry.checksum) then
          res.drift[#res.drift + 1] = { m = r.m, entry = r.entry,
            expected = tostring(r.entry.checksum), actual = tostring(actual) }
        end
      end
    end
  end
  return res
end

--- A compat writer for a tool that keeps one row per applied migration. w (from History)
-- has `t` (the tool's table, quoted) and `q(sql, ...)` (runs in the caller's transaction or
-- joins its pipeline).
-- @param spec table: col (the key column), cast (of $1 to the column's type), value(m)
--   (the key the tool writes for m), insert (format with %s for the table; $1 the key, more
--   from extra(m)), extra(m) (further parameters), keep (keys never deleted), rebuild (state
--   deletes every row but those kept first), present (a condition, %s the table, true when
--   the tool already counts $1 as applied), ddl(t)
-- @return table: ddl, applied, removed, state
function peers.row_compat(spec)
  local cast = spec.cast or ""
  local c = { ddl = spec.ddl }
  local function insert(w, m)
    local params = { spec.value(m) }
    for _, x in ipairs(spec.extra and { spec.extra(m) } or {}) do params[#params + 1] = x end
    local present = spec.present and fmt(spec.present, w.t) or
      fmt("EXISTS (SELECT 1 FROM %s WHERE %s = $1%s)", w.t, spec.col, cast)
    return w.q(fmt("%s WHERE NOT %s", fmt(spec.insert, w.t), present), table.unpack(params))
  end
  --- m is applied (a dirty migration is written once it is done, as the tools do).
  function c.applied(w, m, dirty)
    if dirty then return true end
    return insert(w, m)
  end
  --- m is reverted.
  function c.removed(w, m)
    return w.q(fmt("DELETE FROM %s WHERE %s = $1%s", w.t, spec.col, cast), spec.value(m))
  end
  --- The table made to say what moonshift's rows say: list of { m, dirty }.
  function c.state(w, list)
    local keys = {}
    for _, k in ipairs(spec.keep or {}) do keys[#keys + 1] = k end
    for _, r in ipairs(list) do
      if r.m and not r.dirty then keys[#keys + 1] = tostring(spec.value(r.m)) end
    end
    -- a log (goose's) is written anew: an old row may say a version is not applied
    local ok, err = w.q(fmt("DELETE FROM %s WHERE %s::text <> ALL ($1::text[])", w.t, spec.col),
      pg_array(spec.rebuild and (spec.keep or {}) or keys))
    if not ok then return nil, err end
    for _, r in ipairs(list) do
      if r.m and not r.dirty then
        ok, err = insert(w, r.m)
        if not ok then return nil, err end
      end
    end
    return true
  end
  return c
end

--- The versions of a table whose applied rows are just a version column (dbmate, diesel,
-- Rails): { { version } }.
function peers.versions(conn, t)
  local rows, err = conn:query(fmt("SELECT version::text AS version FROM %s", t))
  if not rows then return nil, err end
  local out = {}
  for _, r in ipairs(rows) do out[#out + 1] = { version = r.version } end
  return out
end

return peers
