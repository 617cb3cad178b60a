-- Sqitch: the registry schema `sqitch` (changes, events, tags, ...); sqitch.changes holds one
-- row per deployed change. As sqitch's lib/App/Sqitch/Engine/pg.sql creates it:
--   CREATE TABLE :"registry".changes (change_id TEXT PRIMARY KEY, script_hash TEXT NULL,
--     change TEXT NOT NULL, project TEXT NOT NULL REFERENCES :"registry".projects(project)
--     ON UPDATE CASCADE, note TEXT NOT NULL DEFAULT '', committed_at TIMESTAMPTZ NOT NULL
--     DEFAULT clock_timestamp(), committer_name TEXT NOT NULL, committer_email TEXT NOT NULL,
--     planned_at TIMESTAMPTZ NOT NULL, planner_name TEXT NOT NULL, planner_email TEXT
--     NOT NULL, UNIQUE(project, script_hash))
-- A change matches a migration by name (deploy/NAME.sql): sqitch names changes, not
-- versions. sqitch.conf's `registry` names another schema.
local fmt = string.format

local sqitch = { name = "sqitch", table = "changes", schema = "sqitch",
  columns = { "change_id", "change", "project", "script_hash" } }

function sqitch.configured(read)
  local text = read("sqitch.conf")
  if not text then return nil end
  local r = text:match("\n%s*registry%s*=%s*([%w_]+)")
  return r and { schema = r } or nil
end

function sqitch.read(conn, t)
  local rows, err = conn:query(fmt("SELECT change_id, change, script_hash, " ..
    "pg_catalog.to_char(committed_at, 'YYYYMMDDHH24MISS') AS at FROM %s " ..
    "ORDER BY committed_at", t))
  if not rows then return nil, err end
  local out = {}
  for _, r in ipairs(rows) do
    out[#out + 1] = { name = r.change, id = r.change_id, key = false }
  end
  return out
end

function sqitch.find(e, set)
  for _, m in ipairs(set.migrations) do
    if m.name == e.name or m.id == e.name then return m end
  end
  return nil
end

return sqitch
