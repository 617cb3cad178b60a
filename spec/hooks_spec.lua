-- hooks: loading companions and global hooks, the errors hooks raise, ctx, and ctx.db's
-- refusals (against a database of the shared cluster).
local errors = require("moonshift.errors")
local hooks = require("moonshift.hooks")
local pg = require("moonshift.pg")
local helpers = require("spec.helpers")

describe("hooks", function()
  describe("load_companion", function()
    local dir
    before_each(function() dir = helpers.tmpdir() end)
    after_each(function() helpers.rmdir(dir) end)

    local function companion(text)
      helpers.write_files(dir, { ["0002_b.lua"] = text })
      return hooks.load_companion(dir .. "/0002_b.lua")
    end

    it("returns the table, with its durations also in ms", function()
      local t = assert(companion("return { pre = function() end, transaction = false,\n" ..
        "  requires = { '0001' }, lock_timeout = '2s', statement_timeout = 90,\n" ..
        "  description = 'backfill' }\n"))
      assert.are.equal("function", type(t.pre))
      assert.is_false(t.transaction)
      assert.are.same({ "0001" }, t.requires)
      assert.are.equal(2000, t.lock_timeout_ms)
      assert.are.equal(90000, t.statement_timeout_ms)
      assert.are.equal("backfill", t.description)
    end)

    it("refuses an unknown key, naming it", function()
      local t, err = companion("return { pre = function() end, prre = function() end }")
      assert.is_nil(t)
      assert.are.equal("usage", err.kind)
      assert.matches('0002_b%.lua: unknown key "prre"', err.message)
    end)

    it("refuses a key of the wrong type, naming what it must be", function()
      local _, err = companion("return { pre = 'SELECT 1' }")
      assert.are.equal("usage", err.kind)
      assert.matches("pre must be a function, not a string", err.message)
      _, err = companion("return { lock_timeout = true }")
      assert.matches("lock_timeout must be a string or number, not a boolean", err.message)
    end)

    it("refuses a duration it cannot read", function()
      local _, err = companion("return { statement_timeout = 'soon' }")
      assert.are.equal("usage", err.kind)
      assert.matches("statement_timeout: invalid duration", err.message)
    end)

    it("refuses a file that returns no table, or does not load", function()
      local _, err = companion("return function() end")
      assert.are.equal("usage", err.kind)
      assert.matches("0002_b%.lua must return a table", err.message)
      _, err = companion("return {")
      assert.are.equal("usage", err.kind)
      assert.matches("cannot load .*0002_b%.lua", err.message)
    end)

    it("runs the file in the sandbox", function()
      local _, err = companion("os.execute('true')\nreturn {}")
      assert.are.equal("usage", err.kind)
      assert.matches("0002_b%.lua:1: .*execute", err.message)
    end)
  end)

  describe("load_global", function()
    local dir
    before_each(function() dir = helpers.tmpdir() end)
    after_each(function() helpers.rmdir(dir) end)

    it("loads the hooks that exist, each with its path, and leaves the others out", function()
      helpers.write_files(dir, {
        ["before_run.lua"] = "return function(ctx) return 'run' end\n",
        ["on_error.lua"] = "return function(ctx) return 'error' end\n",
        ["before_all.lua"] = "return 42\n", -- not a hook name: ignored
      })
      local loaded = assert(hooks.load_global(dir))
      assert.are.same({ "before_run", "on_error" }, (function()
        local names = {}
        for name in pairs(loaded) do names[#names + 1] = name end
        table.sort(names)
        return names
      end)())
      assert.are.equal("run", loaded.before_run.fn())
      assert.are.equal(dir .. "/before_run.lua", loaded.before_run.path)
      assert.are.equal("error", loaded.on_error.fn())
    end)

    it("returns an empty table for a directory without hooks", function()
      assert.are.same({}, assert(hooks.load_global(dir)))
    end)

    it("refuses a hook file that returns no function, or does not load", function()
      helpers.write_files(dir, { ["after_each.lua"] = "return { fn = true }\n" })
      local none, err = hooks.load_global(dir)
      assert.is_nil(none)
      assert.are.equal("usage", err.kind)
      assert.matches("after_each%.lua must return a function", err.message)
      helpers.write_files(dir, { ["after_each.lua"] = "return function(\n" })
      none, err = hooks.load_global(dir)
      assert.is_nil(none)
      assert.matches("cannot load .*after_each%.lua", err.message)
    end)
  end)

  describe("failure", function()
    it("makes a string into a hook error naming the hook, keeping the traceback", function()
      local e = hooks.failure("0002_b.lua pre", "0002_b.lua:3: boom", "stack traceback: ...")
      assert.is_true(errors.is(e))
      assert.are.equal("hook", e.kind)
      assert.are.equal("0002_b.lua pre failed: 0002_b.lua:3: boom", e.message)
      assert.are.equal("0002_b.lua pre", e.hook)
      assert.are.equal("stack traceback: ...", e.traceback)
    end)

    it("keeps an error that already has a kind, adding the hook only when it has none", function()
      local verify = errors.new("verify", "orders.total is text, not numeric")
      local e = hooks.failure("0002_b.lua verify", verify, "tb")
      assert.are.equal(verify, e)
      assert.are.equal("verify", e.kind)
      assert.are.equal("orders.total is text, not numeric", e.message)
      assert.are.equal("0002_b.lua verify", e.hook)
      assert.are.equal("tb", e.traceback)
      local named = errors.new("hook", "x", { hook = "first", traceback = "kept" })
      hooks.failure("second", named, "other")
      assert.are.equal("first", named.hook)
      assert.are.equal("kept", named.traceback)
    end)

    it("uses a table's __tostring or message, and keeps the table as the cause", function()
      local shown = setmetatable({}, { __tostring = function() return "shown" end })
      local e = hooks.failure("h", shown)
      assert.are.equal("h failed: shown", e.message)
      assert.are.equal(shown, e.cause)
      local sqlish = { message = "relation \"x\" does not exist", sqlstate = "42P01" }
      e = hooks.failure("h", sqlish)
      assert.are.equal("h failed: relation \"x\" does not exist", e.message)
      assert.are.equal("42P01", e.cause.sqlstate)
    end)

    it("describes an error value that has no message", function()
      assert.are.equal("h failed: (error object is a nil value)", hooks.failure("h", nil).message)
      assert.are.equal("h failed: (error object is a table value: {})",
        hooks.failure("h", {}).message)
      assert.are.equal("h failed: (error object is a table value: code=...)",
        hooks.failure("h", { code = 1 }).message)
      assert.are.equal("h failed: (error object is a boolean value)",
        hooks.failure("h", false).message)
    end)
  end)

  describe("db", function()
    local db = helpers.database()
    local conn
    before_each(function() conn = assert(pg.connect(db.uri)) end)
    after_each(function() conn:close() end)

    -- The error a call raised (the refusals raise error objects, not strings).
    local function raised(fn)
      local ok, e = pcall(fn)
      assert.is_false(ok, "it did not raise")
      return e
    end

    it("queries with $1 parameters: rows, the command tag, one row, one value", function()
      local h = hooks.db(conn)
      assert(h:exec("CREATE TABLE t (id int, v text)"))
      assert.are.equal("INSERT 0 2", h:exec("INSERT INTO t VALUES ($1, $2), (2, NULL)", 1, "one"))
      local rows = h:query("SELECT id, v FROM t WHERE id >= $1 ORDER BY id", 1)
      assert.are.equal(2, #rows)
      assert.are.equal("one", rows[1].v)
      assert.are.equal(pg.null, rows[2].v)
      assert.are.equal(pg.null, h.null)
      assert.are.same({ id = 1, v = "one" }, h:one("SELECT id, v FROM t WHERE id = $1", 1))
      assert.is_nil(h:one("SELECT id FROM t WHERE id = 3"))
      assert.are.equal(2, h:value("SELECT count(*) FROM t"))
      assert.is_nil(h:value("SELECT v FROM t WHERE id = 2"))
      assert.is_nil(h:value("SELECT v FROM t WHERE id = 3"))
    end)

    it("raises the server's error for a failing statement", function()
      local h = hooks.db(conn)
      local e = raised(function() h:query("SELECT * FROM missing_table") end)
      assert.are.equal("42P01", e.sqlstate)
    end)

    it("raises on SQL that is not a string", function()
      local h = hooks.db(conn)
      assert.has_error(function() h:exec(42) end, "SQL must be a string")
    end)

    it("refuses transaction control, role changes and advisory unlocks, sending nothing", function()
      local h = hooks.db(conn)
      for _, sql in ipairs({ "BEGIN", "begin isolation level serializable", "START TRANSACTION",
        "COMMIT", "END", "ABORT", "ROLLBACK", "PREPARE TRANSACTION 'x'",
        "SET SESSION AUTHORIZATION postgres", "SET ROLE postgres", "RESET ALL", "RESET ROLE",
        "DISCARD ALL", "SELECT pg_advisory_unlock_all()", "SELECT pg_advisory_unlock(1)" }) do
        local e = raised(function() h:exec(sql) end)
        assert.is_true(errors.is(e), sql)
        assert.are.equal("hook", e.kind, sql)
        assert.matches("is not allowed in a hook", e.message)
      end
      assert.are.equal("idle", conn:status())
    end)

    it("lets through statements that only start like a refused word", function()
      local h = hooks.db(conn)
      assert(h:exec("CREATE TABLE beginnings (ending int)"))
      assert.are.equal("SELECT 1", h:exec("SELECT 1 AS commit_count"))
    end)

    it("raises when a call leaves the transaction other than expected", function()
      assert(conn:exec("BEGIN"))
      local h = hooks.db(conn, "intrans")
      assert.are.equal(1, h:value("SELECT 1"))
      local e = raised(function() h:exec("SELECT 1/0") end)
      assert.are.equal("hook", e.kind)
      assert.matches("a hook left the transaction inerror %(expected intrans%)", e.message)
      assert(conn:exec("ROLLBACK"))
    end)
  end)

  describe("ctx", function()
    local function ui()
      local said = {}
      return {
        said = said,
        info = function(_, msg) said[#said + 1] = "info " .. msg end,
        warn = function(_, msg) said[#said + 1] = "warn " .. msg end,
      }
    end

    it("describes the migration and the run", function()
      local m = { version = "0002", name = "b", id = "0002_b", up_path = "/p/0002_b.up.sql",
        down_path = "/p/0002_b.down.sql", checksum = "abc" }
      local ctx = hooks.ctx({ migration = m, direction = "down", ui = ui(), dry_run = true,
        plan = { "0002" } })
      assert.are.same({ version = "0002", name = "b", id = "0002_b", path = "/p/0002_b.down.sql",
        checksum = "abc", direction = "down" }, ctx.migration)
      assert.is_true(ctx.dry_run)
      assert.are.same({ "0002" }, ctx.plan)
      ctx = hooks.ctx({ migration = m, ui = ui() })
      assert.are.equal("up", ctx.migration.direction)
      assert.are.equal("/p/0002_b.up.sql", ctx.migration.path)
      assert.is_false(ctx.dry_run)
      assert.are.same({}, ctx.plan)
      assert.is_nil(ctx.db)
    end)

    it("logs through the ui as text", function()
      local u = ui()
      local ctx = hooks.ctx({ ui = u })
      ctx.log.info("starting")
      ctx.log.warn(42)
      assert.are.same({ "info starting", "warn 42" }, u.said)
    end)

    it("reads the environment through the config, never the connection's secrets", function()
      local vars = { APP_MODE = "blue", PGPASSWORD = "s3cret", DATABASE_URL = "postgresql://x",
        MOONSHIFT_DATABASE_URL = "postgresql://y", PGPASSFILE = "/p", PGSERVICEFILE = "/s" }
      local ctx = hooks.ctx({ ui = ui(), cfg = { env = function(name) return vars[name] end } })
      assert.are.equal("blue", ctx.env("APP_MODE"))
      assert.are.equal("dflt", ctx.env("UNSET_VAR", "dflt"))
      assert.is_nil(ctx.env("UNSET_VAR"))
      for _, name in ipairs({ "PGPASSWORD", "DATABASE_URL", "MOONSHIFT_DATABASE_URL", "PGPASSFILE",
        "PGSERVICEFILE" }) do
        assert.is_nil(ctx.env(name), name)
        assert.are.equal("none", ctx.env(name, "none"), name)
      end
    end)

    it("fail raises a hook error at the caller's file and line", function()
      local ctx = hooks.ctx({ ui = ui() })
      local chunk = assert(load("local ctx = ...\n\nctx.fail('backfill first')\n", "@0002_b.lua"))
      local ok, e = pcall(chunk, ctx)
      assert.is_false(ok)
      assert.are.equal("hook", e.kind)
      assert.are.equal("0002_b.lua:3: backfill first", e.message)
    end)

    it("env hides any variable whose value holds the connection's password", function()
      local vars = { PGPASSWORD = "pw-canary-1", OTHER = "x:pw-canary-1@y", URL2 =
        "postgresql://u:pw-canary-2@h/db", PLAIN = "fine" }
      local ctx = hooks.ctx({ ui = ui(), cfg = { database = "postgresql://u:pw-canary-2@h/db",
        env = function(name) return vars[name] end } })
      assert.is_nil(ctx.env("PGPASSWORD"))
      assert.is_nil(ctx.env("OTHER"))
      assert.are.equal("d", ctx.env("URL2", "d"))
      assert.are.equal("fine", ctx.env("PLAIN"))
    end)

    it("hands out copies of the plan, the results and the error", function()
      local plan, results = { "0001_a", "0002_b" }, { { id = "0001_a" } }
      local ctx = hooks.ctx({ ui = ui(), plan = plan, results = results, error = { kind = "sql" } })
      table.remove(ctx.plan)
      ctx.results[1].id = "changed"
      assert.are.same({ "0001_a", "0002_b" }, plan)
      assert.are.equal("0001_a", results[1].id)
      assert.are.equal("sql", ctx.error.kind)
    end)

    it("spawn runs a program with only the environment given (global hooks only)", function()
      assert.is_nil(hooks.ctx({ ui = ui() }).spawn)
      local ctx = hooks.ctx({ ui = ui(), spawn = true })
      local res = assert(ctx.spawn({ "/bin/sh", "-c", "echo \"$A:$HOME\"; cat" },
        { env = { A = "1" }, stdin = "in" }))
      assert.are.equal(0, res.code)
      assert.are.equal("1:\nin", res.stdout)
    end)

    it("gives a database handle when there is a connection", function()
      local ctx = hooks.ctx({ ui = ui(), conn = {} })
      assert.are.equal("function", type(ctx.db.query))
      assert.are.equal(pg.null, ctx.db.null)
    end)
  end)
end)
