-- migrate.lua as an operator writes it: every key checked before anything runs, and paths
-- given on the command line taken from where the operator stands.
local helpers = require("spec.helpers")

describe("configuration #e2e", function()
  local db = helpers.database({ files = {
    ["migrations/0001_a.up.sql"] = "CREATE TABLE a (id int);\n",
  } })

  local function refused(config, pattern)
    helpers.write_files(db.dir, { ["migrate.lua"] = config })
    local res = helpers.ms({ "up", "-y" })
    assert.are.equal(2, res.code, res.stderr)
    assert.matches("migrate%.lua: " .. pattern, res.stderr)
    assert.is_nil(helpers.value(db.uri, "SELECT to_regclass('a')::text"))
    assert.is_nil(helpers.value(db.uri, "SELECT to_regclass('moonshift_migrations')::text"))
  end

  it("refuses a misspelt or mistyped nested key before anything runs", function()
    refused("return { backup = { befor_run = true } }\n",
      'unknown key "befor_run" in backup %(known: before_run, dir, keep, pg_dump%)')
    refused("return { backup = { keep = \"2\" } }\n",
      'backup%.keep must be a whole number >= 1, not the string "2"')
    refused("return { log = { dir = 7 } }\n", "log%.dir must be a string, not a number")
    refused("return { ignore = { '*.md', 3 } }\n", "ignore must be a list of name patterns")
  end)

  it("takes --migrations from the current directory, not migrate.lua's", function()
    helpers.write_files(db.dir, {
      ["migrate.lua"] = "return {}\n",
      ["deploy/extra/0001_b.up.sql"] = "CREATE TABLE b (id int);\n",
    })
    local res = helpers.ms({ "up", "-y", "--migrations", "extra" }, { cwd = db.dir .. "/deploy" })
    assert.are.equal(0, res.code, res.stderr)
    assert.are.equal("b", helpers.value(db.uri, "SELECT to_regclass('b')::text"))
    assert.is_nil(helpers.value(db.uri, "SELECT to_regclass('a')::text"))
  end)

  it("single_transaction = true runs every up in one transaction", function()
    helpers.write_files(db.dir, { ["migrate.lua"] = "return { single_transaction = true }\n",
      ["migrations/0002_bad.up.sql"] = "CREATE TABLE bad (id int);\nSELECT 1/0;\n" })
    local res = helpers.ms({ "up", "-y" })
    assert.are.equal(6, res.code, res.stderr)
    assert.matches("the whole run was rolled back", res.stderr)
    assert.is_nil(helpers.value(db.uri, "SELECT to_regclass('a')::text"))
  end)
end)
