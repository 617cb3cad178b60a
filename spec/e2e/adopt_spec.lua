-- A database another tool migrated: refused until `adopt`, then adopted and brought up to
-- date; the schema is what psql applying the same files gives. Each tool's table is built
-- as its own source code builds it (see lua/moonshift/peers/<tool>.lua for where).
local helpers = require("spec.helpers")

local value, query = helpers.value, helpers.query
local fmt = string.format

-- The shared workload: five migrations; the other tool applied the first three.
local SQL = {
  "CREATE TABLE a (id int PRIMARY KEY);\n",
  "CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a);\n",
  "CREATE INDEX b_a ON b (a_id);\n",
  "CREATE TABLE d (x text);\n",
  "ALTER TABLE d ADD COLUMN y int;\n",
}
local NAMES = { "a", "b", "c", "d", "e" }
local APPLIED = 3

-- The migrations in moonshift's native layout (golang-migrate's and sqlx's naming).
local function native()
  local files = {}
  for i, sql in ipairs(SQL) do
    files[fmt("migrations/%d_%s.up.sql", i, NAMES[i])] = sql
    files[fmt("migrations/%d_%s.down.sql", i, NAMES[i])] = "SELECT 1;\n"
  end
  return files
end

local function flyway_files()
  local files = {}
  for i, sql in ipairs(SQL) do
    files[fmt("migrations/V%d__%s.sql", i, NAMES[i])] = sql
    files[fmt("migrations/U%d__%s.sql", i, NAMES[i])] = "SELECT 1;\n"
  end
  return files
end

local function diesel_files()
  local files = {}
  for i, sql in ipairs(SQL) do
    files[fmt("migrations/2024-01-01-00000%d_%s/up.sql", i, NAMES[i])] = sql
    files[fmt("migrations/2024-01-01-00000%d_%s/down.sql", i, NAMES[i])] = "SELECT 1;\n"
  end
  return files
end

