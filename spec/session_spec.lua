-- session: the configuration, the migrations, the connections, the history and the run lock,
-- opened in one order and closed by <close>, against a database of the shared cluster.
local helpers = require("spec.helpers")
local pg = require("moonshift.pg")
local proc = require("moonshift.proc")
local config = require("moonshift.config")
local session = require("moonshift.session")
local lock = require("moonshift.lock")
local dbmod = require("moonshift.db")

local value = helpers.value

local KEY = '"public"."moonshift_migrations"' -- the run lock's key: the qualified table

local FILES = {
  ["migrate.lua"] = 'return { migrations = "migrations" }\n',
  ["migrations/0001_users.up.sql"] = "CREATE TABLE users (id int PRIMARY KEY);\n",
  ["migrations/0001_users.down.sql"] = "DROP TABLE users;\n",
  ["migrations/0002_posts.up.sql"] = "CREATE TABLE posts (id int PRIMARY KEY);\n",
  ["migrations/0002_posts.down.sql"] = "DROP TABLE posts;\n",
}


local new_ui = helpers.quiet_ui

local ids = helpers.ids

-- Polls until fn() is true (a closed connection's backend leaves pg_stat_activity a moment
-- after the client hung up); returns fn's last answer.
local function eventually(fn)
  local ok
  for _ = 1, 100 do
    ok = fn()
    if ok then return ok end
    proc.sleep(50)
  end
  return ok
end

