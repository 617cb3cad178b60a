-- User Lua beside the SQL: companions, global hooks, the ctx they get, and their limits.
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")
local pg = require("moonshift.pg")
local host = require("moonshift.host")
local errors = require("moonshift.errors")
local sandbox = require("moonshift.sandbox")
local paths = require("moonshift.paths")
local ui = require("moonshift.ui")
local statement = require("moonshift.statement")

local fmt = string.format

local hooks = {}

hooks.GLOBAL = { "before_run", "before_each", "after_each", "after_run", "on_error" }

local COMPANION_KEYS = {
  pre = "function", post = "function", verify = "function", down_pre = "function",
  down_post = "function", transaction = "boolean", requires = "table",
  lock_timeout = "string|number", statement_timeout = "string|number", description = "string",
}

-- Environment variables a hook never sees through ctx.env: they carry the connection.
local SECRET_ENV = {
  PGPASSWORD = true, PGPASSFILE = true, DATABASE_URL = true, MOONSHIFT_DATABASE_URL = true,
  PGSERVICEFILE = true,
}

--- The error a hook's Lua error becomes: kind hook, or verify when the verification
-- library raised it; "file:line: message" first, the traceback kept for the run log.
function hooks.failure(what, e, traceback)
  -- a verify function that fails, by error() or ctx.fail, is a failed verification (exit 8)
  local kind = what:match(" verify$") and "verify" or "hook"
  if errors.is(e) then
    if not e.hook then e.hook = what end
    if e.kind == "hook" then e.kind = kind end
    e.traceback = e.traceback or traceback
    return e
  end
  local msg
  if type(e) == "string" then
    msg = e
  elseif type(e) == "table" and getmetatable(e) and getmetatable(e).__tostring then
    msg = tostring(e)
  elseif type(e) == "table" and e.message then
    msg = tostring(e.message)
  else
    msg = fmt("(error object is a %s value%s)", type(e),
      type(e) == "table" and (": " .. (next(e) and tostring(next(e)) .. "=..." or "{}")) or "")
  end
  return errors.new(kind, fmt("%s failed: %s", what, msg), { hook = what,
    traceback = traceback, cause = type(e) == "table" and e or nil })
end

--- A database handle for hooks: $1 parameters only, errors raised, transaction control
-- refused, and the transaction checked after every call.
-- @param conn a moonshift.pg connection
-- @param expect string|nil: the transaction status every call must leave ("intrans")
-- @param read_only boolean: refuse anything but queries (verify)
function hooks.db(conn, expect)
  local db = {}
  local function run(sql, ...)
    if type(sql) ~= "string" then error("SQL must be a string", 3) end
    local denied = statement.first_denied_in_hook(sql)
    if denied then
      error(errors.new("hook", denied .. " is not allowed in a hook: moonshift runs the " ..
        "migration's transaction and holds the run lock"), 3)
    end
    local rows, err = conn:query(sql, ...)
    if expect and conn:status() ~= expect then
      error(errors.new("hook", fmt("a hook left the transaction %s (expected %s)",
        conn:status(), expect)), 3)
    end
    if not rows then error(err, 3) end
    return rows
  end
  --- Rows of a query: an array of tables keyed by column name.
  function db:query(sql, ...) return run(sql, ...) end
  --- The command tag of a statement.
  function db:exec(sql, ...) return run(sql, ...).command end
  --- The first row, or nil.
  function db:one(sql, ...) return run(sql, ...)[1] end
  --- The first column of the first row, or nil (NULL too).
  function db:value(sql, ...)
    local rows = run(sql, ...)
    local row = rows[1]
    if not row then return nil end
    local v = row[rows.columns[1]]
    if v == pg.null then return nil end
    return v
  end
  db.null = pg.null
  return db
end

--- The ctx a hook receives.
-- @param opts table: conn, expect, migration, direction, plan, ui, cfg, dry_run, error
function hooks.ctx(opts)
  local out = opts.ui
  local m = opts.migration
  local ctx = {
    db = opts.conn and hooks.db(opts.conn, opts.expect) or nil,
    plan = opts.plan or {},
    dry_run = opts.dry_run or false,
    error = opts.error,
    results = opts.results,
    log = {
      info = function(msg) out:info(tostring(msg)) end,
      warn = function(msg) out:warn(tostring(msg)) end,
    },
  }
  if m then
    ctx.migration = { version = m.version, name = m.name, id = m.id,
      path = paths.display(opts.direction == "down" and m.down_path or m.up_path),
      checksum = m.checksum, direction = opts.direction or "up" }
  end
  local env = opts.cfg and opts.cfg.env or os.getenv
  function ctx.env(name, default)
    if SECRET_ENV[name] then return default end
    local v = env(name)
    if v == nil then return default end
    return v
  end
  function ctx.fail(msg)
    local where = debug.getinfo(2, "Sl")
    local at = where and where.currentline > 0 and (where.short_src .. ":" .. where.currentline
      .. ": ") or ""
    error(errors.new("hook", at .. tostring(msg)), 2)
  end
  --- Runs a program (never a shell), with only the environment given: e.g. curl to a webhook.
  function ctx.spawn(argv, o)
    o = o or {}
    return proc.run(argv, { env = o.env or { PATH = os.getenv("PATH") or "/usr/bin:/bin" },
      stdin = o.stdin, timeout = o.timeout or 30000 })
  end
  return ctx