-- CRC32 of each file's text without line breaks, as a signed int: computed with Python's
-- zlib.crc32 (an implementation independent of moonshift's), for Flyway's checksum column.
local FLYWAY_CRC = { 1112353363, -969819510, -1392672457, -1941707929, -1107847708 }

-- SHA-1 of each file (Sqitch's script_hash), from Python's hashlib.
local SQITCH_SHA1 = { "20486c6b9e018071f469e2bc7221d4b4cb483411",
  "f91935a570c424f47e9c851757c160922147358d", "8fcb48aac2db475b982659b32ec8f0f55cd16fc7" }

local function each(n, f)
  for i = 1, n do f(i) end
end

-- Each tool: its files, and its history table after applying the first n files.
local TOOLS = {
  ["golang-migrate"] = { files = native, build = function(uri, n)
    query(uri, "CREATE TABLE IF NOT EXISTS schema_migrations (version bigint not null " ..
      "primary key, dirty boolean not null)")
    query(uri, "INSERT INTO schema_migrations (version, dirty) VALUES ($1, false)",
      tostring(n))
  end },
  dbmate = { files = native, build = function(uri, n)
    query(uri, "create table if not exists schema_migrations (version varchar(128) " ..
      "primary key)")
    each(n, function(i) query(uri, "insert into schema_migrations (version) values ($1)",
      tostring(i)) end)
  end },
  rails = { files = native, build = function(uri, n)
    query(uri, "CREATE TABLE schema_migrations (version character varying NOT NULL " ..
      "PRIMARY KEY)")
    query(uri, "CREATE TABLE ar_internal_metadata (key character varying NOT NULL PRIMARY " ..
      "KEY, value character varying, created_at timestamp(6) NOT NULL, updated_at " ..
      "timestamp(6) NOT NULL)")
    each(n, function(i) query(uri, "INSERT INTO schema_migrations (version) VALUES ($1)",
      tostring(i)) end)
  end },
  flyway = { files = flyway_files, build = function(uri, n)
    query(uri, [[CREATE TABLE "public"."flyway_schema_history" ("installed_rank" INT NOT NULL,
      "version" VARCHAR(50), "description" VARCHAR(200) NOT NULL, "type" VARCHAR(20) NOT NULL,
      "script" VARCHAR(1000) NOT NULL, "checksum" INTEGER, "installed_by" VARCHAR(100) NOT NULL,
      "installed_on" TIMESTAMP NOT NULL DEFAULT now(), "execution_time" INTEGER NOT NULL,
      "success" BOOLEAN NOT NULL)]])
    query(uri, [[ALTER TABLE "public"."flyway_schema_history" ADD CONSTRAINT
      "flyway_schema_history_pk" PRIMARY KEY ("installed_rank")]])
    query(uri, [[CREATE INDEX "flyway_schema_history_s_idx" ON "public"."flyway_schema_history"
      ("success")]])
    each(n, function(i)
      local crc = FLYWAY_CRC[i]
      query(uri, "INSERT INTO flyway_schema_history (installed_rank, version, description, " ..
        "type, script, checksum, installed_by, execution_time, success) VALUES ($1, $2, $3, " ..
        "'SQL', $4, $5, current_user, 3, true)", tostring(i), tostring(i), NAMES[i],
        fmt("V%d__%s.sql", i, NAMES[i]), tostring(crc))
    end)
  end },
  diesel = { files = diesel_files, build = function(uri, n)
    query(uri, "CREATE TABLE IF NOT EXISTS __diesel_schema_migrations (version VARCHAR(50) " ..
      "PRIMARY KEY NOT NULL, run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)")
    each(n, function(i) query(uri, "INSERT INTO __diesel_schema_migrations (version) " ..
      "VALUES ($1)", fmt("2024010100000%d", i)) end)
  end },
  goose = { files = native, build = function(uri, n)
    query(uri, "CREATE TABLE goose_db_version (id integer PRIMARY KEY GENERATED BY DEFAULT " ..
      "AS IDENTITY, version_id bigint NOT NULL, is_applied boolean NOT NULL, tstamp " ..
      "timestamp NOT NULL DEFAULT now())")
    query(uri, "INSERT INTO goose_db_version (version_id, is_applied) VALUES (0, true)")
    each(n + 1, function(i) query(uri, "INSERT INTO goose_db_version (version_id, is_applied) " ..
      "VALUES ($1, true)", tostring(i)) end)
    -- the last one was applied, then rolled back (goose before v3.16 logs that as a row)
    query(uri, "INSERT INTO goose_db_version (version_id, is_applied) VALUES ($1, false)",
      tostring(n + 1))
  end },
  sqlx = { files = native, build = function(uri, n)
    query(uri, "CREATE TABLE IF NOT EXISTS _sqlx_migrations (version BIGINT PRIMARY KEY, " ..
      "description TEXT NOT NULL, installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success " ..
      "BOOLEAN NOT NULL, checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL)")
    each(n, function(i) query(uri, "INSERT INTO _sqlx_migrations (version, description, " ..
      "success, checksum, execution_time) VALUES ($1, $2, true, sha384($3::bytea), 5)",
      tostring(i), NAMES[i], SQL[i]) end)
  end },
  ["sql-migrate"] = { files = native, build = function(uri, n)
    query(uri, [[create table if not exists "gorp_migrations" ("id" varchar(255) not null
      primary key, "applied_at" timestamp with time zone)]])
    each(n, function(i) query(uri, "insert into gorp_migrations (id, applied_at) values " ..
      "($1, now())", fmt("%d_%s.sql", i, NAMES[i])) end)
  end },
  ["node-pg-migrate"] = { files = native, build = function(uri, n)
    query(uri, [[CREATE TABLE "public"."pgmigrations" ( id SERIAL PRIMARY KEY, name
      varchar(255) NOT NULL, run_on timestamp NOT NULL)]])
    each(n, function(i) query(uri, "INSERT INTO \"public\".\"pgmigrations\" (name, run_on) " ..
      "VALUES ($1, NOW())", fmt("%d_%s", i, NAMES[i])) end)
  end },
  postgrator = { files = native, build = function(uri, n)
    query(uri, "CREATE TABLE schemaversion (version BIGINT PRIMARY KEY, name TEXT DEFAULT '', " ..
      "md5 TEXT DEFAULT '', run_at TIMESTAMP WITH TIME ZONE DEFAULT now())")
    query(uri, "INSERT INTO schemaversion (version, name, md5) VALUES (0, '', '')")
    each(n, function(i) query(uri, "INSERT INTO schemaversion (version, name, md5) VALUES " ..
      "($1, $2, md5($3))", tostring(i), NAMES[i], SQL[i]) end)
  end },
  sqitch = { files = native, build = function(uri, n)
    query(uri, "CREATE SCHEMA sqitch")
    query(uri, "CREATE TABLE sqitch.projects (project TEXT PRIMARY KEY, uri TEXT NULL UNIQUE, " ..
      "created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(), creator_name TEXT NOT NULL, " ..
      "creator_email TEXT NOT NULL)")
    query(uri, "CREATE TABLE sqitch.changes (change_id TEXT PRIMARY KEY, script_hash TEXT " ..
      "NULL, change TEXT NOT NULL, project TEXT NOT NULL REFERENCES sqitch.projects(project) " ..
      "ON UPDATE CASCADE, note TEXT NOT NULL DEFAULT '', committed_at TIMESTAMPTZ NOT NULL " ..
      "DEFAULT clock_timestamp(), committer_name TEXT NOT NULL, committer_email TEXT NOT " ..
      "NULL, planned_at TIMESTAMPTZ NOT NULL, planner_name TEXT NOT NULL, planner_email TEXT " ..
      "NOT NULL, UNIQUE(project, script_hash))")
    query(uri, "INSERT INTO sqitch.projects (project, creator_name, creator_email) VALUES " ..
      "('w', 'x', 'x@example.com')")
    each(n, function(i) query(uri, "INSERT INTO sqitch.changes (change_id, script_hash, " ..
      "change, project, committer_name, committer_email, planned_at, planner_name, " ..
      "planner_email) VALUES (md5($1), $2, $1, 'w', 'x', 'x@example.com', now(), 'x', " ..
      "'x@example.com')", NAMES[i], SQITCH_SHA1[i]) end)
  end },
  alembic = { files = native, build = function(uri, n)
    query(uri, "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, " ..
      "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))")
    query(uri, "INSERT INTO alembic_version (version_num) VALUES ($1)", tostring(n))
  end },
  django = { files = native, build = function(uri, n)
    query(uri, "CREATE TABLE django_migrations (id bigint GENERATED BY DEFAULT AS IDENTITY " ..
      "PRIMARY KEY, app varchar(255) NOT NULL, name varchar(255) NOT NULL, applied " ..
      "timestamp with time zone NOT NULL)")
    each(n, function(i) query(uri, "INSERT INTO django_migrations (app, name, applied) " ..
      "VALUES ('shop', $1, now())", fmt("000%d_%s", i, NAMES[i])) end)
  end },
}

local ORDER = { "golang-migrate", "dbmate", "rails", "flyway", "diesel", "goose", "sqlx",
  "sql-migrate", "node-pg-migrate", "postgrator", "sqitch", "alembic", "django" }

-- The schema psql gives applying every file, the tools' own tables left out.
local reference
local function fingerprint(uri)
  local out = {}
  for line in helpers.schema_fingerprint(uri):gmatch("[^\n]+") do
    if not (line:match("schema_migrations") or line:match("ar_internal_metadata") or
        line:match("flyway") or line:match("diesel") or line:match("goose") or
        line:match("sqlx") or line:match("gorp") or line:match("pgmigrations") or
        line:match("schemaversion") or line:match("alembic") or line:match("django")) then
      out[#out + 1] = line
    end
  end
  return table.concat(out, "\n")
end

local function apply_first(uri, n)
  for i = 1, n do query(uri, SQL[i]) end
end

describe("moonshift on a database another tool migrated #e2e", function()
  local db = helpers.database()

  setup(function()
    local uri = helpers.fresh_db(helpers.shared_cluster())
    apply_first(uri, #SQL)
    reference = fingerprint(uri)
  end)

  local function prepare(tool, n)
    local t = TOOLS[tool]
    helpers.write_files(db.dir, t.files())
    apply_first(db.uri, n or APPLIED)
    t.build(db.uri, n or APPLIED)
  end

  for _, tool in ipairs(ORDER) do
    it(fmt("refuses up and status until %s's history is adopted, then adopts it and " ..
      "applies the rest", tool), function()
      prepare(tool)
      local res = helpers.ms({ "up", "-y" })
      assert.are.equal(9, res.code, res.stdout .. res.stderr)
      assert.matches("migrated by another tool: " .. tool:gsub("%-", "%%-") .. "'s table",
        res.stderr)
      assert.matches("moonshift adopt %-%-from " .. tool:gsub("%-", "%%-"), res.stderr)
      assert.matches("nothing was changed", res.stderr)
      assert.is_nil(value(db.uri, "SELECT to_regclass('moonshift_migrations')::text"))
      res = helpers.ms({ "up", "--dry-run" })
      assert.are.equal(9, res.code, res.stdout .. res.stderr)
      assert.is_nil(res.stdout:match("1_a"))

      res = helpers.ms({ "status" })
      assert.are.equal(0, res.code, res.stderr)
      assert.matches("adopt %-%-from " .. tool:gsub("%-", "%%-"), res.stderr)
      res = helpers.ms({ "check" })
      assert.are.equal(9, res.code, res.stderr)

      res = helpers.ms({ "adopt", "--dry-run" })
      assert.are.equal(0, res.code, res.stderr)
      assert.matches("record  [%w-]*[V_]?1_?_a\n", res.stdout)
      assert.matches("dry run", res.stdout)
      assert.is_nil(value(db.uri, "SELECT to_regclass('moonshift_migrations')::text"))

      res = helpers.ms({ "adopt", "-y" })
      assert.are.equal(0, res.code, res.stderr)
      assert.matches("adopted 3 migrations from " .. tool:gsub("%-", "%%-"), res.stdout)
      assert.are.equal(3, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
      assert.are.equal(3, value(db.uri, "SELECT count(*) FROM moonshift_events WHERE " ..
        "action = 'adopt' AND detail->>'from' = $1", tool))

      res = helpers.ms({ "up", "-y" })
      assert.are.equal(0, res.code, res.stderr)
      assert.matches("applied 2 migrations", res.stdout)
      assert.are.equal(reference, fingerprint(db.uri))
    end)
  end

  it("refuses a dirty golang-migrate version with the command that resolves it", function()
    prepare("golang-migrate")
    query(db.uri, "UPDATE schema_migrations SET dirty = true")
    local res = helpers.ms({ "adopt", "-y" })
    assert.are.equal(9, res.code, res.stderr)
    assert.matches("left version 3 dirty", res.stderr)
    assert.matches("migrate %-path DIR %-database URL force 3", res.stderr)
    assert.is_nil(value(db.uri, "SELECT to_regclass('moonshift_migrations')::text"))
  end)

  it("refuses a failed Flyway entry, naming flyway repair", function()
    prepare("flyway")
    query(db.uri, "UPDATE flyway_schema_history SET success = false WHERE version = '3'")
    local res = helpers.ms({ "adopt", "-y" })
    assert.are.equal(9, res.code, res.stderr)
    assert.matches("version 3 %(V3__c.sql%) as failed", res.stderr)
    assert.matches("flyway repair", res.stderr)
  end)

  it("refuses a partly applied sqlx migration, naming the row to delete", function()
    prepare("sqlx")
    query(db.uri, "UPDATE _sqlx_migrations SET success = false WHERE version = 3")
    local res = helpers.ms({ "adopt", "-y" })
    assert.are.equal(9, res.code, res.stderr)
    assert.matches("version 3 %(c%) as not successful", res.stderr)
    assert.matches("DELETE FROM _sqlx_migrations WHERE version = 3", res.stderr)
  end)

  it("reports a file that no longer matches Flyway's checksum as drift", function()
    prepare("flyway")
    helpers.write_files(db.dir, { ["migrations/V2__b.sql"] = SQL[2] .. "-- edited\n" })
    local res = helpers.ms({ "adopt", "-y" })
    assert.are.equal(9, res.code, res.stderr)
    assert.matches("drift", res.stderr)
    assert.matches("V2__b.sql %(recorded %-?%d+, file %-?%d+%)", res.stderr)
    assert.is_nil(value(db.uri, "SELECT to_regclass('moonshift_migrations')::text"))
  end)

  it("reports sqlx, postgrator and Sqitch checksums that do not match as drift", function()
    for _, tool in ipairs({ "sqlx", "postgrator", "sqitch" }) do
      query(db.uri, "DROP SCHEMA public CASCADE")
      query(db.uri, "DROP SCHEMA IF EXISTS sqitch CASCADE")
      query(db.uri, "CREATE SCHEMA public")
      prepare(tool)
      helpers.write_files(db.dir, { ["migrations/1_a.up.sql"] = SQL[1] .. "-- edited\n" })
      local res = helpers.ms({ "adopt", "-y" })
      assert.are.equal(9, res.code, res.stderr)
      assert.matches("drift", res.stderr)
      assert.matches("1_a.up.sql", res.stderr)
    end
  end)

  it("lists applied entries with no file and files with no entry, and adopts the rest " ..
    "with --allow-missing", function()
    prepare("dbmate")
    query(db.uri, "DELETE FROM schema_migrations WHERE version = '2'")
    query(db.uri, "INSERT INTO schema_migrations (version) VALUES ('20990101000000')")
    local res = helpers.ms({ "adopt", "-y" })
    assert.are.equal(9, res.code, res.stderr)
    assert.matches("1 entry applied with no file here: 20990101000000", res.stderr)
    assert.matches("1 file older than the newest applied one with no entry", res.stderr)
    assert.matches("2_b", res.stderr)
    res = helpers.ms({ "adopt", "-y", "--allow-missing" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("adopted 2 migrations", res.stdout)
    assert.are.same({ "1", "3" }, helpers.ids(query(db.uri,
      "SELECT version AS id FROM moonshift_migrations ORDER BY version")))
  end)

  it("takes golang-migrate's version for every file before it, even when its own file is " ..
    "gone (with --allow-missing)", function()
    prepare("golang-migrate")
    query(db.uri, "UPDATE schema_migrations SET version = 99")
    local res = helpers.ms({ "adopt", "-y" })
    assert.are.equal(9, res.code, res.stderr)
    assert.matches("1 entry applied with no file here: 99", res.stderr)
    res = helpers.ms({ "adopt", "-y", "--allow-missing" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("adopted 5 migrations", res.stdout)
  end)

  it("refuses to guess between several tools and adopts the one --from names", function()
    prepare("dbmate")
    TOOLS["node-pg-migrate"].build(db.uri, 2)
    local res = helpers.ms({ "adopt", "-y" })
    assert.are.equal(9, res.code, res.stderr)
    assert.matches("several tools' history tables", res.stderr)
    assert.matches("dbmate's table", res.stderr)
    assert.matches("node%-pg%-migrate's table", res.stderr)
    res = helpers.ms({ "adopt", "-y", "--from", "dbmate" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("adopted 3 migrations from dbmate", res.stdout)
  end)

  it("finds a table its tool's configuration names, or --from-table names", function()
    prepare("sql-migrate")
    query(db.uri, "CREATE SCHEMA hist")
    query(db.uri, "ALTER TABLE gorp_migrations SET SCHEMA hist")
    query(db.uri, "ALTER TABLE hist.gorp_migrations RENAME TO applied")
    helpers.write_files(db.dir, { ["dbconfig.yml"] = "development:\n  dialect: postgres\n" ..
      "  table: applied\n  schema: hist\n" })
    local res = helpers.ms({ "up", "-y" })
    assert.are.equal(9, res.code, res.stderr)
    assert.matches('sql%-migrate\'s table "hist"."applied" says 3 applied, newest 3', res.stderr)
    os.remove(db.dir .. "/dbconfig.yml")
    res = helpers.ms({ "adopt", "-y", "--from", "sql-migrate" })
    assert.are.equal(9, res.code, res.stderr)
    assert.matches("no history of sql%-migrate found", res.stderr)
    res = helpers.ms({ "adopt", "-y", "--from", "sql-migrate", "--from-table", "hist.applied" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("adopted 3 migrations", res.stdout)
  end)

  it("finishes a down that empties moonshift's history beside the old tool's table, and " ..
    "refuses the next change", function()
    prepare("dbmate")
    assert.are.equal(0, helpers.ms({ "adopt", "-y" }).code)
    local res = helpers.ms({ "down", "--all", "-y" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("reverted 3 migrations", res.stdout)
    assert.are.equal(0, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    res = helpers.ms({ "up", "-y" })
    assert.are.equal(9, res.code, res.stderr)
    assert.matches("dbmate's table", res.stderr)
  end)

  it("finds dbmate's table where DBMATE_MIGRATIONS_TABLE (in .env too) puts it", function()
    prepare("dbmate")
    query(db.uri, "CREATE SCHEMA ops")
    query(db.uri, "ALTER TABLE schema_migrations SET SCHEMA ops")
    query(db.uri, "ALTER TABLE ops.schema_migrations RENAME TO dbmate_versions")
    helpers.write_files(db.dir, { [".env"] = "DBMATE_MIGRATIONS_TABLE=ops.dbmate_versions\n" })
    local res = helpers.ms({ "status" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches('dbmate\'s table "ops"."dbmate_versions" says 3 applied, newest 3', res.stderr)
    res = helpers.ms({ "adopt", "-y" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches('adopted 3 migrations from dbmate\'s "ops"."dbmate_versions"', res.stdout)
    -- compat writes where dbmate reads
    helpers.write_files(db.dir, { ["migrate.lua"] = "return { compat = 'dbmate' }\n" })
    res = helpers.ms({ "up", "-y" })
    assert.are.equal(0, res.code, res.stderr)
    assert.are.equal("1,2,3,4,5", value(db.uri, "SELECT string_agg(version, ',' ORDER BY " ..
      "version) FROM ops.dbmate_versions"))
    assert.is_nil(value(db.uri, "SELECT to_regclass('public.schema_migrations')::text"))
  end)

  it("warns of another tool's table it may not read, and goes on", function()
    helpers.write_files(db.dir, native())
    query(db.uri, "CREATE TABLE goose_db_version (id serial PRIMARY KEY, version_id bigint " ..
      "NOT NULL, is_applied boolean NOT NULL, tstamp timestamp DEFAULT now())")
    query(db.uri, "CREATE ROLE peers_spec_reader LOGIN")
    query(db.uri, "GRANT CREATE ON SCHEMA public TO peers_spec_reader")
    query(db.uri, "REVOKE ALL ON goose_db_version FROM PUBLIC")
    local uri = db.uri:gsub("user=postgres", "user=peers_spec_reader")
    local res = helpers.run({ "status", "-d", uri }, { cwd = db.dir })
    query(db.uri, "DROP OWNED BY peers_spec_reader")
    query(db.uri, "DROP ROLE peers_spec_reader")
    assert.are.equal(0, res.code, res.stderr)
    assert.matches('goose\'s table "public"."goose_db_version" may hold what another tool ' ..
      "applied, but cannot be read %(permission denied", res.stderr)
    assert.matches("5 pending", res.stdout)
  end)

  it("keeps refusing with compat = TOOL until the history is adopted", function()
    prepare("dbmate")
    helpers.write_files(db.dir, { ["migrate.lua"] = "return { compat = 'dbmate' }\n" })
    local res = helpers.ms({ "stamp", "5", "-y" })
    assert.are.equal(9, res.code, res.stderr)
    assert.matches("moonshift adopt %-%-from dbmate", res.stderr)
    assert.are.equal(3, value(db.uri, "SELECT count(*) FROM schema_migrations"))
  end)
end)

describe("compat = TOOL keeps the old tool's history in step #e2e", function()
  local db = helpers.database()

  local CASES = {
    dbmate = { files = native, rows = "SELECT string_agg(version, ',' ORDER BY version) " ..
      "FROM schema_migrations", after_up = "1,2,3,4,5", after_down = "1,2,3,4" },
    flyway = { files = flyway_files, rows = "SELECT string_agg(version || ':' || script || " ..
      "':' || (checksum IS NOT NULL)::text, ',' ORDER BY installed_rank) FROM " ..
      "flyway_schema_history", after_up = "1:V1__a.sql:true,2:V2__b.sql:true,3:V3__c.sql:true," ..
      "4:V4__d.sql:true,5:V5__e.sql:true", after_down = "1:V1__a.sql:true,2:V2__b.sql:true," ..
      "3:V3__c.sql:true,4:V4__d.sql:true" },
    diesel = { files = diesel_files, rows = "SELECT string_agg(version, ',' ORDER BY version) " ..
      "FROM __diesel_schema_migrations", after_up = "20240101000001,20240101000002," ..
      "20240101000003,20240101000004,20240101000005", after_down = "20240101000001," ..
      "20240101000002,20240101000003,20240101000004", last = "2024-01-01-000005" },
    goose = { files = native, rows = "SELECT string_agg(version_id::text, ',' ORDER BY id) " ..
      "FROM goose_db_version", after_up = "0,1,2,3,4,4,4,5", after_down = "0,1,2,3,4,4,4",
      after_stamp = "0,1,2,3,4,5" },
    ["sql-migrate"] = { files = native, rows = "SELECT string_agg(id, ',' ORDER BY id) FROM " ..
      "gorp_migrations", after_up = "1_a.sql,2_b.sql,3_c.sql,4_d.up.sql,5_e.up.sql",
      after_down = "1_a.sql,2_b.sql,3_c.sql,4_d.up.sql",
      after_stamp = "1_a.up.sql,2_b.up.sql,3_c.up.sql,4_d.up.sql,5_e.up.sql" },
    ["node-pg-migrate"] = { files = native, rows = "SELECT string_agg(name, ',' ORDER BY id) " ..
      "FROM pgmigrations", after_up = "1_a,2_b,3_c,4_d.up,5_e.up",
      after_down = "1_a,2_b,3_c,4_d.up", after_stamp = "1_a.up,2_b.up,3_c.up,4_d.up,5_e.up" },
  }

  for _, tool in ipairs({ "dbmate", "flyway", "diesel", "goose", "sql-migrate",
    "node-pg-migrate" }) do
    -- (the spec's files are moonshift's native ones; the rows the "tool" wrote name its own
    -- files, so sql-migrate's and node-pg-migrate's names differ until a stamp rebuilds)
    it(fmt("writes %s's table on up, down and stamp as %s would", tool, tool), function()
      local c = CASES[tool]
      local files = c.files()
      files["migrate.lua"] = fmt("return { compat = %q }\n", tool)
      helpers.write_files(db.dir, files)
      apply_first(db.uri, APPLIED)
      TOOLS[tool].build(db.uri, APPLIED)
      local res = helpers.ms({ "adopt", "-y" })
      assert.are.equal(0, res.code, res.stderr)
      res = helpers.ms({ "up", "-y" })
      assert.are.equal(0, res.code, res.stderr)
      assert.are.equal(c.after_up, value(db.uri, c.rows))
      res = helpers.ms({ "down", "-y" })
      assert.are.equal(0, res.code, res.stderr)
      assert.are.equal(c.after_down, value(db.uri, c.rows))
      res = helpers.ms({ "stamp", c.last or "5", "-y" })
      assert.are.equal(0, res.code, res.stderr)
      assert.are.equal(c.after_stamp or c.after_up, value(db.uri, c.rows))
    end)
  end

  it("writes the checksum Flyway computes (CRC32 of the lines)", function()
    local files = flyway_files()
    files["migrate.lua"] = "return { compat = 'flyway' }\n"
    helpers.write_files(db.dir, files)
    local res = helpers.ms({ "up", "-y" })
    assert.are.equal(0, res.code, res.stderr)
    assert.are.equal(FLYWAY_CRC[1], value(db.uri, "SELECT checksum FROM flyway_schema_history " ..
      "WHERE version = '1'"))
    assert.are.equal("a", value(db.uri, "SELECT description FROM flyway_schema_history " ..
      "WHERE version = '1'"))
  end)
end)
