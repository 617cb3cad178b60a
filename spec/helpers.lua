-- Shared spec helpers: run the binary as a child, throwaway servers, fresh databases, projects.
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")
local pg = require("moonshift.pg")
local cluster = require("moonshift.cluster")

local helpers = {}

local db_counter = 0

-- What the harness started and undoes: the shared cluster, clusters of specs' own (stopped
-- at the end of the run too, in case a spec's teardown never ran), children spawned during
-- the current test, and the current test's database and project directory (helpers.ms).
local shared
local clusters = {}
local children = {}
local current

local function busted_api()
  local ok, busted = pcall(require, "busted")
  if ok and type(busted) == "table" and busted.subscribe then return busted end
  return nil
end

-- Kills the children spawned so far that still run (a test that failed half-way).
local function kill_children()
  for i = #children, 1, -1 do
    local h = children[i]
    if h:running() then
      h:kill("KILL")
      h:wait(10000)
    end
    children[i] = nil
  end
end

-- Stops every cluster the harness started and kills what specs spawned; safe to call twice.
local function stop_everything()
  kill_children()
  for i = #clusters, 1, -1 do
    pcall(clusters[i].stop, clusters[i])
    clusters[i] = nil
  end
  shared = nil
end

-- busted publishes `exit` once every file ran, whatever failed or raised (specs' errors are
-- caught by busted), before it calls os.exit. Subscribed on the first cluster, so a run of
-- unit specs only never touches a server.
local exit_subscribed = false
local function stop_at_exit()
  if exit_subscribed then return end
  exit_subscribed = true
  local busted = busted_api()
  if busted then
    busted.subscribe({ "exit" }, function()
      stop_everything()
      return nil, true
    end)
  end
end

