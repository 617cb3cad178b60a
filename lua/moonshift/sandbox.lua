-- The environment that migrate.lua, companions and hooks run in (no os/io, no bytecode, no
-- host table within reach), and the time and memory limits their code runs under.
local host = require("moonshift.host")
local fs = require("moonshift.fs")
local errors = require("moonshift.errors")
local ui = require("moonshift.ui")

local fmt = string.format

local sandbox = {}

local SAFE = {
  "assert", "error", "ipairs", "next", "pairs", "rawequal", "rawget", "rawlen",
  "rawset", "select", "tonumber", "tostring", "type",
}
local SAFE_LIBS = { "string", "table", "math", "utf8", "coroutine" }
local ALLOWED_REQUIRES = { ["moonshift.verify"] = true, cjson = true }

-- Metatables that sandboxed code set itself: the only ones its getmetatable hands back.
-- Every other one (strings', errors', the host's classes) is the host's, shared by all of
-- moonshift's code: a companion that could change one would change moonshift.
local own_metatables = setmetatable({}, { __mode = "k" })
-- The limit errors sandbox.call made (user Lua can change an error object it caught, so a
-- field cannot tell them apart).
local limit_errors = setmetatable({}, { __mode = "k" })

local function limit_error(kind, message, fields)
  local e = errors.new(kind, message, fields)
  e.limit = true
  limit_errors[e] = true
  return e
end

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

-- A hook that catches errors must not catch its own time or memory limit.
local function is_limit(e)
  return e == "not enough memory" or limit_errors[e] == true
end

local function rethrow_limits(ok, ...)
  if not ok and is_limit((...)) then error((...), 0) end
  return ok, ...
end

-- Coroutines created by sandboxed code run under the same count hook as the code that
-- created them (a Lua hook is per thread: without this, a loop in a coroutine would escape
-- the time limit and the signal check).
local function hooked(co)
  local hook, mask, count = debug.gethook()
  if type(hook) == "function" then debug.sethook(co, hook, mask, count) end
  return co
end

local function coroutine_lib()
  local co = copy(coroutine)
  function co.create(f) return hooked(coroutine.create(f)) end
  function co.resume(c, ...) return rethrow_limits(coroutine.resume(c, ...)) end
  function co.wrap(f)
    local c = hooked(coroutine.create(f))
    return function(...)
      local res = table.pack(coroutine.resume(c, ...))
      if not res[1] then
        if type(res[2]) == "string" and not is_limit(res[2]) then error(res[2], 2) end
        error(res[2], 0)
      end
      return table.unpack(res, 2, res.n)
    end
  end
  return co
end

-- What require("cjson") gives user Lua: its own instance (cjson.new: its own settings),
-- in a table of its own, so nothing it sets or replaces reaches the host's encoder.
local function cjson_copy()
  local c = copy(require("cjson").new())
  c.new = nil
  return c
end

--- A fresh environment table for user Lua. Nothing in it is shared with the host or with
-- another environment but functions (which cannot be changed) and strings: libraries are
-- copies, `require` returns copies, `getmetatable` returns only metatables this code set.
-- @param extra table|nil: names to add (env, log, ...)
-- @return table
function sandbox.env(extra)
  local env = {}
  for _, name in ipairs(SAFE) do env[name] = _G[name] end
  for _, name in ipairs(SAFE_LIBS) do env[name] = copy(_G[name]) end
  env.coroutine = coroutine_lib()
  env.string.dump = nil
  env.os = { time = os.time, date = os.date, clock = os.clock, difftime = os.difftime }
  local string_meta = { __index = env.string }
  env.getmetatable = function(v)
    if type(v) == "string" then return string_meta end
    local mt = getmetatable(v)
    if type(mt) == "table" and not own_metatables[mt] then return nil end
    return mt -- its own, nil, or what a __metatable field says
  end
  env.setmetatable = function(t, mt)
    if type(mt) == "table" then
      -- a finalizer would run later, in the host, outside every limit
      if rawget(mt, "__gc") ~= nil then error("__gc is not allowed here", 2) end
      own_metatables[mt] = true
    end
    return setmetatable(t, mt)
  end
  env.print = function(...)
    local parts = table.pack(...)
    for i = 1, parts.n do parts[i] = tostring(parts[i]) end
    io.stderr:write(table.concat(parts, "\t"), "\n")
  end
  local required = {}
  env.require = function(name)
    if not ALLOWED_REQUIRES[name] then
      error("require of '" .. tostring(name) .. "' is not allowed here", 2)
    end
    if not required[name] then
      required[name] = name == "cjson" and cjson_copy() or copy(require(name))
    end
    return required[name]
  end
  env.load = function(chunk, chunkname, _, fenv)
    return load(chunk, chunkname, "t", fenv or env)
  end
  env.pcall = function(f, ...) return rethrow_limits(pcall(f, ...)) end
  env.xpcall = function(f, handler, ...) return rethrow_limits(xpcall(f, handler, ...)) end
  env._G = env
  for k, v in pairs(extra or {}) do env[k] = v end
  return env
end

--- The limits user Lua runs under, from hook_timeout and hook_memory (defaults 60 s, 256 MB).
-- @param cfg table|nil
-- @return table { ms, bytes }
function sandbox.limits(cfg)
  local ms = ui.parse_duration(cfg and cfg.hook_timeout or "60s") or 60000
  local mem = cfg and cfg.hook_memory
  local bytes = type(mem) == "number" and math.floor(mem) or
    (tonumber(tostring(mem or ""):match("^(%d+)%s*[Mm][Bb]?$") or "256") * 1024 * 1024)
  return { ms = ms, bytes = bytes }
end

--- Calls fn(...) under limits: a wall-clock budget checked by a count hook (which also
-- stops at SIGINT/SIGTERM), a memory cap on the allocator, and the host's watchdog for C
-- functions that never return.
-- @param limits table: from sandbox.limits; `what` ("hook", "loading") names the code in
--   messages, `watchdog` is what the watchdog prints if it has to end the process
-- @return true, fn's first result | false, err, traceback: err is a string or an error (kind
--   hook, limit = true, for the time and memory limits; kind interrupted for a signal)
function sandbox.call(limits, fn, ...)
  local what = limits.what or "hook"
  local deadline = fs.clock_ms() + limits.ms
  local args = table.pack(...)
  local co = coroutine.create(function() return fn(table.unpack(args, 1, args.n)) end)
  debug.sethook(co, function()
    local sig, code = host.interrupted()
    if sig then
      error(limit_error("interrupted", fmt("interrupted (SIG%s) %s", sig,
        limits.during or "in a hook"), { exit_code = code }), 0)
    end
    if fs.clock_ms() > deadline then
      local where = debug.getinfo(2, "Sl")
      error(limit_error("hook", fmt("%s:%d: %s exceeded its time limit of %s (hook_timeout)",
        where and where.short_src or "?", where and where.currentline or 0, what,
        ui.duration(limits.ms))), 0)
    end
  end, "", 10000)
  local previous = host.memory_limit(host.memory_used() + limits.bytes)
  host.watchdog(limits.ms, limits.watchdog, limits.watchdog_code)
  -- nothing may allocate until the limit is lifted: the code may have left no room
  local ok, e = coroutine.resume(co)
  local overran = host.watchdog(0)
  host.memory_limit(previous)
  if ok and coroutine.status(co) ~= "dead" then
    ok, e = false, what .. " may not yield"
  end
  if ok and not overran then return true, e end
  if ok then e = "it returned only after the limit" end
  local tb = debug.traceback(co, tostring(type(e) == "string" and e or what .. " failed"))
  if e == "not enough memory" then
    e = limit_error("hook", fmt("%s exceeded its memory limit of %d MB (hook_memory)", what,
      limits.bytes // (1024 * 1024)))
  end
  if overran and not limit_errors[e] then
    -- the watchdog cancelled what the code was waiting for
    e = limit_error("hook", fmt("%s exceeded its time limit of %s (hook_timeout); what it " ..
      "was waiting for was cancelled: %s", what, ui.duration(limits.ms), sandbox.message(e)))
  end
  return false, e, tb
end

--- True when e is a time, memory or signal limit's error made by sandbox.call.
function sandbox.made_limit(e)
  return limit_errors[e] == true
end

--- True when v has a metatable that user Lua set (whose metamethods are user code).
function sandbox.user_object(v)
  local mt = getmetatable(v)
  return mt ~= nil and own_metatables[mt] == true
end

--- What an error value of user Lua says, without running any of its code (a __tostring
-- would run outside the limits).
-- @return string
function sandbox.message(e)
  if type(e) == "string" then return e end
  if type(e) == "number" then return tostring(e) end
  if type(e) == "table" then
    local mt = getmetatable(e)
    if mt and not own_metatables[mt] and not errors.is(e) and mt.__tostring then
      return tostring(e) -- the host's (a pg error)
    end
    if type(rawget(e, "message")) == "string" then return rawget(e, "message") end
  end
  return fmt("(error object is a %s value)", type(e))
end

-- A table's own fields, read raw: what user Lua returned may carry metamethods that would
-- otherwise run later, in the host, outside the limits.
local function plain(t)
  if type(t) ~= "table" then return t end
  local c = {}
  for k, v in next, t do c[k] = v end
  return c
end

--- Loads and runs a Lua file (text only) in env, under the limits of user Lua.
-- @param path string
-- @param env table: from sandbox.env
-- @param chunkname string|nil: the name in messages (default path)
-- @param cfg table|nil: hook_timeout and hook_memory
-- @return the file's first return value (a table as a plain copy of its fields) | nil, err:
--   a string with file and line, or an error of kind interrupted
function sandbox.dofile(path, env, chunkname, cfg)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local src = f:read("a")
  f:close()
  local name = chunkname or path
  local chunk, lerr = load(src, "@" .. name, "t", env)
  if not chunk then return nil, lerr end
  local limits = sandbox.limits(cfg)
  limits.what, limits.during = "loading", "while loading " .. name
  limits.watchdog = fmt("moonshift: loading %s ran past its time limit inside a C function " ..
    "and could not be stopped; exiting\n", name)
  limits.watchdog_code = errors.EXIT.usage
  local ok, result = sandbox.call(limits, chunk)
  if not ok then
    if limit_errors[result] and result.kind == "interrupted" then return nil, result end
    return nil, sandbox.message(result)
  end
  return plain(result)
end

return sandbox
