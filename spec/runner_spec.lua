-- The runner against a real server: one transaction per migration, the guard that proves
-- the transaction is still moonshift's before the history row, notices kept with their line.
local helpers = require("spec.helpers")
local pg = require("moonshift.pg")
local sql = require("moonshift.sql")
local runner = require("moonshift.runner")
local history = require("moonshift.history")

local CFG = { table = "moonshift_migrations", events_table = "moonshift_events",
  lock = "advisory", lock_retries = 0, root = "/tmp" }

-- A migration as source.lua hands it over, statements split as psql would send them.
local function migration(version, text)
  return { version = version, key = version, id = version .. "_m", name = "m",
    up_path = "/tmp/" .. version .. "_m.up.sql", up_sql = text, checksum = "x",
    statements = assert(sql.split(text)), transaction = true }
end

describe("runner", function()
  local db = helpers.database()
  local uri, conn, r, events

  before_each(function()
    uri = db.uri
    conn = assert(pg.connect(uri))
    local h = history.new(conn, "public", CFG)
    assert(h:ensure())
    events = {}
    r = runner.new({ conn = conn, history = h, cfg = CFG, run_id = "run-1",
      emit = function(name, f) events[#events + 1] = { name = name, fields = f } end })
  end)
  after_each(function() conn:close() end)

  it("applies a migration and its history row in one transaction", function()
    local res = assert(r:run(migration("0001", "CREATE TABLE t (a int);\n"), "up"))
    assert.is_number(res.duration_ms)
    assert.are.equal("applied", helpers.value(uri, "SELECT state FROM moonshift_migrations"))
    assert.are.equal("idle", conn:status())
  end)

  it("keeps the migration's lock_timeout inside it and leaves the session --lock-wait's",
    function()
    local cfg = setmetatable({ lock_timeout_ms = 100, lock_wait_ms = 2500 }, { __index = CFG })
    r.cfg = cfg
    local m = migration("0001", "CREATE TABLE t (a int);\n")
    local seen
    m.companion = { pre = function(ctx)
      seen = ctx.db:query("SELECT current_setting('lock_timeout') AS t")[1].t
    end }
    assert(r:run(m, "up"))
    assert.are.equal("100ms", seen)
    assert.are.equal("2500ms", conn:query("SHOW lock_timeout")[1].lock_timeout)
    local nt = migration("0002", "-- moonshift:no-transaction\nCREATE TABLE u (a int);\n")
    nt.transaction = false
    assert(r:run(nt, "up"))
    assert.are.equal("2500ms", conn:query("SHOW lock_timeout")[1].lock_timeout)
  end)

  it("refuses transaction control before sending anything", function()
    local res, err = r:run(migration("0001", "CREATE TABLE a (x int);\n/* a /* b */ c */ " ..
      "CoMmIt;\n"), "up")
    assert.is_nil(res)
    assert.are.equal("usage", err.kind)
    assert.matches("0001_m%.up%.sql:2: COMMIT", err.message)
    assert.is_nil(helpers.value(uri, "SELECT to_regclass('a')::text"))
  end)

  describe("when a statement the checks missed ends the transaction", function()
    -- runner.check_statements is what would refuse these; the guard is the second line
    local check = runner.check_statements
    before_each(function() runner.check_statements = function() return true end end)
    after_each(function() runner.check_statements = check end)

    it("says which statement committed what, and leaves the migration dirty", function()
      local m = migration("0001", "CREATE TABLE a1 (id int);\nCOMMIT;\n" ..
        "CREATE TABLE a2 (id int);\n")
      local res, err = r:run(m, "up")
      assert.is_nil(res)
      assert.are.equal("sql", err.kind)
      assert.matches("/tmp/0001_m%.up%.sql:2 %(COMMIT%) ended the transaction", err.message)
      assert.matches("statements 1 to 2 of 3 %(up to line 2%) ARE committed", err.message)
      assert.matches("0001_m is marked dirty", err.message)
      assert.not_matches("nothing of it was applied", err.message)
      assert.are.equal("a1", helpers.value(uri, "SELECT to_regclass('a1')::text"))
      assert.is_nil(helpers.value(uri, "SELECT to_regclass('a2')::text"))
      assert.are.equal("dirty", helpers.value(uri, "SELECT state FROM moonshift_migrations " ..
        "WHERE version = '0001'"))
      assert.are.equal("idle", conn:status())
    end)

    it("says what a COMMIT committed when a later statement fails", function()
      local res, err = r:run(migration("0001", "CREATE TABLE a1 (id int);\nCOMMIT;\n" ..
        "CREATE TABLE a2 (id int);\nSELECT 1/0;\n"), "up")
      assert.is_nil(res)
      assert.matches("statements 1 to 2 of 4 %(up to line 2%) ARE committed, the rest was " ..
        "rolled back", err.message)
      assert.not_matches("nothing of it was applied", err.message)
      assert.are.equal("a1", helpers.value(uri, "SELECT to_regclass('a1')::text"))
      assert.is_nil(helpers.value(uri, "SELECT to_regclass('a2')::text"))
      assert.are.equal("dirty", helpers.value(uri, "SELECT state FROM moonshift_migrations"))
    end)

    it("says all of it was committed when a hook came after the COMMIT", function()
      local m = migration("0001", "CREATE TABLE a1 (id int);\nCOMMIT;\n" ..
        "CREATE TABLE a2 (id int);\n")
      m.companion, m.companion_path = { post = function() end }, "/tmp/0001_m.lua"
      local res, err = r:run(m, "up")
      assert.is_nil(res)
      assert.matches("statements 1 to 3 of 3 %(up to line 3%) ARE committed%.", err.message)
      assert.are.equal("a2", helpers.value(uri, "SELECT to_regclass('a2')::text"))
      assert.are.equal("dirty", helpers.value(uri, "SELECT state FROM moonshift_migrations"))
    end)

    it("says nothing was applied only when a ROLLBACK ended it", function()
      local res, err = r:run(migration("0001", "CREATE TABLE a1 (id int);\nROLLBACK;\n" ..
        "CREATE TABLE a2 (id int);\n"), "up")
      assert.is_nil(res)
      assert.matches("%(ROLLBACK%) ended the transaction", err.message)
      assert.matches("nothing of it was applied", err.message)
      assert.is_nil(helpers.value(uri, "SELECT to_regclass('a1')::text"))
      assert.is_nil(helpers.value(uri, "SELECT to_regclass('a2')::text"))
      assert.are.equal(0, helpers.value(uri, "SELECT count(*) FROM moonshift_migrations"))
    end)
  end)

  it("keeps each notice with the file and line of the statement that raised it", function()
    assert(r:run(migration("0001", "CREATE TABLE t (a int);\n\nDO $$ BEGIN RAISE NOTICE " ..
      "'counted %', 42; END $$;\n"), "up"))
    local notices = {}
    for _, e in ipairs(events) do
      if e.name == "notice" then notices[#notices + 1] = e.fields end
    end
    assert.are.equal(1, #notices)
    assert.are.equal("counted 42", notices[1].message)
    assert.are.equal("NOTICE", notices[1].severity)
    assert.are.equal(3, notices[1].line)
    assert.matches("0001_m%.up%.sql$", notices[1].file)
  end)
end)
