-- Compares the migrations on disk with the history and decides what a command will do.
local version = require("moonshift.version")
local errors = require("moonshift.errors")
local sandbox = require("moonshift.sandbox")
local paths = require("moonshift.paths")
local ui = require("moonshift.ui")

local fmt = string.format

local plan = {}

--- The state of every migration: applied, pending, dirty, drift, missing, out of order.
-- @param set table: from source.load (`version_order` when its migrations are still sorted
--   by version)
-- @param hist table: from History:load
-- @return status table
function plan.status(set, hist)
  local st = { applied = {}, pending = {}, dirty = {}, drift = {}, missing = {},
    out_of_order = {}, repeatables = {}, migrations = set.migrations, rows = {} }
  local by_version = {} -- the usual row names its migration's version as written
  for _, m in ipairs(set.migrations) do by_version[m.version] = m end
  local row_by_key = {}
  for _, row in ipairs(hist.list) do
    if row.kind == "repeatable" then
      row_by_key["R:" .. row.version] = row
    else
      local m = by_version[row.version]
      local key = m and m.key or version.key(row.version)
      row_by_key[key] = row
      if not (m or set.by_key[key]) then
        st.missing[#st.missing + 1] = row
        ui.untrusted(row.name) -- its file is gone: the name is known from the row only
      end
    end
  end
  table.sort(st.missing, function(a, b)
    if a.applied_at ~= b.applied_at then return a.applied_at < b.applied_at end
    return version.less(a.version, b.version)
  end)
  local newest
  local rows, applied, compare = st.rows, st.applied, version.compare
  for _, m in ipairs(set.migrations) do
    local row = row_by_key[m.key]
    if row then
      rows[m] = row
      if row.state == "dirty" then
        st.dirty[#st.dirty + 1] = { migration = m, row = row }
      else
        if row.checksum ~= m.checksum then
          st.drift[#st.drift + 1] = { migration = m, row = row }
        end
        applied[#applied + 1] = m
        if set.version_order or not newest or compare(m.version, newest.version) > 0 then
          newest = m
        end
      end
    else
      st.pending[#st.pending + 1] = m
    end
  end
  st.current = newest
  -- out of order: pending while one after it in running order (by version, then
  -- `requires` and `order`) is applied
  local later_applied, late = false, {}
  for i = #set.migrations, 1, -1 do
    local m = set.migrations[i]
    local row = rows[m]
    if row and row.state ~= "dirty" then
      later_applied = true
    elseif not row and later_applied then
      late[m] = true
    end
  end
  for _, m in ipairs(st.pending) do
    if late[m] then st.out_of_order[#st.out_of_order + 1] = m end
  end
  for _, r in ipairs(set.repeatables or {}) do
    local row = row_by_key["R:" .. r.id]
    rows[r] = row
    if not row or row.checksum ~= r.checksum then st.repeatables[#st.repeatables + 1] = r end
  end
  return st
end

local function names(list, f)
  local out = {}
  for i, x in ipairs(list) do
    if i > 5 then
      out[#out + 1] = fmt("and %d more", #list - 5)
      break
    end
    out[#out + 1] = f(x)
  end
  return table.concat(out, ", ")
end

--- Refuses to run on a state that needs a person first (exit 9).
-- @return true | nil, err (kind refused)
function plan.check_runnable(st, cfg)
  if st.dirty[1] then
    local d = st.dirty[1]
    return nil, errors.new("refused", fmt("%s is dirty: a non-transactional migration started " ..
      "at %s (run %s) and did not finish, so its changes may be partly applied. Check the " ..
      "database by hand (for CREATE INDEX CONCURRENTLY, drop any index with " ..
      "pg_index.indisvalid = false), then run `moonshift force %s` if it is complete or " ..
      "`moonshift force %s --not-applied` to run it again", d.migration.id,
      d.row.applied_at, tostring(d.row.run_id), d.migration.version, d.migration.version))
  end
  if st.drift[1] then
    local d, versions = st.drift[1], {}
    for i, x in ipairs(st.drift) do versions[i] = x.migration.version end
    return nil, errors.new("refused", "applied migrations changed on disk since they ran: " ..
      names(st.drift, function(x) return x.migration.id end) ..
      fmt(".\n  %s (%s) ran at %s (run %s) with sha256 %s; the file now has %s.\n  " ..
      "Restore the files (git), or put the change in a new migration; if the edit is " ..
      "harmless, `moonshift accept %s` records the files as they are now", d.migration.id,
      paths.display(d.migration.up_path), tostring(d.row.applied_at),
      tostring(d.row.run_id), d.row.checksum:sub(1, 12), d.migration.checksum:sub(1, 12),
      table.concat(versions, " ")))
  end
  if st.missing[1] then
    return nil, errors.new("refused", "applied migrations have no file: " ..
      names(st.missing, function(r) return r.name end) ..
      ". Restore the files, or check that this is the right database and directory")
  end
  if st.out_of_order[1] and not cfg.allow_out_of_order then
    return nil, errors.new("refused", fmt("pending migrations are older than the newest " ..
      "applied one (%s): %s. Renumber them, or allow this with --allow-out-of-order",
      st.current.id, names(st.out_of_order, function(m) return m.id end)))
  end
  return true
end

-- Orders by `requires`: a topological sort, stable by version (Kahn's algorithm, always
-- taking the first ready migration in version order).
local function by_requires(list)
  local any
  for _, m in ipairs(list) do
    if m.companion and m.companion.requires then
      any = true
      break
    end
  end
  if not any then return list end -- the usual case, and 10,000 tables fewer
  local by_key, deps, users, needed = {}, {}, {}, {}
  for _, m in ipairs(list) do by_key[m.key] = m end
  for _, m in ipairs(list) do
    deps[m] = 0
    local requires = m.companion and m.companion.requires
    for _, r in ipairs(requires or {}) do
      local d = by_key[version.key(tostring(r))]
      if not d then
        return nil, errors.new("usage", fmt("%s requires %s, which is not a migration in %s",
          m.id, tostring(r), paths.display(m.up_path):match("^(.*)/") or "."))
      end
      if d ~= m then
        deps[m] = deps[m] + 1
        users[d] = users[d] or {}
        table.insert(users[d], m)
        needed[#needed + 1] = true
      end
    end
  end
  if #needed == 0 then return list end
  local out, done = {}, {}
  while #out < #list do
    local picked
    for _, m in ipairs(list) do
      if not done[m] and deps[m] == 0 then
        picked = m
        break
      end
    end
    if not picked then
      local cycle = {}
      for _, m in ipairs(list) do
        if not done[m] then cycle[#cycle + 1] = m.id end
      end
      return nil, errors.new("usage", "migrations require each other in a cycle: " ..
        table.concat(cycle, ", "))
    end
    done[picked] = true
    out[#out + 1] = picked
    for _, u in ipairs(users[picked] or {}) do deps[u] = deps[u] - 1 end
  end
  return out
end

--- Puts migrations in running order: by version, then `requires`, then migrate.lua's
-- `order(list)`, which must return a permutation of what it was given. It gets copies
-- ({ id, version, name, description }) and runs under the hook limits of cfg.
-- @return array | nil, err (kind usage; interrupted at a signal)
function plan.order(list, order_fn, cfg)
  local ordered, err = by_requires(list)
  if not ordered then return nil, err end
  if not order_fn then return ordered end
  local copy, original = {}, {}
  for i, m in ipairs(ordered) do
    copy[i] = { id = m.id, version = m.version, name = m.name,
      description = m.companion and m.companion.description }
    original[copy[i]] = m
  end
  local limits = sandbox.limits(cfg)
  limits.what, limits.during = "the order function", "in the order function of migrate.lua"
  local ok, result = sandbox.call(limits, order_fn, copy)
  if not ok then
    if sandbox.made_limit(result) and result.kind == "interrupted" then return nil, result end
    return nil, errors.new("usage", "order function in migrate.lua failed: " ..
      sandbox.message(result))
  end
  if type(result) ~= "table" then
    return nil, errors.new("usage", "order function in migrate.lua must return a list")
  end
  local seen, extra, missing, out = {}, {}, {}, {}
  for i = 1, rawlen(result) do
    local r = rawget(result, i)
    local m = original[r]
    if not m or seen[m] then
      extra[#extra + 1] = type(r) == "table" and tostring(rawget(r, "id")) or tostring(r)
    end
    if m then seen[m] = true end
    out[i] = m
  end
  for _, m in ipairs(ordered) do
    if not seen[m] then missing[#missing + 1] = m.id end
  end
  if #extra > 0 or #missing > 0 or #out ~= #ordered then
    return nil, errors.new("usage", "order function in migrate.lua must return a " ..
      "permutation of its input" .. (#missing > 0 and ("; missing: " ..
      table.concat(missing, ", ")) or "") .. (#extra > 0 and ("; extra or repeated: " ..
      table.concat(extra, ", ")) or ""))
  end
  return out
end

--- Finds a migration by version (any spelling of the same key) or id.
-- @return migration | nil, err (kind usage)
function plan.find(set, v)
  local m = set.by_key[version.key(v)]
  if m then return m end
  for _, x in ipairs(set.migrations) do
    if x.id == v then return x end
  end
  return nil, errors.new("usage", fmt("no migration with version %s in %s", v, set.dir))
end

--- Migrations to apply: pending ones (in order) up to and including `to`.
-- @return array
function plan.up(st, to)
  local out = {}
  if to and to.base then return out end
  for _, m in ipairs(st.pending) do
    if not to or version.compare(m.version, to.version) <= 0 then out[#out + 1] = m end
  end
  return out
end

--- Migrations to revert, in the reverse of the order `up` runs them (so `requires` and
-- migrate.lua's `order` hold both ways): the last `count`, or all above `to`.
-- @param allow_empty boolean: revert a down script without statements too
-- @return array | nil, err (kind refused when one has no down script, or an empty one)
function plan.down(st, count, to, allow_empty)
  local out = {}
  for i = #st.applied, 1, -1 do
    local m = st.applied[i]
    if to then
      if to.base or version.compare(m.version, to.version) > 0 then out[#out + 1] = m end
    elseif #out >= count then
      break
    else
      out[#out + 1] = m
    end
  end
  for _, m in ipairs(out) do
    if not m.down_path then
      local expected = m.format == "native" and
        (" (" .. paths.display(m.up_path):gsub("%.up%.sql$", ".down.sql") .. ")") or ""
      return nil, errors.new("refused", fmt("%s has no down script%s, so it cannot be " ..
        "reverted; nothing was changed", m.id, expected))
    end
    local hooks = m.companion and (m.companion.down_pre or m.companion.down_post)
    if not allow_empty and #m.down_statements == 0 and not hooks then
      return nil, errors.new("refused", fmt("%s holds no statements, so reverting %s would " ..
        "record it as reverted while its objects stay; write the down script, or pass " ..
        "--allow-empty-down if undoing it needs nothing; nothing was changed",
        paths.display(m.down_path), m.id))
    end
  end
  return out
end

return plan
