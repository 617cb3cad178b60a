-- Rails (Active Record): schema_migrations(version varchar primary key) beside
-- ar_internal_metadata, one row per applied migration (activerecord/lib/active_record/
-- schema_migration.rb: create_table with `version` string primary key). Read only.
local peers = require("moonshift.peers")

local rails = { name = "rails", table = "schema_migrations", columns = { "version" },
  without = { "dirty" }, also = { "ar_internal_metadata" } }

function rails.claims(present, schema)
  return present[schema .. ".ar_internal_metadata"] ~= nil
end

rails.read = peers.versions

return rails
