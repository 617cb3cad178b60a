-- Other tools' no-transaction markers and semantics: morph's marker, golang-migrate's and
-- Flyway's scripts of statements that cannot run in a transaction, sql-migrate's sections,
-- and the refusal of a script that mixes both kinds.
local helpers = require("spec.helpers")

local value = helpers.value

-- Mirrors Mattermost's server/channels/db/migrations/postgres (read in mattermost/mattermost
-- through the code search: 000118_create_index_poststats.up.sql is `-- morph:nontransactional`
-- then a lone CREATE INDEX CONCURRENTLY with no final semicolon; its .down.sql a plain
-- DROP INDEX IF EXISTS under a `-- nolint:concurrentIndex` comment). morph honours the
-- marker only at the very start of the file (mattermost/morph drivers/postgres/postgres.go).
local MATTERMOST = {
  ["migrations/000001_create_posts.up.sql"] = "CREATE TABLE IF NOT EXISTS posts (\n" ..
    "    id varchar(26) PRIMARY KEY,\n    userid varchar(26),\n    createat bigint,\n" ..
    "    message varchar(65535)\n);\n",
  ["migrations/000001_create_posts.down.sql"] = "DROP TABLE IF EXISTS posts;\n",
  ["migrations/000002_create_index_posts_userid.up.sql"] = "-- morph:nontransactional\n" ..
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_posts_userid ON posts(userid)",
  ["migrations/000002_create_index_posts_userid.down.sql"] = "-- nolint:concurrentIndex\n" ..
    "DROP INDEX IF EXISTS idx_posts_userid;\n",
  ["migrations/000003_create_index_posts_create_at.up.sql"] =
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_posts_create_at_id ON posts (createat, id);\n",
  ["migrations/000003_create_index_posts_create_at.down.sql"] =
    "DROP INDEX CONCURRENTLY IF EXISTS idx_posts_create_at_id;\n",
  ["migrations/000004_create_index_posts_two.up.sql"] = "-- two indexes, one file\n" ..
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_posts_message ON posts (message);\n\n" ..
    "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS idx_posts_user_create ON posts " ..
    "(userid, createat);\n",
  ["migrations/000004_create_index_posts_two.down.sql"] =
    "DROP INDEX CONCURRENTLY IF EXISTS idx_posts_user_create;\n" ..
    "DROP INDEX CONCURRENTLY IF EXISTS idx_posts_message;\n",
}

local INDEXES = "('idx_posts_userid', 'idx_posts_create_at_id', 'idx_posts_message', " ..
  "'idx_posts_user_create')"

local function valid_indexes(uri)
  return value(uri, "SELECT count(*) FROM pg_index WHERE indisvalid AND " ..
    "indexrelid::regclass::text IN " .. INDEXES)
end

