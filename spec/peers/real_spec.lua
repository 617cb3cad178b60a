-- The real tools (`make test-peers` installs them): each applies the first three files of a
-- shared workload, moonshift refuses, adopts and applies the rest, the schema equals psql's
-- (helpers.query) applying every file, and where compat keeps the tool's table in step the
-- tool itself then finds nothing pending.
local proc = require("moonshift.proc")
local helpers = require("spec.helpers")

local fmt = string.format
local query = helpers.query

local SQL = {
  "CREATE TABLE a (id int PRIMARY KEY);\n",
  "CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a);\n",
  "CREATE INDEX b_a ON b (a_id);\n",
  "CREATE TABLE d (x text);\n",
  "ALTER TABLE d ADD COLUMN y int;\n",
}
local NAMES = { "a", "b", "c", "d", "e" }
local DOWN = { "DROP TABLE a;\n", "DROP TABLE b;\n", "DROP INDEX b_a;\n", "DROP TABLE d;\n",
  "ALTER TABLE d DROP COLUMN y;\n" }
local BIN = helpers.root() .. "/build/peers/node_modules/.bin/"

-- The cluster's socket directory, port and the database name of a spec URI.
local function parts(uri)
  return uri:match("host=([^&]+)"), uri:match("port=(%d+)") or "5432",
    uri:match("^postgresql:///([^?]+)")
end

local function tool(argv, opts)
  local res = assert(proc.run(argv, { cwd = opts.cwd, env = helpers.env(opts.env),
    timeout = 120000 }))
  assert.are.equal(0, res.code, fmt("%s failed:\n%s%s", argv[1], res.stdout, res.stderr))
  return res.stdout .. res.stderr
end

