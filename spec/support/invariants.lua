-- The invariant checker run after fault scenarios: what must hold whatever went wrong.
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")
local helpers = require("spec.helpers")

local invariants = {}

local MOONSHIFT_LOCK_CLASS = require("moonshift.lock").CLASS

-- Waits for the server to notice dead clients (their backends end) for up to `ms`.
local function settle(uri, ms)
  local deadline = fs.clock_ms() + (ms or 10000)
  while fs.clock_ms() < deadline do
    local n = helpers.value(uri, "SELECT count(*) FROM pg_stat_activity " ..
      "WHERE application_name LIKE 'moonshift/%' AND pid <> pg_backend_pid()")
    if n == 0 then return 0 end
    proc.sleep(100)
  end
  return helpers.value(uri, "SELECT count(*) FROM pg_stat_activity " ..
    "WHERE application_name LIKE 'moonshift/%' AND pid <> pg_backend_pid()")
end

--- Checks, and raises with every violation listed:
--  I1/I2: each history row's migration effect is present, and each absent row's is absent
--    (opts.effects: { version = "SQL returning true when its effect is present" });
--  I3: rows are 'applied' or an explicit 'dirty' in-doubt marker, nothing else;
--  I4: no moonshift backend and no moonshift advisory lock is left;
--  the run log (opts.log_dir or opts.log_file) ends with a final event unless the run was
--    killed (opts.killed), and logs and backups are 0600 in 0700 directories (I7).
--  opts.note: added to the message (e.g. the seed of random kill points, to replay them).
-- @return table: { rows = { version = state } }
function invariants.check(uri, opts)
  opts = opts or {}
  local problems = {}
  local left = settle(uri, opts.settle_ms)
  if left > 0 then problems[#problems + 1] = left .. " moonshift backend(s) still connected" end
  local locks = helpers.value(uri, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' " ..
    "AND classid::bigint = $1", MOONSHIFT_LOCK_CLASS)
  if locks > 0 then problems[#problems + 1] = locks .. " moonshift advisory lock(s) held" end
  local rows = {}
  if helpers.value(uri, "SELECT to_regclass('moonshift_migrations')::text") then
    for _, r in ipairs(helpers.query(uri, "SELECT version, state FROM moonshift_migrations")) do
      rows[r.version] = r.state
      if r.state ~= "applied" and r.state ~= "dirty" then
        problems[#problems + 1] = "row " .. r.version .. " has state " .. tostring(r.state)
      end
    end
  end
  for v, sql in pairs(opts.effects or {}) do
    local present = helpers.value(uri, sql) == true
    local recorded = rows[v] == "applied"
    if rows[v] ~= "dirty" and present ~= recorded then
      problems[#problems + 1] = string.format("migration %s: effect %s but history %s", v,
        present and "present" or "absent", recorded and "says applied" or "has no row")
    end
  end
  local function check_private(dir)
    local st = fs.stat(dir)
    if not st then return end
    if st.mode ~= tonumber("700", 8) then
      problems[#problems + 1] = string.format("%s has mode %o, not 0700", dir, st.mode)
    end
    for _, name in ipairs(fs.list(dir) or {}) do
      local fst = fs.stat(dir .. "/" .. name)
      if fst and fst.type == "file" and fst.mode ~= tonumber("600", 8) then
        problems[#problems + 1] = string.format("%s/%s has mode %o, not 0600", dir, name, fst.mode)
      end
    end
  end
  if opts.log_dir then
    check_private(opts.log_dir)
    if not opts.killed then
      local cut = require("moonshift.runlog").last_unfinished(opts.log_dir)
      if cut then
        problems[#problems + 1] = cut.path .. " does not end with run_done or run_failed"
      end
    end
  end
  if #problems > 0 then
    error("invariants violated" .. (opts.note and (" " .. opts.note) or "") .. ":\n  " ..
      table.concat(problems, "\n  "), 2)
  end
  return { rows = rows }
end

return invariants
