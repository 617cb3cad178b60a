-- moonshift.sql: the statements psql would send, with their lines, kinds and COPY data.
local sql = require("moonshift.sql")

-- The statements of text as { kind, text, line, column } lists, for compact expectations.
local function shape(text)
  local stmts = assert(sql.split(text))
  local out = {}
  for i, st in ipairs(stmts) do out[i] = { st.kind, st.text, st.line, st.column } end
  return out
end

describe("moonshift.sql", function()
  describe("split", function()
    it("returns each statement with its text, kind, line, column and end line", function()
      local stmts = assert(sql.split("SELECT 1;\n\n  CREATE TABLE t (\n  id int\n);\n"))
      assert.same({
        { text = "SELECT 1;", kind = "sql", line = 1, column = 1, end_line = 1 },
        { text = "CREATE TABLE t (\n  id int\n);", kind = "sql", line = 3, column = 3,
          end_line = 5 },
      }, stmts)
    end)

    it("returns an empty list for empty input, whitespace or comments", function()
      assert.same({}, assert(sql.split("")))
      assert.same({}, assert(sql.split(" \n\t-- nothing\n/* at all */\n;;\n")))
    end)

    it("raises a memory error past the host's limit, and leaves the collector running",
      function()
        local host = require("moonshift.host")
        local text = string.rep("SELECT 1;\n", 200000)
        collectgarbage("collect")
        local previous = host.memory_limit(host.memory_used() + 4 * 1024 * 1024)
        local ok, err = pcall(sql.split, text)
        host.memory_limit(previous)
        assert.is_false(ok)
        assert.matches("memory", tostring(err))
        assert.is_true(collectgarbage("isrunning"))
        assert.equal(200000, #assert(sql.split(text)))
      end)

    it("raises on a non-string argument", function()
      assert.has_error(function() sql.split(nil) end)
      assert.has_error(function() sql.split({}) end)
    end)
  end)

  describe("quotes", function()
    it("keeps semicolons inside single-quoted strings, with '' doubled", function()
      assert.same({ { "sql", "SELECT 'a;''b';", 1, 1 }, { "sql", "SELECT 2;", 1, 17 } },
        shape("SELECT 'a;''b'; SELECT 2;"))
    end)

    it("treats a backslash as ordinary in '' strings (standard_conforming_strings)", function()
      assert.same({ { "sql", "SELECT 'C:\\';", 1, 1 }, { "sql", "SELECT 2;", 2, 1 } },
        shape("SELECT 'C:\\';\nSELECT 2;"))
    end)

    it("lets \\' escape a quote in E'' strings only", function()
      assert.same({ { "sql", "SELECT E'\\';';", 1, 1 }, { "sql", "SELECT e'\\\\';", 1, 16 } },
        shape("SELECT E'\\';'; SELECT e'\\\\';"))
    end)

    it("reads U&'' strings, U&\"\" identifiers and \"\" inside identifiers", function()
      assert.same({
        { "sql", "SELECT U&'d\\0061;' UESCAPE '!';", 1, 1 },
        { "sql", "SELECT U&\"a;\", \"x\"\";\";", 2, 1 },
      }, shape("SELECT U&'d\\0061;' UESCAPE '!';\nSELECT U&\"a;\", \"x\"\";\";"))
    end)

    it("reads B'', X'' and N'' strings", function()
      assert.same({ { "sql", "SELECT B'1;', X'F;', N';';", 1, 1 } },
        shape("SELECT B'1;', X'F;', N';';"))
    end)
  end)

  describe("dollar quotes", function()
    it("keeps semicolons inside $$ and $tag$, nested with other tags", function()
      local body = "CREATE FUNCTION f() RETURNS text AS $fn$\nBEGIN\n  RETURN $$;$$ || $x$;$x$;\n"
        .. "END;\n$fn$ LANGUAGE plpgsql;"
      assert.same({ { "sql", body, 2, 1 }, { "sql", "SELECT 1;", 7, 1 } },
        shape("\n" .. body .. "\nSELECT 1;"))
    end)

    it("does not take $1 for a quote, nor a$b$ (an identifier holding $)", function()
      assert.same({ { "sql", "SELECT $1;", 1, 1 }, { "sql", "SELECT a$b$;", 1, 12 },
        { "sql", "SELECT $1$;", 1, 25 } }, shape("SELECT $1; SELECT a$b$; SELECT $1$;"))
    end)

    it("gives back a wrong tag but for its last $, as psql does", function()
      assert.same({ { "sql", "SELECT $a$x$junk$a$;", 1, 1 }, { "sql", "x;", 1, 22 } },
        shape("SELECT $a$x$junk$a$; x;"))
    end)
  end)

  describe("comments", function()
    it("drops leading whitespace and -- comments, keeps a leading block comment", function()
      assert.same({ { "sql", "/* c; */ SELECT 1 -- inside;\n;", 2, 3 } },
        shape("-- dropped;\n  /* c; */ SELECT 1 -- inside;\n;"))
    end)

    it("nests block comments and ignores semicolons inside them", function()
      assert.same({ { "sql", "SELECT /* a /* b; */ c; */ 1;", 1, 1 } },
        shape("SELECT /* a /* b; */ c; */ 1;"))
    end)

    it("skips statements made of nothing but comments and semicolons", function()
      assert.same({ { "sql", "SELECT 1;", 3, 1 } }, shape(";\n/* x */ ;;\nSELECT 1;\n/* end */\n"))
    end)
  end)

  describe("statement ends", function()
    it("does not end a statement at ; inside parentheses", function()
      local rule = "CREATE RULE r AS ON INSERT TO t DO ALSO (\n  INSERT INTO a VALUES (1);\n"
        .. "  NOTIFY a\n);"
      assert.same({ { "sql", rule, 1, 1 }, { "sql", "SELECT 1;", 5, 1 } },
        shape(rule .. "\nSELECT 1;"))
    end)

    it("keeps BEGIN ATOMIC ... END bodies whole, CASE ... END inside included", function()
      local fn = "CREATE OR REPLACE FUNCTION f(x int) RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n"
        .. "  SELECT 1;\n  SELECT CASE WHEN x > 0 THEN x END;\nEND;"
      assert.same({ { "sql", fn, 1, 1 }, { "sql", "SELECT f(1);", 6, 1 } },
        shape(fn .. "\nSELECT f(1);"))
    end)

    it("counts BEGIN and END only in CREATE FUNCTION/PROCEDURE statements", function()
      assert.same({ { "sql", "BEGIN;", 1, 1 }, { "sql", "SELECT CASE WHEN true THEN 1 END;", 1, 8 },
        { "sql", "END;", 1, 42 } }, shape("BEGIN; SELECT CASE WHEN true THEN 1 END; END;"))
    end)

    it("sends a last statement without ; up to the end, minus empty lines", function()
      assert.same({ { "sql", "SELECT 1;", 1, 1 }, { "sql", "SELECT 2\n  -- c\n  ", 3, 1 } },
        shape("SELECT 1;\n\nSELECT 2\n\n  -- c\n  \n\n"))
    end)

    it("drops empty lines as psql does, except inside quotes and comments", function()
      assert.same({ { "sql", "SELECT\n1, 'a\n\nb', /*\n\n*/ 2;", 1, 1 } },
        shape("SELECT\n\n1, 'a\n\nb', /*\n\n*/ 2;"))
    end)
  end)

  describe("files", function()
    it("skips a UTF-8 BOM and does not count it in columns", function()
      assert.same({ { "sql", "SELECT 1;", 1, 1 }, { "sql", "SELECT 2;", 1, 11 } },
        shape("\239\187\191SELECT 1; SELECT 2;"))
    end)

    it("keeps CRs of CRLF line endings in the text, as psql sends them", function()
      assert.same({ { "sql", "SELECT 1\r\n\r\n;", 1, 1 }, { "sql", "SELECT 2;", 4, 1 } },
        shape("SELECT 1\r\n\r\n;\r\nSELECT 2;\r\n"))
    end)

    it("counts columns in bytes", function()
      assert.same({ { "sql", "SELECT 'é';", 1, 1 }, { "sql", "SELECT 2;", 1, 14 } },
        shape("SELECT 'é'; SELECT 2;"))
    end)
  end)

  describe("COPY FROM stdin", function()
    it("keeps the data lines, without the \\. line, and continues after it", function()
      local stmts = assert(sql.split(
        "COPY t (a, b) FROM stdin; -- data\n1\tx;\n2\t\\N\n\\.\nSELECT 1;\n"))
      assert.same({
        { text = "COPY t (a, b) FROM stdin;", kind = "copy", copy_data = "1\tx;\n2\t\\N\n",
          line = 1, column = 1, end_line = 4, data_line = 2 },
        { text = "SELECT 1;", kind = "sql", line = 5, column = 1, end_line = 5 },
      }, stmts)
    end)

    it("reads CRLF data up to a \\. CRLF line", function()
      local stmts = assert(sql.split("COPY t FROM STDIN WITH (FORMAT csv);\r\na,b\r\n\\.\r\nx;"))
      assert.equal("a,b\r\n", stmts[1].copy_data)
      assert.same({ "sql", "x;", 4, 1 }, { stmts[2].kind, stmts[2].text, stmts[2].line,
        stmts[2].column })
    end)

    it("runs the data to the end of input when no \\. line comes", function()
      local stmts = assert(sql.split("COPY t FROM stdin;\n1\n2"))
      assert.equal("1\n2", stmts[1].copy_data)
      assert.equal(3, stmts[1].end_line)
      assert.equal("", assert(sql.split("copy t from stdin"))[1].copy_data)
    end)

    it("does not take COPY TO or a COPY with FROM stdin inside parentheses for COPY IN",
      function()
        assert.same({ { "sql", "COPY t TO stdout;", 1, 1 },
          { "sql", "COPY (SELECT 1 FROM stdin) TO stdout;", 1, 19 } },
          shape("COPY t TO stdout; COPY (SELECT 1 FROM stdin) TO stdout;"))
      end)

    it("refuses SQL after the COPY on its line, which psql would run after the data",
      function()
        local stmts, err = sql.split("COPY t FROM stdin; SELECT 1;\n\\.\n")
        assert.is_nil(stmts)
        assert.same({ message = "SQL after COPY ... FROM STDIN on the same line is not supported",
          line = 1, column = 20 }, err)
      end)
  end)

  describe("meta-commands", function()
    it("reports them with their command word and line", function()
      local stmts = assert(sql.split("\\set x 1\nSELECT 1;\n  \\i other.sql\n"))
      assert.same({
        { text = "\\set x 1", kind = "meta", meta = "\\set", line = 1, column = 1, end_line = 1 },
        { text = "SELECT 1;", kind = "sql", line = 2, column = 1, end_line = 2 },
        { text = "\\i other.sql", kind = "meta", meta = "\\i", line = 3, column = 3,
          end_line = 3 },
      }, stmts)
    end)

    it("cuts a pending statement where a meta-command begins", function()
      assert.same({ { "sql", "SELECT 1", 1, 1 }, { "meta", "\\gset", 2, 1 },
        { "sql", "SELECT 2 ", 3, 1 }, { "meta", "\\;", 3, 10 }, { "sql", "SELECT 3;", 3, 13 } },
        shape("SELECT 1\n\\gset\nSELECT 2 \\; SELECT 3;"))
    end)

    it("ignores backslashes inside quotes", function()
      assert.same({ { "sql", "SELECT '\\x', $$\\i$$;", 1, 1 } }, shape("SELECT '\\x', $$\\i$$;"))
    end)
  end)

  describe("errors", function()
    local cases = {
      { "SELECT 1;\n  SELECT 'abc;\n", "unterminated quoted string", 2, 10 },
      { "SELECT E'a\\';", "unterminated quoted string", 1, 8 },
      { "SELECT \"abc;", "unterminated quoted identifier", 1, 8 },
      { "\nDO $body$ BEGIN END $$;", "unterminated dollar-quoted string", 2, 4 },
      { "SELECT 1; /* a /* b */ c", "unterminated /* comment", 1, 11 },
      { "SELECT 1;\nSELECT '\0';", "NUL byte in input", 2, 9 },
    }
    for _, case in ipairs(cases) do
      it("reports " .. case[2] .. " where the token began", function()
        local stmts, err = sql.split(case[1])
        assert.is_nil(stmts)
        assert.same({ message = case[2], line = case[3], column = case[4] }, err)
        assert.equal("line " .. case[3] .. ": " .. case[2], tostring(err))
      end)
    end
  end)

  describe("stream", function()
    local fs = require("moonshift.fs")
    local dir
    before_each(function() dir = assert(fs.mkdtemp("/tmp/moonshift-sql-")) end)
    after_each(function() fs.remove_tree(dir) end)

    local function streamed(text)
      local path = dir .. "/s.sql"
      local f = assert(io.open(path, "wb"))
      f:write(text)
      f:close()
      local s <close> = assert(sql.stream(path))
      local list = {}
      while true do
        local stmt, err = s:next()
        if not stmt then return list, err end
        if stmt.kind == "copy" then
          local pieces = {}
          for piece in s.copy_data, s do pieces[#pieces + 1] = piece end
          stmt.copy_data = table.concat(pieces)
        end
        list[#list + 1] = stmt
      end
    end

    it("hands out the statements sql.split lists, one at a time", function()
      for _, text in ipairs({
        "", "-- only a comment\n", "SELECT 1;\n\n\nSELECT\n\n2;\nSELECT 3",
        "\239\187\191COPY t FROM stdin;\n1\n2\n\\.\nSELECT 4;\n",
        "COPY t FROM stdin;\n1\n\\echo hi\nselect 5;\n", "copy t from stdin",
        "CREATE FUNCTION f() RETURNS int BEGIN ATOMIC; SELECT 1; END;\nSELECT 1;\\;SELECT 2;",
      }) do
        assert.same(assert(sql.split(text)), (streamed(text)))
      end
    end)

    it("reads COPY data of several megabytes in pieces", function()
      local rows = {}
      for i = 1, 200000 do rows[i] = i .. "\trow " .. i .. "\n" end
      local data = table.concat(rows)
      local list = streamed("COPY t FROM stdin;\n" .. data .. "\\.\nSELECT 1;\n")
      assert.equal(2, #list)
      assert.equal(data, list[1].copy_data)
      assert.equal(2, list[1].data_line)
      assert.equal(200003, list[2].line)
    end)

    it("reports an error with its line", function()
      local list, err = streamed("SELECT 1;\nSELECT 2;\nSELECT 'x\n")
      assert.equal(2, #list)
      assert.equal(3, err.line)
      assert.equal("line 3: unterminated quoted string", tostring(err))
    end)
  end)
end)