describe("other tools' no-transaction markers #e2e", function()
  local db = helpers.database()
  local ms = helpers.ms

  it("applies a golang-migrate directory with morph-marked and lone CREATE INDEX " ..
    "CONCURRENTLY files unmodified", function()
    helpers.write_files(db.dir, MATTERMOST)
    local st = ms({ "status" })
    assert.are.equal(0, st.code, st.stderr)
    assert.are.equal(3, ms({ "check" }).code)
    local up = ms({ "up", "-y" })
    assert.are.equal(0, up.code, up.stderr)
    assert.matches("applied 4 migrations", up.stdout)
    assert.matches("000003_create_index_posts_create_at%.up%.sql runs without a transaction: " ..
      "it holds only CREATE INDEX CONCURRENTLY, which PostgreSQL cannot run inside one",
      up.stderr)
    assert.matches("000004_create_index_posts_two%.up%.sql runs without a transaction", up.stderr)
    assert.matches("stays marked dirty until it ends", up.stderr)
    -- morph's marker says so itself: no line for it
    assert.is_nil(up.stderr:find("000002_create_index_posts_userid.up.sql runs", 1, true))
    assert.are.equal(4, valid_indexes(db.uri))
    assert.are.equal(4, value(db.uri, "SELECT count(*) FROM moonshift_migrations " ..
      "WHERE state = 'applied'"))
    -- the three ran outside a transaction: a dirty marker committed first (a start event)
    assert.are.equal(3, value(db.uri, "SELECT count(*) FROM moonshift_events " ..
      "WHERE action = 'start'"))
    local after = ms({ "status" })
    assert.are.equal(0, after.code, after.stderr)
    local check = ms({ "check" })
    assert.are.equal(0, check.code, check.stderr)
    local down = ms({ "down", "--to", "000001", "-y" })
    assert.are.equal(0, down.code, down.stderr)
    assert.matches("000004_create_index_posts_two%.down%.sql runs without a transaction",
      down.stderr)
    assert.are.equal(0, valid_indexes(db.uri))
    assert.are.equal(0, value(db.uri, "SELECT count(*) FROM pg_index WHERE " ..
      "indexrelid::regclass::text IN " .. INDEXES))
  end)

  it("leaves a failed lone CREATE INDEX CONCURRENTLY file dirty", function()
    helpers.write_files(db.dir, {
      ["migrations/000001_idx.up.sql"] = "CREATE INDEX CONCURRENTLY idx_nope ON nope (x);\n",
    })
    local up = ms({ "up", "-y" })
    assert.are.equal(6, up.code, up.stderr)
    assert.matches("000001_idx%.up%.sql runs without a transaction", up.stderr)
    assert.matches("marked dirty", up.stderr)
    assert.are.equal("dirty", value(db.uri, "SELECT state FROM moonshift_migrations " ..
      "WHERE version = '000001'"))
    local again = ms({ "up", "-y" })
    assert.are.equal(9, again.code)
    assert.matches("000001_idx is dirty", again.stderr)
  end)

  it("refuses a file that mixes both kinds of statement, naming file and line, before " ..
    "anything runs", function()
    local files = {}
    for k, v in pairs(MATTERMOST) do files[k] = v end
    files["migrations/000005_add_column_and_index.up.sql"] = "-- mixed\n" ..
      "ALTER TABLE posts ADD COLUMN IF NOT EXISTS haslink boolean;\n" ..
      "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_posts_haslink ON posts (haslink);\n"
    helpers.write_files(db.dir, files)
    for _, args in ipairs({ { "up", "-y" }, { "status" }, { "check" } }) do
      local res = ms(args)
      assert.are.equal(2, res.code, args[1])
      assert.matches("000005_add_column_and_index%.up%.sql:3: CREATE INDEX CONCURRENTLY " ..
        "cannot run inside a transaction block, and this migration mixes it with statements " ..
        "that can %(line 2%); move it to a migration of its own %(which then runs without " ..
        "a transaction%), or add `%-%- moonshift:no%-transaction` to the file", res.stderr)
    end
    assert.is_nil(value(db.uri, "SELECT to_regclass('posts')::text"))
    assert.is_nil(value(db.uri, "SELECT to_regclass('moonshift_migrations')::text"))
  end)

  it("runs a Flyway script of CREATE INDEX CONCURRENTLY outside a transaction, as Flyway " ..
    "does", function()
    helpers.write_files(db.dir, {
      ["migrations/V1__posts.sql"] = "CREATE TABLE posts (id int, userid int);\n",
      ["migrations/V2__posts_userid.sql"] = "CREATE INDEX CONCURRENTLY idx_posts_userid " ..
        "ON posts (userid);\n",
      ["migrations/R__analyze.sql"] = "VACUUM (ANALYZE) posts;\n",
    })
    local up = ms({ "up", "-y" })
    assert.are.equal(0, up.code, up.stderr)
    assert.matches("V2__posts_userid%.sql runs without a transaction", up.stderr)
    assert.matches("R__analyze%.sql runs without a transaction: it holds only VACUUM", up.stderr)
    assert.is_true(value(db.uri, "SELECT indisvalid FROM pg_index " ..
      "WHERE indexrelid = 'idx_posts_userid'::regclass"))
  end)

  -- sql-migrate's sections and option as its parser reads them (rubenv/sql-migrate,
  -- sqlparse/sqlparse.go): `-- +migrate Up [notransaction]`, `-- +migrate Down`.
  it("runs sql-migrate's Up section only, and honours notransaction", function()
    helpers.write_files(db.dir, {
      ["migrations/1_posts.sql"] = "-- +migrate Up\nCREATE TABLE posts (id int, userid int);\n\n" ..
        "-- +migrate Down\nDROP TABLE posts;\n",
      -- named as `sql-migrate new` names files
      ["migrations/20240101120000-posts_userid.sql"] = "-- +migrate Up notransaction\n" ..
        "CREATE INDEX CONCURRENTLY idx_posts_userid ON posts (userid);\n\n" ..
        "-- +migrate Down notransaction\nDROP INDEX CONCURRENTLY idx_posts_userid;\n",
    })
    local up = ms({ "up", "-y" })
    assert.are.equal(0, up.code, up.stderr)
    assert.matches("applied 2 migrations", up.stdout)
    assert.is_true(value(db.uri, "SELECT indisvalid FROM pg_index " ..
      "WHERE indexrelid = 'idx_posts_userid'::regclass"))
    assert.are.equal(1, value(db.uri, "SELECT count(*) FROM moonshift_events " ..
      "WHERE action = 'start' AND version = '20240101120000'"))
    assert.are.equal(0, ms({ "check" }).code)
    local down = ms({ "down", "-y" })
    assert.are.equal(0, down.code, down.stderr)
    assert.is_nil(value(db.uri, "SELECT to_regclass('idx_posts_userid')::text"))
    assert.are.equal("posts", value(db.uri, "SELECT to_regclass('posts')::text"))
  end)

  it("asks for dbmate's own marker where dbmate needs one", function()
    helpers.write_files(db.dir, {
      ["migrations/20240101000000_idx.sql"] = "-- migrate:up\n" ..
        "CREATE INDEX CONCURRENTLY i ON t (x);\n-- migrate:down\nDROP INDEX i;\n",
    })
    local up = ms({ "up", "-y" })
    assert.are.equal(2, up.code)
    assert.matches("20240101000000_idx%.sql:2: CREATE INDEX CONCURRENTLY cannot run inside " ..
      "a transaction block; add `transaction:false` to its `%-%- migrate:up` line", up.stderr)
    assert.is_nil(value(db.uri, "SELECT to_regclass('moonshift_migrations')::text"))
  end)
end)
