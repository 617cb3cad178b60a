-- Every layout moonshift reads, through up, status, down and goto, end to end.
local helpers = require("spec.helpers")

local value = helpers.value

local LAYOUTS = {
  native = {
    ["migrations/0001_a.up.sql"] = "CREATE TABLE a (id int);\n",
    ["migrations/0001_a.down.sql"] = "DROP TABLE a;\n",
    ["migrations/0002_b.up.sql"] = "CREATE TABLE b (id int);\n",
    ["migrations/0002_b.down.sql"] = "DROP TABLE b;\n",
  },
  flyway = {
    ["migrations/V1__a.sql"] = "CREATE TABLE a (id int);\n",
    ["migrations/U1__a.sql"] = "DROP TABLE a;\n",
    ["migrations/V2__b.sql"] = "CREATE TABLE b (id int);\n",
    ["migrations/U2__b.sql"] = "DROP TABLE b;\n",
  },
  dbmate = {
    ["migrations/20240101000000_a.sql"] = "-- migrate:up\nCREATE TABLE a (id int);\n\n" ..
      "-- migrate:down\nDROP TABLE a;\n",
    ["migrations/20240102000000_b.sql"] = "-- migrate:up\nCREATE TABLE b (id int);\n\n" ..
      "-- migrate:down\nDROP TABLE b;\n",
  },
  diesel = {
    ["migrations/2024-01-01-000000_a/up.sql"] = "CREATE TABLE a (id int);\n",
    ["migrations/2024-01-01-000000_a/down.sql"] = "DROP TABLE a;\n",
    ["migrations/2024-01-02-000000_b/up.sql"] = "CREATE TABLE b (id int);\n",
    ["migrations/2024-01-02-000000_b/down.sql"] = "DROP TABLE b;\n",
  },
}

describe("migration layouts #e2e", function()
  local db = helpers.database()
  local ms = helpers.ms

  for _, layout in ipairs({ "native", "flyway", "dbmate", "diesel" }) do
    it("reads the " .. layout .. " layout through up, status, down, goto and redo", function()
      helpers.write_files(db.dir, LAYOUTS[layout])
      local uri = db.uri
      local up = ms({ "up", "-y" })
      assert.are.equal(0, up.code, up.stderr)
      assert.matches("applied 2 migrations", up.stdout)
      assert.are.equal("b", value(uri, "SELECT to_regclass('b')::text"))
      local st = ms({ "status", "--json" })
      assert.are.equal(0, st.code, st.stderr)
      assert.matches('"pending":%[%]', st.stdout)
      assert.are.equal(0, ms({ "redo", "-y" }).code)
      assert.are.equal(0, ms({ "down", "--all", "-y" }).code)
      assert.is_nil(value(uri, "SELECT to_regclass('a')::text"))
      local first = value(uri, "SELECT version FROM moonshift_events WHERE action = 'apply' ORDER BY id LIMIT 1")
      local go = ms({ "goto", first, "-y" })
      assert.are.equal(0, go.code, go.stderr)
      assert.are.equal("a", value(uri, "SELECT to_regclass('a')::text"))
      assert.is_nil(value(uri, "SELECT to_regclass('b')::text"))
      assert.are.equal(0, ms({ "check" }).code == 3 and 0 or 1)
    end)
  end
end)
