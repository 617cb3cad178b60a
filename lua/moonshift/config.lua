-- Configuration: migrate.lua, the environment, .env and the command line, merged.
local fs = require("moonshift.fs")
local errors = require("moonshift.errors")
local sandbox = require("moonshift.sandbox")
local ui = require("moonshift.ui")
local paths = require("moonshift.paths")
local conninfo = require("moonshift.conninfo")

local fmt = string.format

local config = {}

local DEFAULTS = {
  migrations = "migrations",
  hooks = "hooks",
  format = "auto",
  table = "moonshift_migrations",
  events_table = "moonshift_events",
  lock = "advisory",
  lock_wait = "60s",
  lock_timeout = "5s",
  lock_retries = 3,
  allow_out_of_order = false,
  require_tls = false,
}

-- Every key migrate.lua may set, with the Lua types it accepts: a typo is an error.
-- The tools whose history `compat` keeps in step (moonshift.peers has a writer for each).
local COMPAT_LIST = '"golang-migrate", "dbmate", "flyway", "diesel", "goose", "sql-migrate", ' ..
  '"node-pg-migrate"'
local COMPAT = {}
for name in COMPAT_LIST:gmatch('"([^"]+)"') do COMPAT[name] = true end

local KEYS = {
  database = "string", migrations = "string", hooks = "string", format = "string",
  schema = "string", table = "string", events_table = "string", lock = "string",
  lock_wait = "string|number", lock_timeout = "string|number",
  statement_timeout = "string|number", lock_retries = "number", allow_out_of_order = "boolean",
  require_tls = "boolean",
  compat = "string", backup = "table", log = "table", order = "function", workflows = "table",
  env_file = "string", ignore = "table", hook_timeout = "string|number",
  hook_memory = "string|number", single_transaction = "boolean", protected = "table",
}

-- The keys of the nested tables, checked the same way ("count" is a whole number >= 1).
local NESTED = {
  backup = { before_run = "boolean", keep = "count", dir = "string", pg_dump = "string" },
  log = { dir = "string" },
}

