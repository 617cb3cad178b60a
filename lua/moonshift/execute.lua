-- A run that changes the database: plan -> confirm -> backup -> runner -> report -> events.
-- up, down, goto and redo differ only in how they plan (execute.change takes that part).
local fs = require("moonshift.fs")
local pg = require("moonshift.pg")
local host = require("moonshift.host")
local session = require("moonshift.session")
local plan = require("moonshift.plan")
local version = require("moonshift.version")
local errors = require("moonshift.errors")
local hooks = require("moonshift.hooks")
local json = require("moonshift.json")
local paths = require("moonshift.paths")
local backup = require("moonshift.backup")
local sqlstate = require("moonshift.sqlstate")
local sql = require("moonshift.sql")
local ui_mod = require("moonshift.ui")
local statement = require("moonshift.statement")

local fmt = string.format

local function shell_quote(text)
  if text:match("^[%w_./:-]+$") then return text end
  return "'" .. text:gsub("'", "'\\''") .. "'"
end

local execute = {}

local EXIT_OUTPUT_CLOSED = 141 -- 128 + SIGPIPE

-- While a migration runs: a live line with its elapsed time and, for CREATE INDEX and
-- CLUSTER / VACUUM FULL, the phase and blocks done; and who blocks it, for the lock
-- timeout message. Read on the lock connection, which is otherwise idle.
local PROGRESS_SQL = [[
  SELECT (SELECT p.phase || COALESCE(' ' || p.blocks_done || '/' ||
                                     NULLIF(p.blocks_total, 0) || ' blocks', '')
          FROM pg_catalog.pg_stat_progress_create_index p WHERE p.pid = $1) AS index_phase,
         (SELECT p.phase || COALESCE(' ' || p.heap_blks_scanned || '/' ||
                                     NULLIF(p.heap_blks_total, 0) || ' blocks', '')
          FROM pg_catalog.pg_stat_progress_cluster p WHERE p.pid = $1) AS cluster_phase,
         (SELECT pg_catalog.string_agg(pg_catalog.format('pid %s (application_name %s, %s, ' ||
                   'since %s)', a.pid, COALESCE(NULLIF(a.application_name, ''), '?'), a.state,
                   pg_catalog.to_char(COALESCE(a.xact_start, a.query_start) AT TIME ZONE 'UTC',
                                      'YYYY-MM-DD HH24:MI:SS"Z"')), '; ')
          FROM pg_catalog.pg_stat_activity a
          WHERE a.pid = ANY (pg_catalog.pg_blocking_pids($1))) AS blockers]]

-- The state of one run: the session, the list, its direction and what is done so far.
local Run = {}
Run.__index = Run

function Run:ticker(i, m)
  local s = self.s
  local started, probed = fs.clock_ms(), 0
  local pid = s.conn:backend_pid()
  local phase = ""
  return function()
    local now = fs.clock_ms()
    if s.lock_conn and now - probed >= 1000 then
      probed = now
      local rows = s.lock_conn:query(PROGRESS_SQL, pid)
      local row = rows and rows[1]
      if row then
        local p = row.index_phase ~= pg.null and row.index_phase or
          (row.cluster_phase ~= pg.null and row.cluster_phase or nil)
        phase = p and ("  " .. p) or ""
        if row.blockers ~= pg.null then self.last_blocker = row.blockers end
      end
    end
    s.ui:live(fmt("[%d/%d] %s  running  %s%s", i, #self.list, m.id,
      ui_mod.duration(now - started), phase))
  end
end

-- A global hook (before_run, after_run, on_error), if the project has it.
function Run:global(name, extra)
  local g = self.s.hooks[name]
  if not g then return true end
  local o = { ui = self.s.ui, cfg = self.s.cfg, plan = self.ids, direction = self.direction,
    spawn = true }
  for k, v in pairs(extra or {}) do o[k] = v end
  return hooks.call(paths.display(g.path), g.fn, hooks.ctx(o), self.s.cfg)
end

-- What an operator needs beside a failure's message: which timeout fired, who blocked.
function Run:explain(m, err)
  local s = self.s
  if err.sqlstate == sqlstate.QUERY_CANCELED then
    local rows = s.conn:query("SELECT setting, source FROM pg_catalog.pg_settings " ..
      "WHERE name = 'statement_timeout'")
    local row = rows and rows[1]
    local ms = (m.companion or {}).statement_timeout_ms or s.cfg.statement_timeout_ms
    local mine = ms and ui_mod.duration(ms) or nil
    err.message = err.message .. fmt("\n  statement_timeout was %s (%s); change it with " ..
      "--statement-timeout or statement_timeout in migrate.lua or the migration's .lua",
      mine or (row and (row.setting .. "ms") or "?"),
      mine and "set by moonshift" or ("from the server's " .. (row and row.source or "?")))
  end
  if err.sqlstate == sqlstate.LOCK_NOT_AVAILABLE and self.last_blocker then
    err.message = err.message .. "\n  blocked by " .. self.last_blocker
  end