describe("session", function()
  local db = helpers.database({ files = FILES })

  local function load_cfg(database)
    local cfg = assert(config.load({ database = database or db.uri,
      config = db.dir .. "/migrate.lua" }))
    cfg.cache_dir = nil -- no set cache in HOME
    return cfg
  end

  local function open(opts, cfg)
    local u = new_ui()
    local s, err = session.open(cfg or load_cfg(), u, opts)
    return s, err, u
  end

  -- Run locks (moonshift's advisory lock class) held in this test's database, and by whom.
  local function run_locks()
    return helpers.query(db.uri, [[
      SELECT l.pid, l.objid::bigint = (hashtext($2)::bigint & 4294967295) AS ours
      FROM pg_locks l JOIN pg_database d ON d.oid = l.database
      WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = $1
        AND l.objsubid = 2 AND d.datname = $3]], lock.CLASS, KEY, db.name)
  end

  -- This process's moonshift connections to the test's database.
  local function backends()
    return value(db.uri, "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 " ..
      "AND application_name = $2", db.name, dbmod.application_name())
  end

  local function all_closed()
    return eventually(function() return backends() == 0 and #run_locks() == 0 end)
  end

  local function tracking_table()
    return value(db.uri, "SELECT to_regclass('moonshift_migrations')::text")
  end

  -- Records the first n migrations as applied (as stamp does), on a session of its own.
  local function stamp(n)
    local s <close> = assert(open({ change = true }))
    assert(s:bookkeeping("stamp", function(must)
      for i = 1, n do must(s.history:record(s.set.migrations[i], "applied", nil, s.run_id)) end
    end))
  end

  describe("for a read-only command", function()
    it("reads the migrations and the history and tells pending from applied", function()
      stamp(1)
      local s <close> = assert(open())
      assert.are.same({ "0001_users", "0002_posts" }, ids(s.set.migrations))
      assert.are.same({ "0001_users" }, ids(s.status.applied))
      assert.are.same({ "0002_posts" }, ids(s.status.pending))
      assert.are.equal("0001_users", s:current_id())
      assert.are.equal("postgres@" .. db.name, s.label)
      assert.are.equal(1, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    end)

    it("takes no lock and creates no tracking tables", function()
      local s <close> = assert(open())
      assert.are.same({ "0001_users", "0002_posts" }, ids(s.status.pending))
      assert.are.equal("nothing applied", s:current_id())
      assert.is_nil(s.lock)
      assert.is_nil(s.lock_conn)
      assert.are.equal(0, #run_locks())
      assert.are.equal(1, backends())
      assert.is_nil(tracking_table())
      assert.is_nil(value(db.uri, "SELECT to_regclass('moonshift_events')::text"))
    end)
  end)

  describe("for a change", function()
    it("holds the run lock on a connection of its own until closed, and sets a run id", function()
      local s = assert(open({ change = true }))
      assert.matches("^%d+T%d+Z%-%x+$", s.run_id)
      local held = run_locks()
      assert.are.equal(1, #held)
      assert.is_true(held[1].ours)
      assert.are.equal(s.lock_conn:backend_pid(), held[1].pid)
      assert.are_not.equal(s.conn:backend_pid(), held[1].pid)
      assert.are.equal(2, backends())
      s:close()
      assert.is_true(all_closed())
      s:close() -- twice is harmless
      assert.are.equal(0, #run_locks())
    end)

    it("refuses a read-only target before taking the lock, leaving nothing open", function()
      local conn <close> = assert(pg.connect(db.uri))
      assert(conn:exec("ALTER DATABASE " .. conn:escape_identifier(db.name) ..
        " SET default_transaction_read_only = on"))
      local s, err = open({ change = true })
      assert.is_nil(s)
      assert.are.equal("connect", err.kind)
      assert.matches("read%-only", err.message)
      assert.is_true(all_closed())
      assert.is_nil(tracking_table())
    end)

    it("sees a migration added while it waited for the lock", function()
      local holder <close> = assert(pg.connect(db.uri))
      assert(holder:query("SELECT pg_advisory_lock($1::int, hashtext($2))", lock.CLASS, KEY))
      local cfg = load_cfg()
      cfg.lock_wait_ms = 20000
      local u = new_ui()
      local waiting = {}
      function u.info(_, msg) -- told once, when the wait starts: add a file, let go of the lock
        waiting[#waiting + 1] = msg
        helpers.write_files(db.dir, {
          ["migrations/0003_tags.up.sql"] = "CREATE TABLE tags (id int);\n" })
        assert(holder:query("SELECT pg_advisory_unlock($1::int, hashtext($2))", lock.CLASS, KEY))
      end
      local s <close> = assert(session.open(cfg, u, { change = true }))
      assert.are.equal(1, #waiting)
      assert.matches("waiting for the run lock on " .. KEY:gsub("%p", "%%%0") ..
        ", held by pid " .. holder:backend_pid(), waiting[1])
      assert.are.same({ "0001_users", "0002_posts", "0003_tags" }, ids(s.set.migrations))
      assert.are.same({ "0001_users", "0002_posts", "0003_tags" }, ids(s.status.pending))
      assert.are.equal(s.lock_conn:backend_pid(), run_locks()[1].pid)
    end)

    it("gives up with kind lock, naming the holder, when the lock stays held", function()
      local holder <close> = assert(pg.connect(db.uri))
      assert(holder:query("SELECT pg_advisory_lock($1::int, hashtext($2))", lock.CLASS, KEY))
      local cfg = load_cfg()
      cfg.lock_wait_ms = 300
      local s, err = open({ change = true }, cfg)
      assert.is_nil(s)
      assert.are.equal("lock", err.kind)
      assert.matches("pid " .. holder:backend_pid(), err.message)
      assert.matches("%-%-lock%-wait", err.message)
      assert.are.equal(0, eventually(backends))
      assert.are.equal(holder:backend_pid(), run_locks()[1].pid)
    end)
  end)

  describe("errors", function()
    local UNREACHABLE = "postgresql:///nowhere?host=/nonexistent/moonshift-spec&connect_timeout=5"

    local function break_files()
      helpers.write_files(db.dir, {
        ["migrations/0001_again.up.sql"] = "CREATE TABLE again (id int);\n" })
    end

    for _, change in ipairs({ false, true }) do
      it("reports a broken migration file before an unreachable database" ..
          (change and " (change)" or ""), function()
        break_files()
        local s, err = open({ change = change }, load_cfg(UNREACHABLE))
        assert.is_nil(s)
        assert.are.equal("usage", err.kind)
        assert.matches("duplicate version", err.message)
        assert.matches("0001_again%.up%.sql", err.message)
        assert.is_nil(tracking_table())
      end)
    end

    it("reports an unreachable database alone as kind connect", function()
      local s, err = open({ change = true }, load_cfg(UNREACHABLE))
      assert.is_nil(s)
      assert.are.equal("connect", err.kind)
      assert.matches("^cannot connect to ", err.message)
      assert.is_nil(tracking_table())
    end)

    it("closes the connection it opened when a migration file is broken", function()
      break_files()
      local s, err = open({ change = true })
      assert.is_nil(s)
      assert.are.equal("usage", err.kind)
      assert.matches("0001_again%.up%.sql", err.message)
      assert.is_true(all_closed())
      assert.is_nil(tracking_table())
    end)

    it("reports a pending migration that cannot be split, naming its file and line", function()
      helpers.write_files(db.dir, { ["migrations/0003_bad.up.sql"] = "SELECT 1;\nSELECT 'x;\n" })
      local s, err = open()
      assert.is_nil(s)
      assert.are.equal("usage", err.kind)
      assert.matches("0003_bad%.up%.sql:2: unterminated", err.message)
      assert.is_true(all_closed())
    end)
  end)

  describe("closing", function()
    it("<close> closes both connections and releases the lock", function()
      do
        local s <close> = assert(open({ change = true }))
        assert.is_true(s.lock:held())
        assert.are.equal(1, #run_locks())
        assert.are.equal(2, backends())
      end
      assert.is_true(all_closed())
    end)

    it("session.with returns what fn returns and closes everything after", function()
      local a, b = session.with(load_cfg(), new_ui(), { change = true }, function(s)
        return s:current_id(), #run_locks()
      end)
      assert.are.equal("nothing applied", a)
      assert.are.equal(1, b)
      assert.is_true(all_closed())
    end)

    it("session.with closes everything when fn raises", function()
      local ok, err = pcall(session.with, load_cfg(), new_ui(), { change = true }, function()
        assert.are.equal(1, #run_locks())
        error("boom", 0)
      end)
      assert.is_false(ok)
      assert.are.equal("boom", err)
      assert.is_true(all_closed())
    end)

    it("session.with does not call fn when the session cannot open", function()
      local called = false
      local res, err = session.with(load_cfg("postgresql:///nowhere?host=/nonexistent/x"),
        new_ui(), { change = true }, function() called = true end)
      assert.is_nil(res)
      assert.are.equal("connect", err.kind)
      assert.is_false(called)
      assert.is_nil(tracking_table())
    end)
  end)

  describe("Session:confirm", function()
    local function never_asked(u)
      function u.confirm() error("asked", 2) end
    end

    it("lets a dry run and --auto-confirm through without asking", function()
      local s <close> = assert(open({ change = true }))
      never_asked(s.ui)
      assert.is_true(s:confirm({ dry_run = true }, "Apply?"))
      assert.is_true(s:confirm({ auto_confirm = true }, "Apply?"))
      s.ui.interactive = true
      assert.is_true(s:confirm({ auto_confirm = true }, "Apply?"))
      assert.is_nil(tracking_table())
    end)

    it("refuses without a terminal, saying to pass -y", function()
      local s <close> = assert(open({ change = true }))
      never_asked(s.ui)
      local ok, err = s:confirm({}, "Apply?")
      assert.is_nil(ok)
      assert.are.equal("usage", err.kind)
      assert.matches("no terminal", err.message)
      assert.matches("pass %-%-auto%-confirm %(%-y%)", err.message)
      assert.matches(("postgres@" .. db.name):gsub("%p", "%%%0"), err.message)
      assert.is_nil(tracking_table())
    end)

    it("asks once on a terminal; no is a usage error, yes goes on", function()
      local s <close> = assert(open({ change = true }))
      s.ui.interactive = true
      local asked, answer = {}, false
      function s.ui.confirm(_, q)
        asked[#asked + 1] = q
        return answer
      end
      local ok, err = s:confirm({}, "Apply 2 migrations?")
      assert.is_nil(ok)
      assert.are.equal("usage", err.kind)
      assert.matches("not confirmed; nothing was changed", err.message)
      answer = true
      assert.is_true(s:confirm({}, "Apply 2 migrations?"))
      assert.are.same({ "Apply 2 migrations?", "Apply 2 migrations?" }, asked)
      assert.is_nil(tracking_table())
    end)
  end)

  describe("Session:bookkeeping", function()
    it("commits every write in one transaction", function()
      local s <close> = assert(open({ change = true }))
      assert(s:bookkeeping("stamp", function(must)
        for _, m in ipairs(s.set.migrations) do
          must(s.history:record(m, "applied", nil, s.run_id))
          must(s.history:event("stamp", m, s.run_id))
        end
      end))
      assert.are.equal("idle", s.conn:status())
      assert.are.equal(2, value(db.uri, "SELECT count(*) FROM moonshift_migrations " ..
        "WHERE state = 'applied' AND run_id = $1", s.run_id))
      assert.are.equal(2, value(db.uri, "SELECT count(*) FROM moonshift_events " ..
        "WHERE action = 'stamp'"))
    end)

    it("rolls everything back on the first failure and stops there", function()
      local s <close> = assert(open({ change = true }))
      local after_failure = false
      local ok, err = s:bookkeeping("stamp", function(must)
        must(s.history:record(s.set.migrations[1], "applied", nil, s.run_id))
        must(s.history:event("stamp", s.set.migrations[1], s.run_id))
        must(s.conn:exec("INSERT INTO no_such_table VALUES (1)"))
        after_failure = true
      end)
      assert.is_nil(ok)
      assert.is_false(after_failure)
      assert.are.equal("sql", err.kind)
      assert.matches("^stamp failed and was rolled back: .*no_such_table", err.message)
      assert.are.equal("idle", s.conn:status())
      -- the tracking tables are made (and committed) first; the writes are gone
      assert.are.equal("moonshift_migrations", tracking_table())
      assert.are.equal(0, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
      assert.are.equal(0, value(db.uri, "SELECT count(*) FROM moonshift_events"))
      -- and the session goes on working
      assert(s:refresh())
      assert.are.same({ "0001_users", "0002_posts" }, ids(s.status.pending))
    end)
  end)
end)
