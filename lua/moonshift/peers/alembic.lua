-- Alembic: alembic_version(version_num varchar(32)), the head revision(s) only. As
-- alembic/runtime/migration.py (MigrationContext._version) creates it:
--   Table(version_table, MetaData(), Column("version_num", String(32), nullable=False),
--     PrimaryKeyConstraint("version_num", name=f"{version_table}_pkc"))
-- A revision matches a migration whose version or name is the revision id; the ones
-- before it are applied.
local fmt = string.format

local alembic = { name = "alembic", table = "alembic_version", columns = { "version_num" },
  newest_only = true }

function alembic.read(conn, t)
  local rows, err = conn:query(fmt("SELECT version_num FROM %s", t))
  if not rows then return nil, err end
  local out = {}
  for _, r in ipairs(rows) do
    local v = r.version_num
    out[#out + 1] = { version = v:match("^%d+$") and v or nil, name = v, key = false }
  end
  return out
end

function alembic.find(e, set)
  for _, m in ipairs(set.migrations) do
    if m.version == e.name or m.name == e.name or m.id == e.name then
      e.version = m.version
      return m
    end
  end
  return nil
end

return alembic
