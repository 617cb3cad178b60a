-- pg_dump backups before a run: finding the tools, dumping safely, listing and pruning.
local errors = require("moonshift.errors")
local fs = require("moonshift.fs")
local pg = require("moonshift.pg")
local proc = require("moonshift.proc")
local host = require("moonshift.host")
local connection = require("moonshift.db")
local conninfo_mod = require("moonshift.conninfo")

local fmt = string.format
local floor = math.floor

local backup = {}

local run_interruptible -- below

local PG_ROOT = "/usr/lib/postgresql"
local DEFAULT_DIR = "moonshift-backups"
local DIR_MODE = tonumber("700", 8)
local FILE_MODE = tonumber("600", 8)
local MODE_OTHER_WRITE = tonumber("002", 8)
local MODE_STICKY = tonumber("1000", 8)
local MODE_EXEC = tonumber("111", 8)
local STAMP = "%d%d%d%d%d%d%d%dT%d%d%d%d%d%dZ"
local MAX_COLLISIONS = 1000
local MAX_STDERR = 4000 -- the tail of pg_dump's stderr kept in an error
local VERSION_TIMEOUT_MS = 30000

-- libpq's connection keywords and the environment variables that set the same thing
-- (libpq "Environment Variables"). Keywords libpq does not know are rejected by
-- pg.conninfo_parse before they get here, so newer entries are harmless with older libpq.
local ENV_FOR_KEYWORD = {
  host = "PGHOST", hostaddr = "PGHOSTADDR", port = "PGPORT", dbname = "PGDATABASE",
  user = "PGUSER", password = "PGPASSWORD", passfile = "PGPASSFILE",
  require_auth = "PGREQUIREAUTH", channel_binding = "PGCHANNELBINDING",
  service = "PGSERVICE", servicefile = "PGSERVICEFILE", options = "PGOPTIONS",
  application_name = "PGAPPNAME", sslmode = "PGSSLMODE", requiressl = "PGREQUIRESSL",
  sslnegotiation = "PGSSLNEGOTIATION", sslcompression = "PGSSLCOMPRESSION",
  sslcert = "PGSSLCERT", sslkey = "PGSSLKEY", sslcertmode = "PGSSLCERTMODE",
  sslrootcert = "PGSSLROOTCERT", sslcrl = "PGSSLCRL", sslcrldir = "PGSSLCRLDIR",
  sslsni = "PGSSLSNI", requirepeer = "PGREQUIREPEER",
  ssl_min_protocol_version = "PGSSLMINPROTOCOLVERSION",
  ssl_max_protocol_version = "PGSSLMAXPROTOCOLVERSION",
  min_protocol_version = "PGMINPROTOCOLVERSION", max_protocol_version = "PGMAXPROTOCOLVERSION",
  gssencmode = "PGGSSENCMODE", krbsrvname = "PGKRBSRVNAME", gsslib = "PGGSSLIB",
  gssdelegation = "PGGSSDELEGATION", connect_timeout = "PGCONNECT_TIMEOUT",
  client_encoding = "PGCLIENTENCODING", target_session_attrs = "PGTARGETSESSIONATTRS",
  load_balance_hosts = "PGLOADBALANCEHOSTS",
}

-- Keywords that carry a secret, as libpq marks them (password, sslpassword, ...): never on
-- a command line.
local SECRET_KEYWORDS = {}
for _, k in ipairs(pg.secret_keywords()) do SECRET_KEYWORDS[k] = true end

-- What the restore command takes from the environment when the connection string is silent.
local RESTORE_FROM_ENV = { "host", "hostaddr", "port", "user", "dbname" }

-- The non-libpq variables a child needs: finding programs, ~/.pgpass, messages.
local BASE_ENV = { "PATH", "HOME", "LANG", "LC_ALL", "LC_MESSAGES", "TZ", "TMPDIR" }

