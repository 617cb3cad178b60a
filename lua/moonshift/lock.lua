-- The run lock: one runner per tracking table, a session advisory lock on its own connection.
local proc = require("moonshift.proc")
local fs = require("moonshift.fs")
local pg = require("moonshift.pg")
local errors = require("moonshift.errors")
local host = require("moonshift.host")

local fmt = string.format

local lock = {}

--- The advisory lock's class id: 'moon' as a 32-bit integer. The object id is the hash of
-- the qualified tracking table, so two projects in one database (different tables) do not
-- block each other.
lock.CLASS = 0x6d6f6f6e
local CLASS = lock.CLASS
local POLL_MS = 200

local Lock = {}
Lock.__index = Lock

--- Who holds the lock: pid, application_name, client address, since when.
-- @return table | nil
local function holder(conn, key)
  local rows = conn:query([[
    SELECT l.pid, a.application_name, a.state,
           COALESCE(pg_catalog.host(a.client_addr), 'local socket') AS client,
           pg_catalog.to_char(a.backend_start AT TIME ZONE 'UTC',
                              'YYYY-MM-DD HH24:MI:SS"Z"') AS since
    FROM pg_catalog.pg_locks l
    LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = $1
      AND l.objid::bigint = (pg_catalog.hashtext($2)::bigint & 4294967295) AND l.objsubid = 2]],
    CLASS, key)
  return rows and rows[1]
end

local function describe(h)
  if not h then return "another session (it ended while we looked)" end
  local app = h.application_name ~= pg.null and h.application_name or "?"
  return fmt("pid %s, application_name %s, from %s, connected since %s",
    tostring(h.pid), app, tostring(h.client), tostring(h.since))
end

--- Takes the run lock by polling pg_try_advisory_lock outside any transaction, so a
-- waiting runner never holds a snapshot (CREATE INDEX CONCURRENTLY would wait on it).
-- @param conn a dedicated connection
-- @param key string: the qualified tracking table
-- @param wait_ms integer: how long to wait
-- @param on_wait function(holder_text)|nil: called once when we start waiting
-- @return Lock | nil, err (kind lock)
function lock.acquire(conn, key, wait_ms, on_wait)
  local started = fs.clock_ms()
  local told = false
  while true do
    local rows, err = conn:query(
      "SELECT pg_catalog.pg_try_advisory_lock($1::int, pg_catalog.hashtext($2)) AS ok", CLASS, key)
    if not rows then return nil, errors.wrap("connect", err, "cannot take the run lock") end
    if rows[1].ok then
      return setmetatable({ conn = conn, key = key, waited_ms = fs.clock_ms() - started }, Lock)
    end
    local waited = fs.clock_ms() - started
    local sig, code = host.interrupted()
    if sig then
      return nil, errors.new("interrupted", "interrupted (SIG" .. sig .. ") while waiting " ..
        "for the run lock; nothing was changed", { exit_code = code })
    end
    if waited >= (wait_ms or 0) then
      return nil, errors.new("lock", fmt("another moonshift run holds the lock on %s (%s); " ..
        "gave up after %.1f s (--lock-wait)", key, describe(holder(conn, key)), waited / 1000))
    end
    if not told and on_wait then
      told = true
      on_wait(describe(holder(conn, key)))
    end
    proc.sleep(math.min(POLL_MS, math.max(1, (wait_ms or 0) - waited)))
  end
end

--- Whether we still hold it (a migration may have called pg_advisory_unlock_all on its
-- own session; this one is separate, but its connection can drop).
-- @return boolean
function Lock:held()
  local rows = self.conn:query([[
    SELECT pg_catalog.count(*) AS n FROM pg_catalog.pg_locks
    WHERE locktype = 'advisory' AND granted AND pid = pg_catalog.pg_backend_pid()
      AND classid::bigint = $1 AND objsubid = 2]], CLASS)
  return rows ~= nil and rows[1].n > 0
end

--- Releases the lock (closing the connection would too).
function Lock:release()
  if self.released then return true end
  self.released = true
  return self.conn:query("SELECT pg_catalog.pg_advisory_unlock($1::int, pg_catalog.hashtext($2))",
    CLASS, self.key)
end

return lock
