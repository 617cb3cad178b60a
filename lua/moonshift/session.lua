-- What a command works on: the configuration, the migrations, a connection, the history
-- and, for a change, the run lock. Opened in one order, closed by `<close>`.
--
-- The order: the connection (and the run lock's own) is started on a thread, the migrations
-- directory is fingerprinted on another; the history is read while that runs; then the
-- files are loaded (from the set cache when the fingerprint matches). A broken file is
-- reported before a connection failure, whatever finished first. A change then checks the
-- target is writable, takes the lock, and re-checks the files under it.
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")
local hash = require("moonshift.hash")
local host = require("moonshift.host")
local source = require("moonshift.source")
local db = require("moonshift.db")
local history = require("moonshift.history")
local peers = require("moonshift.peers")
local lock = require("moonshift.lock")
local plan = require("moonshift.plan")
local runner = require("moonshift.runner")
local errors = require("moonshift.errors")
local hooks = require("moonshift.hooks")
local json = require("moonshift.json")
local paths = require("moonshift.paths")
local runlog = require("moonshift.runlog")
local backup = require("moonshift.backup")
local ui_mod = require("moonshift.ui")

local fmt = string.format

local session = {}

local Session = {}
Session.__index = Session

local function new_run_id()
  local seed = fmt("%s-%d-%.6f-%d", fs.hostname(), proc.getpid(), fs.now(), math.random(1 << 30))
  return os.date("!%Y%m%dT%H%M%SZ") .. "-" .. hash.sha256(seed):sub(1, 8)
end

--- Starts reading the configured migrations (see source.load_begin).
function session.begin_source(cfg)
  local cache = cfg.cache_dir and fmt("%s/%s.cache", cfg.cache_dir,
    hash.sha256(fs.realpath(cfg.migrations) or cfg.migrations):sub(1, 32))
  return source.load_begin(cfg.migrations, { format = cfg.format, ignore = cfg.ignore,
    load_companion = function(path) return hooks.load_companion(path, cfg) end, lazy = true,
    cache = cache })
end

--- Completes session.begin_source: the migrations with their verify scripts, in running order.
-- @return set | nil, err
function session.finish_source(cfg, loading)
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
  ordered, err = plan.order(set.migrations, cfg.order, cfg)
  if not ordered then return nil, err end
  set.version_order = ordered == set.migrations -- still as loaded, sorted by version
  set.migrations = ordered
  return set
end

--- The configured migrations, read at once.
function session.load_source(cfg)
  return session.finish_source(cfg, session.begin_source(cfg))
end

-- The connection's side of a session: the global hooks and the tracking tables' names.
function Session:attach(pending)
  local conn, err, pooled = db.connect(self.cfg, function(msg) self.ui:warn(msg) end, pending)
  if not conn then return nil, err end
  self.conn, self.pooled, self.label = conn, pooled, db.label(conn)
  self.hooks, err = hooks.load_global(self.cfg.hooks, self.cfg)
  if not self.hooks then return nil, err end
  local schema, serr = db.tracking_schema(conn, self.cfg)
  if not schema then return nil, serr end
  self.history = history.new(conn, schema, self.cfg)
  self.lock_key = self.history.migrations
  return true
end

-- For a change: a writable target, the run lock, and the files re-checked under it (they
-- may have changed while we waited). Returns the history rows read meanwhile.
function Session:take_lock(brief)
  local cfg = self.cfg
  local ok, err = self:check_target()
  if not ok then return nil, err end
  self.conn:cancel_on_signal(true) -- Ctrl-C cancels the running statement; the runner rolls back
  -- With lock = "table" each migration's transaction also locks the tracking table, so
  -- runners behind a pooler exclude each other; a direct connection still takes the run
  -- lock, which alone covers what runs outside a transaction (CONCURRENTLY, global hooks).
  if cfg.lock == "advisory" or not self.pooled then
    local pending = self.lock_pending
    self.lock_pending = nil
    self.lock_conn, err = db.connect(cfg, nil, pending)
    if not self.lock_conn then return nil, err end
    self.lock, err = lock.acquire(self.lock_conn, self.lock_key, cfg.lock_wait_ms,
      function(holder)
        self.ui:info(fmt("waiting for the run lock on %s, held by %s", self.lock_key, holder))
      end)
    if not self.lock then return nil, err end
  end
  local recheck = source.unchanged_begin(self.set)
  local rows, herr = self.history:load(brief)
  if not recheck:wait() then
    self.set, err = session.load_source(cfg)
    if not self.set then return nil, err end
    for _, w in ipairs(self.set.warnings or {}) do self.ui:warn(w) end
  end
  if not rows then
    if herr.kind == "lock" or herr.kind == "interrupted" then
      herr.message = herr.message .. "; nothing was changed"
    end
    return nil, herr
  end
  return rows
end

--- Whether the target can be changed at all: writable, and not behind a transaction pooler
-- with the session lock.
-- @return true | nil, err (kind connect)
function Session:check_target()
  if self.pooled and self.cfg.lock == "advisory" then
    return nil, errors.new("connect", fmt("%s is reached through a connection pooler (the " ..
      "server's backend pid %d is not the %d libpq was given): a session-level run lock " ..
      "cannot be trusted under transaction pooling. Connect to PostgreSQL directly, or set " ..
      "lock = \"table\" in migrate.lua; nothing was changed", self.label,
      self.pooled.server_pid, self.pooled.client_pid))
  end
  return db.check_writable(self.conn)
end

--- Opens what a command needs.
-- @param cfg table: the configuration (config.load)
-- @param ui the ui
-- @param opts table|nil: `change` (a mutating command: writable target, run lock, tracking
--   tables; else Session:begin_change does that later), `brief` (the history without who
--   applied each migration and how long it took)
-- @return Session (close it, or use `<close>`) | nil, err
function session.open(cfg, ui, opts)
  opts = opts or {}
  local s = setmetatable({ cfg = cfg, ui = ui, run_id = new_run_id(),
    adopting = opts.adopt }, Session)
  ui.run_id = s.run_id -- on every event, from the first
  local pending = db.connect_begin(cfg)
  if opts.change and cfg.lock == "advisory" then
    s.lock_pending = db.connect_begin(cfg)
  end
  local loading = session.begin_source(cfg)
  if loading.failed then -- no migrations directory: said without waiting for the server
    pending:close()
    s:close()
    return nil, loading.failed
  end
  local attached, cerr = s:attach(pending)
  local rows, herr
  if attached and not opts.change then rows, herr = s.history:load(opts.brief) end
  local set, lerr = session.finish_source(cfg, loading)
  if not set or not attached then
    if not s.conn then pending:close() end
    s:close()
    return nil, set and cerr or lerr
  end
  s.set = set
  for _, w in ipairs(set.warnings or {}) do ui:warn(w) end
  if opts.change then rows, herr = s:take_lock(opts.brief) end
  local ok, rerr = false, herr
  if rows then ok, rerr = s:refresh(opts.brief, rows) end
  if ok and opts.change and s.peers then ok, rerr = false, s:peer_refusal() end
  if not ok then
    s:close()
    return nil, rerr
  end
  return s
end

--- Turns a session opened without `change` into one for a change: writable target, run
-- lock (its connection made now: a no-op up made it for nothing, and two connections at
-- once cost it ~15 ms), files and history read again under it.
-- @return true | nil, err
function Session:begin_change(brief)
  local rows, err = self:take_lock(brief)
  if not rows then return nil, err end
  local ok
  ok, err = self:refresh(brief, rows)
  if ok and self.peers then return nil, self:peer_refusal() end
  return ok, err
end

--- Opens a session, runs fn(s) and closes it whatever happens.
-- @return what fn returns
function session.with(cfg, ui, opts, fn)
  local s <close>, err = session.open(cfg, ui, opts)
  if not s then return nil, err end
  return fn(s)
end

--- Reads and checks the statements of migrations about to be used (or shown): what cannot
-- run is refused before anything does.
-- @return true | nil, err (kind usage)
function Session:check(list)
  for _, m in ipairs(list) do
    local ok, err = source.check(m)
    if not ok then return nil, err end
    for _, w in ipairs(err or {}) do self.ui:warn(w) end
  end
  return true
end

--- Reads the history again and compares it with the migrations; the pending ones are
-- checked (applied ones were checked when they ran, and their checksums still match).
-- @return true | nil, err
function Session:refresh(brief, rows)
  local err
  if not rows then rows, err = self.history:load(brief) end
  if not rows then return nil, err end
  self.status = plan.status(self.set, rows)
  -- no history of our own: another tool's table may say what is applied (a read only then,
  -- so a tracked database pays nothing)
  self.peers = nil
  if #rows.list == 0 and not self.adopting then
    local found, derr = peers.detect(self.conn, self.cfg)
    if not found then return nil, derr end
    if #found > 0 then self.peers = found end
    for _, f in ipairs(derr) do
      self.ui:warn(fmt("%s may hold what another tool applied, but cannot be read (%s); if " ..
        "it does, record that with `moonshift adopt --from %s` before anything else", f.label,
        f.unreadable, f.tool.name))
    end
  end
  local ok, perr = self:check(self.status.pending)
  if ok then ok, perr = self:check(self.status.repeatables) end
  if not ok then return nil, perr end
  return true
