-- node-pg-migrate: pgmigrations(id serial, name varchar(255), run_on timestamp), one row
-- per applied file, named by the file name without its extension. As salsita/node-pg-migrate
-- src/runner.ts (ensureMigrationsTable) creates it:
--   CREATE TABLE "public"."pgmigrations" ( id SERIAL PRIMARY KEY,
--     name varchar(255) NOT NULL, run_on timestamp NOT NULL)
-- and src/migration.ts inserts (name, NOW()); a down deletes WHERE name = ...
local peers = require("moonshift.peers")
local version = require("moonshift.version")

local fmt = string.format

local node_pg_migrate = { name = "node-pg-migrate", table = "pgmigrations",
  columns = { "name", "run_on" } }

local function name_of(m)
  return (peers.basename(m.up_path):gsub("%.[^.]*$", ""))
end

function node_pg_migrate.read(conn, t)
  local rows, err = conn:query(fmt("SELECT name FROM %s ORDER BY run_on, id", t))
  if not rows then return nil, err end
  local out = {}
  for _, r in ipairs(rows) do
    local v = r.name:match("^(%d+)")
    out[#out + 1] = { version = v, name = r.name, key = v and version.key(v) or nil }
  end
  return out
end

function node_pg_migrate.find(e, set)
  for _, m in ipairs(set.migrations) do
    if name_of(m) == e.name then return m end
  end
  return nil
end

node_pg_migrate.compat = peers.row_compat({
  -- written anew on stamp/force: node-pg-migrate requires its rows (by run_on, id) in the
  -- order of the files
  col = "name", cast = "::varchar", rebuild = true,
  value = name_of,
  insert = "INSERT INTO %s (name, run_on) SELECT $1::varchar, pg_catalog.now()",
  ddl = function(t)
    return { fmt("CREATE TABLE IF NOT EXISTS %s (id SERIAL PRIMARY KEY, name varchar(255) " ..
      "NOT NULL, run_on timestamp NOT NULL)", t) }
  end,
})

return node_pg_migrate
