-- moonshift up / down / goto / redo end to end: the binary as a child, a real server.
local helpers = require("spec.helpers")

local run, value = helpers.run, helpers.value

local FIVE = {
  ["migrations/0001_users.up.sql"] = "CREATE TABLE users (id serial PRIMARY KEY, name text);\n",
  ["migrations/0001_users.down.sql"] = "DROP TABLE users;\n",
  ["migrations/0002_email.up.sql"] = "ALTER TABLE users ADD COLUMN email text;\n" ..
    "CREATE INDEX users_email ON users (email);\n",
  ["migrations/0002_email.down.sql"] = "ALTER TABLE users DROP COLUMN email;\n",
  ["migrations/0003_posts.up.sql"] = "CREATE TABLE posts (\n  id serial PRIMARY KEY,\n" ..
    "  user_id int REFERENCES users\n);\n",
  ["migrations/0003_posts.down.sql"] = "DROP TABLE posts;\n",
  ["migrations/0004_seed.up.sql"] = "INSERT INTO users (name) VALUES ('ada'), ('bob');\n",
  ["migrations/0004_seed.down.sql"] = "DELETE FROM users;\n",
  ["migrations/0005_view.up.sql"] = "CREATE VIEW user_names AS SELECT name FROM users;\n",
  ["migrations/0005_view.down.sql"] = "DROP VIEW user_names;\n",
}