local function fingerprint(uri)
  local out = {}
  for line in helpers.schema_fingerprint(uri):gmatch("[^\n]+") do
    if not (line:match("schema_migrations") or line:match("gorp") or
        line:match("pgmigrations") or line:match("schemaversion") or
        line:match("alembic_version")) then
      out[#out + 1] = line
    end
  end
  return table.concat(out, "\n")
end

describe("moonshift after the real tool #e2e #peers", function()
  local db = helpers.database()
  local reference

  setup(function()
    local uri = helpers.fresh_db(helpers.shared_cluster())
    for _, sql in ipairs(SQL) do query(uri, sql) end
    reference = fingerprint(uri)
  end)

  -- The files of a workload in the tool's layout: the first n, or all.
  local function write(layout, n)
    local files = {}
    for i = 1, n or #SQL do
      local name, text = layout(i)
      files[name] = text
    end
    helpers.write_files(db.dir, files)
  end

  -- moonshift refuses, adopts, applies the rest; the schema is psql's.
  local function switch(from, adopted)
    local res = helpers.ms({ "up", "-y" })
    assert.are.equal(9, res.code, res.stdout .. res.stderr)
    assert.matches("moonshift adopt %-%-from " .. from:gsub("%-", "%%-"), res.stderr)
    res = helpers.ms({ "adopt", "-y" })
    assert.are.equal(0, res.code, res.stdout .. res.stderr)
    assert.matches(fmt("adopted %d migrations from %s", adopted, from:gsub("%-", "%%-")),
      res.stdout)
    res = helpers.ms({ "up", "-y" })
    assert.are.equal(0, res.code, res.stdout .. res.stderr)
    assert.matches("applied 2 migrations", res.stdout)
    assert.are.equal(reference, fingerprint(db.uri))
  end

  it("dbmate", function()
    local host, port, name = parts(db.uri)
    local env = { DATABASE_URL = fmt("postgres://postgres@:%s/%s?socket=%s&sslmode=disable",
      port, name, host) }
    local function layout(i)
      return fmt("migrations/%d_%s.sql", i, NAMES[i]),
        "-- migrate:up\n" .. SQL[i] .. "\n-- migrate:down\n" .. DOWN[i]
    end
    write(layout, 3)
    local dbmate = { BIN .. "dbmate", "--no-dump-schema", "--migrations-dir", "migrations" }
    local function run(...)
      local argv = table.move(dbmate, 1, #dbmate, 1, {})
      for _, a in ipairs({ ... }) do argv[#argv + 1] = a end
      return tool(argv, { cwd = db.dir, env = env })
    end
    run("up")
    write(layout)
    helpers.write_files(db.dir, { ["migrate.lua"] = "return { compat = 'dbmate' }\n" })
    switch("dbmate", 3)
    local status = run("status")
    assert.matches("Applied: 5", status)
    assert.matches("Pending: 0", status)
    run("up") -- nothing to run: it would fail on CREATE TABLE a
    -- a revert is in dbmate's table too: it applies that one again, and only that one
    local res = helpers.ms({ "down", "-y" })
    assert.are.equal(0, res.code, res.stdout .. res.stderr)
    status = run("status")
    assert.matches("Applied: 4", status)
    assert.matches("Pending: 1", status)
    run("up")
    assert.are.equal(1, helpers.value(db.uri, "SELECT count(*) FROM information_schema.columns " ..
      "WHERE table_name = 'd' AND column_name = 'y'"))
  end)

  it("sql-migrate", function()
    local host, port, name = parts(db.uri)
    helpers.write_files(db.dir, { ["dbconfig.yml"] = fmt("development:\n  dialect: postgres\n" ..
      "  datasource: host=%s port=%s dbname=%s user=postgres sslmode=disable\n" ..
      "  dir: migrations\n", host, port, name) })
    local function layout(i)
      return fmt("migrations/%d_%s.sql", i, NAMES[i]),
        "-- +migrate Up\n" .. SQL[i] .. "\n-- +migrate Down\n"
    end
    write(layout, 3)
    tool({ "sql-migrate", "up" }, { cwd = db.dir })
    write(layout)
    helpers.write_files(db.dir, { ["migrate.lua"] = "return { compat = 'sql-migrate' }\n" })
    switch("sql-migrate", 3)
    local status = tool({ "sql-migrate", "status" }, { cwd = db.dir })
    assert.is_nil(status:match("no"), status) -- every row says when it was applied
    assert.are.equal("Applied 0 migrations", (tool({ "sql-migrate", "up" },
      { cwd = db.dir }):match("Applied %d+ migrations")))
    -- moonshift reads no down section in these files: force takes 5 back instead
    local res = helpers.ms({ "force", "5", "--not-applied", "-y" })
    assert.are.equal(0, res.code, res.stdout .. res.stderr)
    status = tool({ "sql-migrate", "status" }, { cwd = db.dir })
    assert.matches("5_e%.sql%s*|%s*no", status)
  end)

  it("node-pg-migrate", function()
    local host, port, name = parts(db.uri)
    local env = { DATABASE_URL = fmt("postgres://postgres@%s:%s/%s",
      host:gsub("/", "%%2F"), port, name) }
    local function layout(i)
      return fmt("migrations/%d_%s.sql", i, NAMES[i]),
        "-- Up Migration\n" .. SQL[i] .. "\n-- Down Migration\n"
    end
    write(layout, 3)
    tool({ BIN .. "node-pg-migrate", "up", "-m", "migrations" }, { cwd = db.dir, env = env })
    write(layout)
    helpers.write_files(db.dir, { ["migrate.lua"] = "return { compat = 'node-pg-migrate' }\n" })
    switch("node-pg-migrate", 3)
    local out = tool({ BIN .. "node-pg-migrate", "up", "-m", "migrations" },
      { cwd = db.dir, env = env })
    assert.matches("No migrations to run", out)
    -- moonshift reads no down section in these files: force takes 5 back instead
    local res = helpers.ms({ "force", "5", "--not-applied", "-y" })
    assert.are.equal(0, res.code, res.stdout .. res.stderr)
    assert.are.equal("1_a,2_b,3_c,4_d", helpers.value(db.uri, "SELECT string_agg(name, ',' " ..
      "ORDER BY run_on, id) FROM pgmigrations"))
    out = tool({ BIN .. "node-pg-migrate", "up", "-m", "migrations", "--dry-run" },
      { cwd = db.dir, env = env })
    assert.matches("5_e", out)
  end)

  it("postgrator", function()
    local host, port, name = parts(db.uri)
    for i = 1, 3 do
      helpers.write_files(db.dir, { [fmt("pg/%03d.do.%s.sql", i, NAMES[i])] = SQL[i] })
    end
    tool({ BIN .. "postgrator", "--driver", "pg", "--host", host, "--port", port,
      "--database", name, "--username", "postgres", "--migration-pattern", "pg/*" },
      { cwd = db.dir })
    local files = {}
    for i, sql in ipairs(SQL) do files[fmt("migrations/%d_%s.up.sql", i, NAMES[i])] = sql end
    helpers.write_files(db.dir, files)
    switch("postgrator", 3)
  end)

  it("sqitch", function()
    local host, port, name = parts(db.uri)
    local plan = { "%syntax-version=1.0.0", "%project=w", "" }
    for i = 1, 3 do
      plan[#plan + 1] = fmt("%s 2024-01-01T00:00:0%dZ X <x@example.com> # %s", NAMES[i], i,
        NAMES[i])
      helpers.write_files(db.dir, { [fmt("sq/deploy/%s.sql", NAMES[i])] = SQL[i],
        [fmt("sq/revert/%s.sql", NAMES[i])] = "SELECT 1;\n" })
    end
    helpers.write_files(db.dir, { ["sq/sqitch.plan"] = table.concat(plan, "\n") .. "\n",
      ["sq/sqitch.conf"] = "[core]\n\tengine = pg\n" })
    tool({ "sqitch", "deploy", "db:pg:" .. name }, { cwd = db.dir .. "/sq", env = {
      PGHOST = host, PGPORT = port, PGUSER = "postgres", SQITCH_FULLNAME = "X",
      SQITCH_EMAIL = "x@example.com" } })
    local files = {}
    for i, sql in ipairs(SQL) do files[fmt("migrations/%d_%s.up.sql", i, NAMES[i])] = sql end
    -- a file that is not what sqitch deployed (its script_hash, SHA-1) is drift
    files["migrations/2_b.up.sql"] = SQL[2] .. "-- edited\n"
    helpers.write_files(db.dir, files)
    local res = helpers.ms({ "adopt", "-y" })
    assert.are.equal(9, res.code, res.stdout .. res.stderr)
    assert.matches("drift.*2_b%.up%.sql", res.stderr)
    helpers.write_files(db.dir, { ["migrations/2_b.up.sql"] = SQL[2] })
    switch("sqitch", 3)
  end)

  it("alembic", function()
    local host, port, name = parts(db.uri)
    local files = {
      ["alembic.ini"] = fmt("[alembic]\nscript_location = al\nsqlalchemy.url = " ..
        "postgresql+psycopg2://postgres@/%s?host=%s&port=%s\n", name, host, port),
      ["al/env.py"] = table.concat({
        "from alembic import context",
        "from sqlalchemy import engine_from_config, pool",
        "config = context.config",
        "engine = engine_from_config(config.get_section(config.config_ini_section), " ..
          "prefix='sqlalchemy.', poolclass=pool.NullPool)",
        "with engine.connect() as connection:",
        "    context.configure(connection=connection, target_metadata=None)",
        "    with context.begin_transaction():",
        "        context.run_migrations()", "" }, "\n"),
    }
    for i = 1, 3 do
      files[fmt("al/versions/%d_%s.py", i, NAMES[i])] = table.concat({
        "from alembic import op",
        fmt("revision = '%d'", i),
        fmt("down_revision = %s", i == 1 and "None" or fmt("'%d'", i - 1)),
        "def upgrade():",
        fmt("    op.execute(%q)", SQL[i]:gsub("\n", "")),
        "def downgrade():",
        "    pass", "" }, "\n")
    end
    helpers.write_files(db.dir, files)
    tool({ "alembic", "upgrade", "head" }, { cwd = db.dir })
    files = {}
    for i, sql in ipairs(SQL) do files[fmt("migrations/%d_%s.up.sql", i, NAMES[i])] = sql end
    helpers.write_files(db.dir, files)
    switch("alembic", 3)
  end)
end)
