-- One writer at a time, and a killed runner leaves nothing half-applied.
local proc = require("moonshift.proc")
local fs = require("moonshift.fs")
local helpers = require("spec.helpers")

local value = helpers.value

local spawn, wait_for_query = helpers.spawn, helpers.wait_for_query

describe("run lock and kills #e2e", function()
  local db = helpers.database({ files = {
    ["migrations/0001_a.up.sql"] = "CREATE TABLE a (id int);\n",
    ["migrations/0002_slow.up.sql"] = "CREATE TABLE slow (id int);\nSELECT pg_sleep(1.5);\n",
    ["migrations/0003_c.up.sql"] = "CREATE TABLE c (id int);\n",
    ["migrations/0004_d.up.sql"] = "CREATE TABLE d (id int);\n",
    ["migrations/0005_e.up.sql"] = "CREATE TABLE e (id int);\n",
  } })

  it("two runners at once apply each migration exactly once", function()
    local a = spawn({ "up", "-y", "-d", db.uri }, db.dir)
    local b = spawn({ "up", "-y", "-d", db.uri }, db.dir)
    local ra, rb = a:wait(60000), b:wait(60000)
    assert.are.equal(0, ra.code, ra.stderr)
    assert.are.equal(0, rb.code, rb.stderr)
    assert.are.equal(5, value(db.uri, "SELECT count(*) FROM moonshift_events WHERE action = 'apply'"))
    assert.are.equal(5, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    local outputs = ra.stdout .. rb.stdout
    assert.matches("applied 5 migrations", outputs)
    assert.matches("nothing to do", outputs)
  end)

  it("with lock = \"table\", two runners at once still apply each migration once", function()
    helpers.write_files(db.dir, { ["migrate.lua"] = "return { lock = 'table' }\n" })
    assert.are.equal(0, helpers.run({ "status", "-d", db.uri }, { cwd = db.dir }).code)
    local a = spawn({ "up", "-y", "-d", db.uri }, db.dir)
    local b = spawn({ "up", "-y", "-d", db.uri }, db.dir)
    local ra, rb = a:wait(60000), b:wait(60000)
    assert.are.equal(0, ra.code, ra.stderr)
    assert.are.equal(0, rb.code, rb.stderr)
    assert.are.equal(5, value(db.uri, "SELECT count(*) FROM moonshift_events WHERE action = 'apply'"))
    assert.are.equal(5, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    assert.are.equal(0, value(db.uri, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"))
  end)

  it("gives up after --lock-wait with exit 5, naming the holder", function()
    local a = spawn({ "up", "-y", "-d", db.uri }, db.dir)
    wait_for_query(db.uri, "%pg_sleep%")
    local res = helpers.run({ "up", "-y", "-d", db.uri, "--lock-wait", "300ms" }, { cwd = db.dir })
    assert.are.equal(5, res.code)
    assert.matches("another moonshift run holds the lock", res.stderr)
    assert.matches("application_name moonshift/", res.stderr)
    assert.are.equal(0, a:wait(60000).code)
  end)

  it("a runner that waited for the lock reads the files again: one added meanwhile is applied",
    function()
    local a = spawn({ "up", "-y", "-d", db.uri }, db.dir)
    wait_for_query(db.uri, "%pg_sleep%")
    local b = spawn({ "up", "-y", "-d", db.uri }, db.dir) -- reads five files, then waits for a
    local waiting = 0
    for _ = 1, 300 do -- b has tried the lock, so it has read its files
      waiting = value(db.uri, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1 " ..
        "AND application_name LIKE $2", "%pg_try_advisory_lock%", "moonshift/%/" .. b:pid())
      if waiting > 0 then break end
      proc.sleep(50)
    end
    assert.are.equal(1, waiting)
    helpers.write_files(db.dir, { ["migrations/0006_f.up.sql"] = "CREATE TABLE f (id int);\n" })
    local ra, rb = a:wait(60000), b:wait(60000)
    assert.are.equal(0, ra.code, ra.stderr)
    assert.are.equal(0, rb.code, rb.stderr)
    assert.matches("applied 5 migrations", ra.stdout)
    assert.matches("applied 1 migration ", rb.stdout)
    assert.are.equal("f", value(db.uri, "SELECT to_regclass('f')::text"))
    assert.are.equal(6, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
  end)

  it("kill -9 mid-migration leaves that migration absent, and the next run applies it", function()
    local a = spawn({ "up", "-y", "-d", db.uri }, db.dir)
    wait_for_query(db.uri, "%pg_sleep%")
    assert(a:kill("KILL"))
    a:wait(10000)
    -- the server notices the dead client and rolls back
    for _ = 1, 100 do
      if value(db.uri, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep%' " ..
        "AND pid <> pg_backend_pid()") == 0 then break end
      proc.sleep(100)
    end
    assert.are.equal(1, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    assert.is_nil(value(db.uri, "SELECT to_regclass('slow')::text"))
    local st = helpers.run({ "status", "-d", db.uri }, { cwd = db.dir })
    assert.matches("pending  0002_slow", st.stdout)
    local res = helpers.run({ "up", "-y", "-d", db.uri }, { cwd = db.dir })
    assert.are.equal(0, res.code, res.stderr)
    assert.are.equal(5, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
  end)

  it("kill -9 in a non-transactional migration leaves it dirty and the next run says so", function()
    helpers.write_files(db.dir, { ["migrations/0002_slow.up.sql"] = "-- moonshift:no-transaction\n" ..
      "CREATE TABLE slow (id int);\nSELECT pg_sleep(30);\n" })
    local a = spawn({ "up", "-y", "-d", db.uri }, db.dir)
    wait_for_query(db.uri, "%pg_sleep%")
    assert(a:kill("KILL"))
    a:wait(10000)
    assert.are.equal("dirty", value(db.uri, "SELECT state FROM moonshift_migrations WHERE version = '0002'"))
    local res = helpers.run({ "up", "-y", "-d", db.uri }, { cwd = db.dir })
    assert.are.equal(9, res.code)
    assert.matches("0002_slow is dirty", res.stderr)
  end)

  it("with nothing to do, up neither waits for the lock nor takes it", function()
    assert.are.equal(0, helpers.ms({ "up", "-y" }).code)
    local holder <close> = assert(require("moonshift.pg").connect(db.uri))
    assert(holder:query("SELECT pg_advisory_lock($1::int, hashtext($2))",
      require("moonshift.lock").CLASS, '"public"."moonshift_migrations"'))
    local res = helpers.ms({ "up", "-y", "--lock-wait", "200ms" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("nothing to do", res.stdout)
    -- with something to do, it waits and gives up as before
    helpers.write_files(db.dir, { ["migrations/0006_f.up.sql"] = "CREATE TABLE f (id int);\n" })
    res = helpers.ms({ "up", "-y", "--lock-wait", "200ms" })
    assert.are.equal(5, res.code, res.stderr)
    assert.is_nil(value(db.uri, "SELECT to_regclass('f')::text"))
  end)

  it("a runner whose lock session was ended cannot apply what another runner applied", function()
    assert.are.equal(0, helpers.ms({ "up", "-y" }).code)
    helpers.write_files(db.dir, {
      ["migrations/0006_seed.up.sql"] = "CREATE TABLE IF NOT EXISTS seed (note text);\n" ..
        "INSERT INTO seed VALUES ('admin');\n",
      ["migrations/0006_seed.lua"] =
        'return { pre = function(ctx) ctx.db:query("SELECT pg_sleep(2)") end }\n',
    })
    local a = spawn({ "up", "-y", "-d", db.uri }, db.dir)
    wait_for_query(db.uri, "%pg_sleep(2)%")
    -- the "terminate other sessions" idiom, or a DBA's reaper, ends a's run lock session
    assert.are.equal(1, value(db.uri, "SELECT count(pg_catalog.pg_terminate_backend(pid)) " ..
      "FROM pg_locks WHERE locktype = 'advisory' AND granted"))
    local b = spawn({ "up", "-y", "--lock-wait", "30s", "-d", db.uri }, db.dir)
    local ra, rb = a:wait(60000), b:wait(60000)
    assert.are.equal(1, value(db.uri, "SELECT count(*) FROM seed"), ra.stderr .. rb.stderr)
    assert.are.equal(9, ra.code, ra.stderr) -- applied it, then found its lock gone
    assert.matches("the run lock was lost after 0006_seed", ra.stderr)
    assert.are.equal(9, rb.code, rb.stderr)
    assert.matches("0006_seed was applied by another runner meanwhile", rb.stderr)
    assert.are.equal("applied", value(db.uri, "SELECT state FROM moonshift_migrations " ..
      "WHERE version = '0006'"))
  end)

  it("keeps its lock session through a role's idle_session_timeout while a hook runs", function()
    assert.are.equal(0, helpers.ms({ "up", "-y" }).code)
    local role = "reaped_" .. proc.getpid()
    helpers.query(db.uri, "DROP ROLE IF EXISTS " .. role)
    helpers.query(db.uri, "CREATE ROLE " .. role .. " LOGIN SUPERUSER")
    helpers.query(db.uri, "ALTER ROLE " .. role .. " SET idle_session_timeout = '1s'")
    finally(function()
      helpers.query(db.uri, "REASSIGN OWNED BY " .. role .. " TO postgres")
      helpers.query(db.uri, "DROP OWNED BY " .. role)
      helpers.query(db.uri, "DROP ROLE " .. role)
    end)
    helpers.write_files(db.dir, {
      ["migrations/0006_seed.up.sql"] = "CREATE TABLE seed (note text);\n",
      ["migrations/0006_seed.lua"] =
        'return { pre = function(ctx) ctx.db:query("SELECT pg_sleep(2.5)") end }\n',
    })
    local res = helpers.run({ "up", "-y", "-d", (db.uri:gsub("user=postgres", "user=" .. role)) },
      { cwd = db.dir })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("applied 1 migration", res.stdout)
  end)

  it("with lock = \"table\" on a direct connection, runners at once apply a CONCURRENTLY " ..
    "migration once", function()
    helpers.write_files(db.dir, {
      ["migrate.lua"] = "return { lock = 'table' }\n",
      ["migrations/0006_idx.up.sql"] = "-- moonshift:no-transaction\n" ..
        "CREATE INDEX CONCURRENTLY e_id ON e (id);\n",
      ["migrations/0006_idx.lua"] = -- keeps the first runner inside it while the rest start
        'return { pre = function(ctx) ctx.db:query("SELECT pg_sleep(1)") end }\n',
    })
    local runners = {}
    for i = 1, 4 do runners[i] = spawn({ "up", "-y", "--lock-wait", "60s", "-d", db.uri }, db.dir) end
    local out = ""
    for i = 1, 4 do
      local r = runners[i]:wait(90000)
      assert.are.equal(0, r.code, r.stderr)
      out = out .. r.stdout .. r.stderr
    end
    assert.not_matches("deadlock", out)
    assert.are.equal(1, value(db.uri, "SELECT count(*) FROM moonshift_events " ..
      "WHERE action = 'apply' AND version = '0006'"))
    assert.are.equal("applied", value(db.uri, "SELECT state FROM moonshift_migrations " ..
      "WHERE version = '0006'"))
    assert.is_true(value(db.uri, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'e_id'::regclass"))
  end)

  it("a person at the prompt holds up no other runner, and the plan is made again under " ..
    "the lock", function()
    if not fs.exists("/usr/bin/script") then
      return helpers.needs("script(1) from bsdutils is not installed")
    end
    local cmd = string.format("%s up -d '%s'", helpers.bin(), db.uri)
    local a = assert(proc.spawn({ "sh", "-c", '(sleep 3; echo y) | script -qfec "$0" /dev/null',
      cmd }, { cwd = db.dir, env = helpers.env() }))
    proc.sleep(1500) -- a is at its prompt
    local b = helpers.run({ "up", "-y", "--lock-wait", "1s", "-d", db.uri }, { cwd = db.dir })
    assert.are.equal(0, b.code, b.stderr)
    assert.matches("applied 5 migrations", b.stdout)
    local ra = a:wait(30000)
    assert.are.equal(0, ra.code, ra.stdout)
    assert.matches("Apply 5 migrations", ra.stdout)
    assert.matches("nothing to do", ra.stdout)
    assert.are.equal(5, value(db.uri, "SELECT count(*) FROM moonshift_events WHERE action = 'apply'"))
  end)
end)
