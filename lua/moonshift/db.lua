-- Connections to the target: application_name, redacted errors, pre-flight checks.
local pg = require("moonshift.pg")
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")
local host = require("moonshift.host")
local redact = require("moonshift.redact")
local errors = require("moonshift.errors")

local fmt = string.format

local db = {}

--- The application_name every connection carries, so a DBA can tell who holds what.
function db.application_name()
  return fmt("moonshift/%s/%s/%d", host.version, fs.hostname(), proc.getpid()):sub(1, 63)
end

--- Connects to the configured database.
-- @return conn | nil, err (kind connect)
function db.connect(cfg)
  local conn, err = pg.connect(cfg.database, { application_name = db.application_name() })
  if not conn then
    local msg = redact.secrets(tostring(err.message or err)):gsub("%s+$", "")
    return nil, errors.new("connect", fmt("cannot connect to %s: %s",
      db.describe_target(cfg), msg), { cause = err })
  end
  -- Migration files are UTF-8 whatever the server's encoding; our SQL is schema-qualified.
  local _, serr = conn:exec("SET application_name = " ..
    conn:escape_literal(db.application_name()) .. "; SET client_encoding = 'UTF8'")
  if serr then return nil, errors.new("connect", "cannot configure session: " .. tostring(serr)) end
  return conn
end

--- The redacted connection string, for messages.
function db.describe_target(cfg)
  if cfg.database == "" then return "the default database (PG* environment)" end
  return redact.secrets(cfg.database)
end

--- "user@dbname" of an open connection.
function db.label(conn)
  local info = conn:info()
  return fmt("%s@%s", info.user or "?", info.dbname or "?")
end

--- Refuses a read-only target (a hot standby, or default_transaction_read_only) before any write.
-- @return true | nil, err (kind connect)
function db.check_writable(conn)
  local rows, err = conn:query(
    "SELECT pg_catalog.pg_is_in_recovery() AS standby, " ..
    "pg_catalog.current_setting('transaction_read_only') AS ro")
  if not rows then return nil, errors.wrap("connect", err) end
  if rows[1].standby then
    return nil, errors.new("connect", "target is a read-only standby (in recovery); " ..
      "connect to the primary, or add target_session_attrs=read-write")
  end
  if rows[1].ro == "on" then
    return nil, errors.new("connect", "target session is read-only " ..
      "(default_transaction_read_only is on); use a read-write connection")
  end
  return true
end

--- The schema for the tracking tables: configured, or the connection's current schema.
-- @return string | nil, err
function db.tracking_schema(conn, cfg)
  if cfg.schema then return cfg.schema end
  local rows, err = conn:query("SELECT pg_catalog.current_schema() AS s")
  if not rows then return nil, errors.wrap("connect", err) end
  local s = rows[1].s
  if s == pg.null or s == nil then
    return nil, errors.new("usage", "no schema to keep history in: search_path names no " ..
      "existing schema; set schema = \"...\" in migrate.lua or --schema")
  end
  return s
end

return db
