-- Restoring a backup exactly: the database is recreated from the dump under its own name
-- (pg_restore --create), and the database as it was is kept, renamed, until the operator
-- drops it. Objects created after the dump are gone, dropped ones are back, data and
-- history as they were. A restore that fails puts the old database back under its name.
local errors = require("moonshift.errors")
local fs = require("moonshift.fs")
local pg = require("moonshift.pg")
local proc = require("moonshift.proc")
local backup = require("moonshift.backup")
local connection = require("moonshift.db")

local fmt = string.format

local restore = {}

local MAX_NAME = 63 -- PostgreSQL's identifier limit, in bytes
local TERMINATE_WAIT_MS = 10000

--- The newest backup of database `dbname` in dir, or the file given.
-- @return path | nil, err (kind usage)
function restore.choose(dir, dbname, path)
  if path then
    if not fs.exists(path) then return nil, errors.new("usage", "no such backup: " .. path) end
    return path
  end
  local all, err = backup.list(dir)
  if not all then return nil, err end
  local safe = dbname:gsub("[^%w_.-]", "_")
  for i = #all, 1, -1 do
    if all[i].db == safe then return all[i].path end
  end
  return nil, errors.new("usage", fmt("no backup of %s in %s; name a dump file", dbname, dir))
end

--- The other sessions on the current database: pid, user, application, client.
-- @param conn a connection to the database
-- @param mine table: pids of our own sessions
-- @return array
function restore.others(conn, mine)
  local rows = conn:query([[
    SELECT pid, usename, application_name,
           COALESCE(pg_catalog.host(client_addr), 'local socket') AS client
    FROM pg_catalog.pg_stat_activity
    WHERE datname = pg_catalog.current_database() AND pid <> ALL($1::int[])
      AND backend_type = 'client backend']], "{" .. table.concat(mine, ",") .. "}")
  return rows or {}
end

--- "pid 4242 (app, user alice, from 10.0.0.7), ...".
function restore.describe(sessions)
  local out = {}
  for i, r in ipairs(sessions) do
    out[i] = fmt("pid %s (%s, user %s, from %s)", tostring(r.pid),
      r.application_name ~= pg.null and r.application_name ~= "" and r.application_name or "?",
      tostring(r.usename), tostring(r.client))
  end
  return table.concat(out, ", ")
end

-- A connection string for the same server and credentials, on another database.
local function elsewhere(conninfo, dbname)
  local params, err = pg.conninfo_parse(conninfo)
  if not params then return nil, err end
  params.dbname = dbname
  return backup.conninfo_string(params)
end

--- The name the database as it was is kept under: <db>_before_restore_<UTC time>.
function restore.kept_name(dbname, now)
  local suffix = "_before_restore_" .. os.date("!%Y%m%dT%H%M%SZ", now)
  return dbname:sub(1, MAX_NAME - #suffix) .. suffix
end

--- Replaces database `dbname` with the contents of `dump`.
-- @param opts table: conninfo (of the database), dbname, dump (path), pg_restore (path),
--   env (the child's environment, from backup.preflight), terminate (end other sessions),
--   close_own (function: closes our sessions on the database)
-- @return { kept, elapsed_ms } | nil, err (kind refused, backup or sql)
function restore.run(opts)
  local started = fs.clock_ms()
  local maintenance_db = opts.dbname == "postgres" and "template1" or "postgres"
  local maint_info, perr = elsewhere(opts.conninfo, maintenance_db)
  if not maint_info then return nil, errors.new("usage", tostring(perr)) end
  local m, cerr = pg.connect(maint_info, { application_name = connection.application_name() })
  if not m then
    return nil, errors.wrap("connect", cerr, "cannot connect to " .. maintenance_db ..
      " to replace " .. opts.dbname)
  end
  local kept = restore.kept_name(opts.dbname)
  local function ident(name) return m:escape_identifier(name) end
  local target = ident(opts.dbname)
  local function run(sql)
    local ok, err = m:exec(sql)
    if not ok then error(errors.wrap("sql", err, "restore failed at: " .. sql), 0) end
  end
  -- Nobody new gets in; then ours close and the others end (or we stop, as we found it).
  local pok, perr2 = pcall(function()
    run(fmt("ALTER DATABASE %s ALLOW_CONNECTIONS false", target))
    opts.close_own()
    local deadline = fs.clock_ms() + TERMINATE_WAIT_MS
    while true do
      local rows = m:query("SELECT pid, usename, application_name, COALESCE(pg_catalog.host(" ..
        "client_addr), 'local socket') AS client FROM pg_catalog.pg_stat_activity " ..
        "WHERE datname = $1", opts.dbname) or {}
      if #rows == 0 then break end
      if not opts.terminate then
        error(errors.new("refused", fmt("%s is in use by %s; nothing was changed. Stop " ..
          "them, or pass --terminate to end them", opts.dbname, restore.describe(rows))), 0)
      end
      if fs.clock_ms() > deadline then
        error(errors.new("refused", fmt("sessions on %s did not end within %d s: %s; " ..
          "nothing was changed", opts.dbname, TERMINATE_WAIT_MS // 1000,
          restore.describe(rows))), 0)
      end
      m:query("SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity " ..
        "WHERE datname = $1", opts.dbname)
      proc.sleep(100)
    end
    run(fmt("ALTER DATABASE %s RENAME TO %s", target, ident(kept)))
  end)
  if not pok then
    m:exec(fmt("ALTER DATABASE %s ALLOW_CONNECTIONS true", target))
    m:close()
    return nil, errors.is(perr2) and perr2 or errors.new("internal", tostring(perr2))
  end
  local env = {}
  for k, v in pairs(opts.env) do env[k] = v end
  for k, v in pairs(backup.env_for(maint_info) or {}) do env[k] = v end
  local res, rerr = proc.run({ opts.pg_restore, "--create", "--exit-on-error",
    "--dbname=" .. maintenance_db, opts.dump }, { env = env })
  if not res or res.code ~= 0 then
    -- put the database as it was back under its name
    m:exec(fmt("DROP DATABASE IF EXISTS %s WITH (FORCE)", target))
    local back = m:exec(fmt("ALTER DATABASE %s RENAME TO %s", ident(kept), target))
    m:exec(fmt("ALTER DATABASE %s ALLOW_CONNECTIONS true", target))
    m:close()
    local why = res and connection.scrub(res.stderr, opts.conninfo):gsub("%s+$", "")
      or tostring(rerr)
    return nil, errors.new("backup", fmt("pg_restore failed: %s\n  %s", why, back and
      (opts.dbname .. " is back as it was before the restore") or
      fmt("could not rename %s back to %s: do it by hand (ALTER DATABASE ... RENAME TO ...)",
        kept, opts.dbname)))
  end
  m:exec(fmt("ALTER DATABASE %s ALLOW_CONNECTIONS true", ident(kept)))
  m:close()
  return { kept = kept, elapsed_ms = fs.clock_ms() - started }
end

return restore
