-- diesel: __diesel_schema_migrations(version varchar(50), run_on timestamp), one row per
-- applied migration directory. As diesel_migrations/migrations_internals and
-- diesel/src/migration/setup_migration_table.sql create it:
--   CREATE TABLE IF NOT EXISTS __diesel_schema_migrations (
--     version VARCHAR(50) PRIMARY KEY NOT NULL,
--     run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)
-- The version is the directory name before its first `_`, dashes removed
-- (version_from_string: `split('_').next().map(|s| s.replace('-', ""))`).
local peers = require("moonshift.peers")
local version = require("moonshift.version")

local fmt = string.format

local diesel = { name = "diesel", table = "__diesel_schema_migrations",
  columns = { "version", "run_on" } }

local function diesel_version(m)
  return (m.version:gsub("-", ""))
end

function diesel.key_of(m)
  return version.key(diesel_version(m))
end

diesel.read = peers.versions

diesel.compat = peers.row_compat({
  col = "version", cast = "::varchar",
  value = diesel_version,
  insert = "INSERT INTO %s (version) SELECT $1::varchar",
  ddl = function(t)
    return { fmt("CREATE TABLE IF NOT EXISTS %s (version VARCHAR(50) PRIMARY KEY NOT NULL, " ..
      "run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)", t) }
  end,
})

return diesel