end

--- The refusal to change a database whose history another tool keeps (found when ours is
-- empty), or nil.
-- @param said boolean|nil: the words only, for status
-- @return error (kind refused) | nil
function Session:peer_refusal(said)
  return self.peers and peers.refusal(self.peers, self.history.migrations, said) or nil
end

function Session:close()
  self:close_log()
  self:disconnect()
end

--- Releases the run lock and closes the connections, keeping the run log open (restore
-- must leave the database before it replaces it).
function Session:disconnect()
  if self.lock then self.lock:release() end
  if self.lock_conn then self.lock_conn:close() end
  if self.lock_pending then self.lock_pending:close() end
  if self.conn then self.conn:close() end
  self.lock, self.lock_conn, self.lock_pending, self.conn = nil, nil, nil, nil
end
Session.__close = Session.close

--- The current migration's id, or "nothing applied".
function Session:current_id()
  return self.status.current and self.status.current.id or "nothing applied"
end

--- A runner on this session's connection, reporting through its ui.
function Session:runner(plan_ids)
  return runner.new({ conn = self.conn, history = self.history, cfg = self.cfg, ui = self.ui,
    run_id = self.run_id, hooks = self.hooks, plan_ids = plan_ids, pooled = self.pooled,
    connect = function() return db.connect(self.cfg) end,
    emit = function(event, f)
      if event == "notice" then
        self.ui:info(fmt("%s%s: %s: %s", f.file, f.line and (":" .. f.line) or "", f.severity,
          f.message))
      elseif event == "retry" then
        self.ui:warn(fmt("%s: lock timeout (SQLSTATE %s); retry %d of %d in %s", f.migration.id,
          f.sqlstate, f.attempt, f.of, ui_mod.duration(f.delay_ms)))
        f = { id = f.migration.id, attempt = f.attempt, of = f.of, sqlstate = f.sqlstate,
          delay_ms = f.delay_ms, blocker = f.blocker }
      end
      self.ui:event(event, f)
    end })
