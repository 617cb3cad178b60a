-- Benchmark: moonshift against psql on the same migrations (run by bench/run.sh).
--   1,000 small migrations applied to an empty database:
--     psql, one session, BEGIN; \i file; COMMIT; per file (the floor for per-migration atomicity)
--     a shell loop of psql -1 -f per file (what teams script by hand)
--     moonshift up -y
--   status (with and without the checksum caches) and a no-op up with 1,000 and 10,000
--   migrations applied, against psql selecting the history table;
--   each speed device switched off in turn (devices-*.md).
-- Arguments: BIN RUNS OUT_DIR [PART]; PART "apply", "status" or "devices" runs only that part.
local cluster = require("moonshift.cluster")
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")

local bin = arg[1] or "build/moonshift"
if bin:sub(1, 1) ~= "/" then bin = fs.realpath(".") .. "/" .. bin end
local runs = arg[2] or "10"
local out_dir = arg[3] or "bench/results"
local part = arg[4]

-- No autovacuum: after 10,000 CREATE TABLEs it analyzes for minutes, taking CPU from
-- whichever command hyperfine is timing (on two cores, status read 178 ms, psql 108 ms).
local c = assert(cluster.start({ settings = { autovacuum = "off" } }))
local work = assert(fs.mkdtemp("/tmp/moonshift-bench-"))
local psql = c.bin_dir .. "/psql"

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function generate(dir, n)
  assert(fs.mkdir_p(dir, tonumber("755", 8)))
  for i = 1, n do
    local f = assert(io.open(string.format("%s/%05d_m%d.up.sql", dir, i, i), "w"))
    f:write(string.format("CREATE TABLE t%d (id int PRIMARY KEY, name text);\n" ..
      "INSERT INTO t%d VALUES (1, 'x');\nCREATE INDEX t%d_name ON t%d (name);\n", i, i, i, i))
    f:close()
  end
end

local function run(argv)
  local env = proc.environ()
  for k, v in pairs(c:env()) do env[k] = v end
  local res = assert(proc.run(argv, { env = env, timeout = 3600000 }))
  if res.code ~= 0 then error(table.concat(argv, " ") .. ": " .. res.stderr) end
  return res
end

local function apply_1000(uri, reset, env_prefix)
  generate(work .. "/m1000", 1000)
  local script = assert(io.open(work .. "/one_session.sql", "w"))
  for _, name in ipairs(fs.list(work .. "/m1000")) do
    script:write("BEGIN;\n\\i ", work, "/m1000/", name, "\nCOMMIT;\n")
  end
  script:close()
  local loop = assert(io.open(work .. "/loop.sh", "w"))
  loop:write("for f in ", work, "/m1000/*.sql; do ", psql,
    " -X -q -v ON_ERROR_STOP=1 -1 -f \"$f\" -d bench >/dev/null || exit 1; done\n")
  loop:close()
  -- The one-session baseline and moonshift run back to back: this kind of machine drifts
  -- over minutes, and the shell loop takes ~50 s a run, so it runs on its own, fewer times.
  run({ "hyperfine", "--runs", runs, "--export-markdown", out_dir .. "/apply-1000.md",
    "--prepare", env_prefix .. reset,
    "-n", "psql one session (BEGIN; \\i; COMMIT per file)",
    env_prefix .. psql .. " -X -q -v ON_ERROR_STOP=1 -d bench -f " .. work .. "/one_session.sql",
    "-n", "moonshift up",
    env_prefix .. bin .. " up -y -q --migrations " .. work .. "/m1000 -d " .. sh_quote(uri) })
  run({ "hyperfine", "--runs", "3", "--export-markdown", out_dir .. "/apply-1000-loop.md",
    "--prepare", env_prefix .. reset,
    "-n", "psql -1 -f per file (shell loop)", env_prefix .. "sh " .. work .. "/loop.sh" })
end

-- A database named db with n migrations applied (from work/m<n>), settled for timing.
local function applied(n, db, env_prefix)
  local dir = work .. "/m" .. n
  if not fs.exists(dir) then generate(dir, n) end
  run({ "sh", "-c", env_prefix .. psql .. " -X -q -d postgres -c 'DROP DATABASE IF EXISTS " ..
    db .. "' -c 'CREATE DATABASE " .. db .. "'" })
  local uri = c:uri_for(db)
  run({ "sh", "-c", env_prefix .. bin .. " up -y -q --migrations " .. dir .. " -d " ..
    sh_quote(uri) })
  -- The tables just made are files the kernel is still writing back, which took CPU from
  -- whichever command ran first; the server and the disk settle before timing.
  run({ "sh", "-c", env_prefix .. psql .. " -X -q -d " .. db .. " -c 'VACUUM ANALYZE' " ..
    "-c CHECKPOINT && sync" })
  -- the caches written while nothing is racy any more
  proc.sleep(2500)
  run({ "sh", "-c", env_prefix .. bin .. " status -q --migrations " .. dir .. " -d " ..
    sh_quote(uri) .. " >/dev/null" })
  return uri, dir
