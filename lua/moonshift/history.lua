-- The tracking tables: one row per applied migration, and an append-only event log.
local pg = require("moonshift.pg")
local fs = require("moonshift.fs")
local versions = require("moonshift.version")
local host = require("moonshift.host")
local cjson = require("cjson")
local errors = require("moonshift.errors")
local sqlstate = require("moonshift.sqlstate")
local ui = require("moonshift.ui")
local peers = require("moonshift.peers")

local fmt = string.format

local history = {}

local History = {}
History.__index = History

--- A history bound to a connection and the configured (quoted) names.
-- @param conn a moonshift.pg connection
-- @param schema string: unquoted schema name
-- @param cfg table: table, events_table, compat (and root, env: where that tool's own
--   configuration puts its table)
function history.new(conn, schema, cfg)
  local q = function(name) return conn:escape_identifier(name) end
  local peer = cfg.compat and peers.get(cfg.compat)
  local compat_schema, compat_name
  if peer then compat_schema, compat_name = peers.location(cfg, peer.name, schema) end
  return setmetatable({ peer = peer, compat_schema = compat_schema, compat_name = compat_name,
    conn = conn, schema = schema, table_name = cfg.table, events_name = cfg.events_table,
    compat = cfg.compat, lock_wait_ms = cfg.lock_wait_ms,
    migrations = q(schema) .. "." .. q(cfg.table),
    events = q(schema) .. "." .. q(cfg.events_table),
    compat_table = peer and (q(compat_schema) .. "." .. q(compat_name)),
  }, History)
end

local function sql_error(err, what)
  return errors.wrap("sql", err, what)
end

-- Who holds (or queues ahead of us for) a lock on the tracking tables that stops a read or
-- a write: the sessions a query of ours that gave up was waiting for.
local BLOCKERS_SQL = [[
  SELECT l.pid, l.mode, l.granted, l.relation::pg_catalog.regclass::text AS rel,
         COALESCE(NULLIF(a.application_name, ''), '?') AS app, a.usename AS who, a.state,
         pg_catalog.to_char(COALESCE(a.xact_start, a.query_start) AT TIME ZONE 'UTC',
                            'YYYY-MM-DD HH24:MI:SS"Z"') AS since
  FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
  WHERE l.locktype = 'relation' AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid()
    AND l.relation IN (pg_catalog.to_regclass($1), pg_catalog.to_regclass($2))
    AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
  ORDER BY l.granted DESC, l.pid LIMIT 5]]

local function describe_blocker(row)
  if row.pid == pg.null then
    return fmt("a prepared transaction (%s on %s)", row.mode, row.rel)
  end
  local function text(v) return v ~= pg.null and tostring(v) or "?" end
  return fmt("pid %s (application_name %s, user %s, %s since %s) %s %s on %s", text(row.pid),
    text(row.app), text(row.who), text(row.state), text(row.since),
    row.granted and "holding" or "waiting for", row.mode, row.rel)
end

