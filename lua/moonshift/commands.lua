-- The commands as functions that return results; cli.lua prints them, workflows compose them.
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")
local hash = require("moonshift.hash")
local pg = require("moonshift.pg")
local source = require("moonshift.source")
local db = require("moonshift.db")
local history = require("moonshift.history")
local lock = require("moonshift.lock")
local plan = require("moonshift.plan")
local runner = require("moonshift.runner")
local version = require("moonshift.version")
local errors = require("moonshift.errors")
local ui_mod = require("moonshift.ui")
local hooks = require("moonshift.hooks")
local json = require("moonshift.json")
local paths = require("moonshift.paths")
local runlog = require("moonshift.runlog")
local host = require("moonshift.host")
local backup = require("moonshift.backup")
local sqlstate = require("moonshift.sqlstate")

local fmt = string.format

local commands = {}

local Session = {}
Session.__index = Session

local function new_run_id()
  local seed = fmt("%s-%d-%.6f-%d", fs.hostname(), proc.getpid(), fs.now(), math.random(1 << 30))
  return os.date("!%Y%m%dT%H%M%SZ") .. "-" .. hash.sha256(seed):sub(1, 8)
end

-- Starts reading the migrations (see source.load_begin); finish_source completes it.
local function begin_source(cfg)
  local cache = cfg.cache_dir and fmt("%s/%s.cache", cfg.cache_dir,
    hash.sha256(fs.realpath(cfg.migrations) or cfg.migrations):sub(1, 32))
  return source.load_begin(cfg.migrations, { format = cfg.format, ignore = cfg.ignore,
    load_companion = hooks.load_companion, lazy = true, cache = cache })
end

-- The migrations with their companions and verify scripts, in running order.
local function finish_source(cfg, loading)
  local set, err = loading:finish()
  if not set then return nil, err end
  for _, m in ipairs(set.migrations) do
    if m.verify_path then
      m.verify_sql, err = fs.read(m.verify_path)
      if not m.verify_sql then return nil, errors.new("usage", "cannot read " .. err) end
      m.verify_sql = m.verify_sql:gsub("^\239\187\191", ""):gsub("\r\n", "\n")
    end
  end
  local ordered
  ordered, err = plan.order(set.migrations, cfg.order)
  if not ordered then return nil, err end
  set.version_order = ordered == set.migrations -- still as loaded, sorted by version
  set.migrations = ordered
  return set
end

local function load_source(cfg)
  return finish_source(cfg, begin_source(cfg))
end

-- A session on the connection being made: the global hooks, the tracking tables' names.
local function connect(cfg, ui, pending)
  local conn, cerr, pooled = db.connect(cfg, function(msg) ui:warn(msg) end, pending)
  if not conn then return nil, cerr end
  local s = setmetatable({ cfg = cfg, ui = ui, conn = conn, pooled = pooled }, Session)
  local err
  s.hooks, err = hooks.load_global(cfg.hooks)
  if not s.hooks then
    s:close()
    return nil, err
  end
  local schema, serr = db.tracking_schema(conn, cfg)
  if not schema then
    s:close()
    return nil, serr
  end
  s.history = history.new(conn, schema, cfg)
  s.lock_key = s.history.migrations
  s.label = db.label(conn)
  return s
end

--- Opens what a command needs: the migrations, a connection, the history; for a
-- mutating command also a writable target, the run lock and the tracking tables.
-- Files are validated before the lock and again under it. `brief`: the history without
-- who applied each migration and how long it took.
local function open(cfg, ui, mutating, brief)
  local pending = db.connect_begin(cfg) -- the server starts the session meanwhile
  -- and the run lock's own session (closed on any return, unless used)
  local lock_pending <close> = mutating and cfg.lock == "advisory" and db.connect_begin(cfg)
    or nil
  local loading = begin_source(cfg)
  local s, err, rows
  if loading:has_cached_set() then
    -- The set cache will likely answer once the directory's files are all stat'ed (~25 ms
    -- at 10,000): connect meanwhile, and a read-only command reads the history too.
    -- Without it, files come first as below, so a broken file is reported without waiting
    -- for the server.
    s, err = connect(cfg, ui, pending)
    if s and not mutating then rows, err = s.history:load(brief) end
  end
  local set, lerr = finish_source(cfg, loading)
  if not set then
    if s then s:close() else pending:close() end
    return nil, lerr
  end
  for _, w in ipairs(set.warnings or {}) do ui:warn(w) end
  if not s and not err then s, err = connect(cfg, ui, pending) end -- not begun above
  if err then
    if s then s:close() end
    return nil, err
  end
  s.set = set
  if mutating and s.pooled and cfg.lock == "advisory" then
    s:close()
    return nil, errors.new("connect", fmt("%s is reached through a connection pooler (the " ..
      "server's backend pid %d is not the %d libpq was given): a session-level run lock " ..
      "cannot be trusted under transaction pooling. Connect to PostgreSQL directly, or set " ..
      "lock = \"table\" in migrate.lua; nothing was changed", s.label, s.pooled.server_pid,
      s.pooled.client_pid))
  end
  if mutating then
    s.conn:cancel_on_signal(true) -- Ctrl-C cancels the running statement; the runner rolls back
    local ok, werr = db.check_writable(s.conn)
    if not ok then
      s:close()
      return nil, werr
    end
    if cfg.lock == "advisory" then
      s.lock_conn, err = db.connect(cfg, nil, lock_pending)
      if not s.lock_conn then
        s:close()
        return nil, err
      end
      s.lock, err = lock.acquire(s.lock_conn, s.lock_key, cfg.lock_wait_ms, function(holder)
        ui:info(fmt("waiting for the run lock on %s, held by %s", s.lock_key, holder))
      end)
      if not s.lock then
        s:close()
        return nil, err
      end
    end
    -- with lock = "table", each migration's transaction locks the tracking table instead
    -- The files may have changed while we waited for the lock: check (on a thread, while the
    -- history is read), and read them again if so.
    local recheck = source.unchanged_begin(s.set)
    local herr
    rows, herr = s.history:load(brief)
    if not recheck:wait() then s.set, err = load_source(cfg) end
    if not (s.set and rows) then
      s:close()
      return nil, s.set and herr or err
    end
    s.run_id = new_run_id()
  end
  local ok, rerr = s:refresh(brief, rows)
  if not ok then
    s:close()
    return nil, rerr
  end
  return s