end

--- History writes without a migration (stamp, force, accept), in one transaction, with a
-- run log like any change: fn(must) calls must(ok, err) on each write; the first failure
-- rolls everything back.
-- @param list array|nil: the migrations it records, for the log's plan
-- @return true | nil, err (kind sql)
function Session:bookkeeping(what, fn, list)
  local ok, err = self.history:ensure()
  if not ok then return nil, err end
  ok, err = self:open_log(what, list)
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
  if pok then
    self.ui:event("run_done", { run_id = self.run_id, command = what,
      done = list and #list or 0 })
    return true
  end
  self.conn:exec("ROLLBACK")
  err = errors.wrap("sql", perr, what .. " failed and was rolled back")
  self.ui:event("run_failed", { kind = err.kind, message = err.message, done = 0 })
  return nil, err
end

-- Which database this is, for telling its run logs from other databases' in a shared
-- directory: the cluster's system identifier (host and port when the role may not read it)
-- and the database's name.
function Session:database_id()
  if self.db_id then return self.db_id end
  local info = self.conn:info()
  local rows = self.conn:query("SELECT system_identifier::text AS id " ..
    "FROM pg_catalog.pg_control_system()")
  local cluster = rows and rows[1] and rows[1].id
  if type(cluster) ~= "string" then
    cluster = fmt("%s:%s", info.host or "?", tostring(info.port or "?"))
  end
  self.db_id = cluster .. "/" .. tostring(info.dbname)
  return self.db_id
end

-- Warns about this database's previous run whose log ends without a final status; the
-- database tells how far it got.
function Session:reconcile_previous(dir)
  local prev = not self.cfg.log_file and
    runlog.last_unfinished(dir, { database_id = self:database_id(), target = self.label })
  if not (prev and prev.run_id) then return end
  if prev.host and prev.pid then
    -- still connected: a run in progress (lock = "table" lets one run beside us), not a
    -- run that ended without a word
    local tail = fmt("/%s/%s", tostring(prev.host), tostring(math.tointeger(prev.pid)))
    local live = self.conn:query("SELECT 1 AS live FROM pg_catalog.pg_stat_activity WHERE " ..
      "application_name LIKE 'moonshift/%' AND pg_catalog.right(application_name, " ..
      "pg_catalog.length($1::text)) = $1::text", tail)
    if live and live[1] then return end
  end
  local rows = self.conn:query(fmt("SELECT name, action, pg_catalog.to_char(at AT TIME " ..
    "ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS at FROM %s WHERE run_id = $1 " ..
    "ORDER BY id DESC LIMIT 1", self.history.events), prev.run_id)
  local last = rows and rows[1]
  self.ui:warn(fmt("previous run %s ended without a final status (%s); the database shows %s",
    prev.run_id, paths.display(prev.path), last and fmt("%s %s at %s", last.name,
    last.action == "apply" and "applied" or last.action, last.at) or "nothing it changed"))
end

--- Starts the run log (once a change is confirmed): beside the backups unless configured.
-- A log that cannot be created, or whose first line cannot be written, refuses the run; a
-- write that fails later is warned about at once, and Session:close_log returns it.
-- @return true | nil, err (kind backup: no log, no run)
function Session:open_log(direction, list)
  local cfg = self.cfg
  local dir = (cfg.log and cfg.log.dir) or (cfg.backup and cfg.backup.dir) or "moonshift-backups"
  if dir:sub(1, 1) ~= "/" then dir = cfg.root .. "/" .. dir end
  self:reconcile_previous(dir)
  local from = self.status.current and self.status.current.version or nil
  local log, err = runlog.open({ dir = dir, path = cfg.log_file, db = self.conn:info().dbname,
    from = from or "0", run_id = self.run_id, display = paths.display })
  if not log then return nil, err end
  self.log, self.ui.log = log, log
  self.ui:info("run log: " .. paths.display(log.path))
  local plan_files = json.array()
  for _, m in ipairs(list or {}) do
    plan_files[#plan_files + 1] = { id = m.id, version = m.version,
      file = direction == "down" and m.down_path or m.up_path, sha256 = m.checksum,
      transaction = m.transaction ~= false }
  end
  local now = fs.now()
  -- the header: first in the log, and first on stdout with --log-format json
  self.ui:event("run_start", { tool_version = host.version, command = direction,
    direction = direction, log = log.path,
    database = db.describe_target(cfg), target = self.label, database_id = self:database_id(),
    started_at = os.date("!%Y-%m-%dT%H:%M:%S", math.floor(now)) ..
      fmt(".%06dZ", math.floor((now % 1) * 1e6)),
    server_version = self.conn:server_version(), host = fs.hostname(), pid = proc.getpid(),
    from = from, to = list and list[#list] and list[#list].version or nil, plan = plan_files })
  if log.failure then -- not even its first line: the disk is full before anything ran
    self:close_log()
    return nil, errors.new("backup", log.failure .. "; nothing was migrated")
  end
  log.on_error = function(msg) self.ui:warn(msg) end
  return true
end

--- Flushes the run log to disk and closes it.
-- @return true | nil, message (the first write, fsync or close that failed; already warned)
function Session:close_log()
  local log = self.log
  if not log then return true end
  self.ui.log, self.log = nil, nil
  return log:close()
end

--- Asks once on a terminal; without one, only --auto-confirm lets a change through.
-- @return true | nil, err (kind usage)
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

--- Dumps the database (under the lock, before anything changes).
-- @return backup.run's result | nil, err (kind backup)
function Session:backup()
  local cfg = self.cfg
  local res, err = backup.run({ conninfo = cfg.database, dir = backup.dir_for(cfg),
    db_name = self.conn:info().dbname, pg_dump = cfg.backup and cfg.backup.pg_dump,
    version = self.status.current and self.status.current.version or "0",
    server_version_num = self.conn:server_version() })
  if not res then
    self.ui:event("backup_failed", { message = err.message })
    return nil, errors.wrap("backup", err, "nothing was migrated")
  end
  self.restore_command, self.backup_path = res.restore_command, res.path
  self.ui:info(fmt("backup: %s (%s, %s)", paths.display(res.path),
    res.size >= 1048576 and fmt("%.1f MB", res.size / 1048576) or fmt("%d kB", res.size // 1024),
    ui_mod.duration(res.elapsed_ms)))
  self.ui:event("backup", { path = res.path, size = res.size, elapsed_ms = res.elapsed_ms,
    restore_command = res.restore_command })
  return res
end

return session
