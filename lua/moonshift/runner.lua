-- Applies and reverts migrations: one transaction each, statements pipelined and timed.
local fs = require("moonshift.fs")
local pg = require("moonshift.pg")
local db = require("moonshift.db")
local proc = require("moonshift.proc")
local errors = require("moonshift.errors")
local paths = require("moonshift.paths")
local hooks = require("moonshift.hooks")
local sql = require("moonshift.sql")
local statement = require("moonshift.statement")
local history = require("moonshift.history")
local pipeline = require("moonshift.pipeline")
local sqlerror = require("moonshift.sqlerror")
local sqlstate = require("moonshift.sqlstate")
local source = require("moonshift.source")

local fmt = string.format

local runner = {}

local Runner = {}
Runner.__index = Runner

-- SQLSTATEs worth a retry with backoff.
local RETRYABLE = { [sqlstate.LOCK_NOT_AVAILABLE] = true, [sqlstate.DEADLOCK_DETECTED] = true }

-- The transaction-local setting that proves, just before the history row is written, that
-- the migration still runs in the transaction moonshift began for it.
local TX_MARK = "moonshift.migration_tx"
local TX_GUARD = "SELECT CASE WHEN pg_catalog.current_setting('" .. TX_MARK .. "', true) = $1 " ..
  "THEN true ELSE pg_catalog.current_setting('moonshift.transaction_ended_early')::bool END"

--- Whether a pg error means the connection is gone: libpq lost it, or the server is
-- ending the session (57P01 terminated by an administrator, 57P02 crash, 08xxx).
function runner.connection_error(err)
  return err ~= nil and (err.kind == "connection_lost" or sqlstate.connection_gone(err.sqlstate))
end

--- Test-only: MOONSHIFT_TEST_PAUSE=<point>:<version> stops here for a minute, so a spec
-- can kill the runner at an exact moment (e.g. after COMMIT, before the log line).
function runner.test_pause(point, m)
  local want = os.getenv("MOONSHIFT_TEST_PAUSE")
  if want and want == point .. ":" .. tostring(m.version) then proc.sleep(60000) end
end

-- How often a runner tries to reconnect to learn whether an interrupted COMMIT happened.
local RECONNECT_ATTEMPTS = 5

--- A runner over one connection.
-- @param opts table: conn, history, cfg, ui, run_id, emit (function(event, fields)), dry_run,
--   connect (function() -> conn: a new connection, to learn the outcome of a lost COMMIT)
function runner.new(opts)
  local self = setmetatable({}, Runner)
  for k, v in pairs(opts) do self[k] = v end
  self.emit = self.emit or function() end
  return self
end

--- Refuses statements that would break the one-transaction guarantee (source refuses
-- them when it reads the files; this is the same check for migrations built otherwise).
-- @return true | nil, err (kind usage)
function runner.check_statements(statements, path)
  for _, stmt in ipairs(statements) do
    local name = statement.transaction_control(stmt.text)
    if name then
      return nil, errors.new("usage", fmt("%s:%d: %s: moonshift runs each migration in its " ..
        "own transaction and records it in the same one; remove this statement (or mark " ..
        "the migration -- moonshift:no-transaction)", path, stmt.line, name))
    end
  end
  return true
end

-- Runs items on the connection, with this runner's progress tick and notice list.
function Runner:run_items(items, one_by_one)
  return pipeline.run(self.conn, items, { one_by_one = one_by_one, on_tick = self.on_tick,
    notices = self.notices })
end

function Runner:_exec(text, ...)
  local rows, err
  if select("#", ...) > 0 then
    rows, err = self.conn:query(text, ...)
  else
    rows, err = self.conn:exec(text)
  end
  if not rows then return nil, errors.wrap(err.kind == "connection_lost" and "connect" or "sql",
    err) end
  return rows
end

