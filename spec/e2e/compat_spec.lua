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

  it("keeps schema_migrations as golang-migrate would see it after force and stamp, in every " ..
    "state", function()
    local files = { ["migrate.lua"] = "return { compat = 'golang-migrate' }\n" }
    for v = 1, 4 do
      files[("migrations/%d_m%d.up.sql"):format(v, v)] = ("CREATE TABLE m%d (id int);\n"):format(v)
      files[("migrations/%d_m%d.down.sql"):format(v, v)] = ("DROP TABLE m%d;\n"):format(v)
    end
    files["migrations/4_m4.up.sql"] = "-- moonshift:no-transaction\nCREATE TABLE m4 (id int);\n" ..
      "SELECT 1/0;\n"
    helpers.write_files(db.dir, files)
    local function ms(...) return helpers.ms({ ... }) end
    local function golang()
      local rows = helpers.query(db.uri, "SELECT version, dirty FROM schema_migrations")
      return rows[1] and (rows[1].version .. (rows[1].dirty and " dirty" or "")) or "none"
    end
    assert.are.equal(6, ms("up", "-y").code) -- 4 fails outside a transaction: dirty
    assert.are.equal("4 dirty", golang())
    assert.are.equal(0, ms("force", "3", "-y").code) -- 3 stays applied, 4 stays dirty
    assert.are.equal("4 dirty", golang())
    assert.are.equal(0, ms("force", "4", "--not-applied", "-y").code)
    assert.are.equal("3", golang())
    assert.are.equal(0, ms("force", "3", "--not-applied", "-y").code) -- 1 and 2 stay applied
    assert.are.equal("2", golang())
    assert.are.equal(0, ms("stamp", "3", "-y").code)
    assert.are.equal("3", golang())
    assert.are.equal(0, ms("stamp", "1", "-y", "--rewind").code)
    assert.are.equal("1", golang())
    assert.are.equal(0, ms("force", "1", "--not-applied", "-y").code)
    assert.are.equal("none", golang())
  end)
end)
