-- compat = "golang-migrate": harbor's real migrations, which alter schema_migrations itself.
local helpers = require("spec.helpers")

local value = helpers.value

describe("golang-migrate compatibility #e2e", function()
  local db = helpers.database()

  it("applies harbor's migrations from empty to the last and keeps schema_migrations in step", function()
    local corpus, missing = helpers.corpus("harbor") -- raises with CI=true
    if not corpus then return pending(missing) end
    helpers.write_files(db.dir, { ["migrate.lua"] = "return { migrations = '" .. corpus ..
      "', compat = 'golang-migrate' }\n" })
    local res = helpers.run({ "up", "-y", "-d", db.uri }, { cwd = db.dir, timeout = 300000 })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("applied 39 migrations", res.stdout)
    assert.are.equal(190, value(db.uri, "SELECT version FROM schema_migrations"))
    assert.is_false(value(db.uri, "SELECT dirty FROM schema_migrations"))
    assert.are.equal(1, value(db.uri, "SELECT count(*) FROM schema_migrations"))
    assert.are.equal(39, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    assert.are.equal("project", value(db.uri, "SELECT to_regclass('project')::text"))
  end)

  it("moves schema_migrations back on down", function()
    helpers.write_files(db.dir, {
      ["migrate.lua"] = "return { compat = 'golang-migrate' }\n",
      ["migrations/1_a.up.sql"] = "CREATE TABLE a (id int);\n",
      ["migrations/1_a.down.sql"] = "DROP TABLE a;\n",
      ["migrations/2_b.up.sql"] = "CREATE TABLE b (id int);\n",
      ["migrations/2_b.down.sql"] = "DROP TABLE b;\n",
    })
    assert.are.equal(0, helpers.run({ "up", "-y", "-d", db.uri }, { cwd = db.dir }).code)
    assert.are.equal(2, value(db.uri, "SELECT version FROM schema_migrations"))
    assert.are.equal(0, helpers.run({ "down", "-y", "-d", db.uri }, { cwd = db.dir }).code)
    assert.are.equal(1, value(db.uri, "SELECT version FROM schema_migrations"))
    assert.are.equal(0, helpers.run({ "down", "-y", "-d", db.uri }, { cwd = db.dir }).code)
    assert.are.equal(0, value(db.uri, "SELECT count(*) FROM schema_migrations"))
  end)
end)