end

-- status and a no-op up with n applied, against psql selecting the history table.
local function status_n(n, env_prefix)
  local db = "bench_" .. n
  local uri, dir = applied(n, db, env_prefix)
  local label = n == 1000 and "1,000" or "10,000"
  run({ "hyperfine", "--runs", runs, "--warmup", "3", "--export-markdown",
    out_dir .. "/status-" .. n .. ".md",
    "-n", "moonshift status (" .. label .. " applied)",
    env_prefix .. bin .. " status -q --migrations " .. dir .. " -d " .. sh_quote(uri) ..
      " >/dev/null",
    "-n", "psql: select the history table (baseline)",
    env_prefix .. psql .. " -X -q -d " .. db .. " -c 'SELECT * FROM moonshift_migrations' " ..
      ">/dev/null",
    "-n", "moonshift status, checksum caches off (" .. label .. " applied)",
    env_prefix .. "MOONSHIFT_CACHE_DIR= " .. bin .. " status -q --migrations " .. dir ..
      " -d " .. sh_quote(uri) .. " >/dev/null",
    "-n", "moonshift up, nothing to do (" .. label .. " applied)",
    env_prefix .. bin .. " up -y -q --migrations " .. dir .. " -d " .. sh_quote(uri) })
end

-- Each speed device switched off in turn (STYLE.md: one that saves less than a few percent
-- of a command's time does not belong), for status and a no-op up.
local DEVICES = {
  { "all devices on", "" },
  { "connect thread off", "MOONSHIFT_SERIAL=connect " },
  { "fingerprint thread off", "MOONSHIFT_SERIAL=fingerprint " },
  { "checksum caches off", "MOONSHIFT_CACHE_DIR= " },
  { "bytecode off (Lua sources parsed)", "MOONSHIFT_LUA_DIR=" .. fs.realpath("lua") .. " " },
  { "heap shaping off", "MOONSHIFT_HEAP=plain " },
}

local function devices(env_prefix)
  for _, case in ipairs({ { 1000, "status" }, { 10000, "status" }, { 1000, "up -y" } }) do
    local n, command = case[1], case[2]
    local db = "bench_" .. n
    local uri, dir = c:uri_for(db), work .. "/m" .. n
    local argv = { "hyperfine", "--runs", runs, "--warmup", "3", "--export-markdown",
      string.format("%s/devices-%s-%d.md", out_dir, command:match("^%a+"), n) }
    for _, d in ipairs(DEVICES) do
      argv[#argv + 1] = "-n"
      argv[#argv + 1] = string.format("%s (%d applied): %s", command:match("^%a+"), n, d[1])
      argv[#argv + 1] = env_prefix .. d[2] .. bin .. " " .. command .. " -q --migrations " ..
        dir .. " -d " .. sh_quote(uri) .. " >/dev/null"
    end
    run(argv)
  end
end

local ok, err = pcall(function()
  fs.mkdir_p(out_dir, tonumber("755", 8))
  local uri = c:uri_for("bench")
  local reset = string.format("%s -X -q -d postgres -c 'DROP DATABASE IF EXISTS bench' " ..
    "-c 'CREATE DATABASE bench'", psql)
  -- every command runs in the scratch dir: no migrate.lua, hooks or logs of this repository,
  -- and a checksum cache that goes with it
  local env_prefix = string.format("cd %s && PGHOST=%s PGPORT=%d PGUSER=postgres " ..
    "MOONSHIFT_CACHE_DIR=%s/cache ", work, c.socket_dir, c.port, work)
  if part ~= "status" and part ~= "devices" then apply_1000(uri, reset, env_prefix) end
  if part ~= "apply" and part ~= "devices" then
    status_n(1000, env_prefix)
    status_n(10000, env_prefix)
  end
  if part == nil or part == "devices" then
    if part == "devices" then
      applied(1000, "bench_1000", env_prefix)
      applied(10000, "bench_10000", env_prefix)
    end
    devices(env_prefix)
  end
end)
c:stop()
fs.remove_tree(work)
if not ok then
  io.stderr:write(tostring(err), "\n")
  os.exit(1)
end
