-- Rails (Active Record): schema_migrations(version varchar primary key) beside
-- ar_internal_metadata, one row per applied migration (activerecord/lib/active_record/
-- schema_migration.rb: create_table with `version` string primary key). Read only.
local fmt = string.format

local rails = { name = "rails", table = "schema_migrations", columns = { "version" },
  without = { "dirty" }, also = { "ar_internal_metadata" } }

function rails.claims(present, schema)
  return present[schema .. ".ar_internal_metadata"] ~= nil
end

function rails.read(conn, t)
  local rows, err = conn:query(fmt("SELECT version::text AS version FROM %s", t))
  if not rows then return nil, err end
  local out = {}
  for _, r in ipairs(rows) do out[#out + 1] = { version = r.version } end
  return out
end

return rails