local SIGNAL_NAMES = {
  [1] = "SIGHUP", [2] = "SIGINT", [3] = "SIGQUIT", [6] = "SIGABRT", [7] = "SIGBUS",
  [9] = "SIGKILL", [11] = "SIGSEGV", [13] = "SIGPIPE", [15] = "SIGTERM",
}

local function fail(message, fields)
  return nil, errors.new("backup", message, fields)
end

local function base_env(inherited)
  local env = {}
  for _, name in ipairs(BASE_ENV) do env[name] = inherited[name] end
  env.PATH = env.PATH or "/usr/bin:/bin"
  return env
end

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

local function is_executable(path)
  local st = fs.stat(path)
  return st ~= nil and st.type == "file" and st.mode & MODE_EXEC ~= 0
end

-- "15.4" from 150004, "9.6.24" from 90624.
local function version_text(num)
  if num >= 100000 then return fmt("%d.%d", num // 10000, num % 10000) end
  return fmt("%d.%d.%d", num // 10000, num // 100 % 100, num % 100)
end

-- Comparable majors: 15 -> 1500, 9.6 -> 906 (before 10 the major had two parts).
local function major_key(num)
  if num >= 100000 then return num // 10000 * 100 end
  return num // 100
end

local function major_text(num)
  if num >= 100000 then return tostring(num // 10000) end
  return fmt("%d.%d", num // 10000, num // 100 % 100)
end

-- "pg_dump (PostgreSQL) 15.4 (Debian 15.4-1)" -> 150004, "15.4"; "17beta1" -> 170000.
local function parse_version(out)
  local text = out:match("%(PostgreSQL%)%s+(%d[%w.]*)") or out:match("(%d+%.%d+[%w.]*)")
  if not text then return nil end
  local a, b, c = text:match("^(%d+)%.?(%d*)%.?(%d*)")
  a, b, c = tonumber(a), tonumber(b) or 0, tonumber(c) or 0
  if a >= 10 then return a * 10000 + b, text end
  return a * 10000 + b * 100 + c, text
end

local function newest_installed()
  local best, best_major
  for _, name in ipairs(fs.list(PG_ROOT) or {}) do
    local major = tonumber(name)
    local path = fmt("%s/%s/bin/pg_dump", PG_ROOT, name)
    if major and (not best_major or major > best_major) and is_executable(path) then
      best, best_major = path, major
    end
  end
  return best
end

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- A conninfo value as libpq reads it: bare when it can be, else quoted.
local function conninfo_value(v)
  if v:match("^[^%s'\\]+$") then return v end
  return "'" .. v:gsub("[\\']", "\\%0") .. "'"
end

--- "k1=v1 k2='v 2'" with the keywords in a stable order (values quoted as libpq reads them).
-- @param params table: keyword = value
-- @return string
function backup.conninfo_string(params)
  local keys = {}
  for k in pairs(params) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = k .. "=" .. conninfo_value(params[k]) end
  return table.concat(parts, " ")
end

-- pg_dump's stderr made fit for an error message: no passwords, bounded, trimmed.
local function clean_stderr(s, conninfo, password)
  s = connection.scrub(s or "", conninfo, password):gsub("%s+$", "")
  if #s > MAX_STDERR then s = "..." .. s:sub(-MAX_STDERR) end
  return s
end

local function utc_stamp(t)
  return os.date("!%Y%m%dT%H%M%SZ", floor(t))
end

-- Seconds since the epoch of a UTC civil date (os.time would read it as local time).
local function epoch_utc(y, mo, d, h, mi, s)
  y = mo <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (mo + (mo > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + h * 3600 + mi * 60 + s
end

local function sanitize(s, allowed)
  return (tostring(s):gsub(allowed, "_"))
end

-- Checks and resolves the backup directory, creating it 0700 if it is missing.
local function prepare_dir(dir)
  local ok, err = fs.mkdir_p(dir, DIR_MODE)
  if not ok then
    return fail(fmt("cannot create the backup directory %s: %s", dir, err))
  end
  local st, serr = fs.stat(dir)
  if not st then return fail(fmt("cannot use the backup directory %s: %s", dir, serr)) end
  -- Anyone could rename or replace our files there, between pg_dump and the restore.
  if st.mode & MODE_OTHER_WRITE ~= 0 and st.mode & MODE_STICKY == 0 then
    return fail(fmt("refusing the backup directory %s: it is writable by everyone and has no "
      .. "sticky bit (mode %o); use a directory only you can write (chmod 700)", dir, st.mode),
      { path = dir })
  end
  local real, rerr = fs.realpath(dir)
  if not real then return fail(fmt("cannot use the backup directory %s: %s", dir, rerr)) end
  -- A directory we cannot write should fail here, before the caller connects or locks.
  local probe = fmt("%s/.moonshift-write-test-%d", real, proc.getpid())
  local f, ferr, code = fs.open_excl(probe, FILE_MODE)
  if f then
    f:close()
    fs.remove(probe)
  elseif code ~= "EEXIST" then
    return fail(fmt("cannot write to the backup directory %s: %s", dir, ferr), { path = dir })
  end
  return real
end

-- Reserves a new name: <base>[-n].dump whose <name>.partial we created with O_EXCL (a name
-- taken by anything, a planted symlink included, is skipped, never opened).
local function reserve(dir, base)
  for n = 0, MAX_COLLISIONS do
    local path = fmt("%s/%s%s.dump", dir, base, n > 0 and ("-" .. n) or "")
    if not fs.stat(path, false) then
      local f, err, code = fs.open_excl(path .. ".partial", FILE_MODE)
      if f then
        local ok, cerr = f:close()
        if not ok then
          fs.remove(path .. ".partial")
          return fail(fmt("cannot create the backup file: %s", cerr))
        end
        return path
      end
      if code ~= "EEXIST" then return fail(fmt("cannot create the backup file: %s", err)) end
    end
  end
  return fail(fmt("cannot find a free backup file name for %s in %s", base, dir))
end

local function size_of(path)
  local st = fs.stat(path, false)
  return st and st.size or 0
end

local function describe_exit(res)
  if res.timed_out then return "did not finish in time and was killed" end
  if res.signal then
    return "was killed by " .. (SIGNAL_NAMES[res.signal] or ("signal " .. res.signal))
  end
  return "exited with code " .. tostring(res.code)
end

--- The environment that gives a child (pg_dump, pg_restore) the same connection as ours:
-- the PG* variables we inherited, overridden by the libpq variable of each keyword the
-- connection string sets, password included, so none of it has to go in argv.
-- @param conninfo string: URI or key=value; "" means the inherited PG* environment alone
-- @param inherited table|nil: the environment to start from (default: ours)
-- @return table env (PG* variables only), table rest (keywords without a variable, such as
--   keepalives or sslpassword; backup.run refuses sslpassword and passes the others, none
--   of them secret, in pg_dump's --dbname)
-- @return nil, err (kind "backup") when conninfo does not parse
function backup.env_for(conninfo, inherited)
  if type(conninfo) ~= "string" then error("conninfo must be a string", 2) end
  inherited = inherited or proc.environ()
  local params, perr = pg.conninfo_parse(conninfo)
  if not params then return fail("the connection string is not valid: " .. tostring(perr)) end
  local env, rest = {}, {}
  for name, value in pairs(inherited) do
    if name:match("^PG") then env[name] = value end
  end
  for keyword, value in pairs(params) do
    local name = ENV_FOR_KEYWORD[keyword]
    if name then env[name] = value else rest[keyword] = value end
  end
  return env, rest
end

--- Finds pg_dump and the pg_restore beside it and asks pg_dump its version.
-- @param opts table|nil: pg_dump (explicit path; no search then), path (PATH to search,
--   default ours), env (environment for `pg_dump --version`), server_version_num (for the
--   install hint)
-- @return table { pg_dump, pg_restore, version (major, e.g. 15), version_num (150004),
--   version_text ("15.4") }
-- @return nil, err (kind "backup")
function backup.tools(opts)
  opts = opts or {}
  local looked, path = {}, nil
  if opts.pg_dump then
    looked[1] = opts.pg_dump
    if is_executable(opts.pg_dump) then path = opts.pg_dump end
  else
    for dir in (opts.path or os.getenv("PATH") or ""):gmatch("[^:]+") do
      looked[#looked + 1] = dir
      if is_executable(dir .. "/pg_dump") then
        path = dir .. "/pg_dump"
        break
      end
    end
    if not path then
      looked[#looked + 1] = PG_ROOT .. "/*/bin"
      path = newest_installed()
    end
  end
  if not path then
    local major = opts.server_version_num and major_text(opts.server_version_num) or "<major>"
    return fail(fmt("pg_dump not found (looked in: %s); set backup.pg_dump in migrate.lua or "
      .. "install postgresql-client-%s", table.concat(looked, ", "), major))
  end
  local pg_restore = dirname(path) .. "/pg_restore"
  if not is_executable(pg_restore) then
    return fail(fmt("pg_restore not found beside %s (looked for %s); pg_dump's own "
      .. "pg_restore checks every backup", path, pg_restore))
  end
  local res, err = proc.run({ path, "--version" }, {
    env = opts.env or base_env(proc.environ()), timeout = VERSION_TIMEOUT_MS,
  })
  if not res then return fail(fmt("cannot run %s: %s", path, err)) end
  local num, text = parse_version(res.stdout)
  if res.code ~= 0 or not num then
    return fail(fmt("%s --version %s and printed %q; is it pg_dump?", path,
      describe_exit(res), (res.stdout .. res.stderr):sub(1, 200)))
  end
  return {
    pg_dump = path, pg_restore = pg_restore, version = major_key(num) // 100,
    version_num = num, version_text = text,
  }
end

--- Refuses a pg_dump older than the server: it cannot dump a newer server.
-- @param tools table: from backup.tools
-- @param server_version_num integer: e.g. 180001
-- @return true | nil, err (kind "backup", naming both versions and pg_dump's path)
function backup.check_version(tools, server_version_num)
  if math.type(server_version_num) ~= "integer" then
    error("server_version_num must be an integer", 2)
  end
  if major_key(tools.version_num) >= major_key(server_version_num) then return true end
  local major = major_text(server_version_num)
  return fail(fmt("pg_dump %s at %s is older than the server (%s); pg_dump cannot dump a "
    .. "newer server. Install postgresql-client-%s or set backup.pg_dump",
    tools.version_text, tools.pg_dump, version_text(server_version_num), major),
    { pg_dump = tools.pg_dump, pg_dump_version = tools.version_text,
      server_version = version_text(server_version_num) })
end

--- Everything that can fail before connecting: the connection string, the tools, their
-- version, the directory. Run it before taking the lock.
-- @param opts table: as for backup.run
-- @return table { tools, dir (absolute), env, rest } | nil, err (kind "backup")
function backup.preflight(opts)
  local env, rest = backup.env_for(opts.conninfo or "", opts.environ)
  if not env then return nil, rest end
  if rest.sslpassword then
    return fail("the connection string sets sslpassword, which pg_dump could only get on its "
      .. "command line; use a client key without a passphrase for backups")
  end
  for k in pairs(rest) do
    if SECRET_KEYWORDS[k] then
      return fail(fmt("the connection string sets %s, a secret pg_dump could only get on its " ..
        "command line; back up without it", k))
    end
  end
  local inherited = opts.environ or proc.environ()
  local child_env = base_env(inherited)
  for k, v in pairs(env) do child_env[k] = v end
  local tools, terr = backup.tools({
    pg_dump = opts.pg_dump, env = child_env, path = inherited.PATH,
    server_version_num = opts.server_version_num,
  })
  if not tools then return nil, terr end
  if opts.server_version_num then
    local ok, verr = backup.check_version(tools, opts.server_version_num)
    if not ok then return nil, verr end
  end
  local dir, derr = prepare_dir(opts.dir or DEFAULT_DIR)
  if not dir then return nil, derr end
  return { tools = tools, dir = dir, env = child_env, rest = rest }
end

-- Runs pg_dump in its own process group, stopping it (the whole group) on Ctrl-C or
-- SIGTERM, or when the timeout runs out.
-- @return result | nil, "interrupted" | nil, message
function run_interruptible(argv, env, timeout_ms)
  local p, err = proc.spawn(argv, { env = env, group = true })
  if not p then return nil, err end
  local deadline = timeout_ms and fs.clock_ms() + timeout_ms
  while true do
    local res = p:wait(200)
    if res then return res end
    local timed_out = deadline and fs.clock_ms() > deadline
    if host.interrupted() or timed_out then
      p:kill("KILL")
      res = p:wait(5000) or {}
      if not timed_out then return nil, "interrupted" end
      res.timed_out = true
      return res
    end
  end
end

-- pg_dump's argv: the connection reaches it through its environment, except keywords
-- without a variable (keepalives, tcp_user_timeout, ...) and, with a service, every explicit
-- one: libpq lets a service file override the environment but not the connection string.
-- None is a secret (sslpassword was refused, the password stays in the environment).
local function dump_argv(tools, partial, pre, params)
  local argv = { tools.pg_dump, "--format=custom", "--file=" .. partial, "--no-password" }
  local on_argv = {}
  for k, v in pairs(pre.rest) do on_argv[k] = v end
  if params.service then
    for k, v in pairs(params) do
      if not SECRET_KEYWORDS[k] then on_argv[k] = v end
    end
  end
  if next(on_argv) then argv[#argv + 1] = "--dbname=" .. backup.conninfo_string(on_argv) end
  return argv
end

--- Dumps the database with pg_dump --format=custom into a new 0600 file, checked with
-- pg_restore --list, then renamed into place: <dir>/<db>-v<version>-<UTC time>.dump.
-- The connection, password included, reaches pg_dump only through its environment.
-- @param opts table: conninfo (string, "" = the PG* environment), dir (default
--   "moonshift-backups", created 0700; an existing one keeps its mode), db_name (for the
--   file name; default the connection's dbname), version (current schema version, default
--   "0"; characters other than [%w_.] become "_"), server_version_num (integer; refuses
--   an older pg_dump), pg_dump (path), timeout_ms (kills pg_dump's process group after
--   it), time (epoch seconds for the name, default now), environ (the environment to take
--   PG* and PATH from; default ours)
-- @return table { path, name, size, elapsed_ms, tools, stderr (pg_dump's warnings),
--   restore_command (see backup.restore_command) }
-- @return nil, err (kind "backup"; fields path, bytes (written before the failure), stderr)
function backup.run(opts)
  if type(opts) ~= "table" then error("backup.run needs an options table", 2) end
  local started = fs.clock_ms()
  local pre, perr = backup.preflight(opts)
  if not pre then return nil, perr end
  local params = pg.conninfo_parse(opts.conninfo or "") or {}
  local db = opts.db_name or params.dbname or pre.env.PGDATABASE or params.user
    or pre.env.PGUSER or "db"
  db = sanitize(db, "[^%w_.-]")
  local version = sanitize(opts.version or "0", "[^%w_.]")
  local base = fmt("%s-v%s-%s", db, version, utc_stamp(opts.time or fs.now()))
  local path, rerr = reserve(pre.dir, base)
  if not path then return nil, rerr end
  local partial = path .. ".partial"
  local tools = pre.tools

  local function give_up(message, res)
    local bytes = size_of(partial)
    fs.remove(partial)
    local stderr = res and clean_stderr(res.stderr, opts.conninfo,
      params.password or pre.env.PGPASSWORD)
    local text = fmt("backup failed: %s (%d bytes written to %s, removed)", message, bytes,
      partial)
    if stderr and stderr ~= "" then text = text .. "\n" .. stderr end
    return fail(text, { path = partial, bytes = bytes, stderr = stderr })
  end

  local res, err = run_interruptible(dump_argv(tools, partial, pre, params), pre.env,
    opts.timeout_ms)
  if err == "interrupted" then
    local sig, code = host.interrupted()
    fs.remove(partial)
    return nil, errors.new("interrupted", fmt("interrupted (SIG%s) during the backup; pg_dump " ..
      "was stopped, its partial file removed, nothing migrated", sig), { exit_code = code })
  end
  if not res then return give_up("cannot run " .. tools.pg_dump .. ": " .. tostring(err)) end
  if res.timed_out then
    return give_up(fmt("pg_dump did not finish within %d ms and was killed", opts.timeout_ms),
      res)
  end
  if res.code ~= 0 then return give_up("pg_dump " .. describe_exit(res), res) end
  local size = size_of(partial)
  if size == 0 then return give_up("pg_dump exited 0 but wrote nothing", res) end

  local list, lerr = proc.run({ tools.pg_restore, "--list", partial },
    { env = base_env(proc.environ()), timeout = opts.timeout_ms, group = true })
  if not list then return give_up("cannot run " .. tools.pg_restore .. ": " .. tostring(lerr)) end
  if list.code ~= 0 or not list.stdout:find("; Archive created at", 1, true) then
    return give_up(fmt("the dump does not read back: pg_restore --list %s: %s",
      describe_exit(list), clean_stderr(list.stderr, opts.conninfo)), res)
  end

  -- pg_dump syncs its own output too (we never pass --no-sync); this covers any pg_dump and
  -- orders the data before the rename.
  local ok, serr = fs.fsync(partial)
  if not ok then return give_up("fsync failed: " .. tostring(serr), res) end
  ok, serr = fs.rename(partial, path)
  if not ok then return give_up("rename failed: " .. tostring(serr), res) end
  -- Makes the rename durable. A failure is not fatal: the file is complete and listed, and a
  -- lost rename only loses its name.
  fs.fsync(pre.dir)

  return {
    path = path, name = path:match("[^/]+$"), size = size, tools = tools,
    elapsed_ms = floor(fs.clock_ms() - started),
    stderr = clean_stderr(res.stderr, opts.conninfo, params.password or pre.env.PGPASSWORD),
    restore_command = backup.restore_command(opts.conninfo or "", path,
      { pg_restore = tools.pg_restore, environ = opts.environ, dbname = opts.db_name }),
  }
end

--- The shell command that restores a backup over the database it came from, with
-- PostgreSQL's own tools: pg_restore --clean --create drops the database and creates it
-- again from the dump (so objects created after it are gone too), connected meanwhile to
-- the maintenance database. It needs no other session on the database.
-- The password is left out of it: the operator supplies it through PGPASSWORD or
-- ~/.pgpass (a "***" in its place would be sent as the password). Host, port and user
-- missing from conninfo are taken from our PG* environment, so the command also works
-- from a shell without it.
-- @param conninfo string: the connection string of the run
-- @param path string: the backup file
-- @param opts table|nil: pg_restore (path; use the one beside the pg_dump that wrote the
--   file, an older pg_restore cannot read it), environ (PG* defaults; default ours), dbname
--   (the database's name, when conninfo does not say)
-- @return string: pg_restore --clean --create --exit-on-error --dbname='...' 'path'
function backup.restore_command(conninfo, path, opts)
  opts = opts or {}
  local params = pg.conninfo_parse(conninfo or "")
  local target
  if params then
    local environ = opts.environ or proc.environ()
    for _, k in ipairs(RESTORE_FROM_ENV) do
      local v = environ[ENV_FOR_KEYWORD[k]]
      if params[k] == nil and params.service == nil and v and v ~= "" then params[k] = v end
    end
    for k in pairs(SECRET_KEYWORDS) do params[k] = nil end
    local dbname = opts.dbname or params.dbname
    params.dbname = dbname == "postgres" and "template1" or "postgres"
    target = backup.conninfo_string(params)
  else
    target = conninfo_mod.display(conninfo) -- unparsable: a placeholder, never its password
  end
  local program = opts.pg_restore and shell_quote(opts.pg_restore) or "pg_restore"
  return fmt("%s --clean --create --exit-on-error --dbname=%s %s", program,
    shell_quote(target), shell_quote(path))
end

--- The backups in dir, oldest first; files not named by backup.run are ignored.
-- @param dir string|nil: default "moonshift-backups"
-- @return array of { path, name, db, version, time ("2024-01-02T03:04:05Z"), epoch, size,
--   age_s } ({} when dir does not exist) | nil, err (kind "backup")
function backup.list(dir)
  dir = dir or DEFAULT_DIR
  local names, err, code = fs.list(dir)
  if not names then
    if code == "ENOENT" then return {} end
    return fail(fmt("cannot list the backup directory %s: %s", dir, err))
  end
  local now, out = fs.now(), {}
  for _, name in ipairs(names) do
    local db, version, stamp, suffix = name:match("^(.+)%-v([%w_.]*)%-(" .. STAMP .. ")(.-)%.dump$")
    local seq = suffix and (suffix == "" and 0 or tonumber(suffix:match("^%-(%d+)$")))
    local path = dir .. "/" .. name
    local st = seq and fs.stat(path, false)
    if st and st.type == "file" then
      local y, mo, d, h, mi, s = stamp:match("^(%d%d%d%d)(%d%d)(%d%d)T(%d%d)(%d%d)(%d%d)Z$")
      local epoch = epoch_utc(tonumber(y), tonumber(mo), tonumber(d), tonumber(h),
        tonumber(mi), tonumber(s))
      out[#out + 1] = {
        path = path, name = name, db = db, version = version, seq = seq, epoch = epoch,
        time = fmt("%s-%s-%sT%s:%s:%sZ", y, mo, d, h, mi, s), size = st.size,
        age_s = math.max(0, floor(now - epoch)),
      }
    end
  end
  table.sort(out, function(a, b)
    if a.epoch ~= b.epoch then return a.epoch < b.epoch end
    if a.seq ~= b.seq then return a.seq < b.seq end
    return a.name < b.name
  end)
  return out
end

--- Removes the oldest backups beyond the newest `keep`.
-- @param dir string|nil: default "moonshift-backups"
-- @param keep integer: how many to keep (at least 1)
-- @param db string|nil: only count and remove backups of this database (sanitized name)
-- @return array of removed paths | nil, err (kind "backup"; field removed)
function backup.prune(dir, keep, db)
  if math.type(keep) ~= "integer" or keep < 1 then
    error("keep must be an integer of at least 1", 2)
  end
  local all, err = backup.list(dir)
  if not all then return nil, err end
  local mine = {}
  for _, b in ipairs(all) do
    if db == nil or b.db == sanitize(db, "[^%w_.-]") then mine[#mine + 1] = b end
  end
  local removed = {}
  for i = 1, #mine - keep do
    local ok, rerr = fs.remove(mine[i].path)
    if not ok then
      return fail(fmt("cannot remove the old backup %s: %s", mine[i].path, rerr),
        { removed = removed })
    end
    removed[#removed + 1] = mine[i].path
  end
  return removed
end

--- Checks, before connecting or locking, what a backup of a configuration needs: pg_dump,
-- the directory.
-- @return true | nil, err (kind backup)
function backup.ready(cfg)
  local pre, err = backup.preflight({ conninfo = cfg.database, dir = backup.dir_for(cfg),
    pg_dump = cfg.backup and cfg.backup.pg_dump })
  if not pre then return nil, err end
  return true
end

--- The backup directory of a configuration (backup = { dir }), absolute.
-- @param cfg table: root, backup
-- @return string
function backup.dir_for(cfg)
  local dir = (cfg.backup and cfg.backup.dir) or "moonshift-backups"
  if dir:sub(1, 1) ~= "/" then dir = cfg.root .. "/" .. dir end
  return dir
end

return backup
