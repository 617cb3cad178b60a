-- Lua beside the SQL, end to end: companions, verification, ordering, limits, workflows.
local cjson = require("cjson")
local fs = require("moonshift.fs")
local helpers = require("spec.helpers")

local value = helpers.value

describe("Lua hooks and workflows #e2e", function()
  local db = helpers.database({ files = {
    ["migrations/0001_users.up.sql"] = "CREATE TABLE users (id int PRIMARY KEY, email text);\n",
    ["migrations/0001_users.down.sql"] = "DROP TABLE users;\n",
  } })

  local ms = helpers.ms

  it("a pre that fails leaves nothing and names its file and line (exit 7)", function()
    helpers.write_files(db.dir, {
      ["migrations/0002_orders.up.sql"] = "CREATE TABLE orders (id int);\n",
      ["migrations/0002_orders.lua"] = "return {\n  pre = function(ctx)\n" ..
        "    ctx.db:exec('INSERT INTO users VALUES (1, NULL)')\n" ..
        "    if ctx.db:value('SELECT count(*) FROM users WHERE email IS NULL') > 0 then\n" ..
        "      ctx.fail('users without email: backfill first')\n    end\n  end,\n}\n",
    })
    local res = ms({ "up", "-y" })
    assert.are.equal(7, res.code)
    assert.matches("0002_orders failed; rolled back", res.stderr)
    assert.matches("migrations/0002_orders%.lua:5: users without email", res.stderr)
    assert.are.equal(1, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    assert.are.equal(0, value(db.uri, "SELECT count(*) FROM users"))
    assert.is_nil(value(db.uri, "SELECT to_regclass('orders')::text"))
  end)

  it("a verify that fails after the SQL ran leaves nothing (exit 8)", function()
    helpers.write_files(db.dir, {
      ["migrations/0002_orders.up.sql"] = "CREATE TABLE orders (id int, total varchar(20));\n",
      ["migrations/0002_orders.lua"] = "local verify = require('moonshift.verify')\n" ..
        "return { verify = function(ctx)\n" ..
        "  verify.column(ctx, 'orders', 'total', { type = 'numeric' })\nend }\n",
    })
    local res = ms({ "up", "-y" })
    assert.are.equal(8, res.code)
    assert.matches("orders%.total", res.stderr)
    assert.matches("numeric", res.stderr)
    assert.is_nil(value(db.uri, "SELECT to_regclass('orders')::text"))
    assert.are.equal(1, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
  end)

  it("a verify function that fails by ctx.fail or error() is a failed verification (exit 8)",
    function()
    for _, body in ipairs({ "ctx.fail('orders are empty')", "error('orders are empty')" }) do
      helpers.write_files(db.dir, {
        ["migrations/0002_orders.up.sql"] = "CREATE TABLE orders (id int);\n",
        ["migrations/0002_orders.lua"] = "return { verify = function(ctx)\n  " .. body ..
          "\nend }\n",
      })
      local res = ms({ "up", "-y" })
      assert.are.equal(8, res.code, body .. ": " .. res.stderr)
      assert.matches("0002_orders%.lua:2: orders are empty", res.stderr)
      assert.is_nil(helpers.value(db.uri, "SELECT to_regclass('orders')::text"))
    end
  end)

  it("a .verify.sql returning false fails the migration (exit 8)", function()
    helpers.write_files(db.dir, {
      ["migrations/0002_seed.up.sql"] = "INSERT INTO users VALUES (1, 'a@b');\n",
      ["migrations/0002_seed.verify.sql"] = "SELECT count(*) = 2 FROM users;\n",
    })
    local res = ms({ "up", "-y" })
    assert.are.equal(8, res.code)
    assert.matches("0002_seed%.verify%.sql:1: verification query returned false", res.stderr)
    assert.are.equal(0, value(db.uri, "SELECT count(*) FROM users"))
  end)

  it("post, before_each and after_each run in the migration's transaction", function()
    helpers.write_files(db.dir, {
      ["migrations/0002_seed.up.sql"] = "INSERT INTO users VALUES (1, 'A@B.example');\n",
      ["migrations/0002_seed.lua"] = "return { post = function(ctx)\n" ..
        "  ctx.db:exec('UPDATE users SET email = lower(email) WHERE id = $1', 1)\nend }\n",
      ["hooks/before_each.lua"] = "return function(ctx) ctx.log.info('starting ' .. " ..
        "ctx.migration.id) end\n",
      ["hooks/after_each.lua"] = "return function(ctx) ctx.log.info('finished ' .. " ..
        "ctx.migration.id .. ' ' .. ctx.migration.checksum:sub(1, 8)) end\n",
    })
    local res = ms({ "up", "-y" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("starting 0002_seed", res.stderr)
    assert.matches("finished 0002_seed %x+", res.stderr)
    assert.are.equal("a@b.example", value(db.uri, "SELECT email FROM users"))
  end)

  it("on_error sees the failure after the rollback and can spawn a program", function()
    helpers.write_files(db.dir, {
      ["migrations/0002_bad.up.sql"] = "SELECT 1/0;\n",
      ["hooks/on_error.lua"] = "return function(ctx)\n" ..
        "  assert(ctx.db == nil)\n" ..
        "  ctx.spawn({ 'sh', '-c', 'printf %s \"$1\" > \"$2\"', 'x', ctx.error.migration .. ' ' " ..
        ".. ctx.error.sqlstate, '" .. db.dir .. "/notified' })\nend\n",
    })
    local res = ms({ "up", "-y" })
    assert.are.equal(6, res.code)
    assert.are.equal("0002_bad 22012", fs.read(db.dir .. "/notified"))
  end)

  it("requires reorders, and a cycle is named", function()
    helpers.write_files(db.dir, {
      ["migrations/0002_a.up.sql"] = "CREATE TABLE a (id int REFERENCES b);\n",
      ["migrations/0002_a.lua"] = "return { requires = { '0003' } }\n",
      ["migrations/0003_b.up.sql"] = "CREATE TABLE b (id int PRIMARY KEY);\n",
    })
    local res = ms({ "up", "-y" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("%[2/3%] 0003_b.*%[3/3%] 0002_a", res.stderr)
    local d2 = helpers.tmpdir()
    helpers.write_files(d2, {
      ["migrations/0001_a.up.sql"] = "SELECT 1;\n", ["migrations/0001_a.lua"] = "return { requires = { '2' } }\n",
      ["migrations/0002_b.up.sql"] = "SELECT 1;\n", ["migrations/0002_b.lua"] = "return { requires = { '1' } }\n",
    })
    local cyc = helpers.run({ "status", "--database=" .. db.uri }, { cwd = d2 })
    helpers.rmdir(d2)
    assert.are.equal(2, cyc.code)
    assert.matches("cycle: 0001_a, 0002_b", cyc.stderr)
  end)

  it("refuses an order function that drops a migration", function()
    helpers.write_files(db.dir, {
      ["migrations/0002_b.up.sql"] = "SELECT 1;\n",
      ["migrate.lua"] = "return { order = function(list) table.remove(list, 1) return list end }\n",
    })
    local res = ms({ "status" })
    assert.are.equal(2, res.code)
    assert.matches("permutation of its input; missing: 0001_users", res.stderr)
  end)

  it("catches a hook that runs COMMIT", function()
    helpers.write_files(db.dir, {
      ["migrations/0002_b.up.sql"] = "CREATE TABLE b (id int);\n",
      ["migrations/0002_b.lua"] = "return { pre = function(ctx) ctx.db:exec('COMMIT') end }\n",
    })
    local res = ms({ "up", "-y" })
    assert.are.equal(7, res.code)
    assert.matches("COMMIT is not allowed in a hook", res.stderr)
    assert.is_nil(value(db.uri, "SELECT to_regclass('b')::text"))
  end)

  it("stops an endless hook at its time limit and a greedy one at its memory limit", function()
    helpers.write_files(db.dir, {
      ["migrate.lua"] = "return { hook_timeout = '1s', hook_memory = '64MB' }\n",
      ["migrations/0002_loop.up.sql"] = "CREATE TABLE loop (id int);\n",
      ["migrations/0002_loop.lua"] = "return { pre = function()\n" ..
        "  while true do pcall(function() while true do end end) end\nend }\n",
    })
    local res = ms({ "up", "-y" })
    assert.are.equal(7, res.code)
    assert.matches("0002_loop%.lua:2: hook exceeded its time limit of 1%.0 s", res.stderr)
    helpers.write_files(db.dir, { ["migrate.lua"] = "return { hook_timeout = '30s', hook_memory = '64MB' }\n",
      ["migrations/0002_loop.lua"] = "return { pre = function()\n" ..
      "  local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 100) .. i end\nend }\n" })
    res = ms({ "up", "-y" })
    assert.are.equal(7, res.code, res.stderr)
    assert.matches("hook exceeded its memory limit of 64 MB", res.stderr)
    assert.is_nil(value(db.uri, "SELECT to_regclass('loop')::text"))
  end)

  it("keeps hooks in their sandbox: no os.execute, no io, no secrets", function()
    helpers.write_files(db.dir, {
      ["migrations/0002_b.up.sql"] = "SELECT 1;\n",
      ["migrations/0002_b.lua"] = "return { pre = function(ctx)\n" ..
        "  assert(os.execute == nil and io == nil and os.getenv == nil)\n" ..
        "  assert(ctx.env('PGPASSWORD') == nil)\n" ..
        "  assert(not pcall(require, 'lfs'))\n" ..
        "  assert(not load(string.dump and '' or '\\27Lua'))\nend }\n",
    })
    local res = helpers.run({ "up", "-y", "--database=" .. db.uri }, { cwd = db.dir,
      env = { PGPASSWORD = "canarySECRET" } })
    assert.are.equal(0, res.code, res.stderr)
  end)

  it("verify re-checks applied migrations read-only and exits 8 naming a dropped column", function()
    helpers.write_files(db.dir, {
      ["migrations/0001_users.lua"] = "local verify = require('moonshift.verify')\n" ..
        "return { verify = function(ctx)\n" ..
        "  verify.column(ctx, 'users', 'email', { type = 'text' })\nend }\n",
    })
    assert.are.equal(0, ms({ "up", "-y" }).code)
    local ok = ms({ "verify" })
    assert.are.equal(0, ok.code, ok.stderr)
    assert.matches("ok    0001_users", ok.stdout)
    helpers.query(db.uri, "ALTER TABLE users DROP COLUMN email")
    local res = ms({ "verify", "--json" })
    assert.are.equal(8, res.code)
    local doc = cjson.decode(res.stdout)
    assert.are.equal(1, doc.failed)
    assert.matches("email", doc.results[1].message)
  end)

  it("runs a workflow that composes the API, and a script with args", function()
    helpers.write_files(db.dir, {
      ["migrate.lua"] = "return { workflows = { deploy = function(ms, args)\n" ..
        "  local st = assert(ms.status())\n" ..
        "  if #st.drift > 0 then return nil, 'drift' end\n" ..
        "  local up = assert(ms.up({ auto_confirm = args.yes }))\n" ..
        "  return { pending_before = #st.pending, applied = #up.done, first = args[1] }\n" ..
        "end, again = function(ms) return assert(ms.up({ auto_confirm = true })) end } }\n",
      ["ci.lua"] = "local st = assert(ms.status())\n" ..
        "if #st.pending ~= tonumber(args[1]) then return nil, 'expected ' .. args[1] end\n",
    })
    local res = ms({ "do", "deploy", "-y", "blue" })
    assert.are.equal(0, res.code, res.stderr)
    local doc = cjson.decode(res.stdout)
    assert.are.same({ pending_before = 1, applied = 1, first = "blue" }, doc)
    local again = ms({ "do", "again" }) -- nothing to do: an empty list stays a list
    assert.are.equal(0, again.code, again.stderr)
    assert.matches('"done":%[%]', again.stdout)
    helpers.validate_json("run-result", again.stdout)
    assert.are.equal(0, ms({ "script", "ci.lua", "0" }).code)
    local bad = ms({ "script", "ci.lua", "3" })
    assert.are.equal(7, bad.code)
    assert.matches("expected 3", bad.stderr)
    local none = ms({ "do", "nope" })
    assert.are.equal(2, none.code)
    assert.matches("no workflow \"nope\".*has: again, deploy", none.stderr)
  end)
end)
