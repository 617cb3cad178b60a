-- The one statement classifier: transaction control and no-transaction statements found
-- behind every comment form psql understands, in any case.
local statement = require("moonshift.statement")
local sql = require("moonshift.sql")

-- Every spelling of transaction control a migration could hold, and the name reported.
local CONTROL = {
  { "COMMIT", "COMMIT" }, { "COMMIT WORK", "COMMIT" }, { "COMMIT TRANSACTION", "COMMIT" },
  { "COMMIT AND CHAIN", "COMMIT" }, { "COMMIT PREPARED 'x'", "COMMIT" },
  { "END", "END" }, { "END WORK", "END" }, { "END TRANSACTION", "END" },
  { "ROLLBACK", "ROLLBACK" }, { "ROLLBACK WORK", "ROLLBACK" },
  { "ROLLBACK AND NO CHAIN", "ROLLBACK" }, { "ROLLBACK PREPARED 'x'", "ROLLBACK" },
  { "ABORT", "ABORT" }, { "ABORT TRANSACTION", "ABORT" },
  { "BEGIN", "BEGIN" }, { "BEGIN WORK", "BEGIN" }, { "BEGIN TRANSACTION", "BEGIN" },
  { "BEGIN ISOLATION LEVEL SERIALIZABLE", "BEGIN" }, { "BEGIN READ ONLY", "BEGIN" },
  { "START TRANSACTION", "START TRANSACTION" },
  { "START TRANSACTION ISOLATION LEVEL REPEATABLE READ", "START TRANSACTION" },
  { "PREPARE TRANSACTION 'x'", "PREPARE TRANSACTION" },
}

-- Every way psql lets a comment stand before a statement.
local COMMENTS = {
  "", "  \n\t", "-- a line comment\n", "--\n", "/* block */ ", "/**/", "/* a /* b */ c */ ",
  "/* a /* b /* c */ */ */\n", "/* a */ /* b */ -- c\n", "/* *** */", "/* contains COMMIT; */ ",
  "-- first\n/* then /* nested */ */\n  -- and more\n",
}

local function cases(word)
  return { word:upper(), word:lower(), (word:gsub("(%a)(%a?)", function(a, b)
    return a:upper() .. b:lower()
  end)) }
end

describe("statement", function()
  it("finds transaction control behind every comment form, in every case", function()
    for _, form in ipairs(CONTROL) do
      for _, text in ipairs(cases(form[1])) do
        for _, comment in ipairs(COMMENTS) do
          local stmt = comment .. text .. ";"
          assert.are.equal(form[2], (statement.transaction_control(stmt)), stmt)
          assert.are.equal(form[2], (statement.denied_in_hook(stmt)), stmt)
        end
      end
    end
  end)

  it("finds it the same way in a statement as the splitter cuts it from a file", function()
    local stmts = assert(sql.split("create table a1 (id int);\n/* a /* b */ c */ COMMIT;\n" ..
      "create table a2 (id int);\n"))
    assert.is_nil(statement.transaction_control(stmts[1].text))
    assert.are.equal("COMMIT", statement.transaction_control(stmts[2].text))
    assert.is_nil(statement.transaction_control(stmts[3].text))
  end)

  it("does not take words in strings, identifiers or bodies for transaction control", function()
    for _, text in ipairs({
      "SELECT 'COMMIT';", "CREATE TABLE \"commit\" (x int);", "SAVEPOINT s;",
      "RELEASE SAVEPOINT s;", "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC " ..
        "SELECT 1; END;", "DO $$ BEGIN PERFORM 1; END $$;", "COMMENT ON TABLE t IS 'x';",
      "/* COMMIT */ SELECT 1;", "-- COMMIT\nSELECT 1;", "ENDPOINT;", "begins;",
    }) do
      assert.is_nil(statement.transaction_control(text), text)
    end
  end)

  it("reports where the statement's first word is, after its comments", function()
    local name, at = statement.transaction_control("/* x /* y */ */\n  Commit;")
    assert.are.equal("COMMIT", name)
    assert.are.equal(19, at)
  end)

  it("finds statements that cannot run in a transaction block", function()
    local want = {
      ["CREATE INDEX CONCURRENTLY i ON t (a);"] = "CREATE INDEX CONCURRENTLY",
      ["/* x /* y */ */ create unique index concurrently i on t (a);"] =
        "CREATE INDEX CONCURRENTLY",
      ["Drop Index Concurrently i;"] = "DROP INDEX CONCURRENTLY",
      ["REINDEX TABLE CONCURRENTLY t;"] = "REINDEX CONCURRENTLY",
      ["reindex (verbose) schema public;"] = "REINDEX SCHEMA",
      ["REINDEX DATABASE d;"] = "REINDEX DATABASE", ["VACUUM t;"] = "VACUUM",
      ["-- c\nvacuum (analyze) t;"] = "VACUUM", ["ALTER SYSTEM SET x = 1;"] = "ALTER SYSTEM",
      ["CREATE DATABASE d;"] = "CREATE DATABASE", ["DROP TABLESPACE s;"] = "DROP TABLESPACE",
    }
    for text, name in pairs(want) do
      assert.are.equal(name, (statement.no_transaction(text)), text)
    end
    for _, text in ipairs({ "CREATE INDEX i ON t (a);", "REINDEX TABLE t;",
      "REINDEX TABLE my_concurrently_t;", "SELECT 'vacuum';", "CREATE TABLE vacuum (x int);" }) do
      assert.is_nil(statement.no_transaction(text), text)
    end
  end)

  it("refuses in hooks what would change who we are or drop the lock", function()
    for _, text in ipairs({ "SET ROLE x", "set session role x", "SET LOCAL ROLE x",
      "RESET ROLE", "reset all", "SET SESSION AUTHORIZATION x", "DISCARD ALL",
      "SELECT pg_advisory_unlock_all()" }) do
      assert.is_not_nil(statement.denied_in_hook(text), text)
    end
    assert.are.equal("COMMIT", statement.first_denied_in_hook("SELECT 1; /* x */ commit"))
    assert.is_nil(statement.first_denied_in_hook("SELECT 1; SET search_path = a"))
  end)
end)
