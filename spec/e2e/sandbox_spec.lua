-- User Lua as untrusted code, end to end: a hostile companion reaches neither the password nor
-- moonshift's own behaviour, and loading user Lua runs under the hook limits.
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")
local helpers = require("spec.helpers")

local value = helpers.value

local PASSWORD = "Canary-Pw-7731"
local EVIL = assert(fs.read(helpers.root() .. "/spec/fixtures/hostile/evil.lua"))

describe("a hostile companion #e2e", function()
  local db = helpers.database({ files = {
    ["migrations/0001_evil.up.sql"] = "CREATE TABLE evil (id int);\n",
    ["migrations/0001_evil.lua"] = EVIL,
    ["migrate.lua"] = "return { log = { dir = 'logs' }, backup = { dir = 'backups' } }\n",
  } })

  -- pg_dump 15 (Debian's) cannot dump a newer server: then no --backup-first
  local can_dump

  lazy_setup(function()
    local c = helpers.shared_cluster()
    can_dump = fs.exists("/usr/bin/pg_dump") and
      tonumber(helpers.value(c.uri, "SHOW server_version_num")) < 160000
  end)

  -- The database as a role with a password: in the URL and in PGPASSWORD.
  local function secret_uri()
    local conn_uri = db.uri
    helpers.query(conn_uri, "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = " ..
      "'evil_owner') THEN CREATE ROLE evil_owner LOGIN SUPERUSER PASSWORD '" .. PASSWORD ..
      "'; END IF; END $$")
    return (conn_uri:gsub("^postgresql:///", "postgresql://evil_owner:" .. PASSWORD .. "@/")
      :gsub("&user=postgres", ""))
  end

  local function run(args, uri, extra_env)
    local argv = table.move(args, 1, #args, 1, {})
    argv[#argv + 1] = "--database=" .. uri
    local env = { PGPASSWORD = PASSWORD, HIDDEN_URL = uri }
    for k, v in pairs(extra_env or {}) do env[k] = v end
    return helpers.run(argv, { cwd = db.dir, env = env })
  end

  -- Every file the run left behind (run logs, backups' notes), as one text.
  local function written()
    local out = {}
    for _, sub in ipairs({ "logs", "backups" }) do
      for _, name in ipairs(fs.list(db.dir .. "/" .. sub) or {}) do
        if not name:match("%.dump$") then
          out[#out + 1] = fs.read(db.dir .. "/" .. sub .. "/" .. name) or ""
        end
      end
    end
    return table.concat(out, "\n")
  end

  it("never sees the password, through the string metatable or ctx.env", function()
    local uri = secret_uri()
    local args = { "up", "-y" }
    if can_dump then args[#args + 1] = "--backup-first" end
    local res = run(args, uri, { DUMP = "1" })
    assert.are.equal(7, res.code, res.stderr)
    assert.matches("captured: ", res.stderr) -- the companion ran and said what it had
    assert.matches("0001_evil%.lua:%d+: captured: ", res.stderr)
    local log = written()
    assert.matches("captured", log)
    for _, text in ipairs({ res.stdout, res.stderr, log }) do
      assert.is_nil(text:find(PASSWORD, 1, true))
      assert.is_nil(text:find("PWNED", 1, true))
    end
    assert.is_nil(value(db.uri, "SELECT to_regclass('evil')::text"))
  end)

  it("cannot change the verification library another migration uses", function()
    local uri = secret_uri()
    helpers.write_files(db.dir, {
      ["migrations/0002_check.up.sql"] = "CREATE TABLE checked (id int);\n",
      ["migrations/0002_check.lua"] = "local verify = require('moonshift.verify')\n" ..
        "return { verify = function(ctx) verify.table_exists(ctx, 'never_created') end }\n",
    })
    local res = run({ "up", "-y", "--log-format", "json" }, uri)
    assert.are.equal(8, res.code, res.stderr)
    assert.matches("never_created", res.stderr)
    assert.is_nil((res.stdout .. res.stderr):find("PWNED", 1, true))
    assert.is_nil((res.stdout .. res.stderr):find(PASSWORD, 1, true))
    assert.are.equal("evil", value(db.uri, "SELECT to_regclass('evil')::text"))
    assert.is_nil(value(db.uri, "SELECT to_regclass('checked')::text"))
  end)

  it("cannot switch off the transaction-control check for a later migration", function()
    local uri = secret_uri()
    helpers.write_files(db.dir, {
      ["migrations/0002_commit.up.sql"] = "CREATE TABLE committed (id int);\nCOMMIT;\n",
    })
    local res = run({ "up", "-y" }, uri)
    assert.are.equal(2, res.code, res.stderr)
    assert.matches("COMMIT", res.stderr)
    assert.is_nil(res.stderr:find("PWNED", 1, true))
    assert.is_nil(value(db.uri, "SELECT to_regclass('committed')::text"))
  end)
end)

describe("loading user Lua under the hook limits #e2e", function()
  local db = helpers.database({ files = {
    ["migrations/0001_a.up.sql"] = "CREATE TABLE a (id int);\n",
    ["migrate.lua"] = "return { hook_timeout = '1s', hook_memory = '64MB' }\n",
  } })

  it("stops a companion that loops at load time: status exits 2 naming the file", function()
    helpers.write_files(db.dir, { ["migrations/0001_a.lua"] = "while true do end\n" })
    local started = fs.clock_ms()
    local res = helpers.ms({ "status" }, { timeout = 30000 })
    assert.are.equal(2, res.code, res.stderr)
    assert.matches("migrations/0001_a%.lua:1: loading exceeded its time limit of 1%.0 s " ..
      "%(hook_timeout%)", res.stderr)
    assert.is_true(fs.clock_ms() - started < 10000)
  end)

  it("stops a loop hidden in a coroutine at load time", function()
    helpers.write_files(db.dir, { ["migrations/0001_a.lua"] =
      "coroutine.wrap(function() while true do end end)()\nreturn {}\n" })
    local res = helpers.ms({ "status" }, { timeout = 30000 })
    assert.are.equal(2, res.code, res.stderr)
    assert.matches("0001_a%.lua:1: loading exceeded its time limit", res.stderr)
  end)

  it("stops a companion that allocates without bound: exit 2, memory stays bounded", function()
    helpers.write_files(db.dir, { ["migrations/0001_a.lua"] =
      "local t = {}\nfor i = 1, 3e8 do t[i] = i end\nreturn {}\n",
      ["migrate.lua"] = "return { hook_timeout = '30s', hook_memory = '64MB' }\n" })
    local res = assert(proc.run({ "/usr/bin/time", "-f", "maxrss=%M", helpers.bin(), "status",
      "--database=" .. db.uri }, { cwd = db.dir, env = helpers.env(), timeout = 60000 }))
    assert.are.equal(2, res.code, res.stderr)
    assert.matches("cannot load migrations/0001_a%.lua: loading exceeded its memory limit of " ..
      "64 MB %(hook_memory%)", res.stderr)
    local kb = tonumber(res.stderr:match("maxrss=(%d+)"))
    assert.is_true(kb < 400 * 1024, "peak RSS " .. tostring(kb) .. " kB")
  end)

  it("ends a C function that never returns at load time: exit 2 naming the file", function()
    helpers.write_files(db.dir, { ["migrations/0001_a.lua"] =
      "string.rep('a', 60):find(string.rep('a*', 20) .. 'c')\nreturn {}\n" })
    local started = fs.clock_ms()
    local res = helpers.ms({ "status" }, { timeout = 30000 })
    assert.are.equal(2, res.code, res.stderr)
    assert.matches("loading migrations/0001_a%.lua ran past its time limit inside a C " ..
      "function and could not be stopped", res.stderr)
    assert.is_true(fs.clock_ms() - started < 15000)
  end)

  it("stops an order function in migrate.lua that loops", function()
    helpers.write_files(db.dir, { ["migrate.lua"] =
      "return { hook_timeout = '1s', order = function(list)\n  while true do end\nend }\n" })
    local res = helpers.ms({ "status" }, { timeout = 30000 })
    assert.are.equal(2, res.code, res.stderr)
    assert.matches("order function in migrate.lua failed: .*migrate%.lua:2: the order function " ..
      "exceeded its time limit of 1%.0 s", res.stderr)
  end)

  it("stops a migrate.lua that loops, under the default limits' signal check", function()
    helpers.write_files(db.dir, { ["migrate.lua"] = "while true do end\n" })
    local h = helpers.spawn({ "status", "--database=" .. db.uri }, db.dir)
    proc.sleep(500)
    local started = fs.clock_ms()
    assert(h:kill("TERM"))
    local res = assert(h:wait(10000))
    assert.is_true(fs.clock_ms() - started < 3000)
    assert.are.equal(143, res.code, res.stderr)
    assert.matches("interrupted %(SIGTERM%) while loading", res.stderr)
  end)

  it("exits promptly at SIGTERM while a companion hangs at load time", function()
    helpers.write_files(db.dir, { ["migrate.lua"] = "return { hook_timeout = '60s' }\n",
      ["migrations/0001_a.lua"] = "while true do end\n" })
    local h = helpers.spawn({ "status", "--database=" .. db.uri }, db.dir)
    proc.sleep(500)
    local started = fs.clock_ms()
    assert(h:kill("TERM"))
    local res = assert(h:wait(10000))
    assert.is_true(fs.clock_ms() - started < 3000)
    assert.are.equal(143, res.code, res.stderr)
    assert.matches("interrupted %(SIGTERM%) while loading migrations/0001_a%.lua", res.stderr)
  end)
end)