end

-- The rollback took the failure's own event with it: write one in a transaction of its
-- own, so `history` shows it. Best effort: the original error is what the run reports.
function Run:record_failure(m, err)
  local s = self.s
  if s.conn:status() ~= "idle" then return end
  -- after a signal the run is ending: a locked events table may delay that a second at most
  if host.interrupted() then s.conn:exec("SET lock_timeout = '1s'") end
  local ok, eerr = s.history:event("fail", m, s.run_id, { direction = self.direction,
    kind = err.kind, sqlstate = err.sqlstate, file = err.file, line = err.line,
    message = tostring(err.message):match("\n%s*(ERROR [^\n]*)") or
      tostring(err.message):match("^[^\n]*"), rolled_back = true })
  if not ok then
    s.ui:warn(fmt("the failure of %s could not be recorded in %s: %s", m.id, s.history.events,
      tostring(eerr and eerr.message or eerr)))
  end
end

-- Ends the run at a failure of m: the message made complete, on_error, the events.
function Run:failed(m, err)
  local s = self.s
  local sig, code = host.interrupted()
  local tx = self.direction == "down" and m.down_transaction or m.transaction
  if sig and err.kind ~= "interrupted" and not err.ended_early then
    err = errors.new("interrupted", fmt("interrupted (SIG%s) during %s; %s", sig, m.id,
      tx == false and "it is not transactional and is left dirty; see " ..
      "`moonshift status`" or "rolled back, nothing of it was applied"))
  end
  if err.kind == "interrupted" then err.exit_code = code or err.exit_code end
  self:explain(m, err)
  if self.runner.single and not err.ended_early then
    s.conn:exec("ROLLBACK")
    err.message = err.message .. "\n  --single-transaction: the whole run was rolled back"
    self.done = json.array()
  end
  if s.backup_path then
    if #self.done > 0 or tx == false or err.ended_early then
      err.message = err.message .. fmt("\n  to return to the state before this run:\n    " ..
        "moonshift restore %s\n  or with PostgreSQL's tools (no other session may be " ..
        "connected):\n    %s", shell_quote(paths.display(s.backup_path)), s.restore_command)
    else
      err.message = err.message .. "\n  nothing of this run was committed; no restore needed"
    end
  end
  if tx ~= false or self.runner.single then self:record_failure(m, err) end
  -- on_error sees the failure after the rollback, and no database handle
  local ok, herr = self:global("on_error", { migration = m, error = {
    migration = m.id, version = m.version, kind = err.kind, message = err.message,
    file = err.file, line = err.line, sqlstate = err.sqlstate, statement = err.statement } })
  if not ok then s.ui:warn(tostring(herr)) end
  s.ui:event("migration_failed", { id = m.id, version = m.version, file = err.file,
    line = err.line, column = err.column, sqlstate = err.sqlstate, message = err.message,
    kind = err.kind, sql = err.statement, detail = err.detail, hint = err.hint,
    traceback = err.traceback, restore_command = s.restore_command })
  s.ui:event("run_failed", { kind = err.kind, message = err.message, done = #self.done })
  err.done = self.done
  return nil, err
end

-- Ends the run at a failure outside any migration (a global hook): the run log gets its
-- final status, and the error says what stayed committed.
function Run:ended(err)
  self.s.ui:event("run_failed", { kind = err.kind, message = err.message, done = #self.done })
  err.done = self.done
  return nil, err
end

-- Refuses, before anything runs, what the connection or the options cannot do.
function Run:preflight(opts)
  local s = self.s
  for _, m in ipairs(s.pooled and self.list or {}) do
    local tx = self.direction == "down" and m.down_transaction or m.transaction
    if tx == false then
      return nil, errors.new("connect", fmt("%s runs outside a transaction, which a " ..
        "transaction pooler would spread over server connections with its session " ..
        "settings; run it with a direct connection; nothing was changed", m.id))
    end
  end
  for _, m in ipairs(opts.single_transaction and self.list or {}) do
    if m.transaction == false then
      return nil, errors.new("usage", m.id .. " is not transactional, so it cannot run " ..
        "inside --single-transaction; nothing was changed")
    end
  end
  return true
end

-- The version left current once m is reverted (golang-migrate compat keeps it).
function Run:previous_version(m)
  local prev
  for _, a in ipairs(self.s.status.applied) do
    if version.compare(a.version, m.version) < 0 and
        (not prev or version.compare(a.version, prev) > 0) then prev = a.version end
  end
  return prev
end

-- The reader of standard output went away (EPIPE; SIGPIPE is ignored): the migration in
-- flight finished, the next one does not start. Exit 141, as the shell shows a SIGPIPE.
function Run:output_gone(m)
  local why = self.s.ui.out_failed
  if not why then return nil end
  return errors.new("interrupted", fmt("standard output was closed (%s); stopped before %s, " ..
    "nothing of it was applied", why, m.id), { exit_code = EXIT_OUTPUT_CLOSED })
end

-- Runs one migration of the list; nil, err ends the run.
function Run:step(i, m)
  local s, r, direction = self.s, self.runner, self.direction
  if direction == "down" then r.previous_version = self:previous_version(m) end
  s.ui:event("migration_start", { id = m.id, version = m.version, direction = direction,
    file = direction == "up" and m.up_path or m.down_path, checksum = m.checksum })
  if host.interrupted() then
    return self:failed(m, errors.new("interrupted", fmt("interrupted before %s; nothing of " ..
      "it was applied", m.id)))
  end
  local gone = self:output_gone(m)
  if gone then return self:failed(m, gone) end
  local why = execute.why_no_transaction(m, direction)
  if why then s.ui:info(why) end
  self.last_blocker = nil
  r.on_tick = self:ticker(i, m)
  local res, err = r:run(m, direction)
  if not res then
    s.ui:step(i, #self.list, m.id, "FAILED")
    return self:failed(m, err)
  end
  local stmts = direction == "up" and m.statements or m.down_statements
  local file = paths.display(direction == "up" and m.up_path or m.down_path)
  for k = 1, stmts.stream and 0 or #stmts do -- a streamed script's are not kept
    if res.timings[k] then
      s.ui:event("statement", { id = m.id, file = file, line = stmts[k].line,
        elapsed_ms = res.timings[k] })
    end
  end
  s.ui:step(i, #self.list, m.id, res.skipped and "skipped (another runner did it)" or
    (direction == "up" and "ok" or "reverted"), not res.skipped and res.duration_ms or nil)
  if res.skipped then
    s.ui:event("migration_skipped", { id = m.id, version = m.version,
      reason = "another runner did it" })
    self.skipped[#self.skipped + 1] = m.id
  else
    s.ui:event("migration_done", { id = m.id, version = m.version, elapsed_ms = res.duration_ms })
    self.done[#self.done + 1] = { id = m.id, version = m.version, duration_ms = res.duration_ms }
  end
  -- The lock lives on its own connection, which no migration can touch; what can go wrong
  -- is that connection dropping, so look at most once a second (and at the end).
  local now = fs.clock_ms()
  local check = s.lock and (i == #self.list or now - (self.lock_checked or 0) >= 1000)
  if check then self.lock_checked = now end
  if check and not s.lock:held() then
    return self:failed(m, errors.new("refused", fmt("the run lock was lost after %s (its " ..
      "connection dropped); stopped before the next migration. Re-run to continue", m.id)))
  end
  return true
end

--- Runs a list of migrations in one direction, one transaction each (or all in one with
-- opts.single_transaction); repeatables follow an up that has no target.
-- @return { done, duration_ms, run_id } | nil, err (with err.done: what stayed committed)
function execute.run(s, list, direction, opts)
  local ids = {}
  for i, m in ipairs(list) do ids[i] = m.id end
  -- lists stay lists in JSON (a workflow's result), empty or not
  local run = setmetatable({ s = s, list = list, direction = direction, ids = ids,
    done = json.array(), skipped = json.array(), started = fs.clock_ms() }, Run)
  local ok, err = run:preflight(opts)
  if not ok then return nil, err end
  ok, err = s.history:ensure()
  if not ok then return nil, err end
  if not s.log then
    ok, err = s:open_log(direction, list)
    if not ok then return nil, err end
  end
  run.runner = s:runner(ids)
  ok, err = run:global("before_run", { conn = s.conn, expect = "idle" })
  if not ok then return run:ended(err) end
  if opts.single_transaction then
    ok, err = s.conn:exec("BEGIN")
    if not ok then return run:ended(errors.wrap("sql", err)) end
    run.runner.single = true
  end
  for i, m in ipairs(list) do
    ok, err = run:step(i, m)
    if not ok then return nil, err end
  end
  for _, rep in ipairs(direction == "up" and not opts.to and s.status.repeatables or {}) do
    local gone = run:output_gone(rep)
    if gone then return run:failed(rep, gone) end
    local why = execute.why_no_transaction(rep, "up")
    if why then s.ui:info(why) end
    local res, rerr = run.runner:run(rep, "up")
    if not res then return run:failed(rep, rerr) end
    s.ui:step(#run.done + 1, #run.done + 1, rep.id, "ok", res.duration_ms)
    run.done[#run.done + 1] = { id = rep.id, duration_ms = res.duration_ms }
  end
  if run.runner.single then
    ok, err = s.conn:exec("COMMIT")
    if not ok then return run:failed(list[#list], errors.wrap("sql", err, "COMMIT failed")) end
  end
  ok, err = s:refresh()
  if not ok then return run:ended(err) end
  local res = { done = run.done, skipped = run.skipped, duration_ms = fs.clock_ms() - run.started,
    run_id = s.run_id }
  ok, err = run:global("after_run", { results = run.done })
  if not ok then return run:ended(err) end
  s.ui:event("run_done", { run_id = s.run_id, done = #run.done, skipped = #run.skipped,
    elapsed_ms = res.duration_ms,
    current = s.status.current and s.status.current.version or nil })
  return res
end

--- The line that says why a migration runs outside a transaction when no directive says
-- so (every statement of it is one PostgreSQL refuses inside a transaction block), or nil.
-- @param direction string: "up" or "down"
-- @return string | nil
function execute.why_no_transaction(m, direction)
  local up = direction == "up"
  if not (up and m.no_transaction_auto or not up and m.down_no_transaction_auto) then
    return nil
  end
  if (up and m.transaction or not up and m.down_transaction) ~= false then return nil end
  local names, seen = {}, {}
  for _, stmt in ipairs(up and m.statements or m.down_statements) do
    local name = statement.no_transaction(stmt.text)
    if name and not seen[name] then
      seen[name] = true
      names[#names + 1] = name
    end
  end
  local last = table.remove(names)
  local list = #names > 0 and table.concat(names, ", ") .. " and " .. last or last
  return fmt("%s runs without a transaction: it holds only %s, which PostgreSQL cannot run " ..
    "inside one; it stays marked dirty until it ends",
    paths.display(up and m.up_path or m.down_path), list)
end

--- Prints the plan and the SQL of each migration (--dry-run).
-- @return { dry_run = true, planned = n }
function execute.print_dry_run(s, list, direction)
  for i, m in ipairs(list) do
    local path = direction == "up" and m.up_path or m.down_path
    local stmts = direction == "up" and m.statements or m.down_statements
    s.ui:result(fmt("-- [%d/%d] %s %s (%s, %d statements%s)", i, #list,
      direction == "up" and "apply" or "revert", m.id, paths.display(path), #stmts,
      m.transaction == false and ", no transaction" or ""))
    local function show(stmt)
      local text = stmt.text:gsub("%s+$", "")
      if stmt.kind == "sql" and text:sub(-1) ~= ";" then text = text .. ";" end
      s.ui:result(text)
    end
    if stmts.stream then
      local st <close>, msg = sql.stream(stmts.stream)
      if not st then s.ui:result("-- cannot read " .. tostring(msg)) end
      for stmt in st and st.next or function() end, st do show(stmt) end
    else
      for _, stmt in ipairs(stmts) do show(stmt) end
    end
  end
  return { dry_run = true, planned = #list }
end

--- Before every migration: the target `base` (nothing applied), where a command takes it.
execute.BASE = { base = true, id = "base" }

--- The migration a version names (`head`: the last one), or nil when no version is given;
-- with allow_base, `base` gives execute.BASE.
-- @return migration | execute.BASE | nil | nil, err
function execute.target(s, v, allow_base)
  if not v then return nil end
  if v == "head" then
    local last = s.set.migrations[#s.set.migrations]
    if last then return last end
    return nil, errors.new("usage", "head: there are no migrations in " .. s.set.dir)
  end
  if v == "base" then
    if allow_base then return execute.BASE end
    return nil, errors.new("usage", "base (before every migration) is not a target here")
  end
  return plan.find(s.set, v)
end

--- What changed between the plan a person agreed to and the one made under the lock
-- (another runner went first, or files changed), or nil when nothing did.
-- @return string | nil
function execute.plan_change(asked, list, direction)
  local before, now, added, gone = {}, {}, {}, {}
  for _, m in ipairs(asked.list) do before[m.id] = true end
  for _, m in ipairs(list) do
    now[m.id] = true
    if not before[m.id] then added[#added + 1] = m.id end
  end
  for _, m in ipairs(asked.list) do
    if not now[m.id] then gone[#gone + 1] = m.id end
  end
  local same_order = #added == 0 and #gone == 0
  for i, m in ipairs(list) do same_order = same_order and asked.list[i].id == m.id end
  if same_order and asked.direction == direction then return nil end
  return "The plan changed while waiting for the run lock" ..
    (#added > 0 and ("; now also: " .. table.concat(added, ", ")) or "") ..
    (#gone > 0 and ("; no longer: " .. table.concat(gone, ", ")) or "") .. "."
end

--- The skeleton every change shares: session -> plan -> (nothing? dry run?) -> confirm ->
-- backup -> run -> result. `how` plans: how.plan(s) returns the list, its direction, the
-- question to confirm and whether to run even an empty list (or nil, err);
-- how.run(s, list, direction, opts) may replace the run (redo runs twice),
-- how.dry_run(s, list, direction) the dry run, how.after(s, res) follows a success.
-- @param opts table: dry_run, auto_confirm, backup_first (pg_dump first; also
--   backup.before_run), and what how reads
-- @return result { done, current, target, ... } | nil, err
function execute.change(cfg, ui, opts, how)
  local want_backup = opts.backup_first or (cfg.backup and cfg.backup.before_run) or false
  if want_backup and not opts.dry_run then
    local ok, err = backup.ready(cfg)
    if not ok then return nil, err end
  end
  -- Planned first without the lock: with nothing to do, none is taken (a no-op up costs
  -- what status does). Anything else, a refusal too (a dirty row may be a run in
  -- progress), is decided again under the lock.
  return session.with(cfg, ui, {}, function(s)
    -- another tool's history and none of ours: every plan would run applied migrations
    -- again (a dry run's too), and asking first would be asking for nothing
    local refused = s:peer_refusal()
    if refused then return nil, refused end
    local list, direction, question, anyway = how.plan(s)
    local ok, err, asked
    local changing = not opts.dry_run and not (list and #list == 0 and not anyway)
    if changing and list then
      -- asked before the lock: a person thinking at the prompt holds up no other runner
      ok, err = s:check(list)
      if not ok then return nil, err end
      ok, err = s:confirm(opts, question)
      if not ok then return nil, err end
      asked = { list = list, direction = direction }
    end
    if changing then
      ok, err = s:begin_change()
      if not ok then return nil, err end
      list, direction, question, anyway = how.plan(s)
    end
    if not list then return nil, direction end
    ok, err = s:check(list)
    if not ok then return nil, err end
    if #list == 0 and not anyway then
      -- nothing to change, but a target that could not be changed is still said so
      if not opts.dry_run then
        ok, err = s:check_target()
        if not ok then return nil, err end
      end
      return { done = json.array(), current = s:current_id(), nothing = true, target = s.label,
        current_version = s.status.current and s.status.current.version }
    end
    if opts.dry_run then return (how.dry_run or execute.print_dry_run)(s, list, direction) end
    local changed = not asked or execute.plan_change(asked, list, direction)
    if changed then
      ok, err = s:confirm(opts, asked and (changed .. "\n" .. question) or question)
      if not ok then return nil, err end
    end
    if want_backup then
      ok, err = s:open_log(direction, list)
      if not ok then return nil, err end
      ok, err = s:backup()
      if not ok then
        s.ui:event("run_failed", { kind = err.kind, message = err.message, done = 0 })
        return nil, err
      end
    end
    local res, rerr = (how.run or execute.run)(s, list, direction, opts)
    -- the run log is the promised record of the run: a log that could not be written ends
    -- a run that succeeded with exit 10 (a failed run keeps its own code; both warned)
    local logged, lerr = s:close_log()
    if not res then return nil, rerr end
    if not logged then
      return nil, errors.new("backup", fmt("%s; the run itself finished (%s %d migration%s on " ..
        "%s, now at %s): the database's history (`moonshift history`) is its record", lerr,
        direction == "down" and "reverted" or "applied", #res.done, #res.done == 1 and "" or "s",
        s.label, s:current_id()))
    end
    if how.after then how.after(s, res) end
    if want_backup and cfg.backup and cfg.backup.keep then
      for _, path in ipairs(backup.prune(backup.dir_for(cfg), cfg.backup.keep,
        s.conn:info().dbname) or {}) do
        ui:info("pruned old backup " .. paths.display(path))
      end
    end
    res.current, res.target = s:current_id(), s.label
    res.current_version = s.status.current and s.status.current.version
    return res
  end)
end

return execute