local function track(c)
  clusters[#clusters + 1] = c
  stop_at_exit()
  return c
end

--- Path of the moonshift binary under test.
function helpers.bin()
  local bin = os.getenv("MOONSHIFT_BIN")
  if not bin or bin == "" then bin = "build/moonshift" end
  if bin:sub(1, 1) ~= "/" then bin = helpers.root() .. "/" .. bin end -- children run elsewhere
  return bin
end

--- Absolute path of the repository root (specs run from it).
function helpers.root()
  return assert(fs.realpath("."))
end

--- The environment a child gets: a clean one, plus `extra`.
function helpers.env(extra)
  local env = {
    PATH = os.getenv("PATH") or "/usr/bin:/bin",
    HOME = os.getenv("HOME") or "/root",
    LANG = "C.UTF-8",
    TZ = "UTC",
    NO_COLOR = "1",
    -- no checksum cache in HOME; specs that want one set a dir, and the run with
    -- MOONSHIFT_SPEC_CACHE_DIR set (ctest busted_cached) has one for every child
    MOONSHIFT_CACHE_DIR = os.getenv("MOONSHIFT_SPEC_CACHE_DIR") or "",
    MOONSHIFT_TEST_RACY_SECONDS = os.getenv("MOONSHIFT_SPEC_CACHE_DIR") and "-1" or nil,
  }
  for _, name in ipairs({ "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS", "MOONSHIFT_PG_BIN",
    "MOONSHIFT_LUA_DIR" }) do
    env[name] = os.getenv(name)
  end
  local lua_dir = env.MOONSHIFT_LUA_DIR
  if lua_dir and lua_dir ~= "" and lua_dir:sub(1, 1) ~= "/" then
    env.MOONSHIFT_LUA_DIR = helpers.root() .. "/" .. lua_dir -- children run elsewhere
  end
  for k, v in pairs(extra or {}) do
    if v == false then env[k] = nil else env[k] = v end
  end
  return env
end

--- Validates JSON text (one document per line) against docs/json/<schema>.schema.json with
-- a real validator (python3-jsonschema); raises naming what does not match.
function helpers.validate_json(schema, text)
  if not text:find("%S") then return end
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  f:write(text)
  f:close()
  local res = assert(proc.run({ "/usr/bin/python3", helpers.root() .. "/scripts/validate-json.py",
    helpers.root() .. "/docs/json/" .. schema .. ".schema.json", file }, { env = helpers.env() }))
  os.remove(file)
  if res.code ~= 0 then
    error(string.format("output does not match docs/json/%s.schema.json:\n%s\n%s", schema,
      res.stderr, text:sub(1, 2000)), 2)
  end
end

-- The schema a command's JSON output follows, if it prints JSON: documents for --json,
-- events for --log-format json (one per line).
local JSON_DOCUMENTS = { status = "status", check = "status", current = "current",
  version = "current", history = "history", verify = "verify", backups = "backups" }

local function json_schema_of(args)
  local command, json_flag, events
  for i, a in ipairs(args) do
    if not command and JSON_DOCUMENTS[a] then command = a end
    if a == "--json" then json_flag = true end
    if a == "--log-format=json" or (a == "json" and args[i - 1] == "--log-format") then
      events = true
    end
  end
  if events then return "event" end
  if json_flag then return JSON_DOCUMENTS[command] end
  return nil
end

--- Runs moonshift with args, as a user would, and returns { code, stdout, stderr, signal,
-- max_rss_kb }. Whatever it prints as JSON is validated against its schema in docs/json/.
-- opts: cwd, env (added to helpers.env()), stdin, timeout (ms)
function helpers.run(args, opts)
  opts = opts or {}
  local argv = { helpers.bin() }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local res = assert(proc.run(argv, {
    cwd = opts.cwd, env = helpers.env(opts.env), stdin = opts.stdin,
    timeout = opts.timeout or 120000,
  }))
  local schema = json_schema_of(args)
  if schema and res.stdout:match("^[{%[]") then helpers.validate_json(schema, res.stdout) end
  return res
end

--- Starts moonshift in the background (for signals and kills); returns the process handle.
-- One still running when the test's helpers.database() context ends is killed then.
function helpers.spawn(args, dir, env)
  local argv = { helpers.bin() }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local h = assert(proc.spawn(argv, { cwd = dir, env = helpers.env(env) }))
  children[#children + 1] = h
  return h
end

--- Waits until a backend other than ours runs an active query LIKE pattern (for min_ms or more).
function helpers.wait_for_query(uri, pattern, min_ms)
  for _ = 1, 300 do
    -- min_ms: running that long already, so that a short statement of the same text (the
    -- COMMIT of the migration before) is not taken for the long one
    local n = helpers.value(uri, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' " ..
      "AND pid <> pg_backend_pid() AND query LIKE $1 AND clock_timestamp() - query_start >= " ..
      "make_interval(secs => $2::float8 / 1000)", pattern, tostring(min_ms or 0))
    if n > 0 then return true end
    proc.sleep(50)
  end
  error("no backend ran " .. pattern)
end

--- Starts a throwaway cluster of the spec's own, for what the shared one cannot be used for
-- (other server settings, TCP, a standby, killing or restarting the server). Stop it in
-- lazy_teardown or when the test ends; the end of the run stops it too if nothing did.
-- @param opts table|nil: as moonshift.cluster.start
-- @return Cluster
function helpers.cluster(opts)
  return track(assert(cluster.start(opts)))
end

--- The one throwaway cluster of this busted run, shared by the e2e specs: started on first
-- use, stopped and removed when busted ends (also after failures and errors).
-- @return Cluster
function helpers.shared_cluster()
  if not shared then shared = helpers.cluster() end
  return shared
end

-- A new, empty database on cluster c: its URI and name.
local function new_database(c)
  db_counter = db_counter + 1
  local name = string.format("spec_%d_%d", proc.getpid(), db_counter)
  return assert(c:create_database(name)), name
end

--- A new, empty database on cluster c; returns its URI.
function helpers.fresh_db(c)
  return (new_database(c))
end

-- Drops a database, ending any session still in it first (a child killed above leaves none,
-- but a connection a test opened and lost may).
local function drop_database(c, name)
  if c.stopped then return end
  local conn <close> = assert(pg.connect(c.uri))
  assert(conn:exec("DROP DATABASE IF EXISTS " .. conn:escape_identifier(name) .. " WITH (FORCE)"))
end

--- Call in a describe block: each of its tests gets a fresh database on the shared cluster
-- and a fresh project directory (opts.files written into it). After the test, the moonshift
-- processes it spawned and still running are killed, the database is dropped and the
-- directory removed. helpers.ms runs the binary against both.
-- @param opts table|nil: files ({ [relative path] = content }, as helpers.write_files)
-- @return table: its uri, name and dir are the current test's; cluster the shared cluster
function helpers.database(opts)
  opts = opts or {}
  local busted = assert(busted_api(), "helpers.database() needs busted")
  local db = {}
  busted.before_each(function()
    db.cluster = helpers.shared_cluster()
    db.uri, db.name = new_database(db.cluster)
    db.dir = helpers.tmpdir()
    if opts.files then helpers.write_files(db.dir, opts.files) end
    db.outer, current = current, db
  end)
  busted.after_each(function()
    kill_children()
    if current == db then current = db.outer end
    db.outer = nil
    local dir, name = db.dir, db.name
    db.uri, db.name, db.dir = nil, nil, nil
    helpers.rmdir(dir)
    if name then drop_database(db.cluster, name) end
  end)
  return db
end

--- Runs moonshift with args against the current test's database (--database=...), in its
-- project directory (from helpers.database()), and returns what helpers.run returns.
-- @param args table: the arguments, without --database
-- @param opts table|nil: as helpers.run; cwd defaults to the project directory
function helpers.ms(args, opts)
  assert(current and current.uri, "helpers.ms needs helpers.database() in an enclosing describe")
  local argv = table.move(args, 1, #args, 1, {})
  argv[#argv + 1] = "--database=" .. current.uri
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.cwd = o.cwd or current.dir
  return helpers.run(argv, o)
end

--- Runs one query on a URI and returns its rows.
function helpers.query(uri, sql, ...)
  local conn <close> = assert(pg.connect(uri))
  return assert(conn:query(sql, ...))
end

--- The single value of a one-row, one-column query.
function helpers.value(uri, sql, ...)
  local rows = helpers.query(uri, sql, ...)
  local row = rows[1]
  if not row then return nil end
  local v = row[rows.columns[1]]
  if v == pg.null then return nil end
  return v
end

--- The user schema as text (columns, constraints, indexes, views), for comparing before
-- and after when no pg_dump matches the server; moonshift's own tables left out.
function helpers.schema_fingerprint(uri)
  local parts = {}
  local queries = {
    [[SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable ||
             ' ' || COALESCE(column_default, '') AS x
      FROM information_schema.columns WHERE table_schema = 'public'
        AND table_name NOT LIKE 'moonshift%' ORDER BY 1]],
    [[SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid) AS x
      FROM pg_constraint WHERE connamespace = 'public'::regnamespace
        AND conrelid::regclass::text NOT LIKE 'moonshift%' ORDER BY 1]],
    [[SELECT indexdef AS x FROM pg_indexes WHERE schemaname = 'public'
        AND tablename NOT LIKE 'moonshift%' ORDER BY 1]],
    [[SELECT table_name || ' ' || view_definition AS x FROM information_schema.views
      WHERE table_schema = 'public' ORDER BY 1]],
  }
  for _, q in ipairs(queries) do
    for _, row in ipairs(helpers.query(uri, q)) do parts[#parts + 1] = row.x end
  end
  return table.concat(parts, "\n")
end

-- The run's seed: MOONSHIFT_SPEC_SEED, else chosen once and printed.
local seed

--- The seed of this run's random choices (kill points, soak rounds): MOONSHIFT_SPEC_SEED
-- when set, else one chosen on first use and printed, so that a failure can be replayed
-- with MOONSHIFT_SPEC_SEED=<seed>.
-- @return integer
function helpers.seed()
  if seed then return seed end
  local given = os.getenv("MOONSHIFT_SPEC_SEED")
  if given and given ~= "" then
    seed = math.tointeger(tonumber(given))
    assert(seed, "MOONSHIFT_SPEC_SEED must be an integer, not " .. given)
  else
    seed = (os.time() * 1000003 + proc.getpid() * 7919 + math.floor(fs.clock_ms())) % 2147483647
    io.stderr:write(string.format("spec seed: MOONSHIFT_SPEC_SEED=%d\n", seed))
  end
  return seed
end

--- A random generator seeded from helpers.seed() (not math.random, whose sequence other
-- code shares). Take one per test, so that replaying a test alone draws the same numbers.
-- @return table: int(lo, hi) an integer in [lo, hi]; seed the run's seed; note(text) text
--   with the seed and how to replay it, for failure messages
function helpers.random()
  local s = helpers.seed()
  local state = s ~ 0x5DEECE66D
  local rng = { seed = s }
  -- splitmix64 (Lua integers wrap at 64 bits; >> is a logical shift)
  local function next64()
    state = state + 0x9E3779B97F4A7C15
    local z = state
    z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ~ (z >> 27)) * 0x94D049BB133111EB
    return z ~ (z >> 31)
  end
  function rng.int(lo, hi)
    assert(math.type(lo) == "integer" and math.type(hi) == "integer" and lo <= hi, "bad range")
    return lo + (next64() >> 1) % (hi - lo + 1)
  end
  function rng.note(text)
    return string.format("%s(seed %d; replay with MOONSHIFT_SPEC_SEED=%d)",
      text and (text .. " ") or "", s, s)
  end
  return rng
end

--- The path of a corpus in ../shared/corpora (beside the repository). When it is missing:
-- with CI=true in the environment that is an error (raised); otherwise nil and a note (also
-- printed) for pending().
-- @param name string: e.g. "harbor"
-- @return string | nil, note
function helpers.corpus(name)
  local path = (fs.realpath(helpers.root() .. "/..") or (helpers.root() .. "/..")) ..
    "/shared/corpora/" .. name
  if fs.exists(path) then return path end
  local why = "the " .. name .. " corpus is missing: " .. path
  if os.getenv("CI") == "true" then error(why .. " (CI=true: a missing corpus fails)", 2) end
  io.stderr:write("note: ", why, "; skipped (with CI=true it would fail)\n")
  return nil, why
end

--- Skips a spec for want of something `make test` installs (or CI always has): pending
-- locally, an error with CI=true, so nothing a CI machine lacks is hidden.
function helpers.needs(what)
  if os.getenv("CI") == "true" then error(what .. " (CI=true: this fails instead of skipping)", 2) end
  return pending(what)
end

--- A fresh temp directory (remove it with helpers.rmdir).
function helpers.tmpdir()
  return assert(fs.mkdtemp("/tmp/moonshift-spec-"))
end

function helpers.rmdir(dir)
  if dir then fs.remove_tree(dir) end
end

--- Writes files under dir: { ["migrations/0001_a.up.sql"] = "..." }.
function helpers.write_files(dir, files)
  for rel, content in pairs(files) do
    local path = dir .. "/" .. rel
    local parent = path:match("^(.*)/[^/]+$")
    assert(fs.mkdir_p(parent, tonumber("755", 8)))
    local f = assert(io.open(path, "wb"))
    f:write(content)
    f:close()
  end
end

--- The ids of a list of migrations, in order.
function helpers.ids(list)
  local out = {}
  for i, m in ipairs(list) do out[i] = m.id end
  return out
end

--- A stream that keeps what is written to it (sink.text), for a ui under test.
function helpers.sink()
  local s = { text = "" }
  function s:write(...)
    for i = 1, select("#", ...) do self.text = self.text .. tostring((select(i, ...))) end
    return self
  end
  function s:flush() return self end
  return s
end

--- A quiet ui writing to sinks (ui.out.text, ui.err.text), never interactive whatever the
-- terminal running the specs.
function helpers.quiet_ui()
  local u = require("moonshift.ui").new({ quiet = true, out = helpers.sink(),
    err = helpers.sink() })
  u.interactive = false
  return u
end

return helpers