end

--- Calls fn(ctx) with the hook limits: a wall-clock budget checked by a count hook, and a
-- memory cap on the allocator. Returns true | nil, err (kind hook or verify).
-- @param what string: "0007_backfill.lua pre", for messages
function hooks.call(what, fn, ctx, cfg)
  local limit_ms = ui.parse_duration(cfg and cfg.hook_timeout or "60s") or 60000
  local mem = cfg and cfg.hook_memory
  local mem_bytes = type(mem) == "number" and math.floor(mem) or
    (tonumber(tostring(mem or ""):match("^(%d+)%s*[Mm][Bb]?$") or "256") * 1024 * 1024)
  local deadline = fs.clock_ms() + limit_ms
  local co = coroutine.create(function() return fn(ctx) end)
  debug.sethook(co, function()
    local sig, code = host.interrupted()
    if sig then
      error(errors.new("interrupted", "interrupted (SIG" .. sig .. ") in a hook",
        { limit = true, exit_code = code }), 0)
    end
    if fs.clock_ms() > deadline then
      local where = debug.getinfo(2, "Sl")
      error(errors.new("hook", fmt("%s:%d: hook exceeded its time limit of %s (hook_timeout)",
        where and where.short_src or "?", where and where.currentline or 0,
        ui.duration(limit_ms)), { limit = true }), 0)
    end
  end, "", 10000)
  local previous = host.memory_limit(host.memory_used() + mem_bytes)
  host.watchdog(limit_ms)
  local ok, e = coroutine.resume(co)
  local overran = host.watchdog(0)
  host.memory_limit(previous)
  if ok and coroutine.status(co) ~= "dead" then
    ok, e = false, "hooks may not yield"
  end
  if ok and not overran then return true end
  if ok then e = "it returned only after the limit" end
  local tb = debug.traceback(co, tostring(type(e) == "string" and e or "hook failed"))
  if e == "not enough memory" then
    e = fmt("hook exceeded its memory limit of %d MB (hook_memory)", mem_bytes // (1024 * 1024))
  end
  if overran and not (errors.is(e) and e.limit) then
    -- the watchdog cancelled what the hook was waiting for
    e = errors.new("hook", fmt("hook exceeded its time limit of %s (hook_timeout); what it " ..
      "was waiting for was cancelled: %s", ui.duration(limit_ms),
      tostring(errors.is(e) and e.message or e)), { limit = true })
  end
  return nil, hooks.failure(what, e, tb)
end

--- Loads a migration's companion table (text only, sandboxed), checking its keys.
-- @return table | nil, err (kind usage)
function hooks.load_companion(path)
  local env = sandbox.env()
  local t, err = sandbox.dofile(path, env, paths.display(path))
  if err then return nil, errors.new("usage", "cannot load " .. paths.display(path) ..
    ": " .. err) end
  if type(t) ~= "table" then
    return nil, errors.new("usage", paths.display(path) .. " must return a table")
  end
  for k, v in pairs(t) do
    local want = COMPANION_KEYS[k]
    if not want then
      return nil, errors.new("usage", fmt("%s: unknown key %q", paths.display(path),
        tostring(k)))
    end
    if not want:find(type(v), 1, true) then
      return nil, errors.new("usage", fmt("%s: %s must be a %s, not a %s",
        paths.display(path), k, want:gsub("|", " or "), type(v)))
    end
  end
  for _, k in ipairs({ "lock_timeout", "statement_timeout" }) do
    if t[k] ~= nil then
      local ms, derr = ui.parse_duration(t[k])
      if not ms then
        return nil, errors.new("usage", fmt("%s: %s: %s", paths.display(path), k, derr))
      end
      t[k .. "_ms"] = ms
    end
  end
  return t
end

--- Loads the global hooks from a directory: { before_run = fn, ... } (missing ones absent).
-- @return table | nil, err (kind usage)
function hooks.load_global(dir)
  local out = {}
  for _, name in ipairs(hooks.GLOBAL) do
    local path = dir .. "/" .. name .. ".lua"
    if fs.exists(path) then
      local fn, err = sandbox.dofile(path, sandbox.env(), paths.display(path))
      if err then
        return nil, errors.new("usage", "cannot load " .. paths.display(path) .. ": " .. err)
      end
      if type(fn) ~= "function" then
        return nil, errors.new("usage", paths.display(path) .. " must return a function")
      end
      out[name] = { fn = fn, path = path }
    end
  end
  return out
end

return hooks
