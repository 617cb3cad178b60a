-- Reverting: the reverse of the order up used, and never a "revert" that changes nothing.
local helpers = require("spec.helpers")

local value = helpers.value

describe("down, goto and redo #e2e", function()
  local db = helpers.database()

  it("reverts in the reverse of the order up used, so requires holds both ways", function()
    helpers.write_files(db.dir, {
      ["migrations/0001_a.up.sql"] = "CREATE TABLE a (id int);\n",
      ["migrations/0001_a.down.sql"] = "DROP TABLE a;\n",
      ["migrations/0002_users.up.sql"] = "CREATE TABLE users (team int REFERENCES teams);\n",
      ["migrations/0002_users.down.sql"] = "DROP TABLE users;\n",
      ["migrations/0002_users.lua"] = "return { requires = { '0003' } }\n",
      ["migrations/0003_teams.up.sql"] = "CREATE TABLE teams (id int PRIMARY KEY);\n",
      ["migrations/0003_teams.down.sql"] = "DROP TABLE teams;\n",
    })
    local res = helpers.ms({ "up", "-y" })
    assert.are.equal(0, res.code, res.stderr)
    res = helpers.ms({ "down", "-y" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("0002_users", res.stderr)
    assert.is_nil(value(db.uri, "SELECT to_regclass('users')::text"))
    assert.are.equal("teams", value(db.uri, "SELECT to_regclass('teams')::text"))
    res = helpers.ms({ "up", "-y" })
    assert.are.equal(0, res.code, res.stderr)
    res = helpers.ms({ "down", "-y", "--all" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("0002_users.*0003_teams.*0001_a", res.stderr)
    assert.are.equal(0, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
  end)

  it("refuses to revert a migration whose down script holds no statements", function()
    helpers.write_files(db.dir, { ["migrations/0001_a.up.sql"] = "CREATE TABLE a (id int);\n",
      ["migrations/0001_a.down.sql"] = "DROP TABLE a;\n" })
    local new = helpers.ms({ "new", "add_t" })
    assert.are.equal(0, new.code, new.stderr)
    local up_path = db.dir .. "/migrations/0002_add_t.up.sql"
    local f = assert(io.open(up_path, "a"))
    f:write("CREATE TABLE t (id int);\n")
    f:close()
    assert.are.equal(0, helpers.ms({ "up", "-y" }).code)
    for _, args in ipairs({ { "down", "-y" }, { "redo", "-y" }, { "goto", "-y", "0001" },
      { "down", "--dry-run" } }) do
      local res = helpers.ms(args)
      assert.are.equal(9, res.code, table.concat(args, " ") .. ": " .. res.stderr)
      assert.matches("migrations/0002_add_t%.down%.sql holds no statements", res.stderr)
      assert.matches("nothing was changed", res.stderr)
      assert.are.equal("t", value(db.uri, "SELECT to_regclass('t')::text"))
      assert.are.equal(2, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    end
    local res = helpers.ms({ "down", "-y", "--allow-empty-down" })
    assert.are.equal(0, res.code, res.stderr)
    assert.are.equal(1, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
  end)
end)
