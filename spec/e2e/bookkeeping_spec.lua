-- moonshift's own queries on a locked tracking table: bounded by --lock-wait, the blocker
-- named, and the first SIGINT/SIGTERM honoured while one waits.
local fs = require("moonshift.fs")
local pg = require("moonshift.pg")
local proc = require("moonshift.proc")
local helpers = require("spec.helpers")

local value = helpers.value

local spawn, wait_for_query = helpers.spawn, helpers.wait_for_query

-- The text of moonshift's history read while it waits on the lock (status's, or up's).
local READ = '%FROM "public"."moonshift_migrations"%'

describe("a locked tracking table #e2e", function()
  local db = helpers.database({ files = {
    ["migrations/0001_a.up.sql"] = "CREATE TABLE a (id int);\n",
    ["migrations/0002_b.up.sql"] = "CREATE TABLE b (id int);\n",
  } })

  -- A DBA's session holding LOCK TABLE on the history table until closed.
  local function lock_history(mode)
    local conn = assert(pg.connect(db.uri .. "&application_name=dba"))
    assert(conn:exec("BEGIN"))
    assert(conn:exec("LOCK TABLE moonshift_migrations IN " .. (mode or "ACCESS EXCLUSIVE") ..
      " MODE"))
    return conn
  end

  before_each(function()
    assert.are.equal(0, helpers.run({ "up", "-y", "-d", db.uri, "--to", "1" },
      { cwd = db.dir }).code)
  end)

  it("status, check and up exit 5 after --lock-wait, naming the session that holds it", function()
    local dba = lock_history()
    local pid = dba:backend_pid()
    for _, args in ipairs({ { "status" }, { "check" }, { "up", "-y" }, { "status", "--json" } }) do
      local argv = table.move(args, 1, #args, 1, {})
      for _, a in ipairs({ "-d", db.uri, "--lock-wait", "1s" }) do argv[#argv + 1] = a end
      local t0 = fs.clock_ms()
      local res = helpers.run(argv, { cwd = db.dir, timeout = 30000 })
      local elapsed = fs.clock_ms() - t0
      local what = table.concat(args, " ")
      assert.is_false(res.timed_out, what .. " hung")
      assert.are.equal(5, res.code, what .. ": " .. res.stderr)
      assert.is_true(elapsed < 8000, what .. " took " .. elapsed .. " ms")
      assert.matches("moonshift's tracking tables are locked by pid " .. pid .. " %(application_name " ..
        "dba, user postgres, idle in transaction since %d+%-%d+%-%d+ [%d:]+Z%) holding " ..
        "AccessExclusiveLock on moonshift_migrations; gave up waiting after 1%.0 s %(%-%-lock%-wait%)",
        res.stderr, nil, what)
    end
    dba:close()
    assert.are.equal(1, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    assert.is_nil(value(db.uri, "SELECT to_regclass('b')::text"))
    assert.are.equal(3, helpers.run({ "check", "-d", db.uri }, { cwd = db.dir }).code)
  end)

  it("a lock that only stops writes lets status read, and holds up's run for --lock-wait", function()
    local dba = lock_history("EXCLUSIVE")
    local st = helpers.run({ "status", "-d", db.uri, "--lock-wait", "1s" }, { cwd = db.dir })
    assert.are.equal(0, st.code, st.stderr)
    local res = helpers.run({ "stamp", "-y", "2", "-d", db.uri, "--lock-wait", "1s" },
      { cwd = db.dir, timeout = 30000 })
    assert.is_false(res.timed_out, "stamp hung")
    assert.are.equal(5, res.code, res.stderr)
    assert.matches("holding ExclusiveLock on moonshift_migrations; gave up waiting after 1%.0 s",
      res.stderr)
    dba:close()
    assert.are.equal(1, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
  end)

  it("with lock = \"table\", up waits --lock-wait for the history table, then exits 5", function()
    helpers.write_files(db.dir, { ["migrate.lua"] = "return { lock = 'table' }\n" })
    local dba = lock_history("EXCLUSIVE")
    local t0 = fs.clock_ms()
    local res = helpers.run({ "up", "-y", "-d", db.uri, "--lock-wait", "1s" },
      { cwd = db.dir, timeout = 30000 })
    local elapsed = fs.clock_ms() - t0
    dba:close()
    assert.is_false(res.timed_out, "up hung")
    assert.are.equal(5, res.code, res.stderr)
    assert.is_true(elapsed < 8000, "took " .. elapsed .. " ms")
    assert.matches("locked by pid %d+ %(application_name dba, [^)]+%) holding ExclusiveLock on " ..
      "moonshift_migrations; gave up waiting after 1%.0 s %(%-%-lock%-wait%)", res.stderr)
    assert.is_nil(res.stderr:find("retry", 1, true))
    assert.are.equal(1, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    assert.is_nil(value(db.uri, "SELECT to_regclass('b')::text"))
  end)

  for _, case in ipairs({ { { "status" }, "TERM", 143 }, { { "status" }, "INT", 130 },
    { { "check" }, "INT", 130 }, { { "up", "-y" }, "INT", 130 } }) do
    local args, sig, code = case[1], case[2], case[3]
    it(("the first SIG%s ends %s waiting on the lock: exit %d within 2 s"):format(sig,
      table.concat(args, " "), code), function()
      local dba = lock_history()
      local argv = table.move(args, 1, #args, 1, {})
      argv[#argv + 1] = "-d"
      argv[#argv + 1] = db.uri
      local a = spawn(argv, db.dir)
      wait_for_query(db.uri, READ, 300)
      local t0 = fs.clock_ms()
      assert(a:kill(sig))
      local res = a:wait(5000)
      local elapsed = fs.clock_ms() - t0
      dba:close()
      assert.is_truthy(res, "the first SIG" .. sig .. " was ignored")
      assert.are.equal(code, res.code, res.stderr)
      assert.is_true(elapsed < 2000, "took " .. elapsed .. " ms")
      assert.matches("interrupted %(SIG" .. sig .. "%) during a query on moonshift's tracking " ..
        "tables", res.stderr)
      assert.are.equal(1, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    end)
  end

  it("SIGINT to up whose history row waits on a locked events table exits 130 within 2 s",
    function()
    local dba = assert(pg.connect(db.uri .. "&application_name=dba"))
    assert(dba:exec("BEGIN"))
    assert(dba:exec("LOCK TABLE moonshift_events IN ACCESS EXCLUSIVE MODE"))
    local a = spawn({ "up", "-y", "-d", db.uri, "--lock-timeout", "30s" }, db.dir)
    wait_for_query(db.uri, "%INSERT INTO \"public\".\"moonshift_events\"%", 300)
    local t0 = fs.clock_ms()
    assert(a:kill("INT"))
    local res = a:wait(10000)
    local elapsed = fs.clock_ms() - t0
    dba:close()
    assert.is_truthy(res, "the first SIGINT was ignored")
    assert.are.equal(130, res.code, res.stderr)
    assert.is_true(elapsed < 2500, "took " .. elapsed .. " ms")
    assert.matches("interrupted %(SIGINT%) during 0002_b; rolled back, nothing of it was applied",
      res.stderr)
    assert.matches("the failure of 0002_b could not be recorded", res.stderr)
    assert.are.equal(1, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    assert.is_nil(value(db.uri, "SELECT to_regclass('b')::text"))
  end)

  it("SIGINT to up blocked on the history table under the run lock exits 130, nothing applied",
    function()
    -- another runner holds the run lock; up reads the history, then waits for it
    local holder = assert(pg.connect(db.uri .. "&application_name=holder"))
    local key = '"public"."moonshift_migrations"'
    assert(holder:query("SELECT pg_advisory_lock(1836019566, hashtext($1))", key))
    local a = spawn({ "up", "-y", "-d", db.uri }, db.dir)
    local waiting = 0
    for _ = 1, 300 do
      waiting = value(db.uri, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1 " ..
        "AND application_name LIKE $2", "%pg_try_advisory_lock%", "moonshift/%/" .. a:pid())
      if waiting > 0 then break end
      proc.sleep(50)
    end
    assert.are.equal(1, waiting)
    -- the DBA locks the table, then the run lock passes to up, whose history read blocks
    local dba = lock_history()
    assert(holder:query("SELECT pg_advisory_unlock(1836019566, hashtext($1))", key))
    wait_for_query(db.uri, READ, 300)
    assert(a:kill("INT"))
    local res = a:wait(5000)
    dba:close()
    holder:close()
    assert.is_truthy(res, "the first SIGINT was ignored")
    assert.are.equal(130, res.code, res.stderr)
    assert.matches("interrupted %(SIGINT%) during a query on moonshift's tracking tables; " ..
      "nothing was changed", res.stderr)
    assert.are.equal(1, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    assert.is_nil(value(db.uri, "SELECT to_regclass('b')::text"))
    assert.are.equal(0, value(db.uri, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"))
    local again = helpers.run({ "up", "-y", "-d", db.uri }, { cwd = db.dir })
    assert.are.equal(0, again.code, again.stderr)
    assert.are.equal(2, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
  end)

  it("a non-transactional migration that ran but cannot be recorded says it is dirty", function()
    helpers.write_files(db.dir, { ["migrations/0002_b.up.sql"] = "-- moonshift:no-transaction\n" ..
      "CREATE TABLE b (id int);\nSELECT pg_sleep(1.5);\n" })
    local a = spawn({ "up", "-y", "-d", db.uri, "--lock-timeout", "500ms" }, db.dir)
    wait_for_query(db.uri, "%pg_sleep%")
    local dba = lock_history("EXCLUSIVE")
    local res = a:wait(30000)
    dba:close()
    assert.are.equal(5, res.code, res.stderr)
    assert.matches("0002_b ran to its end, but recording that failed, so it is still marked " ..
      "dirty; `moonshift force 0002` records it as applied", res.stderr)
    assert.matches("locked by pid %d+ %(application_name dba, user postgres, idle in " ..
      "transaction since [^)]+%) holding ExclusiveLock on moonshift_migrations; gave up waiting " ..
      "after 500 ms %(the migration's lock_timeout%)", res.stderr)
    assert.are.equal("dirty", value(db.uri, "SELECT state FROM moonshift_migrations " ..
      "WHERE version = '0002'"))
    assert.are.equal("b", value(db.uri, "SELECT to_regclass('b')::text"))
  end)

  it("a migration keeps its own --lock-timeout; --lock-wait bounds only moonshift's queries", function()
    helpers.write_files(db.dir, { ["migrations/0002_b.lua"] = [[
return { pre = function(ctx)
  local t = ctx.db:query("SELECT current_setting('lock_timeout') AS t")[1].t
  if t ~= "100ms" then error("the migration's lock_timeout is " .. t) end
end }
]] })
    local res = helpers.run({ "up", "-y", "-d", db.uri, "--lock-wait", "2500ms",
      "--lock-timeout", "100ms" }, { cwd = db.dir })
    assert.are.equal(0, res.code, res.stderr)
    assert.are.equal(2, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
  end)
end)
