-- execute: plan -> confirm -> run -> result, the run's stops, global hooks, single
-- transaction and events, against a database of the shared cluster.
local helpers = require("spec.helpers")
local proc = require("moonshift.proc")
local config = require("moonshift.config")
local session = require("moonshift.session")
local execute = require("moonshift.execute")
local plan = require("moonshift.plan")
local lock = require("moonshift.lock")
local dbmod = require("moonshift.db")

local value = helpers.value

local FILES = {
  ["migrate.lua"] = 'return { migrations = "migrations" }\n',
  ["migrations/0001_users.up.sql"] = "CREATE TABLE users (id int PRIMARY KEY, name text);\n",
  ["migrations/0001_users.down.sql"] = "DROP TABLE users;\n",
  ["migrations/0002_posts.up.sql"] = "CREATE TABLE posts (id int PRIMARY KEY,\n" ..
    "  user_id int REFERENCES users);\n",
  ["migrations/0002_posts.down.sql"] = "DROP TABLE posts;\n",
  ["migrations/0003_seed.up.sql"] = "INSERT INTO users VALUES (1, 'ada'), (2, 'bob');\n",
  ["migrations/0003_seed.down.sql"] = "DELETE FROM users;\n",
}

local ALL = { "0001_users", "0002_posts", "0003_seed" }

-- 0002 refers to a table that does not exist: it fails on its second line.
local BROKEN_0002 = { ["migrations/0002_posts.up.sql"] = "CREATE TABLE posts (id int);\n" ..
  "ALTER TABLE posts ADD COLUMN tag_id int REFERENCES no_such_tags;\n" }