end

-- Splits and checks the statements of migrations about to be used (or shown).
local function prepare(list, ui)
  for _, m in ipairs(list) do
    local ok, err = source.prepare(m)
    if not ok then return nil, err end
    for _, w in ipairs(err or {}) do ui:warn(w) end
  end
  return true
end

function Session:refresh(brief, rows)
  local err
  if not rows then rows, err = self.history:load(brief) end
  if not rows then return nil, err end
  self.status = plan.status(self.set, rows)
  -- applied migrations were checked when they ran, and their checksums still match
  local ok, perr = prepare(self.status.pending, self.ui)
  if ok then ok, perr = prepare(self.status.repeatables, self.ui) end
  if not ok then return nil, perr end
  return true
end

function Session:close()
  if self.log then
    self.log:close()
    self.ui.log = nil
  end
  if self.lock then self.lock:release() end
  if self.lock_conn then self.lock_conn:close() end
  if self.conn then self.conn:close() end
end

function Session:runner()
  return runner.new({ conn = self.conn, history = self.history, cfg = self.cfg, ui = self.ui,
    run_id = self.run_id, hooks = self.hooks, plan_ids = self.plan_ids, pooled = self.pooled,
    connect = function() return db.connect(self.cfg) end,
    emit = function(event, f)
      if event == "notice" then
        self.ui:info(fmt("%s%s: %s: %s", f.file, f.line and (":" .. f.line) or "", f.severity,
          f.message))
        self.ui:event("notice", f)
      elseif event == "retry" then
        self.ui:warn(fmt("%s: lock timeout (SQLSTATE %s); retry %d of %d in %s", f.migration.id,
          f.sqlstate, f.attempt, f.of, ui_mod.duration(f.delay_ms)))
        self.ui:event("retry", { id = f.migration.id, attempt = f.attempt, of = f.of,
          sqlstate = f.sqlstate, delay_ms = f.delay_ms, blocker = f.blocker })
      else
        self.ui:event(event, f)
      end
    end })
end

-- History writes without a migration (stamp, force), in one transaction: fn(must) calls
-- must(ok, err) on each write; the first failure rolls everything back.
function Session:bookkeeping(what, fn)
  local ok, err = self.history:ensure()
  if not ok then return nil, err end
  local function must(res, e)
    if not res then error(e, 0) end
    return res
  end
  local pok, perr = pcall(function()
    must(self.conn:exec("BEGIN"))
    fn(must)
    must(self.conn:exec("COMMIT"))
  end)
  if pok then return true end
  self.conn:exec("ROLLBACK")
  return nil, errors.wrap("sql", perr, what .. " failed and was rolled back")
end

