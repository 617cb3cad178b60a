-- sql-migrate: gorp_migrations(id text primary key, applied_at timestamptz), one row per
-- applied file, keyed by its file name. As rubenv/sql-migrate migrate.go (MigrationRecord,
-- through gorp's CreateTablesIfNotExists) creates it:
--   create table if not exists "gorp_migrations" ("id" varchar(255) not null primary key,
--     "applied_at" timestamp with time zone)
-- dbconfig.yml's `table:` and `schema:` name another.
local peers = require("moonshift.peers")
local version = require("moonshift.version")

local fmt = string.format

local sql_migrate = { name = "sql-migrate", table = "gorp_migrations",
  columns = { "id", "applied_at" } }

function sql_migrate.configured(read)
  local text = read("dbconfig.yml")
  if not text then return nil end
  local t = text:match("\n%s*table:%s*[\"']?([%w_]+)") or text:match("^%s*table:%s*[\"']?([%w_]+)")
  local s = text:match("\n%s*schema:%s*[\"']?([%w_]+)")
  if not (t or s) then return nil end
  return { table = t, schema = s }
end

function sql_migrate.read(conn, t)
  local rows, err = conn:query(fmt("SELECT id FROM %s", t))
  if not rows then return nil, err end
  local out = {}
  for _, r in ipairs(rows) do
    local v = r.id:match("^(%d+)")
    out[#out + 1] = { version = v, name = r.id, key = v and version.key(v) or nil }
  end
  return out
end

function sql_migrate.find(e, set)
  for _, m in ipairs(set.migrations) do
    if peers.basename(m.up_path) == e.name then return m end
  end
  return nil
end

sql_migrate.compat = peers.row_compat({
  col = "id", cast = "::varchar",
  value = function(m) return peers.basename(m.up_path) end,
  insert = "INSERT INTO %s (id, applied_at) SELECT $1::varchar, pg_catalog.now()",
  ddl = function(t)
    return { fmt("CREATE TABLE IF NOT EXISTS %s (id varchar(255) NOT NULL PRIMARY KEY, " ..
      "applied_at timestamp with time zone)", t) }
  end,
})

return sql_migrate
