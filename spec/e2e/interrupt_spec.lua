-- Ctrl-C and SIGTERM during a migration, a blocked migration, and progress on a terminal.
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")
local pg = require("moonshift.pg")
local helpers = require("spec.helpers")

local value = helpers.value

local spawn, wait_for_query = helpers.spawn, helpers.wait_for_query

describe("interrupts and blocked migrations #e2e", function()
  local db = helpers.database({ files = {
    ["migrations/0001_a.up.sql"] = "CREATE TABLE a (id int);\n",
    ["migrations/0002_sleep.up.sql"] = "CREATE TABLE b (id int);\nSELECT pg_sleep(60);\n",
    ["migrations/0003_c.up.sql"] = "CREATE TABLE c (id int);\n",
  } })

  for _, sig in ipairs({ { "INT", 130 }, { "TERM", 143 } }) do
    it("SIG" .. sig[1] .. " during pg_sleep exits " .. sig[2] .. " within 2 s, rolled back", function()
      local a = spawn({ "up", "-y", "-d", db.uri }, db.dir)
      wait_for_query(db.uri, "%pg_sleep%")
      local t0 = fs.clock_ms()
      assert(a:kill(sig[1]))
      local res = a:wait(10000)
      local elapsed = fs.clock_ms() - t0
      assert.are.equal(sig[2], res.code, res.stderr)
      assert.is_true(elapsed < 2000, "took " .. elapsed .. " ms")
      assert.matches("interrupted %(SIG" .. sig[1] .. "%) during 0002_sleep; rolled back", res.stderr)
      assert.are.equal(1, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
      assert.is_nil(value(db.uri, "SELECT to_regclass('b')::text"))
      assert.are.equal(0, value(db.uri, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"))
      helpers.write_files(db.dir, { ["migrations/0002_sleep.up.sql"] = "CREATE TABLE b (id int);\n" })
      local again = helpers.run({ "up", "-y", "-d", db.uri }, { cwd = db.dir })
      assert.are.equal(0, again.code, again.stderr)
      assert.are.equal(3, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    end)
  end

  it("a backend terminated mid-migration exits 4, reports it not applied, and the next run proceeds", function()
    local a = spawn({ "up", "-y", "-d", db.uri }, db.dir)
    wait_for_query(db.uri, "%pg_sleep%")
    helpers.query(db.uri, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity " ..
      "WHERE query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()")
    local res = a:wait(20000)
    assert.are.equal(4, res.code, res.stderr)
    assert.matches("0002_sleep is not applied", res.stderr)
    assert.matches("terminating connection due to administrator command", res.stderr)
    assert.are.equal(1, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    assert.is_nil(value(db.uri, "SELECT to_regclass('b')::text"))
    helpers.write_files(db.dir, { ["migrations/0002_sleep.up.sql"] = "CREATE TABLE b (id int);\n" })
    local again = helpers.run({ "up", "-y", "-d", db.uri }, { cwd = db.dir })
    assert.are.equal(0, again.code, again.stderr)
  end)

  it("retries a migration blocked by an ACCESS EXCLUSIVE lock, then names the blocker", function()
    assert.are.equal(0, helpers.run({ "up", "-y", "-d", db.uri, "--to", "1" }, { cwd = db.dir }).code)
    helpers.write_files(db.dir, { ["migrations/0002_sleep.up.sql"] = "ALTER TABLE a ADD COLUMN x int;\n" })
    local blocker = assert(pg.connect(db.uri .. "&application_name=blocker"))
    assert(blocker:exec("BEGIN"))
    assert(blocker:exec("LOCK TABLE a IN ACCESS EXCLUSIVE MODE"))
    helpers.write_files(db.dir, { ["migrate.lua"] = "return { lock_retries = 2 }\n" })
    local res = helpers.run({ "up", "-y", "-d", db.uri, "--lock-timeout", "1500ms" }, { cwd = db.dir })
    blocker:close()
    assert.are.equal(6, res.code)
    assert.matches("lock timeout %(SQLSTATE 55P03%); retry 1 of 2", res.stderr)
    assert.matches("retry 2 of 2", res.stderr)
    assert.matches("ERROR 55P03", res.stderr)
    assert.matches("blocked by pid %d+ %(application_name blocker, idle in transaction", res.stderr)
    assert.are.equal(1, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
  end)
end)

describe("progress on a terminal #e2e", function()
  local db = helpers.database()

  it("shows a live line with the elapsed time under a pseudo-terminal, plain lines without", function()
    if not fs.exists("/usr/bin/script") then
      helpers.needs("script(1) from bsdutils is not installed")
      return
    end
    helpers.write_files(db.dir, {
      ["migrations/0001_slow.up.sql"] = "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g;\n" ..
        "SELECT pg_sleep(2.5);\n",
    })
    local cmd = string.format("%s up -y -d '%s'", helpers.bin(), db.uri)
    local env = helpers.env()
    env.NO_COLOR = nil
    local res = assert(proc.run({ "script", "-qfec", cmd, "/dev/null" }, { cwd = db.dir, env = env,
      timeout = 60000 }))
    assert.are.equal(0, res.code, res.stdout)
    assert.matches("%[1/1%] 0001_slow  running  %d", res.stdout)
    assert.matches("\r\27%[K%[1/1%] 0001_slow  ok", res.stdout)
    local plain = helpers.run({ "down", "-y", "-d", db.uri }, { cwd = db.dir })
    assert.is_nil(plain.stderr:find("running", 1, true))
  end)
end)