-- Starts the run log (once a change is confirmed): beside the backups unless configured.
function Session:open_log(direction, list)
  local cfg = self.cfg
  local dir = (cfg.log and cfg.log.dir) or (cfg.backup and cfg.backup.dir) or "moonshift-backups"
  if dir:sub(1, 1) ~= "/" then dir = cfg.root .. "/" .. dir end
  -- The database is the truth; a log cut short by a kill is reconciled against it.
  local prev = not cfg.log_file and runlog.last_unfinished(dir)
  if prev and prev.run_id then
    local rows = self.conn:query(fmt("SELECT name, action, pg_catalog.to_char(at AT TIME " ..
      "ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS at FROM %s WHERE run_id = $1 " ..
      "ORDER BY id DESC LIMIT 1", self.history.events), prev.run_id)
    local last = rows and rows[1]
    self.ui:warn(fmt("previous run %s ended without a final status (%s); the database shows %s",
      prev.run_id, paths.display(prev.path), last and fmt("%s %s at %s", last.name,
      last.action == "apply" and "applied" or last.action, last.at) or "nothing it changed"))
  end
  local info = self.conn:info()
  local log, err = runlog.open({ dir = dir, path = cfg.log_file, db = info.dbname,
    from = self.status.current and self.status.current.version or "0", run_id = self.run_id })
  if not log then return nil, err end
  self.log, self.ui.log = log, log
  self.ui:info("run log: " .. paths.display(log.path))
  local plan_files = json.array()
  for _, m in ipairs(list or {}) do
    local path = direction == "down" and m.down_path or m.up_path
    plan_files[#plan_files + 1] = { id = m.id, version = m.version, file = path,
      sha256 = m.checksum, transaction = m.transaction ~= false }
  end
  log:event("run_start", { tool_version = host.version, command = direction,
    database = db.describe_target(cfg), target = self.label,
    server_version = self.conn:server_version(), host = fs.hostname(), pid = proc.getpid(),
    from = self.status.current and self.status.current.version or nil,
    to = list and list[#list] and list[#list].version or nil, plan = plan_files })
  return true
end

-- Asks once on a terminal; without one, only --auto-confirm lets a change through.
-- The tracking tables are created only once the change is confirmed (and backed up).
function Session:confirm(opts, question)
  if opts.dry_run then return true end
  if opts.auto_confirm or (self.ui.interactive and self.ui:confirm(question)) then
    return true
  end
  if self.ui.interactive then
    return nil, errors.new("usage", "not confirmed; nothing was changed")
  end
  return nil, errors.new("usage", fmt("refusing to change %s without confirmation: there is " ..
    "no terminal to ask on; pass --auto-confirm (-y)", self.label))
end

local function with_session(cfg, ui, mutating, fn, brief)
  local s, err = open(cfg, ui, mutating, brief)
  if not s then return nil, err end
  local results = table.pack(pcall(fn, s))
  s:close()
  if not results[1] then error(results[2], 0) end
  return table.unpack(results, 2, results.n)
end

local function current_id(st)
  return st.current and st.current.id or "nothing applied"
end

local function brief(m)
  return { version = m.version, id = m.id, name = m.name, path = m.up_path,
    checksum = m.checksum, transaction = m.transaction ~= false }
end

--- The state of the database against the migrations; creates nothing.
-- @param opts table|nil: `brief` (for the printed status: each applied migration as its
--   version, id and applied_at only; reading applied_by and duration_ms and building full
--   entries took a fifth of its time with 10,000 rows)
-- @return table (applied, pending, dirty, drift, missing, out_of_order, current) | nil, err
function commands.status(cfg, ui, opts)
  return with_session(cfg, ui, false, function(s)
    local st = s.status
    local last = s.set.migrations[#s.set.migrations]
    local out = { format_version = 1, database = db.describe_target(cfg), target = s.label,
      target_version = last and last.version or nil,
      history_table = s.history.migrations, current = st.current and st.current.version or nil,
      current_id = st.current and st.current.id or nil,
      applied = json.array(), pending = json.array(), dirty = json.array(),
      drift = json.array(), missing = json.array(), out_of_order = json.array(),
      repeatables = json.array() }
    local applied, rows = out.applied, st.rows
    if opts and opts.brief then
      for i, m in ipairs(st.applied) do
        applied[i] = { version = m.version, id = m.id, applied_at = rows[m].applied_at }
      end
    else
      for i, m in ipairs(st.applied) do
        local row, b = rows[m], brief(m)
        b.applied_at, b.applied_by, b.duration_ms = row.applied_at, row.applied_by, row.duration_ms
        applied[i] = b
      end
    end
    for _, m in ipairs(st.pending) do out.pending[#out.pending + 1] = brief(m) end
    for _, m in ipairs(st.out_of_order) do out.out_of_order[#out.out_of_order + 1] = brief(m) end
    for _, d in ipairs(st.dirty) do
      local b = brief(d.migration)
      b.started_at, b.run_id = d.row.applied_at, d.row.run_id
      out.dirty[#out.dirty + 1] = b
    end
    for _, d in ipairs(st.drift) do
      local b = brief(d.migration)
      b.recorded_checksum = d.row.checksum
      out.drift[#out.drift + 1] = b
    end
    for _, r in ipairs(st.missing) do
      out.missing[#out.missing + 1] = { version = r.version, id = r.name,
        applied_at = r.applied_at }
    end
    for _, r in ipairs(st.repeatables) do out.repeatables[#out.repeatables + 1] = brief(r) end
    return out
  end, opts and opts.brief)
end

-- Prints the plan and the SQL of each migration (--dry-run).
local function print_dry_run(s, list, direction)
  for i, m in ipairs(list) do
    local path = direction == "up" and m.up_path or m.down_path
    local stmts = direction == "up" and m.statements or m.down_statements
    s.ui:result(fmt("-- [%d/%d] %s %s (%s, %d statements%s)", i, #list,
      direction == "up" and "apply" or "revert", m.id, paths.display(path), #stmts,
      m.transaction == false and ", no transaction" or ""))
    for _, stmt in ipairs(stmts) do
      local text = stmt.text:gsub("%s+$", "")
      if stmt.kind == "sql" and text:sub(-1) ~= ";" then text = text .. ";" end
      s.ui:result(text)
    end
  end
  return { dry_run = true, planned = #list }
end

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

local function ticker(s, i, n, m)
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
        if row.blockers ~= pg.null then s.last_blocker = row.blockers end
      end
    end
    s.ui:live(fmt("[%d/%d] %s  running  %s%s", i, n, m.id, ui_mod.duration(now - started), phase))
  end
end

-- The statement_timeout moonshift sets for a migration, if any.
local function cfg_timeout(cfg, m)
  local ms = (m.companion or {}).statement_timeout_ms or cfg.statement_timeout_ms
  return ms and ui_mod.duration(ms) or nil
end

-- Runs a list of migrations in one direction, one transaction each (or all in one).
local function execute(s, list, direction, opts)
  local done, started = {}, fs.clock_ms()
  local ids = {}
  for i, m in ipairs(list) do ids[i] = m.id end
  s.plan_ids = ids
  for _, m in ipairs(s.pooled and list or {}) do
    local tx = m.transaction
    if direction == "down" then tx = m.down_transaction end
    if tx == false then
      return nil, errors.new("connect", fmt("%s runs outside a transaction, which a " ..
        "transaction pooler would spread over server connections with its session " ..
        "settings; run it with a direct connection; nothing was changed", m.id))
    end
  end
  local eok, eerr = s.history:ensure()
  if not eok then return nil, eerr end
  if not s.log then
    local lok, lerr = s:open_log(direction, list)
    if not lok then return nil, lerr end
  end
  local r = s:runner()
  local function global(name, extra)
    local g = s.hooks[name]
    if not g then return true end
    local o = { ui = s.ui, cfg = s.cfg, plan = ids, direction = direction }
    for k, v in pairs(extra or {}) do o[k] = v end
    return hooks.call(paths.display(g.path), g.fn, hooks.ctx(o), s.cfg)
  end
  s.ui:event("run_start", { run_id = s.run_id, direction = direction, target = s.label,
    plan = json.array(ids) })
  local bok, berr = global("before_run", { conn = s.conn, expect = "idle" })
  if not bok then return nil, berr end
  if opts.single_transaction then
    for _, m in ipairs(list) do
      if m.transaction == false then
        return nil, errors.new("usage", m.id .. " is not transactional, so it cannot run " ..
          "inside --single-transaction; nothing was changed")
      end
    end
    local ok, err = s.conn:exec("BEGIN")
    if not ok then return nil, errors.wrap("sql", err) end
    r.single = true
  end
  local function failed(m, err)
    local sig = host.interrupted()
    if sig and err.kind ~= "interrupted" then
      err = errors.new("interrupted", fmt("interrupted (SIG%s) during %s; %s", sig, m.id,
        m.transaction == false and "it is not transactional and is left dirty; see " ..
        "`moonshift status`" or "rolled back, nothing of it was applied"))
    end
    if err.kind == "interrupted" then err.exit_code = select(2, host.interrupted()) end
    if err.sqlstate == sqlstate.QUERY_CANCELED then
      -- a statement timeout: say which setting and where it came from
      local rows = s.conn:query("SELECT setting, source FROM pg_catalog.pg_settings " ..
        "WHERE name = 'statement_timeout'")
      local row = rows and rows[1]
      local mine = cfg_timeout(s.cfg, m)
      err.message = err.message .. fmt("\n  statement_timeout was %s (%s); change it with " ..
        "--statement-timeout or statement_timeout in migrate.lua or the migration's .lua",
        mine or (row and (row.setting .. "ms") or "?"),
        mine and "set by moonshift" or ("from the server's " .. (row and row.source or "?")))
    end
    if err.sqlstate == sqlstate.LOCK_NOT_AVAILABLE and s.last_blocker then
      err.message = err.message .. "\n  blocked by " .. s.last_blocker
    end
    if s.restore_command then
      err.message = err.message .. "\n  to return to the state before this run:\n    " ..
        s.restore_command
    end
    if r.single then
      s.conn:exec("ROLLBACK")
      err.message = err.message .. "\n  --single-transaction: the whole run was rolled back"
      done = {}
    end
    -- on_error sees the failure after the rollback, and no database handle
    local ok, herr = global("on_error", { migration = m, error = {
      migration = m.id, version = m.version, kind = err.kind, message = err.message,
      file = err.file, line = err.line, sqlstate = err.sqlstate, statement = err.statement } })
    if not ok then s.ui:warn(tostring(herr)) end
    s.ui:event("migration_failed", { id = m.id, version = m.version, file = err.file,
      line = err.line, column = err.column, sqlstate = err.sqlstate, message = err.message,
      kind = err.kind, sql = err.statement, detail = err.detail, hint = err.hint,
      traceback = err.traceback, restore_command = s.restore_command })
    s.ui:event("run_failed", { kind = err.kind, message = err.message, done = #done })
    err.done = done
    return nil, err
  end
  for i, m in ipairs(list) do
    if direction == "down" then
      -- the version left current once m is reverted (golang-migrate compat)
      local prev
      for _, a in ipairs(s.status.applied) do
        if version.compare(a.version, m.version) < 0 and
            (not prev or version.compare(a.version, prev) > 0) then prev = a.version end
      end
      r.previous_version = prev
    end
    s.ui:event("migration_start", { id = m.id, version = m.version, direction = direction,
      file = direction == "up" and m.up_path or m.down_path, checksum = m.checksum })
    if host.interrupted() then
      return failed(m, errors.new("interrupted", fmt("interrupted before %s; nothing of it " ..
        "was applied", m.id)))
    end
    s.last_blocker = nil
    r.on_tick = ticker(s, i, #list, m)
    local res, err = r:run(m, direction)
    if not res then
      s.ui:step(i, #list, m.id, "FAILED")
      return failed(m, err)
    end
    local stmts = direction == "up" and m.statements or m.down_statements
    local file = paths.display(direction == "up" and m.up_path or m.down_path)
    for k = 1, #stmts do
      if res.timings[k] then
        s.ui:event("statement", { id = m.id, file = file, line = stmts[k].line,
          elapsed_ms = res.timings[k] })
      end
    end
    if res.skipped then
      s.ui:step(i, #list, m.id, "skipped (another runner did it)")
    else
      s.ui:step(i, #list, m.id, direction == "up" and "ok" or "reverted", res.duration_ms)
    end
    s.ui:event("migration_done", { id = m.id, version = m.version,
      elapsed_ms = res.duration_ms })
    done[#done + 1] = { id = m.id, version = m.version, duration_ms = res.duration_ms }
    -- The lock lives on its own connection, which no migration can touch; what can go
    -- wrong is that connection dropping, so look at most once a second (and at the end).
    local now = fs.clock_ms()
    local check = s.lock and (i == #list or now - (s.lock_checked or 0) >= 1000)
    if check then s.lock_checked = now end
    if check and not s.lock:held() then
      return failed(m, errors.new("refused", fmt("the run lock was lost after %s (its " ..
        "connection dropped); stopped before the next migration. Re-run to continue", m.id)))
    end
  end
  if direction == "up" and not opts.to then
    for _, rep in ipairs(s.status.repeatables) do
      local res, err = r:run(rep, "up")
      if not res then return failed(rep, err) end
      s.ui:step(#done + 1, #done + 1, rep.id, "ok", res.duration_ms)
      done[#done + 1] = { id = rep.id, duration_ms = res.duration_ms }
    end
  end
  if r.single then
    local ok, err = s.conn:exec("COMMIT")
    if not ok then return failed(list[#list], errors.wrap("sql", err, "COMMIT failed")) end
  end
  local ok, rerr = s:refresh()
  if not ok then return nil, rerr end
  local res = { done = done, duration_ms = fs.clock_ms() - started, run_id = s.run_id }
  local aok, aerr = global("after_run", { results = done })
  if not aok then return nil, aerr end
  s.ui:event("run_done", { run_id = s.run_id, done = #done, elapsed_ms = res.duration_ms,
    current = s.status.current and s.status.current.version or nil })
  return res
end

local function target_version(s, v)
  if not v then return nil end
  return plan.find(s.set, v)
end

local function backup_dir(cfg)
  local dir = (cfg.backup and cfg.backup.dir) or "moonshift-backups"
  if dir:sub(1, 1) ~= "/" then dir = cfg.root .. "/" .. dir end
  return dir
end

-- Checks, before connecting or locking, what a backup needs: pg_dump, the directory.
local function backup_preflight(cfg)
  local pre, err = backup.preflight({ conninfo = cfg.database, dir = backup_dir(cfg),
    pg_dump = cfg.backup and cfg.backup.pg_dump })
  if not pre then return nil, err end
  return true
end

-- Dumps the database (under the lock, before anything changes); nil, err (kind backup).
function Session:backup()
  local cfg = self.cfg
  local res, err = backup.run({ conninfo = cfg.database, dir = backup_dir(cfg),
    db_name = self.conn:info().dbname, pg_dump = cfg.backup and cfg.backup.pg_dump,
    version = self.status.current and self.status.current.version or "0",
    server_version_num = self.conn:server_version() })
  if not res then
    self.ui:event("backup_failed", { message = err.message })
    return nil, errors.wrap("backup", err, "nothing was migrated")
  end
  self.restore_command = res.restore_command
  self.ui:info(fmt("backup: %s (%s, %s)", paths.display(res.path),
    res.size >= 1048576 and fmt("%.1f MB", res.size / 1048576) or fmt("%d kB", res.size // 1024),
    ui_mod.duration(res.elapsed_ms)))
  self.ui:event("backup", { path = res.path, size = res.size, elapsed_ms = res.elapsed_ms,
    restore_command = res.restore_command })
  return res
end

--- Applies pending migrations (up to opts.to).
-- @return { done = {...}, current = version } | nil, err
function commands.up(cfg, ui, opts)
  local want_backup = not opts.dry_run and (opts.backup_first or
    (cfg.backup and cfg.backup.before_run))
  if want_backup then
    local ok, err = backup_preflight(cfg)
    if not ok then return nil, err end
  end
  return with_session(cfg, ui, not opts.dry_run, function(s)
    local ok, err = plan.check_runnable(s.status, cfg)
    if not ok then return nil, err end
    local to
    if opts.to then
      to, err = target_version(s, opts.to)
      if not to then return nil, err end
    end
    local list = plan.up(s.status, to)
    if opts.count then
      while #list > opts.count do table.remove(list) end
    end
    if #list == 0 and not (s.status.repeatables[1] and not to) then
      return { done = {}, current = current_id(s.status), nothing = true, target = s.label }
    end
    if opts.dry_run then return print_dry_run(s, list, "up") end
    ok, err = s:confirm(opts, fmt("Apply %d migration%s to %s?", #list, #list == 1 and "" or "s",
      s.label))
    if not ok then return nil, err end
    if want_backup then
      ok, err = s:open_log("up", list)
      if not ok then return nil, err end
      local b, berr = s:backup()
      if not b then return nil, berr end
    end
    local res, rerr = execute(s, list, "up", opts)
    if not res then return nil, rerr end
    if want_backup and cfg.backup and cfg.backup.keep then
      for _, path in ipairs(backup.prune(backup_dir(cfg), cfg.backup.keep,
        s.conn:info().dbname) or {}) do
        ui:info("pruned old backup " .. paths.display(path))
      end
    end
    res.current, res.target = current_id(s.status), s.label
    return res
  end)
end

--- Reverts applied migrations: the last opts.count (default 1), all above opts.to, or all.
function commands.down(cfg, ui, opts)
  return with_session(cfg, ui, not opts.dry_run, function(s)
    local ok, err = plan.check_runnable(s.status, { allow_out_of_order = true })
    if not ok then return nil, err end
    local to
    if opts.to then
      to, err = target_version(s, opts.to)
      if not to then return nil, err end
    end
    local list
    list, err = plan.down(s.status, opts.all and math.huge or (opts.count or 1), to)
    if not list then return nil, err end
    ok, err = prepare(list, ui)
    if not ok then return nil, err end
    if #list == 0 then
      return { done = {}, current = current_id(s.status), nothing = true, target = s.label }
    end
    if opts.dry_run then return print_dry_run(s, list, "down") end
    ok, err = s:confirm(opts, fmt("Revert %d migration%s on %s (%s)?", #list,
      #list == 1 and "" or "s", s.label, list[1].id))
    if not ok then return nil, err end
    local res, rerr = execute(s, list, "down", opts)
    if not res then return nil, rerr end
    res.current, res.target, res.reverted = current_id(s.status), s.label, true
    return res
  end)
end

--- Moves to exactly version opts.version: up if it is pending, down if newer ones are applied.
function commands.goto_version(cfg, ui, opts)
  return with_session(cfg, ui, not opts.dry_run, function(s)
    local to, err = target_version(s, opts.version)
    if not to then return nil, err end
    local ok
    ok, err = plan.check_runnable(s.status, cfg)
    if not ok then return nil, err end
    local down, derr = plan.down(s.status, 0, to)
    if not down then return nil, derr end
    ok, err = prepare(down, ui)
    if not ok then return nil, err end
    local up = plan.up(s.status, to)
    if #down > 0 and #up > 0 then
      return nil, errors.new("refused", fmt("cannot go to %s: some migrations below it are " ..
        "pending and some above it applied", to.id))
    end
    local list, direction = (#down > 0) and down or up, (#down > 0) and "down" or "up"
    if #list == 0 then
      return { done = {}, current = current_id(s.status), nothing = true, target = s.label }
    end
    if opts.dry_run then return print_dry_run(s, list, direction) end
    ok, err = s:confirm(opts, fmt("%s %d migration%s on %s to reach %s?",
      direction == "up" and "Apply" or "Revert", #list, #list == 1 and "" or "s", s.label, to.id))
    if not ok then return nil, err end
    local res, rerr = execute(s, list, direction, { to = to })
    if not res then return nil, rerr end
    res.current, res.target, res.reverted = current_id(s.status), s.label, direction == "down"
    return res
  end)
end

--- Reverts the newest applied migration and applies it again.
function commands.redo(cfg, ui, opts)
  return with_session(cfg, ui, not opts.dry_run, function(s)
    local ok, err = plan.check_runnable(s.status, cfg)
    if not ok then return nil, err end
    local list, derr = plan.down(s.status, 1)
    if not list then return nil, derr end
    ok, err = prepare(list, ui)
    if not ok then return nil, err end
    if #list == 0 then
      return nil, errors.new("refused", "nothing is applied, so nothing to redo")
    end
    local m = list[1]
    if opts.dry_run then
      print_dry_run(s, list, "down")
      return print_dry_run(s, list, "up")
    end
    ok, err = s:confirm(opts, fmt("Revert and re-apply %s on %s?", m.id, s.label))
    if not ok then return nil, err end
    local res, rerr = execute(s, list, "down", {})
    if not res then return nil, rerr end
    local res2, uerr = execute(s, list, "up", { to = m })
    if not res2 then return nil, uerr end
    return { done = res2.done, current = current_id(s.status), target = s.label, redo = m.id }
  end)
end

--- Records migrations up to opts.version as applied without running them; rows of
-- newer ones are removed. For adopting an existing database.
function commands.stamp(cfg, ui, opts)
  return with_session(cfg, ui, true, function(s)
    local to, err = target_version(s, opts.version)
    if not to then return nil, err end
    local ok
    ok, err = s:confirm(opts, fmt("Record %s as the current version of %s without running " ..
      "anything?", to.id, s.label))
    if not ok then return nil, err end
    local h, changed = s.history, {}
    ok, err = s:bookkeeping("stamp", function(must)
      for _, m in ipairs(s.set.migrations) do
        local row = s.status.rows[m]
        if version.compare(m.version, to.version) <= 0 then
          if not row or row.state ~= "applied" or row.checksum ~= m.checksum then
            must(h:record(m, "applied", nil, s.run_id))
            must(h:event("stamp", m, s.run_id))
            changed[#changed + 1] = m.id
          end
        elseif row then
          must(h:remove(m.version))
          must(h:event("unstamp", m, s.run_id))
          changed[#changed + 1] = m.id
        end
      end
      must(h:sync_compat(to.version, false))
    end)
    if not ok then return nil, err end
    return { stamped = to.id, changed = changed, target = s.label }
  end)
end

--- Resolves one migration by hand: marks it applied (clears dirty), or with
-- opts.not_applied removes its row so it runs again.
function commands.force(cfg, ui, opts)
  return with_session(cfg, ui, true, function(s)
    local m, err = target_version(s, opts.version)
    if not m then return nil, err end
    local ok
    ok, err = s:confirm(opts, fmt("Mark %s as %s on %s without running anything?", m.id,
      opts.not_applied and "not applied" or "applied", s.label))
    if not ok then return nil, err end
    local h = s.history
    ok, err = s:bookkeeping("force", function(must)
      if opts.not_applied then
        must(h:remove(m.version))
      else
        must(h:record(m, "applied", nil, s.run_id))
      end
      must(h:event("force", m, s.run_id, { applied = not opts.not_applied }))
      must(h:sync_compat(not opts.not_applied and m.version or nil, false))
    end)
    if not ok then return nil, err end
    return { forced = m.id, applied = not opts.not_applied, target = s.label }
  end)
end

--- The event log (newest last).
function commands.history(cfg, ui, opts)
  return with_session(cfg, ui, false, function(s)
    local rows, err = s.history:list_events(opts.limit)
    if not rows then return nil, err end
    local out = json.array()
    for _, r in ipairs(rows) do
      local e = {}
      for k, v in pairs(r) do if v ~= pg.null then e[k] = v end end
      out[#out + 1] = e
    end
    return { events = out, target = s.label }
  end)
end

--- Validates files and compares with the database: code 0 up to date, 3 pending, 9 refused.
function commands.check(cfg, ui, opts)
  local st, err = commands.status(cfg, ui, opts)
  if not st then return nil, err end
  local problems = #st.dirty + #st.drift + #st.missing
  if #st.out_of_order > 0 and not cfg.allow_out_of_order then
    problems = problems + #st.out_of_order
  end
  st.verdict = problems > 0 and "refused" or (#st.pending > 0 and "pending" or "ok")
  return st
end

--- `moonshift backup`: a pg_dump of the database now, checked with pg_restore --list.
-- @return { path, size, elapsed_ms, restore_command } | nil, err (kind backup)
function commands.backup(cfg, ui)
  local ok, err = backup_preflight(cfg)
  if not ok then return nil, err end
  return with_session(cfg, ui, false, function(s)
    return s:backup()
  end)
end

--- `moonshift backups`: the backups in the backup directory, oldest first.
function commands.backups(cfg)
  return { dir = backup_dir(cfg), backups = json.array(backup.list(backup_dir(cfg)) or {}) }
end

--- Re-runs the verify functions and .verify.sql of applied migrations (all, or the
-- versions given) in one READ ONLY transaction.
-- @return { results = { { id, version, ok, message } }, failed = n } | nil, err
function commands.verify(cfg, ui, opts)
  opts = opts or {}
  return with_session(cfg, ui, false, function(s)
    local wanted
    if opts.versions and #opts.versions > 0 then
      wanted = {}
      for _, v in ipairs(opts.versions) do
        local m, err = plan.find(s.set, v)
        if not m then return nil, err end
        wanted[m] = true
      end
    end
    local ok, err = s.conn:exec("BEGIN READ ONLY")
    if not ok then return nil, errors.wrap("sql", err) end
    local r = s:runner()
    local results, failed = json.array(), 0
    for _, m in ipairs(s.status.applied) do
      local companion = m.companion or {}
      if (not wanted or wanted[m]) and (companion.verify or m.verify_sql) then
        s.conn:exec("SAVEPOINT moonshift_verify")
        local vok, verr = true, nil
        if companion.verify then
          vok, verr = hooks.call(paths.display(m.companion_path) .. " verify",
            companion.verify, hooks.ctx({ conn = s.conn, expect = "intrans", migration = m,
              direction = "up", ui = ui, cfg = cfg }), cfg)
        end
        if vok and m.verify_sql then vok, verr = r:_verify_sql(m) end
        s.conn:exec("ROLLBACK TO SAVEPOINT moonshift_verify")
        results[#results + 1] = { id = m.id, version = m.version, ok = vok and true or false,
          message = verr and verr.message or nil }
        if not vok then failed = failed + 1 end
      end
    end
    s.conn:exec("ROLLBACK")
    return { results = results, failed = failed, target = s.label }
  end)
end

--- The API a workflow or script gets: commands as functions returning results.
-- Each returns its result, or nil and an error; nothing is printed but progress.
function commands.api(cfg, ui)
  local ms = {}
  function ms.status() return commands.status(cfg, ui) end
  function ms.check() return commands.check(cfg, ui) end
  function ms.up(o) return commands.up(cfg, ui, o or {}) end
  function ms.down(o) return commands.down(cfg, ui, o or {}) end
  function ms.goto_version(o) return commands.goto_version(cfg, ui, o or {}) end
  function ms.verify(o)
    local res, err = commands.verify(cfg, ui, o)
    if not res then return nil, err end
    if res.failed > 0 then
      local first
      for _, x in ipairs(res.results) do if not x.ok then first = x break end end
      return nil, errors.new("verify", fmt("%d verification%s failed; first: %s: %s", res.failed,
        res.failed == 1 and "" or "s", first.id, first.message), { results = res })
    end
    return res
  end
  function ms.history(o) return commands.history(cfg, ui, o or {}) end
  function ms.backup(o) return commands.backup(cfg, ui, o or {}) end
  ms.log = { info = function(m) ui:info(tostring(m)) end,
    warn = function(m) ui:warn(tostring(m)) end }
  return ms
end

-- Runs a workflow function or script chunk with the API; a failure is an error of the
-- kind the failing command gave, or a hook error (exit 7) with its file and line.
local function run_user(what, fn, cfg, ui, args)
  local ms = commands.api(cfg, ui)
  local results = table.pack(xpcall(fn, function(e)
    return { err = e, traceback = debug.traceback(tostring(e), 2) }
  end, ms, args))
  if not results[1] then
    return nil, hooks.failure(what, results[2].err, results[2].traceback)
  end
  local res, err = results[2], results[3]
  if res == false or (res == nil and err ~= nil) then
    if errors.is(err) then return nil, err end
    return nil, errors.new("hook", fmt("%s failed: %s", what, tostring(err or "returned false")))
  end
  return res == nil and true or res
end

--- `moonshift do NAME [args]`: a workflow from migrate.lua.
function commands.workflow(cfg, ui, opts)
  local wf = cfg.workflows and cfg.workflows[opts.name]
  if type(wf) ~= "function" then
    local names = {}
    for k in pairs(cfg.workflows or {}) do names[#names + 1] = tostring(k) end
    table.sort(names)
    return nil, errors.new("usage", fmt("no workflow %q in %s%s", opts.name,
      cfg.path and paths.display(cfg.path) or "migrate.lua (none found)",
      #names > 0 and (" (has: " .. table.concat(names, ", ") .. ")") or ""))
  end
  return run_user("workflow " .. opts.name, wf, cfg, ui, opts.args)
end

--- `moonshift script FILE.lua [args]`: a Lua file run with `ms` and `args`.
function commands.script(cfg, ui, opts)
  local sandbox = require("moonshift.sandbox")
  local env = sandbox.env()
  local src, err = fs.read(opts.file)
  if not src then return nil, errors.new("usage", "cannot read " .. err) end
  local chunk, lerr = load(src, "@" .. opts.file, "t", env)
  if not chunk then return nil, errors.new("usage", lerr) end
  return run_user(paths.display(opts.file), function(ms, args)
    env.ms, env.args = ms, args
    return chunk(ms, args)
  end, cfg, ui, opts.args)
end

local function slug(name)
  local s = name:lower():gsub("[^%w]+", "_"):gsub("^_+", ""):gsub("_+$", "")
  return s
end

--- Creates the files of a new migration, numbered after the newest one.
-- @return { files = {...} } | nil, err
function commands.new(cfg, _, opts)
  local name = slug(opts.name or "")
  if name == "" then return nil, errors.new("usage", "new needs a name, e.g. add_users_email") end
  if not fs.exists(cfg.migrations) then
    local ok, err = fs.mkdir_p(cfg.migrations, tonumber("755", 8))
    if not ok then return nil, errors.new("usage", err) end
  end
  local set, err = load_source(cfg)
  if not set then return nil, err end
  local last = set.migrations[#set.migrations]
  local v
  if last and last.version:match("^%d%d%d%d%d%d%d%d%d%d%d%d%d%d$") or
      (not last and opts.timestamp) then
    v = os.date("!%Y%m%d%H%M%S")
  elseif last and last.version:match("^%d+$") then
    local n = math.tointeger(tonumber(last.version)) + 1
    v = fmt("%0" .. #last.version .. "d", n)
  elseif last and set.format ~= "flyway" then
    return nil, errors.new("usage", "cannot number after version " .. last.version ..
      "; create the files by hand")
  else
    v = last and tostring(math.tointeger(tonumber(last.version:match("^%d+") or "0")) + 1)
      or "0001"
  end
  local files
  if set.format == "flyway" then
    files = { fmt("V%s__%s.sql", v, name), fmt("U%s__%s.sql", v, name) }
  elseif set.format == "dbmate" or set.format == "goose" then
    files = { fmt("%s_%s.sql", v, name) }
  else
    files = { fmt("%s_%s.up.sql", v, name), fmt("%s_%s.down.sql", v, name) }
  end
  local created = {}
  for i, f in ipairs(files) do
    local path = cfg.migrations .. "/" .. f
    local body
    if set.format == "dbmate" then
      body = "-- migrate:up\n\n\n-- migrate:down\n\n"
    elseif set.format == "goose" then
      body = "-- +goose Up\n\n\n-- +goose Down\n\n"
    elseif i == 1 then
      body = fmt("-- %s: %s\n\n", v, name)
    else
      body = fmt("-- revert %s: %s\n\n", v, name)
    end
    local fh, ferr = fs.open_excl(path, tonumber("644", 8))
    if not fh then return nil, errors.new("usage", ferr) end
    fh:write(body)
    fh:close()
    created[#created + 1] = path
  end
  return { files = created, version = v }
end

return commands