-- The timeouts of a migration: its companion's, else the run's; with `session`, in the same
-- statement, what every session sets (one statement instead of three in each pipeline);
-- with `mark`, the transaction-local mark that TX_GUARD checks before the history row.
function Runner:_timeouts_item(m, is_local, session, mark)
  local companion = m.companion or {}
  local lt = companion.lock_timeout_ms or self.cfg.lock_timeout_ms
  local st = companion.statement_timeout_ms or self.cfg.statement_timeout_ms
  -- Unset means the server's own setting (role, database, config) stays in force.
  local item = { text = "SELECT " .. (session and db.SESSION_SETTINGS .. ", " or "") ..
    "pg_catalog.set_config('lock_timeout', " ..
    "COALESCE($1, pg_catalog.current_setting('lock_timeout')), $3), " ..
    "pg_catalog.set_config('statement_timeout', " ..
    "COALESCE($2, pg_catalog.current_setting('statement_timeout')), $3)" ..
    (mark and ", pg_catalog.set_config('" .. TX_MARK .. "', $4, true)" or ""),
    params = table.pack(lt and (tostring(lt) .. "ms") or pg.null,
      st and (tostring(st) .. "ms") or pg.null, is_local, mark or nil) }
  if not mark then item.params.n = 3 end
  return item
end

-- What the session keeps once a migration is over: moonshift's own queries wait for a lock
-- as long as --lock-wait says (db.bookkeeping_lock_timeout), which the migration's RESET ALL
-- undid. Sent last, so the migration and its history row keep their lock_timeout (a SET
-- after SET LOCAL overrides it only for what follows in the transaction: its COMMIT).
function Runner:_bookkeeping_timeout_item()
  return { text = "SELECT pg_catalog.set_config('lock_timeout', $1, false)",
    params = table.pack(db.bookkeeping_lock_timeout(self.cfg)) }
end

-- The bookkeeping of a finished migration, as pipeline items.
function Runner:_bookkeeping(m, direction, duration_ms, extra)
  local h = self.history
  return h:collect(function()
    local function must(ok, err) if not ok then error(err, 0) end end
    if direction == "up" then
      must(h:record_once(m, duration_ms, self.run_id, m.repeatable and "repeatable" or nil))
      must(h:event(m.repeatable and "reapply" or "apply", m, self.run_id, extra))
      if not m.repeatable then must(h:compat_applied(m, false)) end
    else
      must(h:remove_once(m.version))
      must(h:event("revert", m, self.run_id, extra))
      must(h:compat_removed(m, self.previous_version))
    end
  end)
end

-- Runs a migration's .verify.sql: every statement must succeed, and a last result of one
-- boolean must be true (Sqitch style).
function Runner:verify_sql(m)
  local path = paths.display(m.verify_path)
  local stmts, serr = sql.split(m.verify_sql)
  if not stmts then
    return nil, errors.new("usage", fmt("%s:%s", path, tostring(serr)))
  end
  for _, stmt in ipairs(stmts) do
    local rows, err = self.conn:query(stmt.text)
    if not rows then
      local line = sqlerror.locate(stmt, err.position)
      return nil, errors.new("verify", fmt("%s:%d: verification query failed: %s (SQLSTATE %s)",
        path, line, tostring(err.message), tostring(err.sqlstate)), { file = path, line = line,
        sqlstate = err.sqlstate })
    end
    if #rows == 1 and #rows.columns == 1 and type(rows[1][rows.columns[1]]) == "boolean"
        and rows[1][rows.columns[1]] == false then
      return nil, errors.new("verify", fmt("%s:%d: verification query returned false",
        path, stmt.line), { file = path, line = stmt.line })
    end
  end
  return true
end

