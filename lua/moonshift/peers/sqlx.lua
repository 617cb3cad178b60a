-- sqlx: _sqlx_migrations, one row per applied migration with the SHA-384 of its SQL. As
-- launchbadge/sqlx sqlx-postgres/src/migrate.rs (ensure_migrations_table) creates it:
--   CREATE TABLE IF NOT EXISTS _sqlx_migrations (version BIGINT PRIMARY KEY,
--     description TEXT NOT NULL, installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
--     success BOOLEAN NOT NULL, checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL)
-- The checksum is Sha384 of the migration's SQL (sqlx-core/src/migrate/migration.rs); a
-- row with success = false is a migration that failed partway (non-transactional).
local peers = require("moonshift.peers")

local fmt = string.format

local sqlx = { name = "sqlx", table = "_sqlx_migrations",
  columns = { "version", "description", "success", "checksum" } }

function sqlx.read(conn, t)
  local rows, err = conn:query(fmt("SELECT version::text AS version, description, success, " ..
    "pg_catalog.encode(checksum, 'hex') AS checksum FROM %s", t))
  if not rows then return nil, err end
  local out = {}
  for _, r in ipairs(rows) do
    out[#out + 1] = { version = r.version, name = r.description, checksum = r.checksum,
      failed = r.success == false }
  end
  return out
end

function sqlx.checksum(m, conn)
  local text, err = peers.file_text(m)
  if not text then return nil, err end
  local rows, qerr = conn:query("SELECT pg_catalog.encode(pg_catalog.sha384(" ..
    "pg_catalog.convert_to($1, 'UTF8')), 'hex') AS h", text)
  if not rows then return nil, qerr end
  return rows[1].h
end

function sqlx.recovery(e)
  return fmt("sqlx records version %s (%s) as not successful: it failed partway. Undo or " ..
    "finish its changes by hand, then `DELETE FROM _sqlx_migrations WHERE version = %s` " ..
    "(what sqlx's \"dirty\" error asks for), and adopt again", e.version, tostring(e.name),
    e.version)
end

return sqlx
