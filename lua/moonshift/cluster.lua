-- A throwaway PostgreSQL server (initdb in a temp dir, unix socket only) for the demo and tests.
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")
local pg = require("moonshift.pg")

local fmt = string.format

local cluster = {}

local Cluster = {}
Cluster.__index = Cluster

local PG_ROOT = "/usr/lib/postgresql"

--- The newest installed server's bin dir, e.g. /usr/lib/postgresql/15/bin.
-- @return string | nil, err
function cluster.default_bin_dir()
  local env = os.getenv("MOONSHIFT_PG_BIN")
  if env and env ~= "" then return env end
  local best, best_major
  for _, name in ipairs(fs.list(PG_ROOT) or {}) do
    local major = tonumber(name)
    if major and fs.exists(fmt("%s/%s/bin/initdb", PG_ROOT, name))
        and (not best_major or major > best_major) then
      best, best_major = fmt("%s/%s/bin", PG_ROOT, name), major
    end
  end
  if not best then
    return nil, "no PostgreSQL server found in " .. PG_ROOT .. "/*/bin (install postgresql-15)"
  end
  return best
end

local function quote_setting(value)
  return "'" .. tostring(value):gsub("\\", "\\\\"):gsub("'", "''") .. "'"
end

-- Runs a server binary, as the postgres OS user when we are root (initdb refuses root).
function Cluster:_run(argv, timeout_ms)
  local res, err = proc.run(argv, {
    uid = self.uid, gid = self.gid, timeout = timeout_ms or 120000,
    env = { PATH = "/usr/bin:/bin", LANG = "C.UTF-8", LC_ALL = "C.UTF-8", TZ = "UTC" },
  })
  if not res then return nil, err end
  if res.code ~= 0 then
    local log = fs.read(self.log_file) or ""
    return nil, fmt("%s failed (%s): %s%s%s", argv[1]:match("[^/]+$"),
      res.code and ("exit " .. res.code) or ("signal " .. tostring(res.signal)),
      res.stdout, res.stderr, log:sub(-2000))
  end
  return res
end

-- A self-signed certificate for CN=localhost (no IP address in it) made by the openssl tool.
function Cluster:_certificate()
  local crt, key = self.dir .. "/server.crt", self.dir .. "/server.key"
  local res, err = proc.run({ "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", crt, "-days", "2",
    "-subj", "/CN=localhost" }, { timeout = 60000 })
  if not res or res.code ~= 0 then
    return nil, "openssl req failed: " .. tostring(res and res.stderr or err)
  end
  if self.uid then
    fs.chown(crt, self.uid, self.gid)
    fs.chown(key, self.uid, self.gid)
  end
  fs.chmod(key, tonumber("600", 8))
  self.certificate = crt
  return { ssl = "on", ssl_cert_file = crt, ssl_key_file = key }
end