-- The steps of one migration in order: items sent to the server, and Lua hooks between.
function Runner:_steps(m, direction, statements, begun, mark)
  local steps = {}
  local function items(list, statement_items)
    for i, it in ipairs(list) do
      steps[#steps + 1] = { item = it, statement = statement_items and i or nil }
    end
  end
  local function hook(name, fn, path)
    if fn then steps[#steps + 1] = { hook = fn, what = fmt("%s %s", path, name) } end
  end
  local companion = m.companion or {}
  local cpath = m.companion_path and paths.display(m.companion_path) or "?"
  local global = self.hooks or {}
  local function global_hook(name)
    local g = global[name]
    if g then
      hook(name, g.fn, paths.display(g.path))
      steps[#steps].global = true
    end
  end
  -- Each migration starts from a clean session: one that ran `SET search_path` or
  -- `SET ROLE` without LOCAL must not change what the next one does.
  -- Behind a pooler the settings are LOCAL instead: session state would outlive this
  -- client on a server connection that others use next.
  local head = { { text = "RESET ALL" }, self:_timeouts_item(m, true, true, mark) }
  if self.pooled then head = { self:_timeouts_item(m, true, false, mark) } end
  if not begun then table.insert(head, 1, { text = "BEGIN" }) end
  items(head)
  global_hook("before_each")
  hook(direction == "up" and "pre" or "down_pre",
    direction == "up" and companion.pre or companion.down_pre, cpath)
  steps[#steps + 1] = { sql_marker = true }
  if statements.stream then
    steps[#steps + 1] = { stream = statements }
  else
    items(statements, true)
  end
  hook(direction == "up" and "post" or "down_post",
    direction == "up" and companion.post or companion.down_post, cpath)
  if direction == "up" then
    hook("verify", companion.verify, cpath)
    if m.verify_sql then steps[#steps + 1] = { verify_sql = true } end
  end
  global_hook("after_each")
  return steps
end

-- For transaction poolers (lock = "table"): the lock lives only inside the migration's
-- transaction, so take it and check that no other runner did this migration meanwhile,
-- before sending the rest. Returns true (begun), "skipped", or nil, err, cause.
function Runner:_lock_table(m, direction)
  local ok, _, lerr = self:run_items({ { text = "BEGIN" }, self.history:lock_item() }, false)
  if not ok then
    if self.conn:status() ~= "idle" then self.conn:exec("ROLLBACK") end
    if lerr and lerr.sqlstate == sqlstate.LOCK_NOT_AVAILABLE then
      -- held for --lock-wait by another runner or a DBA: like a busy run lock, not retried
      return nil, self.history:failure(lerr, "cannot lock the history table")
    end
    return nil, errors.wrap("sql", lerr, "cannot lock the history table"), lerr
  end
  local row = self.history:applied_row(m.version)
  if (direction == "up") == (row ~= nil) then
    self.conn:exec("ROLLBACK")
    return "skipped"
  end
  return true
end

-- Runs a hook step (or the .verify.sql) inside the migration's transaction.
function Runner:_hook_step(m, direction, step)
  local ok, err
  if step.verify_sql then
    ok, err = self:verify_sql(m)
  else
    local ctx = hooks.ctx({ conn = self.conn, expect = "intrans", migration = m,
      direction = direction, plan = self.plan_ids, ui = self.ui, cfg = self.cfg,
      dry_run = false, spawn = step.global })
    ok, err = hooks.call(step.what, step.hook, ctx, self.cfg)
  end
  self.emit("hook", { id = m.id, hook = step.what or ".verify.sql", ok = ok and true or false,
    message = err and err.message or nil, traceback = err and err.traceback or nil })
  if ok and self.conn:status() ~= "intrans" then
    ok, err = nil, errors.new("hook", fmt("%s ended moonshift's transaction (status %s)",
      step.what or "verify", self.conn:status()))
  end
  if not ok then
    err.message = fmt("%s failed; rolled back, nothing of it was applied\n  %s", m.id,
      err.message)
    return nil, err
  end
  return true
end

-- Statements of a streamed script go in pipelines of at most this many, or bytes.
local STREAM_BATCH, STREAM_BYTES = 1000, 1024 * 1024

--- Runs the statements of a streamed script (statement.stream_script) as they are read
-- from the file: pipelined in batches (one by one with `one_by_one`), COPY data in pieces.
-- Nothing of the file is kept but the batch in flight.
-- @return true | nil, the failed statement, err | nil, nil, message when nothing was sent
-- (the file cannot be read, or is no longer the one checked)
function Runner:run_stream(list, one_by_one)
  local s <close>, msg = sql.stream(list.stream)
  local st = s and fs.stat(list.stream)
  if not s then return nil, nil, fmt("cannot read %s", msg) end
  if not (st and source.identity(st) == list.identity) then
    return nil, nil, fmt("%s changed after moonshift checked it", paths.display(list.stream))
  end
  local batch, bytes = {}, 0
  local function flush()
    if batch[1] == nil then return true end
    local timings, k, err = self:run_items(batch, one_by_one)
    if not timings then return nil, batch[k], err end
    batch, bytes = {}, 0
    return true
  end
  local function copy_data() return s:copy_data() end
  while true do
    local stmt, serr = s:next()
    if not stmt then
      if serr then -- the file changed after it was checked, behind a forged stat
        return nil, { line = serr.line, column = serr.column, text = "" },
          { message = tostring(serr.message) }
      end
      break
    end
    local ok, failed, err = true, nil, nil
    if stmt.kind == "copy" then
      ok, failed, err = flush()
      if not ok then return nil, failed, err end
      stmt.copy_data = copy_data
      batch[1] = stmt
      ok, failed, err = flush()
    else
      batch[#batch + 1] = stmt
      bytes = bytes + #stmt.text
      if one_by_one or #batch >= STREAM_BATCH or bytes >= STREAM_BYTES then
        ok, failed, err = flush()
      end
    end
    if not ok then return nil, failed, err end
  end
  return flush()
end

-- The first statement whose command tag says it ended the migration's transaction.
local function ended_at(run)
  for k = 1, #run.statements do
    if run.tags[k] and statement.ENDS_TRANSACTION[run.tags[k]] then return k end
  end
  return nil
end

-- The error of a failed batch of pipelined steps.
function Runner:_batch_error(m, path, failed, err, run, direction)
  if runner.connection_error(err) then
    return errors.new("connect", fmt("lost the connection during %s: %s. The server rolls " ..
      "back an unfinished transaction, so %s is not applied; check `moonshift status` once " ..
      "the server is reachable", m.id, tostring(err.message), m.id))
  end
  local ended = ended_at(run)
  if failed.guard or (failed.statement and ended) then
    -- in the batch that failed, what followed the ending statement was rolled back with it
    return self:_ended_early(m, run, ended)
  end
  if failed.statement then
    return sqlerror.statement(m, path, failed.item, err, "rolled back, nothing of it was applied")
  end
  if tostring(err.message):find(history.DONE_MEANWHILE, 1, true) then
    return errors.new("refused", fmt("%s was %s by another runner meanwhile (this run had " ..
      "lost the run lock: its session was ended, by idle_session_timeout or a terminate); " ..
      "this run's transaction was rolled back, so it ran once. Check `moonshift status`",
      m.id, m.repeatable and "re-applied" or (direction == "down" and "reverted" or "applied")))
  end
  return errors.wrap("sql", err, m.id .. " failed and was rolled back")
end

-- Runs the steps of a transactional migration: items pipelined wherever no Lua runs between
-- them, hooks in between. Returns per-statement timings | nil, err, cause.
function Runner:_run_steps(m, direction, steps, path, statements)
  -- tags: each statement's command tag; synced: the statements whose batch went through
  local run = { step_ms = {}, tags = {}, statements = statements, path = path, synced = 0 }
  local i = 1
  while i <= #steps do
    if steps[i].item or steps[i].sql_marker then
      local j = i
      while steps[j + 1] and (steps[j + 1].item or steps[j + 1].sql_marker) do j = j + 1 end
      local batch, at_step = {}, {}
      for k = i, j do
        if steps[k].item then
          batch[#batch + 1] = steps[k].item
          at_step[#batch] = steps[k]
        end
      end
      local timings, second, err, failed_tags = self:run_items(batch, false)
      local tags = timings and second or failed_tags or {}
      for b, st in pairs(at_step) do
        if st.statement then
          run.tags[st.statement] = tags[b]
          if timings then run.step_ms[st.statement] = timings[b] end
        end
      end
      if not timings then
        return nil, self:_batch_error(m, path, at_step[second], err, run, direction), err
      end
      for _, st in pairs(at_step) do run.synced = math.max(run.synced, st.statement or 0) end
      i = j + 1
    elseif steps[i].stream then
      local ok, failed, err = self:run_stream(steps[i].stream, false)
      if not ok and not failed then
        return nil, errors.new("refused", fmt("%s: %s; rolled back, nothing of it was " ..
          "applied. Run the command again", m.id, err), { file = paths.display(path) })
      end
      if not ok then
        return nil, self:_batch_error(m, path, { statement = true, item = failed }, err, run,
          direction), err
      end
      i = i + 1
    else
      -- a batch that ended the transaction went through: everything in it committed at sync
      if self.conn:status() ~= "intrans" and ended_at(run) then
        return nil, self:_ended_early(m, run, run.synced)
      end
      local ok, err = self:_hook_step(m, direction, steps[i])
      if not ok then return nil, err end
      i = i + 1
    end
  end
  return run.step_ms
end

-- COMMIT of a migration's transaction, on its own: nil, err, cause when it fails.
function Runner:_commit(m, direction, path)
  local ok, cerr = self.conn:exec("COMMIT")
  runner.test_pause("after_commit", m)
  if ok then return true end
  if runner.connection_error(cerr) then
    return nil, errors.new("connect", fmt("lost the connection while COMMIT of %s was in " ..
      "flight (%s); %s", m.id, tostring(cerr.message):gsub("%s+$", ""),
      self:_commit_outcome(m, direction))), cerr
  end
  return nil, errors.new("sql", fmt("%s failed at COMMIT (a deferred constraint or " ..
    "trigger); rolled back, nothing of it was applied\n  ERROR %s: %s%s", m.id,
    tostring(cerr.sqlstate), tostring(cerr.message),
    cerr.detail and ("\n  DETAIL: " .. cerr.detail) or ""), { sqlstate = cerr.sqlstate,
    version = m.version, file = paths.display(path) }), cerr
end

-- One transactional attempt: BEGIN, timeouts, hooks, the statements, the guard, the
-- history row and event; then, once every result is in and the transaction is sound,
-- COMMIT on its own, so a runner killed before that point leaves nothing committed.
function Runner:_transactional(m, direction, statements, path)
  local started = fs.clock_ms()
  local begun = self.single
  if self.cfg.lock == "table" and not self.single then
    local locked, lerr, cause = self:_lock_table(m, direction)
    if not locked then return nil, lerr, cause end
    if locked == "skipped" then return { duration_ms = 0, timings = {}, skipped = true } end
    begun = true
  end
  self.marks = (self.marks or 0) + 1
  local mark = fmt("%s/%s/%d", tostring(self.run_id), m.version, self.marks)
  local steps = self:_steps(m, direction, statements, begun, mark)
  local books, berr = self:_bookkeeping(m, direction, nil, { statements = #statements })
  if not books then
    if begun and not self.single then self.conn:exec("ROLLBACK") end
    return nil, errors.wrap("internal", berr)
  end
  steps[#steps + 1] = { item = { text = TX_GUARD, params = table.pack(mark) }, guard = true }
  for _, b in ipairs(books) do steps[#steps + 1] = { item = b } end
  -- behind a pooler a session setting would outlive this client; none was made there
  if not self.pooled then steps[#steps + 1] = { item = self:_bookkeeping_timeout_item() } end
  local step_ms, err, cause = self:_run_steps(m, direction, steps, path, statements)
  if step_ms and self.conn:status() ~= "intrans" then
    step_ms, err = nil, self:_ended_early(m, { tags = {}, statements = statements,
      path = path })
  end
  if not step_ms then
    if self.conn:status() ~= "idle" and not self.single then self.conn:exec("ROLLBACK") end
    return nil, err, cause
  end
  if not self.single then
    local ok, cerr, ccause = self:_commit(m, direction, path)
    if not ok then return nil, cerr, ccause end
  end
  return { duration_ms = fs.clock_ms() - started, timings = step_ms }
end

-- The migration's own transaction was ended by something in it that the checks did not
-- catch: says, from the statements' command tags, what was committed (statements 1 to
-- `through`, the ending one by default), and leaves a dirty marker unless nothing was.
function Runner:_ended_early(m, run, through)
  local stmts, at = run.statements, ended_at(run)
  local tag = at and run.tags[at]
  through = through or at
  local where = at and fmt("%s:%d", paths.display(run.path), stmts[at].line) or nil
  local fields = { version = m.version, file = paths.display(run.path),
    line = at and stmts[at].line or nil, ended_early = true }
  if tag == "ROLLBACK" and through == at then
    return errors.new("sql", fmt("%s: the statement at %s (ROLLBACK) ended the transaction " ..
      "moonshift began for it; what ran before it was rolled back, what ran after it was " ..
      "rolled back too, so nothing of it was applied", m.id, where), fields)
  end
  if self.conn:status() ~= "idle" then self.conn:exec("ROLLBACK") end
  local h = self.history
  local ok = self.conn:exec("BEGIN") and h:record(m, "dirty", nil, self.run_id) and
    h:event("fail", m, self.run_id, { ended_early = tag or "unknown" }) and
    self.conn:exec("COMMIT")
  if not ok and self.conn:status() ~= "idle" then self.conn:exec("ROLLBACK") end
  local what = at and fmt("the statement at %s (%s) ended the transaction moonshift began " ..
    "for it: statements 1 to %d of %d (up to line %d) ARE %s%s", where, tag, through,
    #stmts, stmts[through].end_line or stmts[through].line,
    tag == "PREPARE TRANSACTION" and "held by a prepared transaction" or "committed",
    through < #stmts and ", the rest was rolled back" or "") or
    "something in it ended the transaction moonshift began for it: what ran before that " ..
    "point may be committed, the rest was rolled back"
  return errors.new("sql", fmt("%s: %s. %s. Check the database, then `moonshift force %s` " ..
    "(done) or `moonshift force %s --not-applied` (to run it again)", m.id, what,
    ok and fmt("%s is marked dirty", m.id) or "marking it dirty failed too; see `moonshift " ..
    "status`", m.version, m.version), fields)
end

-- Shows the server's notices (RAISE NOTICE, ...) of a migration with the file and line of
-- the statement that sent them, and logs them.
function Runner:_report_notices(m, direction)
  local path = paths.display(direction == "up" and m.up_path or m.down_path)
  for _, batch in ipairs(self.notices or {}) do
    local line = batch.item and batch.item.line -- statements have one, moonshift's items not
    for _, n in ipairs(batch.list) do
      self.emit("notice", { id = m.id, file = path, line = line, severity = n.severity,
        sqlstate = n.sqlstate, message = n.message, detail = n.detail, hint = n.hint })
    end
    if batch.list.dropped then
      self.emit("notice", { id = m.id, file = path, severity = "NOTICE",
        message = fmt("%d more notices were dropped", batch.list.dropped) })
    end
  end
  self.notices = nil
end

-- After a connection lost during COMMIT, whether it committed: reconnects (a bounded number
-- of times), makes sure the old session is gone (its COMMIT could still be waiting in the
-- server's socket), and looks for what that COMMIT would have written. Never guesses.
function Runner:_commit_outcome(m, direction)
  local old_pid = not self.pooled and self.conn:backend_pid() or nil
  local delay, attempts = 1000, 0
  while self.connect and attempts < RECONNECT_ATTEMPTS do
    attempts = attempts + 1
    local conn = self.connect()
    if conn then
      local gone = old_pid == nil
      if old_pid then
        conn:query("SELECT pg_catalog.pg_terminate_backend($1)", old_pid)
        for _ = 1, 100 do
          local rows = conn:query("SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = $1",
            old_pid)
          gone = rows and rows[1] == nil
          if gone then break end
          proc.sleep(100)
        end
      end
      local rows = conn:query(fmt("SELECT run_id FROM %s WHERE version = $1 AND state = " ..
        "'applied'", self.history.migrations), m.version)
      conn:close()
      if rows then
        -- the lock kept others out: an up left our row, a revert removed the row
        local committed = rows[1] == nil
        if direction == "up" then committed = rows[1] ~= nil and rows[1].run_id == self.run_id end
        if committed or gone then
          return fmt("reconnected and checked: %s was %s. Run the command again to go on",
            m.id, committed and "COMMITTED" or "ROLLED BACK, nothing of it was applied")
        end
      end
    end
    proc.sleep(delay)
    delay = math.min(delay * 2, 8000)
  end
  return fmt("could not learn whether it committed (%d attempts to reconnect and check): " ..
    "`moonshift status` tells once the server is reachable", attempts)
end

-- The hooks of a non-transactional migration before its statements (before_sql) or after.
function Runner:_autocommit_hooks(m, direction, steps, before_sql)
  local in_phase = before_sql
  for _, step in ipairs(steps) do
    if step.sql_marker then
      in_phase = not before_sql
    elseif in_phase and (step.hook or step.verify_sql) then
      local hok, herr
      if step.verify_sql then
        hok, herr = self:verify_sql(m)
      else
        hok, herr = hooks.call(step.what, step.hook, hooks.ctx({ conn = self.conn,
          expect = "idle", migration = m, direction = direction, plan = self.plan_ids,
          ui = self.ui, cfg = self.cfg, spawn = step.global }), self.cfg)
      end
      if not hok then
        self.history:event("fail", m, self.run_id, { hook = step.what or "verify.sql" })
        herr.message = fmt("%s failed; it is not transactional, so its changes so far ARE " ..
          "committed and it is marked dirty; after checking, `moonshift force %s` or " ..
          "`moonshift force %s --not-applied`\n  %s", m.id, m.version, m.version, herr.message)
        return nil, herr
      end
    end
  end
  return true
end

-- A non-transactional migration: a dirty marker committed first, then the statements
-- one by one in autocommit, then the marker made clean. A crash leaves it dirty.
function Runner:_autocommit(m, direction, statements, path)
  local started = fs.clock_ms()
  local h = self.history
  local ok, err = self:_exec("BEGIN")
  if ok and self.cfg.lock == "table" then
    ok, err = self:_exec(h:lock_item().text)
    if ok and (direction == "up") == (h:applied_row(m.version) ~= nil) then
      self.conn:exec("ROLLBACK")
      return { duration_ms = 0, timings = {}, skipped = true }
    end
  end
  if ok then ok, err = h:record(m, "dirty", nil, self.run_id) end
  if ok then ok, err = h:event(direction == "up" and "start" or "start_revert", m, self.run_id,
    { transaction = false }) end
  if ok then ok, err = h:compat_applied(m, true) end
  if ok then ok, err = self:_exec("COMMIT") else self.conn:exec("ROLLBACK") end
  if not ok then return nil, err end
  ok, err = self:_exec("RESET ALL; " .. db.SESSION_SETUP)
  if not ok then return nil, err end
  local t = self:_timeouts_item(m, false)
  ok, err = self:_exec(t.text, table.unpack(t.params, 1, t.params.n))
  if not ok then return nil, err end
  -- Hooks run in autocommit too; what they change stays, like the statements'.
  local steps = self:_steps(m, direction, {}, true)
  local function run_hooks(before_sql)
    return self:_autocommit_hooks(m, direction, steps, before_sql)
  end
  ok, err = run_hooks(true)
  if not ok then return nil, err end
  local timings, k, serr, failed
  if statements.stream then
    timings, failed, serr = self:run_stream(statements, true)
    if timings then timings = {} end
    if not (timings or failed) then
      h:event("fail", m, self.run_id, { statement = 0 })
      return nil, errors.new("refused", fmt("%s: %s; none of its statements ran, but it is " ..
        "not transactional, so it was marked dirty first: `moonshift force %s --not-applied`, " ..
        "then run the command again", m.id, serr, m.version), { file = paths.display(path) })
    end
  else
    timings, k, serr = self:run_items(statements, true)
  end
  if timings then
    ok, err = run_hooks(false)
    if not ok then return nil, err end
  end
  if not timings then
    h:event("fail", m, self.run_id, { sqlstate = serr.sqlstate, statement = k })
    return nil, sqlerror.statement(m, path, failed or statements[k], serr, fmt("it is " ..
      "not transactional, " ..
      "so statements before this one stayed applied and %s is marked dirty. Fix the cause, " ..
      "undo or finish its work by hand, then `moonshift force %s` (done) or `moonshift force " ..
      "%s --not-applied` (to run it again)", m.id, m.version, m.version)), serr
  end
  local duration = math.floor(fs.clock_ms() - started)
  ok, err = self:_exec("BEGIN")
  if direction == "up" then
    if ok then ok, err = h:record(m, "applied", duration, self.run_id) end
    if ok then ok, err = h:event("apply", m, self.run_id, { duration_ms = duration,
      transaction = false }) end
    if ok then ok, err = h:compat_applied(m, false) end
  else
    if ok then ok, err = h:remove(m.version) end
    if ok then ok, err = h:event("revert", m, self.run_id, { duration_ms = duration,
      transaction = false }) end
    if ok then ok, err = h:compat_removed(m, self.previous_version) end
  end
  if ok then ok, err = self:_exec("COMMIT") else self.conn:exec("ROLLBACK") end
  if not ok then
    err.message = fmt("%s ran to its end, but recording that failed, so it is still marked " ..
      "dirty; `moonshift force %s%s` records it as %s\n  %s", m.id, m.version,
      direction == "up" and "" or " --not-applied", direction == "up" and "applied" or
      "reverted", err.message)
    return nil, err
  end
  local bt = self:_bookkeeping_timeout_item()
  self:_exec(bt.text, table.unpack(bt.params, 1, bt.params.n))
  self:_exec("RESET statement_timeout")
  return { duration_ms = fs.clock_ms() - started, timings = timings }
end

--- Applies (direction "up") or reverts ("down") one migration, retrying lock timeouts.
-- @return result { duration_ms, timings } | nil, err
function Runner:run(m, direction)
  local statements = direction == "up" and m.statements or m.down_statements
  local path = direction == "up" and m.up_path or m.down_path
  local transactional
  if direction == "up" then
    transactional = m.transaction ~= false
  else
    transactional = m.down_transaction ~= false
  end
  if transactional then
    local ok, err = runner.check_statements(statements, path)
    if not ok then return nil, err end
  end
  local attempt = 0
  while true do
    local result, err, cause
    self.conn:notices() -- anything before (CREATE ... IF NOT EXISTS of the history) is not its
    self.notices = {}
    if transactional then
      result, err, cause = self:_transactional(m, direction, statements, path)
    else
      result, err, cause = self:_autocommit(m, direction, statements, path)
    end
    self:_report_notices(m, direction)
    if result then return result end
    local state = cause and cause.sqlstate
    if not (transactional and not self.single and RETRYABLE[state]
        and attempt < self.cfg.lock_retries) then
      return nil, err
    end
    attempt = attempt + 1
    local delay = math.min(10000, 500 * 2 ^ (attempt - 1))
    delay = math.floor(delay / 2 + math.random() * delay / 2)
    self.emit("retry", { migration = m, attempt = attempt, of = self.cfg.lock_retries,
      sqlstate = state, delay_ms = delay })
    proc.sleep(delay)
  end
end

return runner
