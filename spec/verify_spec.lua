-- moonshift.verify against a real throwaway PostgreSQL server and a fresh database.
local pg = require("moonshift.pg")
local errors = require("moonshift.errors")
local verify = require("moonshift.verify")
local helpers = require("spec.helpers")

-- A ctx.db with the hook contract: query raises the pg error, one, value, exec.
local function adapter(conn)
  local db = {}
  local function run(sql, ...)
    local rows, err = conn:query(sql, ...)
    if not rows then error(err, 0) end
    return rows
  end
  function db:query(sql, ...) return run(sql, ...) end
  function db:one(sql, ...) return run(sql, ...)[1] end
  function db:value(sql, ...)
    local rows = run(sql, ...)
    local row = rows[1]
    if not row then return nil end
    local v = row[rows.columns[1]]
    if v == pg.null then return nil end
    return v
  end
  function db:exec(sql)
    local tag, err = conn:exec(sql)
    if not tag then error(err, 0) end
    return tag
  end
  return db
end

local SCHEMA = [[
CREATE SCHEMA app;
CREATE TABLE users (
  id int PRIMARY KEY,
  email varchar(255) NOT NULL,
  name text,
  created_at timestamptz NOT NULL DEFAULT now(),
  score numeric(10,2),
  tags text[],
  active boolean DEFAULT true,
  data jsonb,
  uid uuid,
  big bigint,
  code varchar
);
CREATE TABLE app.users (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL,
  CONSTRAINT app_users_email_key UNIQUE (email));
CREATE TABLE "Weird ""Name""" ("Mixed Col" int NOT NULL, "Odd""Q" text);
CREATE INDEX "Weird ""Idx""" ON "Weird ""Name""" ("Mixed Col");
CREATE TABLE orders (id int PRIMARY KEY, user_id int, amount int,
  CONSTRAINT orders_amount_check CHECK (amount > 0));
ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id)
  NOT VALID;
CREATE VIEW active_users AS SELECT id, email FROM users WHERE active;
CREATE INDEX users_name_idx ON users (name);
CREATE UNIQUE INDEX users_email_key ON users (email);
CREATE FUNCTION app.add(a integer, b integer) RETURNS integer LANGUAGE sql AS 'SELECT a + b';
CREATE FUNCTION app.add(a text) RETURNS text LANGUAGE sql AS 'SELECT a';
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
INSERT INTO users (id, email, name, score, data) VALUES
  (1, 'a@example.com', 'Ann', 10.50, '{"plan": "pro"}'),
  (2, 'b@example.com', 'Bob', NULL, NULL),
  (3, 'c@example.com', NULL, 3, NULL);
INSERT INTO "Weird ""Name""" VALUES (1, 'x'), (2, 'y');
CREATE TABLE dupes (v int);
INSERT INTO dupes VALUES (1), (1);
]]