--- Starts a throwaway server.
-- @param opts table|nil: bin_dir, settings (name -> value for postgresql.conf), port,
--   listen (addresses for TCP, e.g. "127.0.0.1"; default unix socket only), hba (lines that
--   replace the TCP entries of pg_hba.conf), tls (a self-signed certificate for
--   CN=localhost; the cluster's `certificate` field is its path)
-- @return Cluster (fields uri, dir, data, log_file, socket_dir, port, bin_dir) | nil, err
function cluster.start(opts)
  opts = opts or {}
  local bin, err = opts.bin_dir, nil
  if not bin then bin, err = cluster.default_bin_dir() end
  if not bin then return nil, err end
  local dir, derr = fs.mkdtemp("/tmp/moonshift-pg-")
  if not dir then return nil, derr end
  local self = setmetatable({
    dir = dir, socket_dir = dir, data = dir .. "/data", log_file = dir .. "/server.log",
    bin_dir = bin, port = opts.port or 5432, user = "postgres",
  }, Cluster)
  if proc.getuid() == 0 then
    local pw = proc.getpwnam("postgres")
    if not pw then
      self:stop()
      return nil, "running as root needs a 'postgres' OS user to own the server"
    end
    self.uid, self.gid = pw.uid, pw.gid
    fs.chown(dir, pw.uid, pw.gid)
  end
  fs.chmod(dir, tonumber("755", 8))

  local ok, rerr = self:_run({ bin .. "/initdb", "-D", self.data, "-U", "postgres", "-A", "trust",
    "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions" })
  if not ok then
    self:stop()
    return nil, rerr
  end
  local settings = {}
  for k, v in pairs(opts.settings or {}) do settings[k] = v end
  if opts.tls then
    local tls, terr = self:_certificate()
    if not tls then
      self:stop()
      return nil, terr
    end
    for k, v in pairs(tls) do settings[k] = v end
  end
  if opts.hba then
    local hba = self.data .. "/pg_hba.conf"
    local lines = {}
    for line in (fs.read(hba) or ""):gmatch("[^\n]+") do
      if line:match("^local") then lines[#lines + 1] = line end
    end
    for _, line in ipairs(opts.hba) do lines[#lines + 1] = line end
    local f = assert(io.open(hba, "w"))
    f:write(table.concat(lines, "\n"), "\n")
    f:close()
  end
  local conf = {
    "listen_addresses = " .. quote_setting(opts.listen or ""),
    "unix_socket_directories = " .. quote_setting(dir),
    "port = " .. self.port,
    "fsync = off", "synchronous_commit = off", "full_page_writes = off",
    "max_connections = 50", "shared_buffers = '32MB'",
  }
  local names = {}
  for name in pairs(settings) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    conf[#conf + 1] = name .. " = " .. quote_setting(settings[name])
  end
  local f = assert(io.open(self.data .. "/postgresql.conf", "a"))
  f:write("\n# moonshift throwaway cluster\n", table.concat(conf, "\n"), "\n")
  f:close()

  return self:_start()
end

-- Starts the server of an initialized data directory; on failure removes everything.
-- @return self | nil, err
function Cluster:_start()
  local ok, err = self:_run({ self.bin_dir .. "/pg_ctl", "-D", self.data, "-l", self.log_file,
    "-w", "-t", "60", "start" })
  if not ok then
    self:stop()
    return nil, err
  end
  self.running = true
  self.uri = self:uri_for("postgres")
  return self
end

--- Starts a read-only hot standby of this cluster, copied with pg_basebackup and streaming
-- from it; stop it like any cluster.
-- @return Cluster | nil, err (also when this server's binaries have no pg_basebackup)
function Cluster:standby()
  local basebackup = self.bin_dir .. "/pg_basebackup"
  if not fs.exists(basebackup) then return nil, "no pg_basebackup in " .. self.bin_dir end
  local dir, derr = fs.mkdtemp("/tmp/moonshift-pg-")
  if not dir then return nil, derr end
  local st = setmetatable({
    dir = dir, socket_dir = dir, data = dir .. "/data", log_file = dir .. "/server.log",
    bin_dir = self.bin_dir, port = self.port, user = "postgres", uid = self.uid, gid = self.gid,
  }, Cluster)
  if st.uid then fs.chown(dir, st.uid, st.gid) end
  fs.chmod(dir, tonumber("755", 8))
  local ok, err = st:_run({ basebackup, "-D", st.data, "-R", "-X", "stream", "--no-sync",
    "-h", self.socket_dir, "-p", tostring(self.port), "-U", "postgres" })
  if not ok then
    st:stop()
    return nil, err
  end
  local f = assert(io.open(st.data .. "/postgresql.conf", "a"))
  f:write("\n# standby\nunix_socket_directories = ", quote_setting(dir), "\nhot_standby = on\n")
  f:close()
  return st:_start()
end

--- A URI for a database of this cluster.
function Cluster:uri_for(dbname)
  return fmt("postgresql:///%s?host=%s&port=%d&user=postgres", dbname, self.socket_dir, self.port)
end

--- libpq environment variables that reach this cluster (for psql, pg_dump).
function Cluster:env()
  return { PGHOST = self.socket_dir, PGPORT = tostring(self.port), PGUSER = "postgres",
    PGDATABASE = "postgres" }
end

--- Creates a database and returns its URI.
-- @return string | nil, err
function Cluster:create_database(name)
  local conn <close>, err = pg.connect(self.uri)
  if not conn then return nil, err end
  local _, qerr = conn:exec("CREATE DATABASE " .. conn:escape_identifier(name))
  if qerr then return nil, qerr end
  return self:uri_for(name)
end

--- Stops the server (fast) and removes its directory; safe to call twice.
function Cluster:stop()
  if self.stopped then return true end
  self.stopped = true
  if self.running then
    self.running = false
    self:_run({ self.bin_dir .. "/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop" })
  end
  return fs.remove_tree(self.dir)
end

--- Restarts the server (fast shutdown), keeping its data.
function Cluster:restart()
  return self:_run({ self.bin_dir .. "/pg_ctl", "-D", self.data, "-l", self.log_file,
    "-m", "fast", "-w", "-t", "60", "restart" })
end

Cluster.__gc = Cluster.stop
Cluster.__close = Cluster.stop

return cluster
