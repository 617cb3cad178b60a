-- The remaining commands and options end to end: backup, -c, --migrations, new --timestamp, demo.
local fs = require("moonshift.fs")
local helpers = require("spec.helpers")

local value = helpers.value

describe("backup, -c, --migrations, new --timestamp and demo #e2e", function()
  local db = helpers.database()

  it("backup dumps the database now and prints the file and how to restore it", function()
    helpers.write_files(db.dir, { ["migrations/0001_a.up.sql"] = "CREATE TABLE a (id int);\n" })
    assert.are.equal(0, helpers.run({ "up", "-y", "-d", db.uri }, { cwd = db.dir }).code)
    local res = helpers.run({ "backup", "-d", db.uri }, { cwd = db.dir })
    if tonumber(value(db.uri, "SHOW server_version_num")) >= 160000 then
      assert.are.equal(10, res.code) -- Debian's pg_dump 15 cannot dump a newer server
      assert.matches("older than the server", res.stderr)
      return
    end
    assert.are.equal(0, res.code, res.stderr)
    local path = res.stdout:match("(%S+%.dump)")
    assert.is_truthy(path)
    assert.are.equal(tonumber("600", 8), fs.stat(path).mode)
    assert.matches("restore with: %S*pg_restore", res.stderr)
  end)

  it("takes the config from -c and the directory from --migrations", function()
    helpers.write_files(db.dir, {
      ["conf/project.lua"] = "return { migrations = '../db', table = 'schema_history' }\n",
      ["db/0001_a.up.sql"] = "CREATE TABLE a (id int);\n",
      ["other/0001_b.up.sql"] = "CREATE TABLE b (id int);\n",
    })
    local res = helpers.run({ "up", "-y", "-c", "conf/project.lua", "-d", db.uri }, { cwd = db.dir })
    assert.are.equal(0, res.code, res.stderr)
    assert.are.equal(1, value(db.uri, "SELECT count(*) FROM schema_history"))
    res = helpers.run({ "status", "--migrations", "other", "-d", db.uri, "--table", "h2" }, { cwd = db.dir })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("pending  0001_b", res.stdout)
    local missing = helpers.run({ "status", "-c", "nope.lua", "-d", db.uri }, { cwd = db.dir })
    assert.are.equal(2, missing.code)
    assert.matches("config file not found: nope%.lua", missing.stderr)
  end)

  it("new --timestamp numbers the first migration by UTC time", function()
    local res = helpers.run({ "new", "--timestamp", "init" }, { cwd = db.dir })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("migrations/%d%d%d%d%d%d%d%d%d%d%d%d%d%d_init%.up%.sql", res.stdout)
  end)

  it("globals are strict in the tool: reading an undeclared one is a bug, exit 1", function()
    local lua = db.dir .. "/lua"
    local files = {}
    local function copy(rel) -- the tree, commands/ included
      local path = helpers.root() .. "/" .. rel
      if assert(fs.stat(path)).type == "directory" then
        for _, name in ipairs(assert(fs.list(path))) do copy(rel .. "/" .. name) end
      else
        files[rel] = assert(fs.read(path))
      end
    end
    copy("lua/moonshift")
    files["lua/moonshift/ui.lua"] = "local _ = colour_is_a_typo\n" .. files["lua/moonshift/ui.lua"]
    helpers.write_files(db.dir, files)
    local res = helpers.run({ "status", "-d", db.uri }, { cwd = db.dir, env = { MOONSHIFT_LUA_DIR = lua } })
    assert.are.equal(1, res.code)
    assert.matches("undeclared global 'colour_is_a_typo'", res.stderr)
  end)

  it("demo runs the sample project on a throwaway server and cleans up", function()
    local res = helpers.run({ "demo" }, { cwd = helpers.root(), timeout = 300000 })
    assert.are.equal(0, res.code, res.stderr .. res.stdout)
    assert.matches("moonshift do deploy %-y", res.stdout)
    assert.matches('"applied":10', res.stdout)
    assert.matches("6 verified, 0 failed", res.stdout)
    assert.matches("throwaway server is stopped", res.stdout)
  end)
end)

describe("the man page #e2e", function()
  it("renders each command's synopsis on one line", function()
    local proc = require("moonshift.proc")
    local res = assert(proc.run({ "/bin/sh", "-c", "man -l docs/moonshift.1 | col -b" },
      { cwd = helpers.root(), env = helpers.env({ MANWIDTH = "200" }) }))
    assert.are.equal(0, res.code, res.stderr)
    for _, synopsis in ipairs({
      "up [--to V] [--count N] [--out-of-order] [--single-transaction] [--backup-first]",
      "down [N | --to V | --all] [--allow-empty-down] [--backup-first]",
      "history [--json] [--limit N]", "stamp V [--rewind]", "restore [DUMP] [--terminate]",
    }) do
      assert.is_truthy(res.stdout:find("\n       " .. synopsis .. "\n", 1, true), synopsis)
    end
  end)
end)
