-- Shared spec helpers: run the binary as a child, throwaway servers, fresh databases, projects.
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")
local pg = require("moonshift.pg")
local cluster = require("moonshift.cluster")

local helpers = {}

local db_counter = 0

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
    MOONSHIFT_CACHE_DIR = "", -- no checksum cache in HOME; specs that want one set a dir
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

--- Runs moonshift with args, as a user would, and returns { code, stdout, stderr, signal }.
-- opts: cwd, env (added to helpers.env()), stdin, timeout (ms)
function helpers.run(args, opts)
  opts = opts or {}
  local argv = { helpers.bin() }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local res = assert(proc.run(argv, {
    cwd = opts.cwd, env = helpers.env(opts.env), stdin = opts.stdin,
    timeout = opts.timeout or 120000,
  }))
  return res
end

--- Starts moonshift in the background (for signals and kills); returns the process handle.
function helpers.spawn(args, dir, env)
  local argv = { helpers.bin() }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return assert(proc.spawn(argv, { cwd = dir, env = helpers.env(env) }))
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

--- Starts a throwaway cluster (stop it in lazy_teardown).
function helpers.cluster(opts)
  return assert(cluster.start(opts))
end

--- A new, empty database on cluster c; returns its URI.
function helpers.fresh_db(c)
  db_counter = db_counter + 1
  local name = string.format("spec_%d_%d", proc.getpid(), db_counter)
  return assert(c:create_database(name))
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

return helpers
