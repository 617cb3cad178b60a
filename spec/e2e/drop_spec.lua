-- drop and reset: for development and CI, never for a protected database or, without
-- --force, one on another machine; what they leave is a database as new.
local proc = require("moonshift.proc")
local helpers = require("spec.helpers")

local value = helpers.value

local FILES = {
  ["migrations/0001_a.up.sql"] = "CREATE SCHEMA reports;\nCREATE TABLE reports.r (id int);\n" ..
    "CREATE TYPE mood AS ENUM ('ok');\nCREATE TABLE a (id serial PRIMARY KEY, m mood);\n" ..
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';\n" ..
    "CREATE VIEW v AS SELECT * FROM a;\nCREATE EXTENSION IF NOT EXISTS citext;\n",
}

describe("drop and reset #e2e", function()
  local db = helpers.database({ files = FILES })

  it("empties a local database, history included, leaving it as a new one", function()
    local fresh_fp = helpers.schema_fingerprint(db.uri)
    local acl = value(db.uri, "SELECT nspacl::text FROM pg_namespace WHERE nspname = 'public'")
    assert.are.equal(0, helpers.ms({ "up", "-y" }).code)
    local res = helpers.ms({ "drop" }) -- no terminal: refused without -y
    assert.are.equal(2, res.code)
    res = helpers.ms({ "drop", "-y" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("dropped everything in .* %(public, reports%)", res.stdout)
    assert.are.same(fresh_fp, helpers.schema_fingerprint(db.uri))
    assert.are.equal(acl, value(db.uri, "SELECT nspacl::text FROM pg_namespace WHERE " ..
      "nspname = 'public'"))
    assert.is_nil(value(db.uri, "SELECT to_regclass('moonshift_migrations')::text"))
    assert.are.equal(0, value(db.uri, "SELECT count(*) FROM pg_extension WHERE extname = 'citext'"))
    res = helpers.ms({ "reset", "-y" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("applied 1 migration", res.stdout)
    assert.are.equal("a", value(db.uri, "SELECT to_regclass('a')::text"))
  end)

  it("refuses a database listed as protected, whatever the flags", function()
    assert.are.equal(0, helpers.ms({ "up", "-y" }).code)
    helpers.write_files(db.dir, { ["migrate.lua"] = "return { protected = { '" .. db.name ..
      "' } }\n" })
    local res = helpers.ms({ "drop", "-y", "--force" })
    assert.are.equal(9, res.code, res.stderr)
    assert.matches("is listed under protected", res.stderr)
    assert.are.equal("a", value(db.uri, "SELECT to_regclass('a')::text"))
  end)

  it("refuses a server on another machine without --force", function()
    -- this machine's own network address stands in for another machine's
    local ip = assert(proc.run({ "hostname", "-I" })).stdout:match("(%d+%.%d+%.%d+%.%d+)")
    assert.is_truthy(ip, "no IPv4 address on this machine")
    local c = helpers.cluster({ listen = ip, hba = { "host all all " .. ip .. "/32 trust" } })
    local uri = string.format("postgresql://postgres@%s:%d/postgres", ip, c.port)
    helpers.query(uri, "CREATE TABLE keep (id int)")
    local res = helpers.run({ "drop", "-y", "-d", uri }, { cwd = db.dir })
    assert.are.equal(9, res.code, res.stderr)
    assert.matches("is on another machine %(" .. ip:gsub("%.", "%%.") .. "%)", res.stderr)
    assert.are.equal("keep", value(uri, "SELECT to_regclass('keep')::text"))
    res = helpers.run({ "drop", "-y", "--force", "-d", uri }, { cwd = db.dir })
    assert.are.equal(0, res.code, res.stderr)
    assert.is_nil(value(uri, "SELECT to_regclass('keep')::text"))
  end)
end)
