-- Connections to the target: the one password scrubber.
local db = require("moonshift.db")

describe("db.scrub", function()
  it("masks the password of a URI, a conninfo and any password given, from 3 characters", function()
    assert.are.equal("could not connect as app:***@h",
      db.scrub("could not connect as app:abc@h", "postgresql://app:abc@h/db"))
    assert.are.equal("bad token \"***\"",
      db.scrub("bad token \"s3cr\"", "host=h password='s3cr' user=u"))
    assert.are.equal("pg_dump: error: *** rejected",
      db.scrub("pg_dump: error: pw9 rejected", "", "pw9"))
  end)

  it("leaves a message alone when the password is shorter than it can mask safely", function()
    assert.are.equal("the ab table", db.scrub("the ab table", "postgresql://u:ab@h/db"))
  end)

  it("masks what a password cut at a bad percent escape leaves in libpq's message", function()
    local msg = db.scrub('invalid percent-encoded token: "s3cret"',
      "postgresql://u:s3cret%zz@h/db")
    assert.not_matches("s3c", msg)
  end)
end)

describe("db.redact_sql", function()
  it("masks the literal after PASSWORD and returns it for scrubbing messages", function()
    local sql, secrets = db.redact_sql("ALTER ROLE x WITH ENCRYPTED PASSWORD 'se''krit' " ..
      "VALID UNTIL 'infinity'")
    assert.are.equal("ALTER ROLE x WITH ENCRYPTED PASSWORD '***' VALID UNTIL 'infinity'", sql)
    assert.are.same({ "se'krit" }, secrets)
    assert.are.equal("CREATE ROLE y PASSWORD E'***'", (db.redact_sql("CREATE ROLE y PASSWORD E'a\\'bc'")))
    assert.are.equal("CREATE ROLE z PASSWORD $p$***$p$", (db.redact_sql("CREATE ROLE z PASSWORD $p$dollar$p$")))
  end)

  it("masks a user mapping's password option, quoted or not", function()
    assert.are.equal("CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password '***')",
      (db.redact_sql("CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password 'hunter2')")))
    assert.are.equal("ALTER USER MAPPING FOR bob SERVER s OPTIONS (SET \"password\" '***')",
      (db.redact_sql("ALTER USER MAPPING FOR bob SERVER s OPTIONS (SET \"password\" 'hunter2')")))
  end)

  it("masks the secrets of a connection string literal, and of one libpq cannot parse", function()
    assert.are.equal("CREATE SUBSCRIPTION s CONNECTION 'host=h password=***' PUBLICATION p",
      (db.redact_sql("CREATE SUBSCRIPTION s CONNECTION 'host=h password=''a b''' PUBLICATION p")))
    assert.are.equal("CREATE SUBSCRIPTION s CONNECTION 'postgresql://u:***@h/d' PUBLICATION p",
      (db.redact_sql("CREATE SUBSCRIPTION s CONNECTION 'postgresql://u:pw@h/d' PUBLICATION p")))
    local sql, secrets = db.redact_sql("CREATE SUBSCRIPTION s CONNECTION " ..
      "'dbname=x password=sekrit otherhalf' PUBLICATION p")
    assert.are.equal("CREATE SUBSCRIPTION s CONNECTION 'dbname=x password=***' PUBLICATION p", sql)
    assert.are.equal('missing "=" after "***"',
      db.scrub('missing "=" after "otherhalf"', nil, table.unpack(secrets)))
  end)

  it("masks a password in a body of SQL: DO blocks, EXECUTE strings", function()
    local sql, secrets = db.redact_sql("DO $$ BEGIN EXECUTE 'ALTER ROLE x PASSWORD ''sekrit'''; " ..
      "END $$")
    assert.are.equal("DO $$ BEGIN EXECUTE 'ALTER ROLE x PASSWORD ''***'''; END $$", sql)
    assert.are.same({ "sekrit" }, secrets)
    assert.are.equal("DO 'BEGIN EXECUTE ''CREATE ROLE y PASSWORD ''''***''''''; END'",
      (db.redact_sql("DO 'BEGIN EXECUTE ''CREATE ROLE y PASSWORD ''''sekrit''''''; END'")))
  end)

  it("leaves statements without a password alone, comments and identifiers included", function()
    for _, sql in ipairs({ "SELECT 'password' AS x, 'abc'", "SELECT 'reset your password now'",
      "-- password 'x'\nSELECT 1", "SELECT \"password\" FROM t" }) do
      local out, secrets = db.redact_sql(sql)
      assert.are.equal(sql, out)
      assert.are.same({}, secrets)
    end
  end)
end)
