-- golang-migrate: schema_migrations(version bigint, dirty boolean), one row, the newest.
-- Table as database/postgres/postgres.go (golang-migrate/migrate v4) creates it:
--   CREATE TABLE IF NOT EXISTS <table> (version bigint not null primary key,
--     dirty boolean not null)
-- SetVersion deletes every row and inserts (version, dirty) unless version is -1 (nil).
-- The name comes from x-migrations-table in the database URL.
local version = require("moonshift.version")
local errors = require("moonshift.errors")

local fmt = string.format

local golang_migrate = { name = "golang-migrate", table = "schema_migrations",
  columns = { "version", "dirty" }, newest_only = true }

function golang_migrate.read(conn, t)
  local rows, err = conn:query(fmt("SELECT version::text AS version, dirty FROM %s", t))
  if not rows then return nil, err end
  local out = {}
  for _, r in ipairs(rows) do
    out[#out + 1] = { version = r.version, failed = r.dirty == true, dirty = r.dirty == true }
  end
  return out
end

function golang_migrate.recovery(e)
  return fmt("golang-migrate left version %s dirty: it failed partway. See what it changed, " ..
    "finish or undo that by hand, then `migrate -path DIR -database URL force %s` if it is " ..
    "now complete (or `force` the version before it if you undid it), and adopt again",
    e.version, e.version)
end

local function numeric(v)
  v = tostring(v)
  if not v:match("^%d+$") then
    error(errors.new("usage", "compat golang-migrate needs numeric versions, not " .. v), 0)
  end
  return v
end

local function set(w, v, dirty)
  local ok, err = w.q(fmt("DELETE FROM %s", w.t))
  if not ok then return nil, err end
  if v == nil then return true end
  local okv, n = pcall(numeric, v)
  if not okv then return nil, n end
  return w.q(fmt("INSERT INTO %s (version, dirty) VALUES ($1::bigint, $2)", w.t), n,
    dirty and true or false)
end

golang_migrate.compat = {
  ddl = function(t)
    return { fmt("CREATE TABLE IF NOT EXISTS %s (version bigint NOT NULL PRIMARY KEY, " ..
      "dirty boolean NOT NULL)", t) }
  end,
  applied = function(w, m, dirty) return set(w, m.version, dirty) end,
  removed = function(w, _, previous) return set(w, previous, false) end,
  -- the newest recorded version, dirty when its row is: what `migrate version` would say
  state = function(w, list)
    local newest
    for _, r in ipairs(list) do
      if not newest or version.compare(r.version, newest.version) > 0 then newest = r end
    end
    return set(w, newest and newest.version, newest and newest.dirty)
  end,
}

return golang_migrate
