-- dbmate: schema_migrations(version varchar(128) primary key), one row per applied file.
-- Table as pkg/driver/postgres/postgres.go (amacneil/dbmate) CreateMigrationsTable creates
-- it: `create table if not exists %s (version varchar(128) primary key)`; the version is
-- the file name's leading digits as written. --migrations-table / DBMATE_MIGRATIONS_TABLE
-- ("schema.table" allowed) name another.
local peers = require("moonshift.peers")

local fmt = string.format

local dbmate = { name = "dbmate", table = "schema_migrations", columns = { "version" },
  without = { "dirty" } }

-- Rails keeps the same table beside ar_internal_metadata.
function dbmate.claims(present, schema)
  return not present[schema .. ".ar_internal_metadata"]
end
dbmate.also = { "ar_internal_metadata" }

function dbmate.configured(_, env)
  local v = env("DBMATE_MIGRATIONS_TABLE")
  if not v or v == "" then return nil end
  local schema, name = peers.split_name(v)
  return { schema = schema, table = name }
end

dbmate.read = peers.versions

dbmate.compat = peers.row_compat({
  col = "version", cast = "::varchar",
  value = function(m) return m.version end,
  insert = "INSERT INTO %s (version) SELECT $1::varchar",
  ddl = function(t)
    return { fmt("CREATE TABLE IF NOT EXISTS %s (version varchar(128) PRIMARY KEY)", t) }
  end,
})

return dbmate
