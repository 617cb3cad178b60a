-- compat = "golang-migrate": harbor's real migrations, which alter schema_migrations itself.
local fs = require("moonshift.fs")
local helpers = require("spec.helpers")

local value = helpers.value

describe("golang-migrate compatibility #e2e", function()
  local c, dir, uri
  local corpus = (fs.realpath("..") or "..") .. "/shared/corpora/harbor"

  lazy_setup(function() c = helpers.cluster() end)
  lazy_teardown(function() if c then c:stop() end end)
  before_each(function()
    dir = helpers.tmpdir()
    uri = helpers.fresh_db(c)
  end)
  after_each(function() helpers.rmdir(dir) end)

  it("applies harbor's migrations from empty to the last and keeps schema_migrations in step", function()
    if not fs.exists(corpus) then
      pending("corpus not found at " .. corpus)
      return
    end
    helpers.write_files(dir, { ["migrate.lua"] = "return { migrations = '" .. corpus ..
      "', compat = 'golang-migrate' }\n" })
    local res = helpers.run({ "up", "-y", "-d", uri }, { cwd = dir, timeout = 300000 })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("applied 39 migrations", res.stdout)
    assert.are.equal(190, value(uri, "SELECT version FROM schema_migrations"))
    assert.is_false(value(uri, "SELECT dirty FROM schema_migrations"))
    assert.are.equal(1, value(uri, "SELECT count(*) FROM schema_migrations"))
    assert.are.equal(39, value(uri, "SELECT count(*) FROM moonshift_migrations"))
    assert.are.equal("project", value(uri, "SELECT to_regclass('project')::text"))
  end)

  it("moves schema_migrations back on down", function()
    helpers.write_files(dir, {
      ["migrate.lua"] = "return { compat = 'golang-migrate' }\n",
      ["migrations/1_a.up.sql"] = "CREATE TABLE a (id int);\n",
      ["migrations/1_a.down.sql"] = "DROP TABLE a;\n",
      ["migrations/2_b.up.sql"] = "CREATE TABLE b (id int);\n",
      ["migrations/2_b.down.sql"] = "DROP TABLE b;\n",
    })
    assert.are.equal(0, helpers.run({ "up", "-y", "-d", uri }, { cwd = dir }).code)
    assert.are.equal(2, value(uri, "SELECT version FROM schema_migrations"))
    assert.are.equal(0, helpers.run({ "down", "-y", "-d", uri }, { cwd = dir }).code)
    assert.are.equal(1, value(uri, "SELECT version FROM schema_migrations"))
    assert.are.equal(0, helpers.run({ "down", "-y", "-d", uri }, { cwd = dir }).code)
    assert.are.equal(0, value(uri, "SELECT count(*) FROM schema_migrations"))
  end)
end)
