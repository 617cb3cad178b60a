-- A migration's one transaction, end to end: transaction control hidden in a file is refused
-- before anything runs, and what the server says (RAISE NOTICE) reaches the operator.
local cjson = require("cjson")
local helpers = require("spec.helpers")

describe("a migration's transaction #e2e", function()
  local db = helpers.database()

  local function ms(...)
    return helpers.ms({ ... })
  end

  it("refuses a COMMIT behind a nested comment before anything runs", function()
    helpers.write_files(db.dir, { ["migrations/0001_a.up.sql"] = "create table a1 (id int);\n" ..
      "/* a /* b */ c */ COMMIT;\ncreate table a2 (id int);\nselect 1/0;\n" })
    local res = ms("up", "-y")
    assert.are.equal(2, res.code, res.stderr)
    assert.matches("0001_a%.up%.sql:2: COMMIT: moonshift runs each migration in its own " ..
      "transaction", res.stderr)
    assert.is_nil(helpers.value(db.uri, "SELECT to_regclass('a1')::text"))
    assert.is_nil(helpers.value(db.uri, "SELECT to_regclass('moonshift_migrations')::text"))
    local st = ms("status")
    assert.are.equal(2, st.code)
    assert.matches("0001_a%.up%.sql:2: COMMIT", st.stderr)
  end)

  it("refuses every hidden form in a later file before the first one runs", function()
    helpers.write_files(db.dir, {
      ["migrations/0001_ok.up.sql"] = "create table ok (id int);\n",
      ["migrations/0002_end.up.sql"] = "create table b (id int);\n-- x\n/**/ eNd WoRk;\n",
    })
    local res = ms("up", "-y")
    assert.are.equal(2, res.code, res.stderr)
    assert.matches("0002_end%.up%.sql:3: END", res.stderr)
    assert.is_nil(helpers.value(db.uri, "SELECT to_regclass('ok')::text"))
  end)

  it("refuses every way of ending or handing over a transaction, in up and --dry-run alike",
    function()
    local forms = { ["COMMIT AND CHAIN"] = "COMMIT", ["PREPARE TRANSACTION 'x'"] =
      "PREPARE TRANSACTION", ["COMMIT PREPARED 'x'"] = "COMMIT", ["ROLLBACK AND NO CHAIN"] =
      "ROLLBACK", ["ABORT"] = "ABORT", ["START TRANSACTION READ WRITE"] = "START TRANSACTION" }
    for form, name in pairs(forms) do
      helpers.write_files(db.dir, {
        ["migrations/0001_ok.up.sql"] = "create table ok (id int);\n",
        ["migrations/0002_tx.up.sql"] = "create table b (id int);\n" .. form .. ";\n",
      })
      for _, args in ipairs({ { "up", "-y" }, { "up", "--dry-run" } }) do
        local res = helpers.ms(args)
        assert.are.equal(2, res.code, form .. ": " .. res.stderr)
        assert.matches("0002_tx%.up%.sql:2: " .. name:gsub(" ", "%%s"), res.stderr, nil, form)
        assert.is_nil(helpers.value(db.uri, "SELECT to_regclass('ok')::text"), form)
      end
    end
  end)

  it("times each statement of a transactional migration on its own", function()
    helpers.write_files(db.dir, { ["migrations/0001_t.up.sql"] = "create table t (id int);\n" ..
      "select pg_sleep(0.5);\ninsert into t values (1);\n" })
    local res = ms("up", "-y", "--log-format", "json")
    assert.are.equal(0, res.code, res.stderr)
    local by_line = {}
    for line in res.stdout:gmatch("[^\n]+") do
      local ok, e = pcall(cjson.decode, line)
      if ok and e.event == "statement" then by_line[e.line] = e.elapsed_ms end
    end
    assert.is_true(by_line[2] >= 450, "pg_sleep(0.5) took " .. tostring(by_line[2]) .. " ms")
    assert.is_true(by_line[1] < by_line[2], "the create before it took " .. by_line[1] .. " ms")
  end)

  it("shows a migration's notices with its file and line, and logs them", function()
    helpers.write_files(db.dir, { ["migrations/0001_n.up.sql"] = "create table n (id int);\n\n" ..
      "do $$ begin raise notice 'backfilled % rows', 3; end $$;\n" })
    local res = ms("up", "-y")
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("migrations/0001_n%.up%.sql:3: NOTICE: backfilled 3 rows", res.stderr)
    local log = assert(io.open(db.dir .. "/" .. assert(res.stderr:match("run log: (%S+)"))))
    local text = log:read("a")
    log:close()
    assert.matches('"event":"notice"', text)
    assert.matches('"message":"backfilled 3 rows"', text)
    assert.matches('"line":3', text)
  end)
end)