describe("moonshift.verify", function()
  local conn, ctx

  lazy_setup(function()
    conn = assert(pg.connect(helpers.fresh_db(helpers.shared_cluster())))
    ctx = { db = adapter(conn) }
    ctx.db:exec(SCHEMA)
    -- Fails on the duplicates and leaves an invalid index behind.
    local tag, err = conn:exec("CREATE UNIQUE INDEX CONCURRENTLY dupes_v_key ON dupes (v)")
    assert.is_nil(tag)
    assert.are.equal("23505", err.sqlstate)
  end)

  lazy_teardown(function()
    if conn then conn:close() end
  end)

  -- The verification failure fn raises: kind verify, with the given fields.
  local function failure(fn, ...)
    local ok, e = pcall(fn, ctx, ...)
    assert.is_false(ok, "expected a verification failure")
    assert.is_true(errors.is(e), "not a moonshift error: " .. tostring(e))
    assert.are.equal("verify", e.kind, tostring(e))
    return e
  end

  describe("table_exists", function()
    it("passes for an existing table and returns it", function()
      local ok, t = verify.table_exists(ctx, "users")
      assert.is_true(ok)
      assert.are.same({ "public", "users", "r" }, { t.schema, t.name, t.kind })
    end)

    it("resolves schema-qualified names and follows the search_path otherwise", function()
      local _, t = verify.table_exists(ctx, "app.users")
      assert.are.equal("app", t.schema)
      assert.is_true(verify.table_exists(ctx, "public.users"))
      assert.is_true(verify.table_exists(ctx, "USERS")) -- unquoted folds to lower case
      assert.is_true(verify.table_exists(ctx, ' app . "users" '))
    end)

    it("takes quoted, mixed-case names as stored or as SQL spells them", function()
      assert.is_true(verify.table_exists(ctx, 'Weird "Name"'))
      assert.is_true(verify.table_exists(ctx, '"Weird ""Name"""'))
      assert.is_true(verify.table_exists(ctx, 'public."Weird ""Name"""'))
    end)

    it("fails for a missing table, naming it", function()
      local e = failure(verify.table_exists, "app.nope")
      assert.are.equal("table app.nope does not exist", e.message)
      assert.are.equal("table_exists", e.check)
      assert.are.equal("table", e.expected)
      local e2 = failure(verify.table_exists, "users; DROP TABLE users")
      assert.are.equal("table users; DROP TABLE users does not exist", e2.message)
      assert.is_true(verify.table_exists(ctx, "users"))
      failure(verify.table_exists, '"unterminated')
      failure(verify.table_exists, "a.b.c.d")
    end)

    it("fails for a view, saying what it found", function()
      local e = failure(verify.table_exists, "active_users")
      assert.are.equal("active_users is a view, not a table", e.message)
      assert.are.equal("view", e.found)
    end)

    it("records the file and line of the check that failed", function()
      local e = failure(verify.table_exists, "nope")
      assert.matches("verify_spec%.lua$", e.file)
      assert.is_number(e.line)
    end)

    it("raises a plain error on misuse", function()
      assert.has_error(function() verify.table_exists(ctx) end,
        "verify: the table name must be a non-empty string, not nil")
      assert.has_error(function() verify.table_exists({}, "users") end)
    end)
  end)

  describe("column", function()
    it("passes on type, nullability and default, returning what it found", function()
      local ok, col = verify.column(ctx, "users", "email",
        { type = "character varying(255)", nullable = false })
      assert.is_true(ok)
      assert.are.same({ name = "email", type = "character varying(255)", nullable = false }, col)
      assert.is_true(verify.column(ctx, "users", "name", { type = "text", nullable = true }))
      assert.is_true(verify.column(ctx, "users", "created_at",
        { type = "timestamptz", nullable = false, default = "now()" }))
      assert.is_true(verify.column(ctx, "users", "active", { default = "true" }))
      assert.is_true(verify.column(ctx, "users", "name", { default = false }))
      assert.is_true(verify.column(ctx, "users", "id"))
    end)

    it("accepts the common type aliases", function()
      local cases = {
        { "id", { "int", "integer", "int4", "INT", "serial" } },
        { "big", { "bigint", "int8" } },
        { "email", { "varchar", "varchar(255)", "character varying", "VARCHAR( 255 )" } },
        { "created_at", { "timestamptz", "timestamp with time zone" } },
        { "active", { "bool", "boolean" } },
        { "score", { "numeric", "decimal", "numeric(10,2)", "numeric(10, 2)" } },
        { "tags", { "text[]", "text []" } },
        { "data", { "jsonb" } },
        { "uid", { "uuid" } },
        { "code", { "varchar", "character varying" } },
      }
      for _, case in ipairs(cases) do
        for _, t in ipairs(case[2]) do
          local ok, e = pcall(verify.column, ctx, "users", case[1], { type = t })
          assert(ok, case[1] .. " as " .. t .. ": " .. tostring(e))
        end
      end
    end)

    it("fails a varchar(255) column checked as text", function()
      local e = failure(verify.column, "users", "email", { type = "text" })
      assert.are.equal("column users.email: expected type text, found character varying(255)",
        e.message)
      assert.are.same({ "column", "text", "character varying(255)" },
        { e.check, e.expected, e.found })
    end)

    it("fails on a different modifier, or a type the alias does not cover", function()
      assert.are.equal("column users.email: expected type varchar(100), found " ..
        "character varying(255)",
        failure(verify.column, "users", "email", { type = "varchar(100)" }).message)
      assert.are.equal("column users.big: expected type int, found bigint",
        failure(verify.column, "users", "big", { type = "int" }).message)
      assert.are.equal("column users.data: expected type json, found jsonb",
        failure(verify.column, "users", "data", { type = "json" }).message)
      assert.are.equal("column users.tags: expected type text, found text[]",
        failure(verify.column, "users", "tags", { type = "text" }).message)
      failure(verify.column, "users", "code", { type = "varchar(10)" })
    end)

    it("fails on nullability and defaults, saying expected and found", function()
      assert.are.equal("column users.name: expected not null, found nullable",
        failure(verify.column, "users", "name", { nullable = false }).message)
      assert.are.equal("column users.email: expected nullable, found not null",
        failure(verify.column, "users", "email", { nullable = true }).message)
      assert.are.equal("column users.created_at: expected default clock_timestamp(), " ..
        "found default now()",
        failure(verify.column, "users", "created_at", { default = "clock_timestamp()" }).message)
      assert.are.equal("column users.name: expected default 'x'::text, found no default",
        failure(verify.column, "users", "name", { default = "'x'::text" }).message)
      assert.are.equal("column users.active: expected no default, found default true",
        failure(verify.column, "users", "active", { default = false }).message)
    end)

    it("fails for a missing column or table", function()
      assert.are.equal("column users.emial does not exist",
        failure(verify.column, "users", "emial").message)
      assert.are.equal("table nope does not exist",
        failure(verify.column, "nope", "id").message)
    end)

    it("works with quoted, mixed-case and schema-qualified names", function()
      assert.is_true(verify.column(ctx, 'Weird "Name"', "Mixed Col",
        { type = "integer", nullable = false }))
      assert.is_true(verify.column(ctx, '"Weird ""Name"""', '"Mixed Col"', { type = "int4" }))
      assert.is_true(verify.column(ctx, 'Weird "Name"', 'Odd"Q', { type = "text" }))
      assert.is_true(verify.column(ctx, "app.users", "id", { type = "bigint", nullable = false }))
      assert.are.equal("column app.users.email: expected type varchar, found text",
        failure(verify.column, "app.users", "email", { type = "varchar" }).message)
      assert.are.equal('column Weird "Name".mixed col does not exist',
        failure(verify.column, 'Weird "Name"', "mixed col").message)
    end)

    it("checks the columns of a view", function()
      assert.is_true(verify.column(ctx, "active_users", "email", { type = "varchar" }))
    end)

    it("refuses unknown options", function()
      assert.has_error(function() verify.column(ctx, "users", "email", { nulable = false }) end,
        "verify.column: unknown option nulable")
    end)
  end)

  describe("index_exists", function()
    it("passes for an index, checking unique, valid and table", function()
      local ok, idx = verify.index_exists(ctx, "users_email_key",
        { unique = true, valid = true, table = "users" })
      assert.is_true(ok)
      assert.are.equal("users", idx.table)
      assert.matches("CREATE UNIQUE INDEX users_email_key", idx.definition)
      assert.is_true(verify.index_exists(ctx, "users_name_idx", { unique = false }))
      assert.is_true(verify.index_exists(ctx, "app.app_users_email_key",
        { table = "app.users", unique = true }))
      assert.is_true(verify.index_exists(ctx, 'Weird "Idx"', { table = '"Weird ""Name"""' }))
    end)

    it("fails with valid=true on an index a failed CREATE INDEX CONCURRENTLY left", function()
      local ok, idx = verify.index_exists(ctx, "dupes_v_key")
      assert.is_true(ok)
      assert.is_false(idx.valid)
      local e = failure(verify.index_exists, "dupes_v_key", { valid = true })
      assert.matches("^index dupes_v_key: expected valid, found invalid", e.message)
      assert.are.same({ "index_exists", "valid", "invalid" }, { e.check, e.expected, e.found })
    end)

    it("fails on uniqueness, table, kind and absence", function()
      assert.are.equal("index users_name_idx: expected unique, found not unique",
        failure(verify.index_exists, "users_name_idx", { unique = true }).message)
      assert.are.equal("index users_email_key: expected on table orders, found on table " ..
        "public.users", failure(verify.index_exists, "users_email_key",
        { table = "orders" }).message)
      assert.are.equal("users is a table, not an index",
        failure(verify.index_exists, "users").message)
      assert.are.equal("index app.users_name_idx does not exist",
        failure(verify.index_exists, "app.users_name_idx").message)
    end)
  end)

  describe("constraint_exists", function()
    it("passes for constraints of each kind", function()
      assert.is_true(verify.constraint_exists(ctx, "users", "users_pkey", { type = "primary key" }))
      assert.is_true(verify.constraint_exists(ctx, "orders", "orders_amount_check",
        { type = "check", validated = true }))
      local ok, con = verify.constraint_exists(ctx, "orders", "orders_user_fk",
        { type = "foreign key" })
      assert.is_true(ok)
      assert.is_false(con.validated)
      assert.matches("REFERENCES users%(id%)", con.definition)
      assert.is_true(verify.constraint_exists(ctx, "app.users", "app_users_email_key",
        { type = "unique", validated = true }))
    end)

    it("fails a NOT VALID constraint with validated=true", function()
      local e = failure(verify.constraint_exists, "orders", "orders_user_fk", { validated = true })
      assert.matches("^constraint orders.orders_user_fk: expected validated, found NOT VALID",
        e.message)
      ctx.db:exec("ALTER TABLE orders VALIDATE CONSTRAINT orders_user_fk")
      assert.is_true(verify.constraint_exists(ctx, "orders", "orders_user_fk",
        { validated = true }))
    end)

    it("fails on the wrong type and on absence", function()
      local e = failure(verify.constraint_exists, "orders", "orders_amount_check",
        { type = "unique" })
      assert.are.equal("constraint orders.orders_amount_check: expected a unique constraint, " ..
        "found a check constraint", e.message)
      assert.are.same({ "unique", "check" }, { e.expected, e.found })
      assert.are.equal("constraint orders.nope does not exist",
        failure(verify.constraint_exists, "orders", "nope").message)
      assert.are.equal("constraint users.app_users_email_key does not exist",
        failure(verify.constraint_exists, "users", "app_users_email_key").message)
    end)

    it("refuses an unknown constraint type", function()
      assert.has_error(function()
        verify.constraint_exists(ctx, "orders", "orders_user_fk", { type = "foreign" })
      end)
    end)
  end)

  describe("function_exists", function()
    it("passes for a function, with or without argument types", function()
      assert.is_true(verify.function_exists(ctx, "app.add"))
      assert.is_true(verify.function_exists(ctx, "app.add", { args = "integer, integer" }))
      assert.is_true(verify.function_exists(ctx, "app.add", { args = "int,int4" }))
      assert.is_true(verify.function_exists(ctx, "app.add", { args = "a integer, b integer" }))
      local ok, f = verify.function_exists(ctx, "app.add", { args = "text" })
      assert.is_true(ok)
      assert.are.equal("a text", f.args)
      assert.is_true(verify.function_exists(ctx, "touch", { args = "" }))
    end)

    it("fails on other arguments, listing what exists", function()
      local e = failure(verify.function_exists, "app.add", { args = "bigint" })
      assert.are.equal("function app.add: expected arguments (bigint), found (a integer, " ..
        "b integer), (a text)", e.message)
    end)

    it("fails for a missing function or one outside the search_path", function()
      assert.are.equal("function add does not exist",
        failure(verify.function_exists, "add").message)
      assert.are.equal("function app.touch does not exist",
        failure(verify.function_exists, "app.touch").message)
    end)
  end)

  describe("extension", function()
    it("passes for an installed extension and returns its version", function()
      local ok, version = verify.extension(ctx, "plpgsql")
      assert.is_true(ok)
      assert.are.equal("1.0", version)
      assert.is_true(verify.extension(ctx, "plpgsql", { version = "1.0" }))
    end)

    it("fails on another version or when not installed", function()
      assert.are.equal("extension plpgsql: expected version 9.9, found 1.0",
        failure(verify.extension, "plpgsql", { version = "9.9" }).message)
      assert.are.equal("extension no_such_ext is not installed (not available on the server)",
        failure(verify.extension, "no_such_ext").message)
    end)
  end)

  describe("row_count", function()
    it("returns the count and checks bounds", function()
      assert.are.equal(3, verify.row_count(ctx, "users"))
      assert.are.equal(3, verify.row_count(ctx, "users", { min = 1, max = 3, equals = 3 }))
      assert.are.equal(0, verify.row_count(ctx, "app.users", { equals = 0 }))
      assert.are.equal(2, verify.row_count(ctx, '"Weird ""Name"""', { equals = 2 }))
      assert.are.equal(2, verify.row_count(ctx, 'Weird "Name"', { min = 2 }))
      assert.are.equal(3, verify.row_count(ctx, "active_users"))
    end)

    it("fails outside the bounds, saying expected and found", function()
      local e = failure(verify.row_count, "users", { min = 5 })
      assert.are.equal("table users: expected at least 5 rows, found 3", e.message)
      assert.are.same({ 5, 3 }, { e.expected, e.found })
      assert.are.equal("table users: expected at most 1 row, found 3",
        failure(verify.row_count, "users", { max = 1 }).message)
      assert.are.equal("table app.users: expected exactly 2 rows, found 0",
        failure(verify.row_count, "app.users", { equals = 2 }).message)
      assert.are.equal("table nope does not exist",
        failure(verify.row_count, "nope").message)
    end)
  end)

  describe("no_rows", function()
    it("passes when the query returns nothing", function()
      assert.is_true(verify.no_rows(ctx, "SELECT id FROM users WHERE email NOT LIKE '%@%'"))
      assert.is_true(verify.no_rows(ctx, "SELECT id FROM users WHERE id > $1", 3))
    end)

    it("fails showing the count and the first row", function()
      local e = failure(verify.no_rows, "SELECT id, name FROM users WHERE id >= $1 ORDER BY id", 2)
      assert.are.equal('expected 0 rows from "SELECT id, name FROM users WHERE id >= $1 ORDER ' ..
        'BY id", found 2 (first: {id=2, name="Bob"})', e.message)
      assert.are.same({ 0, 2 }, { e.expected, e.found })
      local e2 = failure(verify.no_rows, "SELECT id, name\n  FROM users WHERE name IS NULL")
      assert.are.equal('expected 0 rows from "SELECT id, name FROM users WHERE name IS NULL", ' ..
        'found 1 (first: {id=3, name=NULL})', e2.message)
    end)

    it("lets a SQL error through as the pg error", function()
      local ok, e = pcall(verify.no_rows, ctx, "SELECT nope FROM users")
      assert.is_false(ok)
      assert.are.equal("42703", e.sqlstate)
    end)
  end)

  describe("query_equals", function()
    it("compares a single value", function()
      assert.is_true(verify.query_equals(ctx, "SELECT count(*) FROM users", 3))
      assert.is_true(verify.query_equals(ctx, "SELECT email FROM users WHERE id = $1",
        "b@example.com", 2))
      assert.is_true(verify.query_equals(ctx, "SELECT score FROM users WHERE id = 1", 10.5))
      assert.is_true(verify.query_equals(ctx, "SELECT score FROM users WHERE id = 1", "10.50"))
      assert.is_true(verify.query_equals(ctx, "SELECT name FROM users WHERE id = 3", pg.null))
      assert.is_true(verify.query_equals(ctx, "SELECT true", true))
    end)

    it("fails on another value, showing both", function()
      local e = failure(verify.query_equals, "SELECT count(*) FROM users", 4)
      assert.are.equal('query "SELECT count(*) FROM users": expected 4, found 3', e.message)
      assert.are.same({ 4, 3 }, { e.expected, e.found })
      assert.are.equal('query "SELECT name FROM users WHERE id = $1": expected "Ann", found NULL',
        failure(verify.query_equals, "SELECT name FROM users WHERE id = $1", "Ann", 3).message)
    end)

    it("fails a scalar against a result that is not a single value", function()
      assert.are.equal('query "SELECT id FROM users ORDER BY id": expected a single value 1, ' ..
        'found 3 rows: {{id=1}, {id=2}, {id=3}}',
        failure(verify.query_equals, "SELECT id FROM users ORDER BY id", 1).message)
      assert.are.equal('query "SELECT 1 AS a, 2 AS b": expected a single value 1, found ' ..
        '2 columns: {{a=1, b=2}}', failure(verify.query_equals, "SELECT 1 AS a, 2 AS b", 1).message)
    end)

    it("compares rows in order, column by column", function()
      local sql = "SELECT id, name FROM users ORDER BY id"
      assert.is_true(verify.query_equals(ctx, sql, {
        { id = 1, name = "Ann" }, { id = 2, name = "Bob" }, { id = 3, name = pg.null },
      }))
      assert.is_true(verify.query_equals(ctx, sql, { { 1, "Ann" }, { 2, "Bob" }, { 3, pg.null } }))
      assert.is_true(verify.query_equals(ctx, "SELECT id FROM users ORDER BY id", { 1, 2, 3 }))
      assert.is_true(verify.query_equals(ctx, "SELECT data FROM users WHERE id = 1",
        { { data = { plan = "pro" } } }))
      assert.is_true(verify.query_equals(ctx, "SELECT id FROM users WHERE id > 99", {}))
    end)

    it("fails on order, values, columns and row count, showing expected and found", function()
      local sql = "SELECT id, name FROM users WHERE id < 3 ORDER BY id DESC"
      local e = failure(verify.query_equals, sql,
        { { id = 1, name = "Ann" }, { id = 2, name = "Bob" } })
      assert.are.equal('query "' .. sql .. '": row 1: expected {id=1, name="Ann"}, found ' ..
        '{id=2, name="Bob"}', e.message)
      assert.are.equal('query "' .. sql .. '": row 1: expected {id=2}, found {id=2, name="Bob"}',
        failure(verify.query_equals, sql, { { id = 2 }, { id = 1 } }).message)
      assert.are.equal('query "' .. sql .. '": expected 1 row, found 2: expected ' ..
        '{{id=2, name="Bob"}}, found {{id=2, name="Bob"}, {id=1, name="Ann"}}',
        failure(verify.query_equals, sql, { { id = 2, name = "Bob" } }).message)
    end)

    it("leaves the transaction usable after a failed check", function()
      ctx.db:exec("BEGIN")
      failure(verify.table_exists, '"unterminated')
      failure(verify.column, "users", "email", { type = "text" })
      failure(verify.query_equals, "SELECT 1", 2)
      assert.are.equal(3, verify.row_count(ctx, "users"))
      ctx.db:exec("ROLLBACK")
    end)
  end)
end)