-- A quiet ui on sinks, never interactive, that keeps the events it is given (and still
-- hands them to the run log as Ui:event does).
local function new_ui()
  local u = helpers.quiet_ui()
  u.events = {}
  function u:event(name, fields)
    self.events[#self.events + 1] = { name = name, fields = fields }
    return getmetatable(self).event(self, name, fields) -- Ui:event
  end
  function u.confirm() error("asked a question", 2) end
  return u
end

-- The names of the events a ui received, without per-statement timings.
local function event_names(u)
  local out = {}
  for _, e in ipairs(u.events) do
    if e.name ~= "statement" and e.name ~= "notice" then out[#out + 1] = e.name end
  end
  return out
end

local function find_event(u, name)
  for _, e in ipairs(u.events) do
    if e.name == name then return e.fields end
  end
end

local ids = helpers.ids

local function plain(s)
  return (s:gsub("%p", "%%%0"))
end

-- `how` for an up: every pending migration.
local UP = {
  plan = function(s)
    return plan.up(s.status), "up", "Apply the pending migrations?"
  end,
}

describe("execute", function()
  local db = helpers.database({ files = FILES })

  local function load_cfg()
    local cfg = assert(config.load({ database = db.uri, config = db.dir .. "/migrate.lua" }))
    cfg.cache_dir = nil -- no set cache in HOME
    return cfg
  end

  local function applied()
    local out = {}
    local ok, rows = pcall(helpers.query, db.uri,
      "SELECT name FROM moonshift_migrations WHERE state = 'applied' ORDER BY version")
    for i, row in ipairs(ok and rows or {}) do out[i] = row.name end
    return out
  end

  local function relation(name)
    return value(db.uri, "SELECT to_regclass($1)::text", name)
  end

  -- Nothing of ours left: no connection of this process, no run lock in the database.
  local function all_closed()
    for _ = 1, 100 do
      local n = value(db.uri, "SELECT (SELECT count(*) FROM pg_stat_activity WHERE " ..
        "datname = $1 AND application_name = $2) + (SELECT count(*) FROM pg_locks l JOIN " ..
        "pg_database d ON d.oid = l.database WHERE l.locktype = 'advisory' AND " ..
        "l.classid::bigint = $3 AND d.datname = $1)", db.name, dbmod.application_name(),
        lock.CLASS)
      if n == 0 then return true end
      proc.sleep(50)
    end
    return false
  end

  describe("change", function()
    it("with nothing to do returns nothing = true without asking", function()
      local u = new_ui()
      assert(execute.change(load_cfg(), u, { auto_confirm = true }, UP))
      local again = new_ui()
      local res = assert(execute.change(load_cfg(), again, {}, UP)) -- no -y: asking would fail
      assert.are.same({ done = {}, current = "0003_seed", current_version = "0003",
        nothing = true, target = "postgres@" .. db.name }, res)
      assert.are.same({}, event_names(again))
      assert.are.same(ALL, applied())
      assert.are.equal(3, value(db.uri, "SELECT count(*) FROM moonshift_events"))
    end)

    it("on a dry run prints the SQL, takes no lock and changes nothing", function()
      local u = new_ui()
      local locks_during
      local res = assert(execute.change(load_cfg(), u, { dry_run = true }, {
        plan = function(s)
          locks_during = value(db.uri, "SELECT count(*) FROM pg_locks WHERE locktype = " ..
            "'advisory' AND classid::bigint = $1", lock.CLASS)
          return UP.plan(s)
        end }))
      assert.are.same({ dry_run = true, planned = 3 }, res)
      assert.are.equal(0, locks_during)
      local out = u.out.text
      assert.matches("%-%- %[1/3%] apply 0001_users %(.-0001_users%.up%.sql, 1 statements%)", out)
      assert.matches("CREATE TABLE users %(id int PRIMARY KEY, name text%);", out)
      assert.matches("%-%- %[3/3%] apply 0003_seed", out)
      assert.matches("INSERT INTO users VALUES %(1, 'ada'%), %(2, 'bob'%);", out)
      assert.is_nil(relation("moonshift_migrations"))
      assert.is_nil(relation("users"))
      assert.is_true(all_closed())
    end)

    it("applies a confirmed run and returns done, current and target", function()
      local u = new_ui()
      local res = assert(execute.change(load_cfg(), u, { auto_confirm = true }, UP))
      assert.are.same(ALL, ids(res.done))
      for _, d in ipairs(res.done) do assert.is_number(d.duration_ms) end
      assert.are.equal("0003_seed", res.current)
      assert.are.equal("postgres@" .. db.name, res.target)
      assert.are.same(ALL, applied())
      assert.are.equal(3, value(db.uri, "SELECT count(*) FROM moonshift_migrations " ..
        "WHERE run_id = $1", res.run_id))
      assert.are.equal(2, value(db.uri, "SELECT count(*) FROM users"))
      assert.is_true(all_closed())
    end)

    it("changes nothing when the run is not confirmed", function()
      local u = new_ui()
      u.confirm = getmetatable(u).confirm -- the real question: false without a terminal
      local res, err = execute.change(load_cfg(), u, {}, UP)
      assert.is_nil(res)
      assert.are.equal("usage", err.kind)
      assert.matches("%-%-auto%-confirm %(%-y%)", err.message)
      assert.is_nil(relation("moonshift_migrations"))
      assert.is_nil(relation("users"))
      assert.is_true(all_closed())
    end)

    it("passes on what plan refuses, changing nothing", function()
      local res, err = execute.change(load_cfg(), new_ui(), { auto_confirm = true }, {
        plan = function(s) return execute.target(s, "0042") end })
      assert.is_nil(res)
      assert.are.equal("usage", err.kind)
      assert.matches("0042", err.message)
      assert.is_nil(relation("moonshift_migrations"))
      assert.is_true(all_closed())
    end)

    it("runs an empty list when plan says to run it anyway", function()
      local res = assert(execute.change(load_cfg(), new_ui(), { auto_confirm = true }, {
        plan = function() return {}, "up", "Apply?", true end }))
      assert.is_nil(res.nothing)
      assert.are.same({}, res.done)
      assert.are.equal("nothing applied", res.current)
      -- a run happened: the tracking tables exist, with nothing in them
      assert.are.equal(0, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    end)
  end)

  describe("run", function()
    -- Opens a change session and runs every pending migration up with opts.
    local function run(opts, u)
      u = u or new_ui()
      local s <close> = assert(session.open(load_cfg(), u, { change = true }))
      local res, err = execute.run(s, plan.up(s.status), "up", opts or {})
      return res, err, u
    end

    it("stops at the first failure; err.done lists what stayed committed", function()
      helpers.write_files(db.dir, BROKEN_0002)
      local res, err, u = run()
      assert.is_nil(res)
      assert.are.equal("sql", err.kind)
      assert.matches("no_such_tags", err.message)
      assert.are.same({ "0001_users" }, ids(err.done))
      assert.are.same({ "0001_users" }, applied())
      assert.are.equal("users", relation("users"))
      assert.is_nil(relation("posts"))
      assert.are.equal(0, value(db.uri, "SELECT count(*) FROM users")) -- 0003 never ran
      local failed = find_event(u, "migration_failed")
      assert.are.equal("0002_posts", failed.id)
      assert.are.equal(2, failed.line)
      assert.are.equal(1, find_event(u, "run_failed").done)
      assert.is_true(all_closed())
    end)

    it("with lock = \"table\", reports what another runner did meanwhile as skipped, " ..
      "not applied", function()
      helpers.write_files(db.dir, { ["migrate.lua"] = 'return { lock = "table" }\n' })
      local u = new_ui()
      local s <close> = assert(session.open(load_cfg(), u, { change = true }))
      local list = plan.up(s.status)
      assert(s.history:ensure())
      -- another runner (through a pooler, say) applies 0001 after this plan was made
      helpers.query(db.uri, "CREATE TABLE users (id int PRIMARY KEY, name text)")
      helpers.query(db.uri, "INSERT INTO moonshift_migrations (version, name, checksum, " ..
        "state, kind) VALUES ('0001', '0001_users', $1, 'applied', 'versioned')", list[1].checksum)
      local res = assert(execute.run(s, list, "up", {}))
      assert.are.same({ "0001_users" }, res.skipped)
      assert.are.same({ "0002_posts", "0003_seed" }, ids(res.done))
      assert.are.equal("0001_users", find_event(u, "migration_skipped").id)
      assert.are.equal(1, find_event(u, "run_done").skipped)
    end)

    it("runs before_run with the database and after_run with the results", function()
      helpers.write_files(db.dir, {
        ["hooks/before_run.lua"] = "return function(ctx)\n" ..
          "  ctx.db:exec('CREATE TABLE hook_log (what text, plan text, users regclass)')\n" ..
          "  ctx.db:exec(\"INSERT INTO hook_log VALUES ('before_run', $1, " ..
          "to_regclass('users'))\", table.concat(ctx.plan, ','))\n" ..
          "end\n",
        ["hooks/after_run.lua"] = "return function(ctx)\n" ..
          "  local done = {}\n" ..
          "  for i, r in ipairs(ctx.results) do done[i] = r.id end\n" ..
          "  ctx.log.warn('after_run: ' .. table.concat(done, ',') .. ' db=' .. tostring(ctx.db))\n" ..
          "end\n",
      })
      local res, err, u = run()
      assert.is_truthy(res, err and tostring(err))
      -- before_run ran first: no users table yet, and it saw the whole plan
      assert.are.equal(1, value(db.uri, "SELECT count(*) FROM hook_log WHERE what = " ..
        "'before_run' AND plan = '0001_users,0002_posts,0003_seed' AND users IS NULL"))
      assert.matches("warning: after_run: 0001_users,0002_posts,0003_seed db=nil", u.err.text)
      assert.are.same(ALL, applied())
    end)

    it("runs on_error after the rollback, without a database, and not after_run", function()
      helpers.write_files(db.dir, BROKEN_0002)
      helpers.write_files(db.dir, {
        ["hooks/on_error.lua"] = "return function(ctx)\n" ..
          "  local e = ctx.error\n" ..
          "  ctx.log.warn(('on_error: %s %s line %s db=%s'):format(e.migration, e.kind, " ..
          "tostring(e.line), tostring(ctx.db)))\n" ..
          "end\n",
        ["hooks/after_run.lua"] = "return function(ctx) ctx.log.warn('after_run ran') end\n",
      })
      local res, err, u = run()
      assert.is_nil(res)
      assert.are.equal("sql", err.kind)
      assert.matches("warning: on_error: 0002_posts sql line 2 db=nil", u.err.text)
      assert.not_matches("after_run ran", u.err.text)
      assert.are.same({ "0001_users" }, applied())
      assert.is_nil(relation("posts"))
    end)

    it("runs no migration when before_run fails", function()
      helpers.write_files(db.dir, {
        ["hooks/before_run.lua"] = "return function(ctx) ctx.fail('not today') end\n" })
      local res, err = run()
      assert.is_nil(res)
      assert.are.equal("hook", err.kind)
      assert.matches("not today", err.message)
      assert.are.same({}, applied())
      assert.is_nil(relation("users"))
    end)

    -- Both fail today: a global hook's failure returns from execute.run without err.done
    -- and without the run_failed event, so the CLI does not say what stayed committed and
    -- the run log ends without a final status.
    it("says what stayed committed when after_run fails", function()
      helpers.write_files(db.dir, {
        ["hooks/after_run.lua"] = "return function(ctx) ctx.fail('webhook down') end\n" })
      local res, err, u = run()
      assert.is_nil(res)
      assert.are.equal("hook", err.kind)
      assert.are.same(ALL, applied())
      assert.are.same(ALL, ids(err.done or {}))
      assert.is_not_nil(find_event(u, "run_failed"), "no run_failed event")
      assert.are.equal(3, find_event(u, "run_failed").done)
    end)

    it("ends the run log with a final status when before_run fails", function()
      helpers.write_files(db.dir, {
        ["hooks/before_run.lua"] = "return function(ctx) ctx.fail('not today') end\n" })
      local res, err, u = run()
      assert.is_nil(res)
      assert.are.equal("hook", err.kind)
      assert.are.same({}, applied())
      -- the next run must not take it for a run that was killed
      assert(require("moonshift.fs").remove(db.dir .. "/hooks/before_run.lua"))
      local again
      res, err, again = run()
      assert.is_truthy(res, err and tostring(err))
      assert.are.same(ALL, applied())
      assert.not_matches("ended without a final status", again.err.text)
      assert.is_not_nil(find_event(u, "run_failed"), "no run_failed event")
    end)

    describe("with --single-transaction", function()
      it("applies the whole run in one transaction", function()
        local res = assert(run({ single_transaction = true }))
        assert.are.same(ALL, ids(res.done))
        assert.are.same(ALL, applied())
        -- applied_at is now(), the transaction's start: one value for one transaction
        assert.are.equal(1, value(db.uri, "SELECT count(DISTINCT applied_at) " ..
          "FROM moonshift_migrations"))
      end)

      it("rolls the whole run back at a failure", function()
        helpers.write_files(db.dir, BROKEN_0002)
        local u = new_ui()
        local s <close> = assert(session.open(load_cfg(), u, { change = true }))
        local res, err = execute.run(s, plan.up(s.status), "up", { single_transaction = true })
        assert.is_nil(res)
        assert.are.equal("idle", s.conn:status()) -- rolled back, not left aborted
        assert.are.equal("sql", err.kind)
        assert.matches("%-%-single%-transaction: the whole run was rolled back", err.message)
        assert.are.same({}, err.done)
        assert.are.equal(0, find_event(u, "run_failed").done)
        assert.are.same({}, applied())
        assert.is_nil(relation("users"))
        -- only the failure, recorded after the rollback
        assert.are.equal("fail", value(db.uri, "SELECT string_agg(action, ',') FROM moonshift_events"))
      end)

      it("refuses a non-transactional migration before anything runs", function()
        helpers.write_files(db.dir, { ["migrations/0002_posts.up.sql"] =
          "-- moonshift:no-transaction\nCREATE TABLE posts (id int);\n" })
        local res, err, u = run({ single_transaction = true })
        assert.is_nil(res)
        assert.are.equal("usage", err.kind)
        assert.matches("^0002_posts is not transactional, so it cannot run inside " ..
          "%-%-single%-transaction; nothing was changed$", err.message)
        assert.are.same({}, event_names(u))
        assert.is_nil(relation("moonshift_migrations"))
        assert.is_nil(relation("users"))
      end)
    end)

    it("reports each step to ui:event, in order", function()
      local res, _, u = run()
      assert.is_truthy(res)
      assert.are.same({ "run_start",
        "migration_start", "migration_done", "migration_start", "migration_done",
        "migration_start", "migration_done", "run_done" }, event_names(u))
      local start = find_event(u, "run_start") -- the run log's header
      assert.are.same(ALL, ids(start.plan))
      assert.are.equal(64, #start.plan[1].sha256)
      assert.are.equal(res.run_id, u.run_id)
      assert.are.equal("up", start.direction)
      assert.matches("%.log$", start.log)
      local first = find_event(u, "migration_start")
      assert.are.equal("0001_users", first.id)
      assert.matches(plain("/migrations/0001_users.up.sql") .. "$", first.file)
      local done = find_event(u, "run_done")
      assert.are.equal(3, done.done)
      assert.are.equal("0003", done.current)
      assert.are.same(ALL, applied())
    end)

    it("writes the events as JSON lines with --log-format json", function()
      local u = new_ui()
      u.json = true
      assert(run({}, u))
      local lines = {}
      for line in u.out.text:gmatch("[^\n]+") do lines[#lines + 1] = line end
      assert.matches('"event":"run_start"', lines[1])
      assert.matches('"event":"run_done"', lines[#lines])
      assert.matches('"current":"0003"', lines[#lines])
      assert.are.same(ALL, applied())
    end)
  end)
end)

describe("execute.plan_change", function()
  local function ms(...)
    local out = {}
    for i, id in ipairs({ ... }) do out[i] = { id = id } end
    return out
  end

  it("says nothing when the plan made under the lock is the one agreed to", function()
    assert.is_nil(execute.plan_change({ list = ms("1_a", "2_b"), direction = "up" },
      ms("1_a", "2_b"), "up"))
  end)

  it("names what another runner did meanwhile and what arrived", function()
    local said = execute.plan_change({ list = ms("1_a", "2_b"), direction = "up" },
      ms("2_b", "3_c"), "up")
    assert.are.equal("The plan changed while waiting for the run lock; now also: 3_c; " ..
      "no longer: 1_a.", said)
    assert.is_not_nil(execute.plan_change({ list = ms("1_a", "2_b"), direction = "up" },
      ms("2_b", "1_a"), "up"))
  end)
end)