--- The error of a failed query on the tracking tables: a lock timeout names who held the
-- lock (kind lock, exit 5, like the run lock); a statement cancelled by SIGINT/SIGTERM is
-- an interruption; anything else a SQL failure.
-- @param err the pg error
-- @param what string: what failed, for the message
-- @return error
function History:failure(err, what)
  if type(err) == "table" and err.sqlstate == sqlstate.LOCK_NOT_AVAILABLE then
    -- an aborted transaction (stamp's, force's) answers nothing but ROLLBACK, which is
    -- all its caller could do with it anyway
    if self.conn:status() == "inerror" then self.conn:exec("ROLLBACK") end
    local rows = self.conn:query(BLOCKERS_SQL, self.migrations, self.events)
    local held = {}
    for _, row in ipairs(rows or {}) do held[#held + 1] = describe_blocker(row) end
    -- --lock-wait's, unless a non-transactional migration's own lock_timeout is in force
    local wait_ms = math.max(1, self.lock_wait_ms or 60000)
    local setting = self.conn:query("SELECT setting::bigint AS ms FROM pg_catalog.pg_settings " ..
      "WHERE name = 'lock_timeout'")
    local ms = setting and setting[1] and setting[1].ms or wait_ms
    local waited = ms == wait_ms and fmt("%s (--lock-wait)", ui.duration(ms)) or
      fmt("%s (the migration's lock_timeout)", ui.duration(ms))
    return errors.new("lock", fmt("moonshift's tracking tables are locked by %s; gave up " ..
      "waiting after %s", #held > 0 and table.concat(held, "; ") or
      "another session (it ended while we looked)", waited),
      { cause = err, sqlstate = err.sqlstate })
  end
  local sig, code = host.interrupted()
  if sig and type(err) == "table" and err.sqlstate == sqlstate.QUERY_CANCELED then
    return errors.new("interrupted", fmt("interrupted (SIG%s) during a query on moonshift's " ..
      "tracking tables", sig), { exit_code = code, cause = err })
  end
  return sql_error(err, what)
end

-- Refuses to start reading after a SIGINT/SIGTERM: nothing that follows would be used.
local function not_interrupted(what)
  local sig, code = host.interrupted()
  if not sig then return true end
  return nil, errors.new("interrupted", fmt("interrupted (SIG%s) before %s", sig, what),
    { exit_code = code })
end

function History:_query(sql, ...)
  if self.deferred then
    -- collected for a pipeline instead of run now (see History:collect)
    self.deferred[#self.deferred + 1] = { text = sql, params = table.pack(...) }
    return true
  end
  local rows, err = self.conn:query(sql, ...)
  if not rows then return nil, self:failure(err, "history") end
  return rows
end

-- to_regclass reads the name through the server's caches; a join of pg_class and
-- pg_namespace costs a fresh session ~4 ms more, to plan.
local function table_exists(conn, schema, name)
  local rows, err = conn:query("SELECT pg_catalog.to_regclass(pg_catalog.quote_ident($1) " ..
    "|| '.' || pg_catalog.quote_ident($2)) IS NOT NULL AS present", schema, name)
  if not rows then return nil, err end
  return rows[1].present
end

--- Runs fn with writes collected, not executed, and returns them as
-- { text, params } items, so a migration's bookkeeping can join its pipeline.
-- @return array | nil, err
function History:collect(fn)
  self.deferred = {}
  local ok, err = pcall(fn)
  local items = self.deferred
  self.deferred = nil
  if not ok then return nil, err end
  return items
end

--- Whether the tracking table exists (status must not create it).
-- @return boolean | nil, err
function History:exists()
  local ok, err = table_exists(self.conn, self.schema, self.table_name)
  if ok == nil then return nil, self:failure(err, "history") end
  return ok
end

--- Creates the tracking tables if missing (call under the run lock).
-- @return true | nil, err
function History:ensure()
  local go, ierr = not_interrupted("creating the history tables")
  if not go then return nil, ierr end
  local exists, err = self:exists()
  if exists == nil then return nil, err end
  local events_exist = table_exists(self.conn, self.schema, self.events_name)
  local compat_exists = not self.peer or
    table_exists(self.conn, self.compat_schema, self.compat_name)
  if exists and events_exist and compat_exists then return true end
  local priv, perr = self:_query("SELECT pg_catalog.has_schema_privilege($1, 'CREATE') AS ok, " ..
    "current_user AS who", self.schema)
  if not priv then return nil, perr end
  if not priv[1].ok then
    return nil, errors.new("connect", fmt("role %s lacks CREATE on schema %s, so the history " ..
      "table cannot be created; GRANT CREATE ON SCHEMA %s TO %s, or set schema = \"...\"",
      priv[1].who, self.conn:escape_identifier(self.schema),
      self.conn:escape_identifier(self.schema), priv[1].who))
  end
  local ddl = {
    "BEGIN",
    -- two first runs at once would race on CREATE TABLE IF NOT EXISTS (pg_type's unique
    -- index); a transaction-scoped lock also works behind a transaction pooler
    fmt("SELECT pg_catalog.pg_advisory_xact_lock(1836019567, pg_catalog.hashtext(%s))",
      self.conn:escape_literal(self.migrations)),
    fmt([[CREATE TABLE IF NOT EXISTS %s (
      version text PRIMARY KEY,
      name text NOT NULL,
      checksum text NOT NULL,
      state text NOT NULL CHECK (state IN ('applied', 'dirty')),
      kind text NOT NULL DEFAULT 'versioned',
      applied_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
      applied_by text NOT NULL DEFAULT CURRENT_USER,
      hostname text,
      duration_ms bigint,
      tool_version text,
      run_id text)]], self.migrations),
    fmt([[CREATE TABLE IF NOT EXISTS %s (
      id bigserial PRIMARY KEY,
      at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
      run_id text,
      action text NOT NULL,
      version text,
      name text,
      checksum text,
      hostname text,
      applied_by text NOT NULL DEFAULT CURRENT_USER,
      tool_version text,
      detail jsonb)]], self.events),
  }
  if self.peer then
    -- the other tool's own table, as it creates it, so it (and applications reading it)
    -- sees what moonshift did
    for _, stmt in ipairs(self.peer.compat.ddl(self.compat_table, self.compat_name)) do
      ddl[#ddl + 1] = stmt
    end
  end
  ddl[#ddl + 1] = "COMMIT"
  for _, stmt in ipairs(ddl) do
    local _, xerr = self.conn:exec(stmt)
    if xerr then
      self.conn:exec("ROLLBACK")
      return nil, self:failure(xerr, "cannot create the history tables")
    end
  end
  return true
end

--- Rows of the tracking table (in no particular order).
-- @param brief boolean|nil: without applied_by and duration_ms, and run_id only of dirty rows
-- @return { list = {...} } | nil, err
function History:load(brief)
  local go, ierr = not_interrupted("reading the history")
  if not go then return nil, ierr end
  local exists, err = self:exists()
  if exists == nil then return nil, err end
  local result = { list = {} }
  if not exists then return result end
  local rows, qerr = self:_query(fmt([[
    SELECT version, name, checksum, state, kind, %s,
           pg_catalog.to_char(applied_at AT TIME ZONE 'UTC',
                              'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS applied_at
    FROM %s]], brief and "CASE WHEN state = 'dirty' THEN run_id END AS run_id" or
    "applied_by, duration_ms, run_id", self.migrations))
  -- unordered: sorting 10,000 rows costs the server ~12 ms
  if not rows then return nil, qerr end
  if not brief then
    for _, row in ipairs(rows) do
      if row.duration_ms == pg.null then row.duration_ms = nil end
    end
  end
  result.list = rows
  return result
end

-- The insert of a migration's row ($1 version .. $9 run_id); an existing row is updated,
-- only where `only_where` says when given.
local function record_sql(tbl, only_where)
  return fmt([[
    INSERT INTO %s AS t (version, name, checksum, state, kind, hostname, duration_ms,
                         tool_version, run_id)
    VALUES ($1, $2, $3, $4, $5, $6,
            COALESCE($7::bigint, (EXTRACT(epoch FROM pg_catalog.clock_timestamp()
                                                    - pg_catalog.now()) * 1000)::bigint),
            $8, $9)
    ON CONFLICT (version) DO UPDATE SET name = EXCLUDED.name, checksum = EXCLUDED.checksum,
      state = EXCLUDED.state, applied_at = pg_catalog.now(), applied_by = CURRENT_USER,
      hostname = EXCLUDED.hostname, duration_ms = EXCLUDED.duration_ms,
      tool_version = EXCLUDED.tool_version, run_id = EXCLUDED.run_id%s]], tbl,
    only_where and ("\n    WHERE " .. only_where) or "")
end

--- Records a migration (inside the caller's transaction).
-- @param m table: version, name (id), checksum
-- @param state "applied" | "dirty"
function History:record(m, state, duration_ms, run_id, kind)
  return self:_query(record_sql(self.migrations), m.version, m.id, m.checksum, state,
    kind or "versioned", fs.hostname(), duration_ms or pg.null, host.version, run_id or pg.null)
end

--- The error a `once` write raises in its transaction when another runner did it first.
history.DONE_MEANWHILE = "moonshift.done_meanwhile_by_another_runner"
local function once(sql)
  return "WITH w AS (" .. sql .. " RETURNING 1) SELECT CASE WHEN pg_catalog.count(*) = 1 " ..
    "THEN true ELSE pg_catalog.current_setting('" .. history.DONE_MEANWHILE .. "')::bool END FROM w"
end

--- Records a migration as applied by this run, failing its transaction when another runner
-- applied it meanwhile (its applied row is there, or comes while this insert waits on it):
-- what makes a double apply impossible even when the run lock was lost.
function History:record_once(m, duration_ms, run_id, kind)
  return self:_query(once(record_sql(self.migrations, "t.state <> 'applied' OR " ..
    "t.kind = 'repeatable' OR t.run_id = EXCLUDED.run_id")), m.version, m.id, m.checksum,
    "applied", kind or "versioned", fs.hostname(), duration_ms or pg.null, host.version,
    run_id or pg.null)
end

--- Removes a migration's row as reverted by this run, failing its transaction when another
-- runner reverted it meanwhile.
function History:remove_once(version)
  return self:_query(once(fmt("DELETE FROM %s WHERE version = $1", self.migrations)), version)
end

--- A pipeline item that locks the tracking table against other runners until COMMIT.
function History:lock_item()
  return { text = fmt("LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE", self.migrations) }
end

--- The applied row of one version, read inside the caller's transaction.
-- @return row | nil
function History:applied_row(v)
  local rows = self.conn:query(fmt("SELECT version FROM %s WHERE version = $1 AND " ..
    "state = 'applied'", self.migrations), v)
  return rows and rows[1]
end

--- Removes a migration's row.
function History:remove(version)
  return self:_query(fmt("DELETE FROM %s WHERE version = $1", self.migrations), version)
end

--- Appends an event (inside the caller's transaction, when there is one).
function History:event(action, m, run_id, detail)
  return self:_query(fmt([[
    INSERT INTO %s (run_id, action, version, name, checksum, hostname, tool_version, detail)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)]], self.events),
    run_id or pg.null, action, m and m.version or pg.null, m and m.id or pg.null,
    m and m.checksum or pg.null, fs.hostname(), host.version,
    detail and cjson.encode(detail) or pg.null)
end

-- The compat tool's writer: its table and queries run like ours (in the caller's
-- transaction, or collected for a pipeline).
function History:_compat_writer()
  return { t = self.compat_table, q = function(sql, ...) return self:_query(sql, ...) end }
end

local function guarded(fn)
  local ok, res, err = pcall(fn)
  if not ok then return nil, res end
  return res, err
end

--- Keeps the compat tool's table in step: m applied (dirty while a non-transactional one
-- runs).
function History:compat_applied(m, dirty)
  if not self.peer then return true end
  return guarded(function() return self.peer.compat.applied(self:_compat_writer(), m, dirty) end)
end

--- Keeps the compat tool's table in step: m reverted, `previous` (a version) now current.
function History:compat_removed(m, previous)
  if not self.peer then return true end
  return guarded(function()
    return self.peer.compat.removed(self:_compat_writer(), m, previous)
  end)
end

--- The compat tool's table from our own (in the caller's transaction): what the tool would
-- say of the same state (golang-migrate: the newest recorded version, dirty when its row
-- is; the others: a row per applied migration).
-- @param set table|nil: the migrations, to find each row's file (versions only without it)
function History:sync_compat_state(set)
  if not self.peer then return true end
  local rows, err = self:_query(fmt("SELECT version, state FROM %s WHERE kind = 'versioned'",
    self.migrations))
  if not rows then return nil, err end
  local list = {}
  for _, r in ipairs(rows) do
    local m = set and set.by_key and set.by_key[versions.key(r.version)]
    list[#list + 1] = { version = r.version, dirty = r.state == "dirty", m = m }
  end
  table.sort(list, function(a, b) return versions.less(a.version, b.version) end)
  return guarded(function() return self.peer.compat.state(self:_compat_writer(), list) end)
end

--- Records the file's checksum as what ran, for an applied migration (accept).
function History:accept(m)
  return self:_query(fmt("UPDATE %s SET checksum = $2 WHERE version = $1 AND state = " ..
    "'applied'", self.migrations), m.version, m.checksum)
end

--- Events, newest last.
-- @return rows | nil, err
function History:list_events(limit)
  local exists = table_exists(self.conn, self.schema, self.events_name)
  if not exists then return {} end
  return self:_query(fmt([[
    SELECT * FROM (
      SELECT id, pg_catalog.to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS at,
             run_id, action, version, name, checksum, hostname, applied_by, tool_version, detail
      FROM %s ORDER BY id DESC LIMIT $1) e ORDER BY id]], self.events), limit or 1000)
end

return history
