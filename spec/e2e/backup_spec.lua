-- Backups and the run log end to end: up --backup-first, restore, failures, secrets.
local cjson = require("cjson")
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")
local helpers = require("spec.helpers")

local value = helpers.value

describe("backups and the run log #e2e", function()
  local db = helpers.database({ files = {
    ["migrations/0001_a.up.sql"] = "CREATE TABLE a (id int PRIMARY KEY, v text);\n" ..
      "INSERT INTO a SELECT g, 'x' || g FROM generate_series(1, 50) g;\n",
    ["migrations/0002_b.up.sql"] = "CREATE TABLE b (id int);\n",
    ["migrations/0003_bad.up.sql"] = "ALTER TABLE a ADD COLUMN w int;\nDELETE FROM a WHERE id > 10;\n" ..
      "SELECT nosuch FROM a;\n",
  } })

  -- Debian's pg_dump 15 cannot dump a newer server (the version matrix runs 18)
  local server_newer

  lazy_setup(function()
    local c = helpers.shared_cluster()
    server_newer = tonumber(helpers.value(c.uri, "SHOW server_version_num")) >= 160000
  end)

  local function dump_schema(dbname)
    local env = db.cluster:env()
    env.PGDATABASE = dbname
    local res = assert(proc.run({ db.cluster.bin_dir .. "/pg_dump", "--schema-only" }, { env = helpers.env(env) }))
    return (res.stdout:gsub("\n\\[%a]*restrict [^\n]*", ""))
  end

  it("backs up first, and the printed restore command returns the database to the backup", function()
    assert.are.equal(0, helpers.run({ "up", "-y", "--to", "2", "-d", db.uri }, { cwd = db.dir }).code)
    if server_newer then
      local res = helpers.run({ "up", "-y", "--backup-first", "-d", db.uri }, { cwd = db.dir })
      assert.are.equal(10, res.code)
      assert.matches("pg_dump 15%.%d+ at %S+ is older than the server %(1[6-9]", res.stderr)
      assert.are.equal(2, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
      return
    end
    local dbname = db.uri:match("^postgresql:///([^?]+)")
    local before = dump_schema(dbname)
    local res = helpers.run({ "up", "-y", "--backup-first", "-d", db.uri }, { cwd = db.dir })
    assert.are.equal(6, res.code)
    assert.matches("backup: moonshift%-backups/" .. dbname .. "%-v0002%-%d+T%d+Z%.dump", res.stderr)
    -- 0003 rolled back: nothing to restore, and the operator is told so
    assert.matches("nothing of this run was committed; no restore needed", res.stderr)
    local made = helpers.run({ "backup", "-d", db.uri }, { cwd = db.dir })
    assert.are.equal(0, made.code, made.stderr)
    local restore = made.stderr:match("restore with: ([^\n]+)")
    assert.is_truthy(restore, made.stderr)
    assert.matches("pg_restore'? %-%-clean %-%-create %-%-exit%-on%-error", restore)
    local files = fs.list(db.dir .. "/moonshift-backups")
    local dump
    for _, f in ipairs(files) do if f:match("%.dump$") then dump = db.dir .. "/moonshift-backups/" .. f end end
    assert.are.equal(tonumber("600", 8), fs.stat(dump).mode)
    assert.are.equal(tonumber("700", 8), fs.stat(db.dir .. "/moonshift-backups").mode)
    -- a later change the restore must undo
    helpers.query(db.uri, "DELETE FROM a")
    local r = assert(proc.run({ "sh", "-c", restore }, { cwd = db.dir, env = helpers.env(db.cluster:env()) }))
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(50, value(db.uri, "SELECT count(*) FROM a"))
    assert.are.equal(before, dump_schema(dbname))
    local list = helpers.run({ "backups", "--json", "-d", db.uri }, { cwd = db.dir })
    assert.are.equal(0, list.code, list.stderr)
    assert.are.equal("0002", cjson.decode(list.stdout)[1].version)
  end)

  it("exits 10 and changes nothing when the backup cannot be written", function()
    helpers.write_files(db.dir, { ["not-a-dir"] = "x", ["migrate.lua"] =
      "return { backup = { dir = 'not-a-dir/backups', before_run = true } }\n" })
    local res = helpers.run({ "up", "-y", "-d", db.uri }, { cwd = db.dir })
    assert.are.equal(10, res.code)
    assert.matches("not%-a%-dir", res.stderr)
    assert.are.equal(0, value(db.uri, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"))
  end)

  it("gives pg_dump the password only through its environment", function()
    local fake = db.dir .. "/fake_pg_dump"
    helpers.write_files(db.dir, { ["fake_pg_dump"] = "#!/bin/sh\n" ..
      "if [ \"$1\" = --version ]; then echo 'pg_dump (PostgreSQL) 99.0'; exit 0; fi\n" ..
      "printf '%s\\n' \"$@\" > " .. db.dir .. "/argv\nenv > " .. db.dir .. "/environ\nexit 1\n",
      ["pg_restore"] = "#!/bin/sh\nexit 1\n",
      ["migrate.lua"] = "return { backup = { pg_dump = '" .. fake .. "' } }\n" })
    assert(fs.chmod(fake, tonumber("755", 8)))
    assert(fs.chmod(db.dir .. "/pg_restore", tonumber("755", 8)))
    local secret = db.uri:gsub("^postgresql://", "postgresql://postgres:canarySECRET@")
    local res = helpers.run({ "up", "-y", "--backup-first", "-d", secret }, { cwd = db.dir })
    assert.are.equal(10, res.code)
    assert.is_nil(fs.read(db.dir .. "/argv"):find("canarySECRET", 1, true))
    assert.matches("PGPASSWORD=canarySECRET", fs.read(db.dir .. "/environ"))
    assert.is_nil((res.stdout .. res.stderr):find("canarySECRET", 1, true))
    assert.are.equal(0, value(db.uri, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"))
  end)

  it("writes a run log whose failure records have every field", function()
    assert.are.equal(0, helpers.run({ "up", "-y", "--to", "1", "-d", db.uri }, { cwd = db.dir }).code)
    local secret = db.uri:gsub("^postgresql://", "postgresql://postgres:canarySECRET@")
    local res = helpers.run({ "up", "-y", server_newer and "-q" or "--backup-first", "-d", secret,
      "--log-file", db.dir .. "/run.log" }, { cwd = db.dir })
    assert.are.equal(6, res.code)
    assert.are.equal(tonumber("600", 8), fs.stat(db.dir .. "/run.log").mode)
    local text = fs.read(db.dir .. "/run.log")
    assert.is_nil(text:find("canarySECRET", 1, true))
    local by = {}
    for line in text:gmatch("[^\n]+") do
      local e = cjson.decode(line)
      by[e.event] = by[e.event] or e
    end
    local start = by.run_start
    assert.matches("^%d+%.%d+%.%d+", start.tool_version)
    assert.matches("postgres:%*%*%*@", start.database)
    assert.is_true(start.server_version >= 150000)
    assert.are.equal("0001", start.from)
    assert.are.equal("0003", start.to)
    assert.are.equal(64, #start.plan[1].sha256)
    assert.matches("0002_b%.up%.sql$", start.plan[1].file)
    if not server_newer then assert.is_truthy(by.backup.path) end
    assert.is_truthy(by.statement.elapsed_ms)
    local failed = by.migration_failed
    assert.are.equal("0003_bad", failed.id)
    assert.are.equal("42703", failed.sqlstate)
    assert.are.equal(3, failed.line)
    assert.matches("0003_bad%.up%.sql", failed.file)
    assert.matches("SELECT nosuch", failed.sql)
    if not server_newer then assert.matches("pg_restore", failed.restore_command) end
    assert.is_truthy(by.run_failed)
  end)

  it("records a hook's traceback in the run log, not on the terminal", function()
    helpers.write_files(db.dir, { ["migrations/0002_b.lua"] =
      "return { pre = function() local x = nil; return x.y end }\n" })
    local res = helpers.run({ "up", "-y", "-d", db.uri, "--log-file", db.dir .. "/run.log" }, { cwd = db.dir })
    assert.are.equal(7, res.code)
    assert.matches("0002_b%.lua:1: attempt to index", res.stderr)
    assert.is_nil(res.stderr:find("stack traceback", 1, true))
    assert.matches("stack traceback", fs.read(db.dir .. "/run.log"))
  end)
end)

describe("--backup-first under a role's idle_session_timeout #e2e", function()
  local db = helpers.database({ files = {
    ["migrations/0001_a.up.sql"] = "CREATE TABLE a (id int);\n",
    ["migrations/0002_b.up.sql"] = "CREATE TABLE b (id int);\n",
  } })

  it("a slow pg_dump does not get moonshift's idle sessions reaped: up applies, exit 0", function()
    if tonumber(value(db.uri, "SHOW server_version_num")) >= 160000 then
      -- the version matrix's newer server comes without pg_dump, and Debian's 15 cannot
      -- dump it: what is asserted then is that moonshift says so before anything changes
      local res = helpers.run({ "up", "-y", "--backup-first", "-d", db.uri }, { cwd = db.dir })
      assert.are.equal(10, res.code, res.stderr)
      assert.matches("is older than the server", res.stderr)
      assert.is_nil(value(db.uri, "SELECT to_regclass('a')::text"))
      return
    end
    local role = "reaped_" .. proc.getpid()
    helpers.query(db.uri, "CREATE ROLE " .. role .. " LOGIN SUPERUSER")
    local uri = db.uri
    finally(function()
      helpers.query(uri, "DROP OWNED BY " .. role)
      helpers.query(db.cluster.uri, "DROP ROLE " .. role)
    end)
    helpers.query(db.uri, "ALTER ROLE " .. role .. " SET idle_session_timeout = '1s'")
    -- pg_dump (the server's own, so its version always matches) after 3 s of sleep, while
    -- the session moonshift holds and the run lock's sit idle; pg_restore beside it
    local bin = db.cluster.bin_dir
    helpers.write_files(db.dir, {
      ["tools/pg_dump"] = '#!/bin/sh\n[ "$1" = --version ] || sleep 3\nexec "' .. bin ..
        '/pg_dump" "$@"\n',
      ["migrate.lua"] = "return { backup = { pg_dump = '" .. db.dir .. "/tools/pg_dump' } }\n",
    })
    assert(fs.chmod(db.dir .. "/tools/pg_dump", tonumber("755", 8)))
    assert(fs.symlink(bin .. "/pg_restore", db.dir .. "/tools/pg_restore"))
    local as_role = db.uri:gsub("user=postgres", "user=" .. role)
    assert.are.equal("1s", value(as_role, "SHOW idle_session_timeout"))
    assert.are.equal(0, helpers.run({ "up", "-y", "--to", "1", "-d", as_role }, { cwd = db.dir }).code)
    local t0 = fs.clock_ms()
    local res = helpers.run({ "up", "-y", "--backup-first", "-d", as_role }, { cwd = db.dir })
    assert.are.equal(0, res.code, res.stderr)
    assert.is_true(fs.clock_ms() - t0 >= 3000, "pg_dump did not take its 3 s")
    assert.matches("backup: moonshift%-backups/[%w_]+%-v0001%-%d+T%d+Z%.dump", res.stderr)
    assert.are.equal(2, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    assert.are.equal(role, value(db.uri, "SELECT applied_by FROM moonshift_migrations " ..
      "WHERE version = '0002'"))
    assert.are.equal("b", value(db.uri, "SELECT to_regclass('b')::text"))
  end)
end)
