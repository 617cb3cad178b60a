-- Django: django_migrations(id, app, name, applied), one row per applied migration of each
-- app (django/db/migrations/recorder.py, MigrationRecorder.Migration). Read only: a row
-- matches a migration of the same name.
local version = require("moonshift.version")

local fmt = string.format

local django = { name = "django", table = "django_migrations",
  columns = { "app", "name", "applied" } }

function django.read(conn, t)
  local rows, err = conn:query(fmt("SELECT app, name FROM %s ORDER BY applied, id", t))
  if not rows then return nil, err end
  local out = {}
  for _, r in ipairs(rows) do
    local v = r.name:match("^(%d+)")
    out[#out + 1] = { version = v, name = r.name, app = r.app, key = false,
      skip = r.app == "contenttypes" or r.app == "auth" or r.app == "admin" or
        r.app == "sessions" }
  end
  for _, e in ipairs(out) do e.vkey = e.version and version.key(e.version) end
  return out
end

function django.find(e, set)
  for _, m in ipairs(set.migrations) do
    if m.name == e.name or m.id == e.name then return m end
  end
  return nil
end

return django