describe("moonshift up #e2e", function()
  local db = helpers.database({ files = FIVE })
  local ms = helpers.ms

  local function schema_dump()
    if not require("moonshift.fs").exists(db.cluster.bin_dir .. "/pg_dump") then
      return helpers.schema_fingerprint(db.uri) -- the npm server ships no pg_dump
    end
    local env = db.cluster:env()
    env.PGDATABASE = db.uri:match("^postgresql:///([^?]+)")
    local res = assert(require("moonshift.proc").run({ db.cluster.bin_dir .. "/pg_dump", "--schema-only",
      "--exclude-table=moonshift_*", "--exclude-table=moonshift_events_id_seq" },
      { env = helpers.env(env) }))
    assert.are.equal(0, res.code, res.stderr)
    return (res.stdout:gsub("\n%-%- Dumped [^\n]*", ""):gsub("\n\\[%a]*restrict [^\n]*", ""))
  end

  it("applies every pending migration, one progress line each, and records them", function()
    local res = ms({ "up", "-y" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("%[1/5%] 0001_users  ok", res.stderr)
    assert.matches("%[5/5%] 0005_view  ok", res.stderr)
    assert.matches("applied 5 migrations", res.stdout)
    assert.are.equal(5, value(db.uri, "SELECT count(*) FROM moonshift_migrations WHERE state = 'applied'"))
    assert.are.equal(2, value(db.uri, "SELECT count(*) FROM user_names"))
    assert.are.equal(5, value(db.uri, "SELECT count(*) FROM moonshift_events WHERE action = 'apply'"))
    local again = ms({ "up", "-y" })
    assert.are.equal(0, again.code)
    assert.matches("nothing to do", again.stdout)
  end)

  it("refuses to change anything without a terminal unless --auto-confirm", function()
    local res = ms({ "up" })
    assert.are.equal(2, res.code)
    assert.matches("%-%-auto%-confirm", res.stderr)
    assert.are.equal(0, value(db.uri, "SELECT count(*) FROM pg_catalog.pg_tables " ..
      "WHERE tablename IN ('users', 'moonshift_migrations')"))
  end)

  it("stops at --to and counts", function()
    assert.are.equal(0, ms({ "up", "-y", "--to", "2" }).code)
    assert.are.equal(2, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    assert.are.equal(0, ms({ "up", "-y", "--count", "1" }).code)
    assert.are.equal(3, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
  end)

  it("up, down --all, up leaves the same schema", function()
    assert.are.equal(0, ms({ "up", "-y" }).code)
    local first = schema_dump()
    local down = ms({ "down", "--all", "-y" })
    assert.are.equal(0, down.code, down.stderr)
    assert.matches("reverted 5 migrations", down.stdout)
    assert.are.equal(0, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    assert.is_nil(value(db.uri, "SELECT to_regclass('users')::text"))
    assert.are.equal(0, ms({ "up", "-y" }).code)
    assert.are.equal(first, schema_dump())
  end)

  it("down reverts the newest by default, N, or --to; goto and redo move exactly", function()
    assert.are.equal(0, ms({ "up", "-y" }).code)
    assert.are.equal(0, ms({ "down", "-y" }).code)
    assert.is_nil(value(db.uri, "SELECT to_regclass('user_names')::text"))
    assert.are.equal(0, ms({ "down", "2", "-y" }).code)
    assert.are.equal(2, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    local go = ms({ "goto", "4", "-y" })
    assert.are.equal(0, go.code, go.stderr)
    assert.are.equal(4, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    assert.are.equal(0, ms({ "goto", "1", "-y" }).code)
    assert.are.equal("0001", value(db.uri, "SELECT string_agg(version, ',') FROM moonshift_migrations"))
    local unknown = ms({ "down", "--to", "0042", "-y" })
    assert.are.equal(2, unknown.code)
    assert.matches("no migration with version 0042", unknown.stderr)
    assert.are.equal(0, ms({ "up", "-y" }).code)
    local redo = ms({ "redo", "-y" })
    assert.are.equal(0, redo.code, redo.stderr)
    assert.matches("redid 0005_view", redo.stdout)
    assert.are.equal(5, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    -- reverted once by the first plain `down`, once by redo
    assert.are.equal(2, value(db.uri, "SELECT count(*) FROM moonshift_events WHERE action = 'revert'" ..
      " AND version = '0005'"))
  end)

  it("a syntax error in the 3rd of 5 leaves 2 applied, exits 6 and points at the line", function()
    helpers.write_files(db.dir, { ["migrations/0003_posts.up.sql"] =
      "CREATE TABLE posts (id serial PRIMARY KEY);\n-- a comment\nINSERT INTO posts\n" ..
      "  VALUES (1);\nSELEC 1;\n" })
    local res = ms({ "up", "-y" })
    assert.are.equal(6, res.code)
    assert.matches("0003_posts failed; rolled back, nothing of it was applied", res.stderr)
    assert.matches("migrations/0003_posts%.up%.sql:5:1", res.stderr)
    assert.matches("ERROR 42601: syntax error at or near \"SELEC\"", res.stderr)
    assert.matches("statement: SELEC 1", res.stderr)
    assert.are.equal(2, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    assert.is_nil(value(db.uri, "SELECT to_regclass('posts')::text"))
  end)

  it("reports detail and hint, and the column of the error inside the statement", function()
    helpers.write_files(db.dir, { ["migrations/0003_posts.up.sql"] =
      "CREATE TABLE posts (id int PRIMARY KEY);\nINSERT INTO posts VALUES (1), (1);\n" ..
      "SELECT nosuchcol\n  FROM posts;\n" })
    local res = ms({ "up", "-y" })
    assert.are.equal(6, res.code)
    assert.matches("0003_posts%.up%.sql:2:1", res.stderr)
    assert.matches("ERROR 23505", res.stderr)
    assert.matches("DETAIL: Key %(id%)=%(1%) already exists", res.stderr)
    helpers.write_files(db.dir, { ["migrations/0003_posts.up.sql"] =
      "CREATE TABLE posts (id int PRIMARY KEY);\nSELECT 1,\n  nosuchcol FROM posts;\n" })
    res = ms({ "up", "-y" })
    assert.are.equal(6, res.code)
    assert.matches("0003_posts%.up%.sql:3:3", res.stderr)
    assert.matches("ERROR 42703", res.stderr)
    -- psql drops blank lines inside a statement; the position still maps to the file
    helpers.write_files(db.dir, { ["migrations/0003_posts.up.sql"] =
      "CREATE TABLE posts (id int PRIMARY KEY);\nSELECT 1,\n\n\n   nosuchcol FROM posts;\n" })
    res = ms({ "up", "-y" })
    assert.matches("0003_posts%.up%.sql:5:4", res.stderr)
  end)

  it("a dry run prints the SQL and changes nothing", function()
    local before = value(db.uri, "SELECT count(*) FROM pg_catalog.pg_class")
    local res = ms({ "up", "--dry-run" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("CREATE TABLE users", res.stdout)
    assert.matches("%-%- %[5/5%] apply 0005_view", res.stdout)
    assert.are.equal(before, value(db.uri, "SELECT count(*) FROM pg_catalog.pg_class"))
  end)

  it("refuses a transaction-control statement in a transactional migration", function()
    helpers.write_files(db.dir, { ["migrations/0006_tx.up.sql"] = "BEGIN;\nSELECT 1;\nCOMMIT;\n" })
    local res = ms({ "up", "-y" })
    assert.are.equal(2, res.code)
    assert.matches("0006_tx%.up%.sql:1: BEGIN", res.stderr)
  end)

  it("runs a no-transaction migration statement by statement (CREATE INDEX CONCURRENTLY)", function()
    helpers.write_files(db.dir, { ["migrations/0006_idx.up.sql"] = "-- moonshift:no-transaction\n" ..
      "CREATE INDEX CONCURRENTLY users_name ON users (name);\n" })
    local res = ms({ "up", "-y" })
    assert.are.equal(0, res.code, res.stderr)
    assert.is_true(value(db.uri, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_name'::regclass"))
    assert.are.equal("applied", value(db.uri, "SELECT state FROM moonshift_migrations WHERE version = '0006'"))
  end)

  it("leaves a failed no-transaction migration dirty and refuses until force", function()
    helpers.write_files(db.dir, { ["migrations/0006_idx.up.sql"] = "-- moonshift:no-transaction\n" ..
      "CREATE INDEX CONCURRENTLY users_name ON users (name);\nSELECT 1/0;\n" })
    local res = ms({ "up", "-y" })
    assert.are.equal(6, res.code)
    assert.matches("marked dirty", res.stderr)
    assert.matches("0006_idx%.up%.sql:3", res.stderr)
    assert.are.equal("dirty", value(db.uri, "SELECT state FROM moonshift_migrations WHERE version = '0006'"))
    local st = ms({ "status" })
    assert.are.equal(0, st.code)
    assert.matches("DIRTY +0006_idx", st.stdout)
    local again = ms({ "up", "-y" })
    assert.are.equal(9, again.code)
    assert.matches("0006_idx is dirty", again.stderr)
    assert.matches("moonshift force 0006", again.stderr)
    local forced = ms({ "force", "0006", "--not-applied", "-y" })
    assert.are.equal(0, forced.code, forced.stderr)
    helpers.write_files(db.dir, { ["migrations/0006_idx.up.sql"] = "-- moonshift:no-transaction\n" ..
      "DROP INDEX CONCURRENTLY IF EXISTS users_name;\n" ..
      "CREATE INDEX CONCURRENTLY users_name ON users (name);\n" })
    assert.are.equal(0, ms({ "up", "-y" }).code)
    assert.are.equal("applied", value(db.uri, "SELECT state FROM moonshift_migrations WHERE version = '0006'"))
  end)

  it("never prints the password of the database URL", function()
    local secret_uri = db.uri:gsub("^postgresql://", "postgresql://postgres:canarySECRET@")
    local res = run({ "up", "-y", "--database", secret_uri }, { cwd = db.dir })
    assert.are.equal(0, res.code, res.stderr)
    local bad = run({ "status", "--database",
      "postgresql://postgres:canarySECRET@/nope?host=" .. db.cluster.socket_dir }, { cwd = db.dir })
    assert.are.equal(4, bad.code)
    assert.matches("cannot connect", bad.stderr)
    for _, r in ipairs({ res, bad }) do
      assert.is_nil(r.stdout:find("canarySECRET", 1, true))
      assert.is_nil(r.stderr:find("canarySECRET", 1, true))
    end
  end)

  it("says a read-only target cannot be changed even when there is nothing to do", function()
    assert.are.equal(0, ms({ "up", "-y" }).code)
    local name = db.uri:match("^postgresql:///([^?]+)")
    helpers.query(db.uri, "ALTER DATABASE " .. name .. " SET default_transaction_read_only = on")
    local res = ms({ "up", "-y" })
    assert.are.equal(4, res.code, res.stderr)
    assert.matches("read%-only", res.stderr)
    assert.are.equal(0, ms({ "status" }).code) -- reading it is fine
  end)
end)

describe("session state between migrations #e2e", function()
  local db = helpers.database()

  it("a migration's SET search_path does not leak into the next one or the history", function()
    helpers.write_files(db.dir, {
      ["migrations/0001_other.up.sql"] = "CREATE SCHEMA other;\nSET search_path = other;\n" ..
        "CREATE TABLE moonshift_migrations (x int);\n",
      ["migrations/0002_t.up.sql"] = "CREATE TABLE t (id int);\n",
    })
    local res = helpers.run({ "up", "-y", "-d", db.uri }, { cwd = db.dir })
    assert.are.equal(0, res.code, res.stderr)
    assert.are.equal("t", value(db.uri, "SELECT to_regclass('public.t')::text"))
    assert.are.equal(2, value(db.uri, "SELECT count(*) FROM public.moonshift_migrations"))
    assert.are.equal(0, value(db.uri, "SELECT count(*) FROM other.moonshift_migrations"))
  end)


end)