local function known_list(keys)
  local known = {}
  for name in pairs(keys) do known[#known + 1] = name end
  table.sort(known)
  return table.concat(known, ", ")
end

local function check_value(want, v)
  if want == "count" then return math.type(v) == "integer" and v >= 1, "whole number >= 1" end
  return want:find(type(v), 1, true) ~= nil, (want:gsub("|", " or "))
end

local function check_nested(file, path)
  for key, keys in pairs(NESTED) do
    for k, v in pairs(file[key] or {}) do
      local want = keys[k]
      if not want then
        return nil, fmt("%s: unknown key %q in %s (known: %s)", path, tostring(k), key,
          known_list(keys))
      end
      local ok, what = check_value(want, v)
      if not ok then
        return nil, fmt("%s: %s.%s must be a %s, not %s", path, key, k, what,
          type(v) == "string" and fmt("the string %q", v) or ("a " .. type(v)))
      end
    end
  end
  for key, what in pairs({ ignore = "name patterns", protected = "database names" }) do
    for i, v in pairs(file[key] or {}) do
      if math.type(i) ~= "integer" or type(v) ~= "string" then
        return nil, fmt("%s: %s must be a list of %s (strings)", path, key, what)
      end
    end
  end
  for name, f in pairs(file.workflows or {}) do
    if type(name) ~= "string" or type(f) ~= "function" then
      return nil, fmt("%s: workflows maps names to functions; %s is a %s", path,
        tostring(name), type(f))
    end
  end
  return true
end

local function check_keys(file, path)
  for k, v in pairs(file) do
    local want = KEYS[k]
    if not want then
      return nil, fmt("%s: unknown key %q (known: %s)", path, tostring(k), known_list(KEYS))
    end
    if not want:find(type(v), 1, true) then
      return nil, fmt("%s: %s must be a %s, not a %s", path, k, want:gsub("|", " or "), type(v))
    end
  end
  if file.compat ~= nil and not COMPAT[file.compat] then
    return nil, fmt("%s: compat must be one of %s, not %q", path, COMPAT_LIST, file.compat)
  end
  return check_nested(file, path)
end


-- KEY=VALUE lines; "export " and quotes allowed; # comments. A value that opens a quote
-- and does not close it on its line is an error naming the file and line, never the value
-- (it may be a password, pasted in two pieces).
-- @return vars | nil, err (kind usage)
local function read_env_file(path)
  local text = fs.read(path)
  if not text then return {} end
  local vars, n = {}, 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    local k, v = line:match("^%s*export%s+([%w_]+)%s*=%s*(.-)%s*$")
    if not k then k, v = line:match("^%s*([%w_]+)%s*=%s*(.-)%s*$") end
    if k then
      local q = v:sub(1, 1)
      if q == '"' or q == "'" then
        local close = v:find(q, 2, true)
        if not close then
          return nil, errors.new("usage", fmt("%s:%d: the value of %s opens a quote (%s) that " ..
            "does not close on the same line; a value cannot span lines (it is not shown " ..
            "because it may hold a password)", paths.display(path), n, k, q))
        end
        if #v >= 2 and v:sub(-1) == q then
          v = v:sub(2, -2)
        elseif v:find("^%s*#", close + 1) then
          v = v:sub(2, close - 1) -- KEY="value" # a comment
        end
      end
      vars[k] = v
    end
  end
  return vars
end

local function find_config(start)
  local dir = start
  while dir do
    local path = dir .. "/migrate.lua"
    if fs.exists(path) then return path end
    local parent = dir:match("^(.*)/[^/]+$")
    if parent == "" then parent = "/" end
    if parent == dir or dir == "/" then return nil end
    dir = parent
  end
end

local function absolute(root, path)
  if path:sub(1, 1) == "/" then return path end
  return root .. "/" .. path
end

-- Where the database comes from, first to last: --database, MOONSHIFT_DATABASE_URL,
-- DATABASE_URL, migrate.lua, libpq's own PG* defaults. Returns it and its source.
local function database(opts, env, file)
  if opts.database then return opts.database, "--database" end
  if env("MOONSHIFT_DATABASE_URL") then
    return env("MOONSHIFT_DATABASE_URL"), "MOONSHIFT_DATABASE_URL"
  end
  if env("DATABASE_URL") then return env("DATABASE_URL"), "DATABASE_URL" end
  if file.database then return file.database, "migrate.lua" end
  return "", "libpq defaults (PGHOST, PGDATABASE, ...)"
end

-- The checksum caches' directory (see cache.lua): MOONSHIFT_CACHE_DIR, set empty to turn
-- them off; else the XDG cache directory.
local function cache_dir()
  local dir = os.getenv("MOONSHIFT_CACHE_DIR")
  if dir == nil then
    local xdg, home = os.getenv("XDG_CACHE_HOME"), os.getenv("HOME")
    dir = (xdg and xdg:sub(1, 1) == "/" and xdg .. "/moonshift") or
      (home and home:sub(1, 1) == "/" and home .. "/.cache/moonshift") or ""
  end
  return dir ~= "" and dir or nil
end

-- Durations as ms, and the values that must be one of a few; nil, err (kind usage).
local function check_values(cfg)
  for _, k in ipairs({ "lock_wait", "lock_timeout", "statement_timeout" }) do
    local ms, err = ui.parse_duration(cfg[k])
    if err then return nil, errors.new("usage", k .. ": " .. err) end
    cfg[k .. "_ms"] = ms
  end
  cfg.lock_retries = math.tointeger(tonumber(cfg.lock_retries)) or 0
  if cfg.lock ~= "advisory" and cfg.lock ~= "table" then
    return nil, errors.new("usage", fmt("lock must be \"advisory\" or \"table\", not %q",
      tostring(cfg.lock)))
  end
  for _, k in ipairs({ "schema", "table", "events_table" }) do
    local name = cfg[k]
    if name ~= nil and (type(name) ~= "string" or name == "" or #name > 63) then
      return nil, errors.new("usage", fmt(
        "%s name %q must be 1 to 63 bytes (PostgreSQL would silently truncate it)", k,
        tostring(name)))
    end
  end
  return cfg
end

--- Loads the configuration.
-- @param opts table: the parsed command line (config, database, lock_wait, ...)
-- @return cfg | nil, err (kind usage)
function config.load(opts)
  opts = opts or {}
  local cwd = assert(fs.realpath("."))
  local path = opts.config
  if path then
    if not fs.exists(path) then
      return nil, errors.new("usage", "config file not found: " .. path)
    end
    path = fs.realpath(path)
  else
    path = find_config(cwd)
  end
  local root = path and path:match("^(.*)/[^/]+$") or cwd
  if root == "" then root = "/" end

  local dotenv, derr = read_env_file(absolute(root, ".env"))
  if not dotenv then return nil, derr end
  local dotenv_file = {} -- where a .env value came from, for messages
  for k in pairs(dotenv) do dotenv_file[k] = absolute(root, ".env") end
  local given = {} -- keys from --env-file, which nothing in migrate.lua's directory overrides
  if opts.env_file then
    local env_path = absolute(cwd, opts.env_file)
    if not fs.exists(env_path) then
      return nil, errors.new("usage", "env file not found: " .. opts.env_file)
    end
    local more, merr = read_env_file(env_path)
    if not more then return nil, merr end
    for k, v in pairs(more) do dotenv[k], dotenv_file[k], given[k] = v, env_path, true end
  end
  local function env(name, default)
    local v = os.getenv(name)
    if v == nil then v = dotenv[name] end
    if v == nil then return default end
    return v
  end

  local file = {}
  if path then
    -- migrate.lua runs under the default hook limits: its own are not known before it ran
    local result, err = sandbox.dofile(path, sandbox.env({ env = env }))
    if errors.is(err) then return nil, err end
    if err then return nil, errors.new("usage", "cannot load " .. path .. ": " .. err) end
    if type(result) ~= "table" then
      return nil, errors.new("usage", path .. " must return a table")
    end
    file = result
    local ok, kerr = check_keys(file, path)
    if not ok then return nil, errors.new("usage", kerr) end
    if file.env_file then
      local more, merr = read_env_file(absolute(root, file.env_file))
      if not more then return nil, merr end
      for k, v in pairs(more) do
        if not given[k] then dotenv[k], dotenv_file[k] = v, absolute(root, file.env_file) end
      end
    end
  end

  local cfg = { root = root, path = path, env = env }
  for k, v in pairs(DEFAULTS) do cfg[k] = v end
  for k, v in pairs(file) do cfg[k] = v end
  for _, k in ipairs({ "schema", "table", "format", "lock_wait", "lock_timeout",
    "statement_timeout", "lock_retries", "migrations", "log_format", "log_file" }) do
    if opts[k] ~= nil then cfg[k] = opts[k] end
  end
  if opts.allow_out_of_order then cfg.allow_out_of_order = true end
  if opts.require_tls then cfg.require_tls = true end

  cfg.database, cfg.database_source = database(opts, env, file)
  local name = cfg.database_source
  if dotenv_file[name] and os.getenv(name) == nil then
    cfg.database_source = fmt("%s (from %s)", name, paths.display(dotenv_file[name]))
  end
  -- a path on the command line is the caller's, relative to where they are
  cfg.migrations = absolute(opts.migrations and cwd or root, cfg.migrations)
  cfg.cache_dir = cache_dir()
  cfg.hooks = absolute(root, cfg.hooks)
  return check_values(cfg)
end

--- Refuses a connection string that cannot be used safely (conninfo.check), before
-- anything connects; the message names where it came from and never shows it.
-- @param cfg table: from config.load
-- @return true | nil, err (kind usage)
function config.check_database(cfg)
  local ok, why = conninfo.check(cfg.database or "", cfg.database_source or "the configuration")
  if not ok then return nil, errors.new("usage", why) end
  return true
end

return config
