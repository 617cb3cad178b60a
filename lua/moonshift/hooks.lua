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
local db_mod = require("moonshift.db")

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

-- The kinds a hook's error may keep: an error object it caught (pcall(ctx.fail), say) and
-- changed must not turn its failure into another exit code.
local HOOK_KINDS = { hook = true, verify = true }

-- A hook's error object as a fresh one of kind hook or verify, read raw.
local function hook_error(e, what, traceback)
  if e.kind == "interrupted" and host.interrupted() then return e end -- a real signal
  local fields = {} -- plain values only: a table or function would be user code run later
  for k, v in next, e do
    local t = type(v)
    if t == "string" or t == "number" or t == "boolean" then fields[k] = v end
  end
  local kind, msg = HOOK_KINDS[fields.kind] and fields.kind or "hook", fields.message
  -- a verify function that fails, by error() or ctx.fail, is a failed verification (exit 8)
  if what:match(" verify$") then kind = "verify" end
  fields.kind, fields.message, fields.exit_code = nil, nil, nil
  fields.hook = fields.hook or what
  fields.traceback = fields.traceback or traceback
  return errors.new(kind, type(msg) == "string" and msg or "(no message)", fields)
end

--- The error a hook's Lua error becomes: kind hook, or verify when the verification
-- library raised it; "file:line: message" first, the traceback kept for the run log.
-- No code of the hook runs here (an error object's metamethods are not called).
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
  elseif type(e) == "table" and sandbox.user_object(e) then
    msg = type(rawget(e, "message")) == "string" and rawget(e, "message") or
      "(error object is a table value)"
  elseif type(e) == "table" and getmetatable(e) and getmetatable(e).__tostring then
    msg = tostring(e) -- a pg error
  elseif type(e) == "table" and type(rawget(e, "message")) == "string" then
    msg = rawget(e, "message")
  elseif type(e) == "table" then
    local k = next(e)
    msg = fmt("(error object is a table value: %s)",
      type(k) == "string" and k .. "=..." or k == nil and "{}" or "...")
  else
    msg = sandbox.message(e)
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

-- A copy of a table of plain values, nested tables copied too: what a hook gets of the
-- host's own tables (the plan, the results, the error), so that changing it changes nothing.
local function deep_copy(t)
  if type(t) ~= "table" then return t end
  local c = {}
  for k, v in next, t do c[k] = deep_copy(v) end
  return c
end

--- The ctx a hook receives. Everything in it is the hook's own: tables are copies, functions
-- close over what they need, and nothing leads back to the host's tables.
-- @param opts table: conn, expect, migration, direction, plan, ui, cfg, dry_run, error,
--   results, spawn (true for global hooks only: companions get no ctx.spawn)
function hooks.ctx(opts)
  local out = opts.ui
  local m = opts.migration
  local ctx = {
    db = opts.conn and hooks.db(opts.conn, opts.expect) or nil,
    plan = deep_copy(opts.plan or {}),
    dry_run = opts.dry_run or false,
    error = deep_copy(opts.error),
    results = deep_copy(opts.results),
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
  local cfg = opts.cfg or {}
  local env = cfg.env or os.getenv
  -- A variable that holds the connection's password (under any name) is not handed out.
  local function secret(v)
    return db_mod.scrub(v, cfg.database or "", env("PGPASSWORD")) ~= v
  end
  function ctx.env(name, default)
    if SECRET_ENV[name] then return default end
    local v = env(name)
    if v == nil or secret(v) then return default end
    return v
  end
  function ctx.fail(msg)
    local where = debug.getinfo(2, "Sl")
    local at = where and where.currentline > 0 and (where.short_src .. ":" .. where.currentline
      .. ": ") or ""
    error(errors.new("hook", at .. tostring(msg)), 2)
  end
  if opts.spawn then
    --- Runs a program (never a shell), with only the environment given: e.g. curl to a webhook.
    function ctx.spawn(argv, o)
      o = o or {}
      return proc.run(argv, { env = o.env or { PATH = os.getenv("PATH") or "/usr/bin:/bin" },
        stdin = o.stdin, timeout = o.timeout or 30000 })
    end
  end
  return ctx
end

--- Calls fn(ctx) with the hook limits (sandbox.call): a wall-clock budget checked by a count
-- hook and the watchdog, and a memory cap on the allocator. Returns true | nil, err (kind
-- hook or verify; interrupted at a signal).
-- @param what string: "0007_backfill.lua pre", for messages
function hooks.call(what, fn, ctx, cfg)
  local ok, e, tb = sandbox.call(sandbox.limits(cfg), fn, ctx)
  if ok then return true end
  if sandbox.made_limit(e) then return nil, hooks.failure(what, e, tb) end
  if errors.is(e) then return nil, hook_error(e, what, tb) end
  return nil, hooks.failure(what, e, tb)
end

--- Loads a migration's companion table (text only, sandboxed, under the hook limits of cfg),
-- checking its keys.
-- @param path string
-- @param cfg table|nil: hook_timeout, hook_memory
-- @return table | nil, err (kind usage; interrupted at a signal)
function hooks.load_companion(path, cfg)
  local env = sandbox.env()
  local t, err = sandbox.dofile(path, env, paths.display(path), cfg)
  if errors.is(err) then return nil, err end
  if err then return nil, errors.new("usage", "cannot load " .. paths.display(path) ..
    ": " .. err) end
  if type(t) ~= "table" then
    return nil, errors.new("usage", paths.display(path) .. " must return a table")
  end
  if type(t.requires) == "table" then
    local list = {}
    for k, v in next, t.requires do
      if type(v) ~= "string" and type(v) ~= "number" then
        return nil, errors.new("usage", fmt("%s: requires must list versions, not a %s",
          paths.display(path), type(v)))
      end
      list[k] = v
    end
    t.requires = list
  end
  for k, v in next, t do
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

--- Loads the global hooks from a directory: { before_run = fn, ... } (missing ones absent),
-- each under the hook limits of cfg.
-- @return table | nil, err (kind usage; interrupted at a signal)
function hooks.load_global(dir, cfg)
  local out = {}
  for _, name in ipairs(hooks.GLOBAL) do
    local path = dir .. "/" .. name .. ".lua"
    if fs.exists(path) then
      local fn, err = sandbox.dofile(path, sandbox.env(), paths.display(path), cfg)
      if errors.is(err) then return nil, err end
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
