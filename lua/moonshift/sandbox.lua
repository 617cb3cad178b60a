-- The environment that migrate.lua, companions and hooks run in: no os/io, no bytecode.
local sandbox = {}

local SAFE = {
  "assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget", "rawlen",
  "rawset", "select", "setmetatable", "getmetatable", "tonumber", "tostring", "type", "xpcall",
}
local SAFE_LIBS = { "string", "table", "math", "utf8", "coroutine" }
local ALLOWED_REQUIRES = { ["moonshift.verify"] = true, cjson = true }

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

--- A fresh environment table for user Lua.
-- @param extra table|nil: names to add (env, log, ...)
-- @return table
function sandbox.env(extra)
  local env = {}
  for _, name in ipairs(SAFE) do env[name] = _G[name] end
  for _, name in ipairs(SAFE_LIBS) do env[name] = copy(_G[name]) end
  env.string.dump = nil
  env.os = { time = os.time, date = os.date, clock = os.clock, difftime = os.difftime }
  env.print = function(...)
    local parts = table.pack(...)
    for i = 1, parts.n do parts[i] = tostring(parts[i]) end
    io.stderr:write(table.concat(parts, "\t"), "\n")
  end
  env.require = function(name)
    if not ALLOWED_REQUIRES[name] then
      error("require of '" .. tostring(name) .. "' is not allowed here", 2)
    end
    return require(name)
  end
  env.load = function(chunk, chunkname, _, fenv)
    return load(chunk, chunkname, "t", fenv or env)
  end
  -- A hook that catches errors must not catch its own time or memory limit.
  local function rethrow_limits(ok, ...)
    if not ok then
      local e = ...
      if e == "not enough memory" or (type(e) == "table" and e.limit) then error(e, 0) end
    end
    return ok, ...
  end
  env.pcall = function(f, ...) return rethrow_limits(pcall(f, ...)) end
  env.xpcall = function(f, handler, ...) return rethrow_limits(xpcall(f, handler, ...)) end
  env._G = env
  for k, v in pairs(extra or {}) do env[k] = v end
  return env
end

--- Loads and runs a Lua file (text only) in env.
-- @return the file's first return value | nil, err (a string with file and line)
function sandbox.dofile(path, env, chunkname)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local src = f:read("a")
  f:close()
  local chunk, lerr = load(src, "@" .. (chunkname or path), "t", env)
  if not chunk then return nil, lerr end
  local ok, result = pcall(chunk)
  if not ok then return nil, tostring(result) end
  return result
end

return sandbox
