-- moonshift.pg against a real throwaway PostgreSQL server (never a mock).
local pg = require("moonshift.pg")
local cjson = require("cjson")

-- The throwaway server (initdb in a temp dir, unix socket only): uri, socket_dir, port.
local function start_server() return assert(require("moonshift.cluster").start()) end
local function stop_server(server) server:stop() end

-- Milliseconds from a monotonic clock when moonshift.fs has one; else seconds via os.time.
local function clock()
  local ok, fs = pcall(require, "moonshift.fs")
  if ok and type(fs) == "table" and type(fs.clock_ms) == "function" then
    return function() return fs.clock_ms() end, 2000
  end
  return function() return os.time() end, 2
end

local function is_pg_error(err)
  return type(err) == "table" and getmetatable(err) ~= nil and type(err.message) == "string"
end

describe("moonshift.pg", function()
  local server, conn

  lazy_setup(function()
    server = start_server()
  end)

  lazy_teardown(function()
    if server then stop_server(server) end
  end)

  before_each(function()
    conn = assert(pg.connect(server.uri))
  end)

  after_each(function()
    if conn then conn:close() end
    conn = nil
  end)

  describe("connect", function()
    it("connects and describes the session without a password", function()
      assert.is_true(conn:ok())
      assert.equal("idle", conn:status())
      assert.is_true(conn:server_version() >= 150000)
      assert.is_true(conn:backend_pid() > 0)
      assert.equal("UTF8", conn:parameter("server_encoding"))
      assert.is_nil(conn:parameter("no_such_parameter"))
      local info = conn:info()
      assert.same({ user = "postgres", dbname = "postgres", host = server.socket_dir, ssl = false,
        port = server.port }, info)
      assert.is_true(pg.lib_version() >= 150000)
      assert.matches("^moonshift%.pg%.conn %(pid %d+%)$", tostring(conn))
    end)

    it("sets a fallback application name, overridable by opts and conninfo", function()
      assert.equal("moonshift", conn:parameter("application_name"))
      local c2 = assert(pg.connect(server.uri, { application_name = "spec", connect_timeout = 5 }))
      assert.equal("spec", c2:parameter("application_name"))
      c2:close()
      local c3 = assert(pg.connect(string.format(
        "host=%s port=%d user=postgres dbname=postgres application_name=mine",
        server.socket_dir, server.port)))
      assert.equal("mine", c3:parameter("application_name"))
      c3:close()
    end)

    it("returns nil, err of kind connect for a wrong port", function()
      local c, err = pg.connect(string.format("host=%s port=1 user=postgres dbname=postgres",
        server.socket_dir), { connect_timeout = 2 })
      assert.is_nil(c)
      assert.is_true(is_pg_error(err))
      assert.equal("connect", err.kind)
      assert.is_nil(err.sqlstate)
      assert.matches("s.PGSQL.1", err.message, 1, true)
      assert.equal(err.message, tostring(err))
    end)

    it("never shows the password of a failed connection", function()
      local uri = string.format("postgresql://postgres:canarySECRET@/no_such_db?host=%s&port=%d",
        server.socket_dir, server.port)
      local c, err = pg.connect(uri)
      assert.is_nil(c)
      assert.equal("connect", err.kind)
      assert.matches("no_such_db", err.message, 1, true)
      assert.is_nil(err.message:find("canarySECRET", 1, true))
      -- libpq quotes the whole URI in this parse error: the redaction must catch it.
      c, err = pg.connect("postgresql://postgres:canarySECRET@[::1/db")
      assert.is_nil(c)
      assert.matches("IPv6", err.message, 1, true)
      assert.is_nil(err.message:find("canarySECRET", 1, true))
      assert.is_nil(tostring(err):find("canarySECRET", 1, true))
    end)

    it("rejects bad options", function()
      assert.has_error(function() pg.connect(server.uri, { connect_timeout = "x" }) end)
      assert.has_error(function() pg.connect(server.uri, { application_name = {} }) end)
    end)
  end)

  describe("connect_begin", function()
    it("connects on a thread of its own, and wait returns what connect would", function()
      local pending = pg.connect_begin(server.uri, { application_name = "background" })
      local c = assert(pending:wait())
      assert.equal("background", c:parameter("application_name"))
      assert.equal(1, c:query("SELECT 1 AS one")[1].one)
      c:close()
      assert.has_error(function() pending:wait() end)
      local failed, err = pg.connect_begin(string.format(
        "postgresql://postgres:canarySECRET@/no_such_db?host=%s&port=%d", server.socket_dir,
        server.port)):wait()
      assert.is_nil(failed)
      assert.equal("connect", err.kind)
      assert.matches("no_such_db", err.message, 1, true)
      assert.is_nil(err.message:find("canarySECRET", 1, true))
    end)

    it("is given up without waiting for a server that does not answer", function()
      local postmaster = assert(io.open(server.data .. "/postmaster.pid")):read("l")
      assert(os.execute("kill -STOP " .. postmaster)) -- the socket accepts, nobody answers
      local ok, err = pcall(function()
        local now, _ = clock()
        local pending = pg.connect_begin(server.uri, { connect_timeout = 30 })
        local t0 = now()
        pending:close()
        pending:close() -- twice is harmless
        assert.is_true(now() - t0 < 1000)
      end)
      assert(os.execute("kill -CONT " .. postmaster))
      assert(ok, err)
    end)
  end)

  describe("query", function()
    it("converts every column type", function()
      local rows = assert(conn:query([[
        select 1::int2 as i2, -2::int4 as i4, 9223372036854775807::int8 as i8max,
               '-9223372036854775808'::int8 as i8min, 4294967295::oid as o,
               1.5::float4 as f4, 0.1::float8 as f8, 'NaN'::float8 as nan,
               'Infinity'::float8 as inf, '-Infinity'::float4 as ninf,
               '12345678901234567890.123'::numeric as num,
               true as t, false as f,
               'héllo "wörld" it''s ✓'::text as txt, 'v'::varchar(3) as vc,
               '{"a": [1, 2, {"b": null}], "s": "x"}'::json as j,
               '{"k": "v", "n": 2}'::jsonb as jb,
               array[1, 2, 3] as arr, null::text as nothing, null::int as nothing_int,
               null::bool as nothing_bool, '2024-01-02'::date as d]]))
      assert.equal(1, #rows)
      local r = rows[1]
      assert.equal(1, r.i2)
      assert.equal(-2, r.i4)
      assert.equal(math.maxinteger, r.i8max)
      assert.equal(math.mininteger, r.i8min)
      assert.equal(4294967295, r.o)
      assert.is_true(math.type(r.i8max) == "integer" and math.type(r.o) == "integer")
      assert.equal(1.5, r.f4)
      assert.equal(0.1, r.f8)
      assert.is_true(r.nan ~= r.nan)
      assert.equal(math.huge, r.inf)
      assert.equal(-math.huge, r.ninf)
      assert.equal("12345678901234567890.123", r.num)
      assert.is_true(r.t)
      assert.is_false(r.f)
      assert.equal('héllo "wörld" it\'s ✓', r.txt)
      assert.equal("v", r.vc)
      assert.same({ a = { 1, 2, { b = cjson.null } }, s = "x" }, r.j)
      assert.same({ k = "v", n = 2 }, r.jb)
      assert.equal("{1,2,3}", r.arr)
      assert.equal(pg.null, r.nothing)
      assert.equal(pg.null, r.nothing_int)
      assert.equal(pg.null, r.nothing_bool)
      assert.are_not.equal(false, r.nothing)
      assert.is_not_nil(r.nothing)
      assert.are_not.equal(cjson.null, pg.null)
      assert.equal("userdata", type(pg.null))
      assert.equal("2024-01-02", r.d)
    end)

    it("round-trips values sent as parameters", function()
      local text = 'héllo "wörld" it\'s ✓ \\ $1'
      local rows = assert(conn:query([[
        select $1::text as s, $2::int8 as i, $3::float8 as f, $4::bool as b, $5::bool as nb,
               $6::text as n1, $7::text as n2, $8::numeric as num, $9::float8 as inf,
               $10::float8 as nan, $11::int as small]],
        text, math.maxinteger, 0.1 + 0.2, true, false, nil, pg.null, "1.50", math.huge,
        0 / 0, 3))
      local r = rows[1]
      assert.equal(text, r.s)
      assert.equal(math.maxinteger, r.i)
      assert.equal(0.1 + 0.2, r.f) -- all 17 digits survive
      assert.is_true(r.b)
      assert.is_false(r.nb)
      assert.equal(pg.null, r.n1)
      assert.equal(pg.null, r.n2)
      assert.equal("1.50", r.num)
      assert.equal(math.huge, r.inf)
      assert.is_true(r.nan ~= r.nan)
      assert.equal(3, r.small)
    end)

    it("counts trailing nil parameters", function()
      local rows = assert(conn:query("select $1::text is null as a, $2::text is null as b",
        "x", nil))
      assert.is_false(rows[1].a)
      assert.is_true(rows[1].b)
      local _, err = conn:query("select $1::text as a", "x", nil)
      assert.equal("08P01", err.sqlstate) -- two parameters sent for one placeholder
    end)

    it("rejects values that cannot be parameters", function()
      assert.has_error(function() conn:query("select $1", {}) end)
      assert.has_error(function() conn:query("select $1", "a\0b") end)
      assert.has_error(function() conn:query("select $1", print) end)
    end)

    it("never interpolates parameters", function()
      assert(conn:exec("create table x (v text); create table victims (v text)"))
      local evil = "'); drop table x; --"
      local rows = assert(conn:query("insert into victims (v) values ($1)", evil))
      assert.equal("INSERT 0 1", rows.command)
      assert.equal(1, rows.affected)
      rows = assert(conn:query("select v from victims"))
      assert.equal(evil, rows[1].v)
      assert(conn:query("select count(*) as n from x"))
      assert(conn:exec("drop table x, victims"))
    end)

    it("describes the result: columns in order, command tag, affected rows", function()
      local rows = assert(conn:query("select 1 as b, 2 as a, 3 as c from generate_series(1, 3)"))
      assert.same({ "b", "a", "c" }, rows.columns)
      assert.equal(3, #rows)
      assert.equal("SELECT 3", rows.command)
      assert.equal(3, rows.affected)
      rows = assert(conn:query("create temporary table t (id int)"))
      assert.equal(0, #rows)
      assert.same({}, rows.columns)
      assert.equal("CREATE TABLE", rows.command)
      assert.is_nil(rows.affected)
      rows = assert(conn:query("update t set id = 1"))
      assert.equal(0, rows.affected)
    end)

    it("refuses a COPY instead of hanging", function()
      local rows, err = conn:query("copy (select 1) to stdout")
      assert.is_nil(rows)
      assert.matches("COPY", err.message)
      assert.equal(1, conn:query("select 1 as n")[1].n)
    end)
  end)

  describe("exec", function()
    it("runs several statements and returns the last command tag", function()
      assert.equal("INSERT 0 2", conn:exec([[
        create temporary table m (id int primary key);
        insert into m values (1), (2)]]))
      assert.equal("SELECT 2", conn:exec("select * from m"))
      assert.equal("", conn:exec(""))
    end)

    it("stops at the first failing statement", function()
      assert(conn:exec("create temporary table m (id int)"))
      local tag, err = conn:exec([[
        insert into m values (1);
        select 1/0;
        insert into m values (2)]])
      assert.is_nil(tag)
      assert.equal("22012", err.sqlstate)
      assert.equal(0, conn:query("select count(*) as n from m")[1].n)
    end)

    it("fails a COPY FROM STDIN or TO STDOUT with an error rather than hanging", function()
      assert(conn:exec("create temporary table c (id int)"))
      local tag, err = conn:exec("copy c from stdin")
      assert.is_nil(tag)
      assert.equal("57014", err.sqlstate)
      assert.matches("copy_in", err.message)
      tag, err = conn:exec("copy c to stdout; select 1")
      assert.is_nil(tag)
      assert.matches("COPY TO STDOUT", err.message)
      assert.equal("idle", conn:status())
      assert.equal("SELECT 1", conn:exec("select 1"))
    end)
  end)

  describe("errors", function()
    it("reports a unique violation with sqlstate, constraint and table", function()
      assert(conn:exec("create table t (id int primary key)"))
      assert(conn:query("insert into t values ($1)", 1))
      local rows, err = conn:query("insert into t values ($1)", 1)
      assert(conn:exec("drop table t"))
      assert.is_nil(rows)
      assert.is_true(is_pg_error(err))
      assert.equal("23505", err.sqlstate)
      assert.equal("ERROR", err.severity)
      assert.equal("t_pkey", err.constraint)
      assert.equal("t", err.table)
      assert.equal("public", err.schema)
      assert.equal("Key (id)=(1) already exists.", err.detail)
      assert.equal(
        'ERROR:  duplicate key value violates unique constraint "t_pkey" (SQLSTATE 23505)',
        tostring(err))
    end)

    it("reports a syntax error with its position", function()
      local tag, err = conn:exec("select 1;\nselec 2")
      assert.is_nil(tag)
      assert.equal("42601", err.sqlstate)
      assert.equal(11, err.position)
      assert.matches("selec", err.message)
      local _, qerr = conn:query("select from from")
      assert.equal("42601", qerr.sqlstate)
      assert.equal(13, qerr.position)
    end)

    it("includes hint and context", function()
      local _, err = conn:exec([[
        do $$ begin raise exception 'boom' using hint = 'try again', errcode = 'P0001'; end $$]])
      assert.equal("P0001", err.sqlstate)
      assert.equal("boom", err.message)
      assert.equal("try again", err.hint)
      assert.matches("PL/pgSQL", err.where)
    end)

    it("marks a connection lost in the middle of a query", function()
      local other = assert(pg.connect(server.uri))
      assert(other:query("select pg_terminate_backend($1)", conn:backend_pid()))
      other:close()
      local rows, err = conn:query("select 1")
      for _ = 1, 20 do -- the first try may still see the server's FATAL, then EOF
        if not rows and err.kind == "connection_lost" then break end
        rows, err = conn:query("select 1")
      end
      assert.is_nil(rows)
      assert.equal("connection_lost", err.kind)
      assert.is_false(conn:ok())
    end)
  end)

  describe("notices", function()
    it("collects notices and clears the list when read", function()
      assert(conn:exec("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$"))
      local notices = conn:notices()
      assert.equal(1, #notices)
      assert.equal("hello 42", notices[1].message)
      assert.equal("NOTICE", notices[1].severity)
      assert.equal("00000", notices[1].sqlstate)
      assert.same({}, conn:notices())
    end)

    it("keeps at most 10,000 notices and counts the rest", function()
      assert(conn:exec("DO $$ BEGIN FOR i IN 1..10005 LOOP RAISE NOTICE 'n%', i; END LOOP; END $$"))
      local notices = conn:notices()
      assert.equal(10000, #notices)
      assert.equal(5, notices.dropped)
      assert.equal("n10000", notices[10000].message)
      assert.same({}, conn:notices())
    end)

    it("keeps detail and hint, in order", function()
      assert(conn:exec([[
        DO $$ BEGIN
          RAISE WARNING 'first' USING DETAIL = 'd', HINT = 'h';
          RAISE NOTICE 'second';
        END $$]]))
      local notices = conn:notices()
      assert.equal(2, #notices)
      assert.same({ severity = "WARNING", sqlstate = "01000", message = "first", detail = "d",
        hint = "h" }, notices[1])
      assert.equal("second", notices[2].message)
    end)
  end)

  describe("status", function()
    it("is intrans inside BEGIN and inerror after a failure", function()
      assert.equal("idle", conn:status())
      assert(conn:exec("begin"))
      assert.equal("intrans", conn:status())
      assert.is_nil(conn:exec("select 1/0"))
      assert.equal("inerror", conn:status())
      local _, err = conn:query("select 1")
      assert.equal("25P02", err.sqlstate)
      assert(conn:exec("rollback"))
      assert.equal("idle", conn:status())
    end)
  end)

  describe("escaping", function()
    it("quotes identifiers and literals", function()
      assert.equal('"we""ird"', conn:escape_identifier('we"ird'))
      assert.equal("'it''s'", conn:escape_literal("it's"))
      assert.equal(" E'a\\\\b'", conn:escape_literal("a\\b")) -- libpq's leading space
      local name = conn:escape_identifier("Mixed Case")
      assert(conn:exec("create temporary table " .. name .. " (v text)"))
      assert(conn:exec("insert into " .. name .. " values (" .. conn:escape_literal("x'y") .. ")"))
      assert.equal("x'y", conn:query("select v from " .. name)[1].v)
    end)

    it("returns nil, err for invalid UTF-8", function()
      local s, err = conn:escape_literal("\xff\xfe")
      assert.is_nil(s)
      assert.is_true(is_pg_error(err))
    end)
  end)

  describe("cancel", function()
    it("stops a running pg_sleep(30) within 2 seconds", function()
      local now, bound = clock()
      local start = now()
      assert(conn:send_query("select pg_sleep(30)"))
      -- a cancel that arrives before the query starts is lost: wait until it runs
      local watcher <close> = assert(pg.connect(server.uri))
      for _ = 1, 200 do
        local rows = assert(watcher:query("select count(*) as n from pg_stat_activity " ..
          "where pid = $1 and state = 'active'", conn:backend_pid()))
        if rows[1].n > 0 then break end
        require("moonshift.proc").sleep(10)
      end
      assert.is_true(conn:cancel())
      local rows, err = conn:get_result()
      assert.is_nil(rows)
      assert.equal("57014", err.sqlstate)
      assert.is_false(conn:get_result())
      assert.is_true(now() - start <= bound)
      assert.equal(1, conn:query("select 1 as n")[1].n)
    end)
  end)

  describe("async and pipeline", function()
    it("sends a query and reads its results", function()
      assert(conn:send_query("select $1::int + 1 as n", 41))
      assert.is_number(conn:socket())
      assert.is_true(conn:consume_input())
      assert.is_boolean(conn:busy())
      local rows = assert(conn:get_result())
      assert.equal(42, rows[1].n)
      assert.is_false(conn:get_result())
      assert.is_false(conn:busy())
    end)

    it("runs 1,000 statements through a pipeline, in order", function()
      assert(conn:pipeline_enter())
      for i = 1, 1000 do
        assert(conn:send_query("select $1::int as n", i))
      end
      assert(conn:pipeline_sync())
      for i = 1, 1000 do
        local rows, err = conn:get_result()
        assert(rows, err and tostring(err))
        assert.equal(i, rows[1].n)
        assert.is_false(conn:get_result())
      end
      assert.equal("sync", conn:get_result())
      assert(conn:pipeline_exit())
      assert.equal(1, conn:query("select 1 as n")[1].n)
    end)

    it("aborts the rest of a pipeline after an error and recovers at the sync", function()
      assert(conn:pipeline_enter())
      local none, perr = conn:query("select 1")
      assert.is_nil(none)
      assert.matches("pipeline mode", perr.message)
      assert(conn:send_query("select 1 as n"))
      assert(conn:send_query("select 1/0"))
      assert(conn:send_query("select 3 as n"))
      assert(conn:pipeline_sync())
      assert(conn:send_query("select 4 as n"))
      assert(conn:pipeline_sync())

      assert.equal(1, assert(conn:get_result())[1].n)
      assert.is_false(conn:get_result())
      local rows, err = conn:get_result()
      assert.is_nil(rows)
      assert.equal("22012", err.sqlstate)
      assert.is_false(conn:get_result())
      rows, err = conn:get_result()
      assert.is_nil(rows)
      assert.is_true(err.aborted)
      assert.is_nil(err.sqlstate)
      assert.is_false(conn:get_result())
      assert.equal("sync", conn:get_result())

      assert.equal(4, assert(conn:get_result())[1].n)
      assert.is_false(conn:get_result())
      assert.equal("sync", conn:get_result())
      assert(conn:pipeline_exit())
      assert.equal("idle", conn:status())
    end)

    it("refuses to leave pipeline mode with results pending", function()
      assert(conn:pipeline_enter())
      assert(conn:send_query("select 1"))
      local ok, err = conn:pipeline_exit()
      assert.is_nil(ok)
      assert.is_true(is_pg_error(err))
      assert(conn:pipeline_sync())
      assert(conn:get_result())
      assert.is_false(conn:get_result())
      assert.equal("sync", conn:get_result())
      assert(conn:pipeline_exit())
    end)
  end)

  describe("copy_in", function()
    before_each(function()
      assert(conn:exec("create temporary table items (id int primary key, name text)"))
    end)

    it("loads 10,000 rows", function()
      local lines = {}
      for i = 1, 10000 do
        lines[i] = string.format("%d\titem number %d with some padding text\n", i, i)
      end
      local data = table.concat(lines)
      assert.is_true(#data > 4 * 64 * 1024) -- several chunks
      assert.equal("COPY 10000", conn:copy_in("copy items (id, name) from stdin", data))
      local rows = assert(conn:query("select count(*) as n, max(id) as m from items"))
      assert.equal(10000, rows[1].n)
      assert.equal(10000, rows[1].m)
      assert.equal("idle", conn:status())
    end)

    it("reports bad data and leaves the connection usable", function()
      local tag, err = conn:copy_in("copy items (id, name) from stdin", "1\ta\nnot_an_int\tb\n")
      assert.is_nil(tag)
      assert.equal("22P02", err.sqlstate)
      assert.matches("not_an_int", err.message)
      assert.equal("idle", conn:status())
      assert.equal(0, conn:query("select count(*) as n from items")[1].n)
      assert.equal("COPY 1", conn:copy_in("copy items from stdin", "7\tseven\n"))
    end)

    it("takes the data from a reader, piece by piece, until it returns nil", function()
      local n = 0
      local function reader()
        if n == 300 then return nil end
        n = n + 1
        return string.format("%d\titem %d\n", n, n)
      end
      assert.equal("COPY 300", conn:copy_in("copy items (id, name) from stdin", reader))
      assert.equal(300, conn:query("select count(*) as n from items")[1].n)
      assert.equal("idle", conn:status())
    end)

    it("ends the COPY when the reader raises, then raises its error", function()
      local ok, err = pcall(conn.copy_in, conn, "copy items from stdin", function()
        error("disk gone", 0)
      end)
      assert.is_false(ok)
      assert.equal("disk gone", err)
      assert.equal("idle", conn:status())
      assert.equal(0, conn:query("select count(*) as n from items")[1].n)
    end)

    it("reports an error of the COPY statement itself", function()
      local tag, err = conn:copy_in("copy no_such_table from stdin", "1\n")
      assert.is_nil(tag)
      assert.equal("42P01", err.sqlstate)
      tag, err = conn:copy_in("select 1", "1\n")
      assert.is_nil(tag)
      assert.matches("FROM STDIN", err.message)
      assert.equal(1, conn:query("select 1 as n")[1].n)
    end)
  end)

  describe("lifetime", function()
    it("closes twice harmlessly and raises on use after close", function()
      local c = assert(pg.connect(server.uri))
      c:close()
      c:close()
      assert.matches("closed", tostring(c))
      assert.has_error(function() c:query("select 1") end, "connection is closed")
      assert.has_error(function() c:status() end, "connection is closed")
      assert.has_error(function() c:notices() end, "connection is closed")
      do
        local scoped <close> = assert(pg.connect(server.uri))
        assert.is_true(scoped:ok())
      end
    end)

    it("closes a connection that is garbage-collected without close", function()
      local pid
      do
        local c = assert(pg.connect(server.uri))
        pid = c:backend_pid()
        -- leave notices and a pending pipeline behind for __gc to free
        assert(c:exec("DO $$ BEGIN RAISE NOTICE 'left behind'; END $$"))
        assert(c:pipeline_enter())
        assert(c:send_query("select 1"))
      end
      collectgarbage()
      collectgarbage()
      local gone = false
      for _ = 1, 100 do
        local rows = assert(conn:query("select count(*) as n from pg_stat_activity where pid = $1",
          pid))
        if rows[1].n == 0 then
          gone = true
          break
        end
        conn:query("select pg_sleep(0.02)")
      end
      assert.is_true(gone)
    end)

    it("frees the result when converting it runs out of memory", function()
      local host = require("moonshift.host")
      local sql = "select repeat('x', 1000) as s, '{\"a\": 1}'::json as j " ..
        "from generate_series(1, 3000)"
      collectgarbage()
      local previous = host.memory_limit(host.memory_used() + 256 * 1024)
      local ok, err = pcall(conn.query, conn, sql)
      host.memory_limit(previous)
      assert.is_false(ok)
      assert.matches("not enough memory", tostring(err))
      collectgarbage()
      assert.equal(3000, #assert(conn:query(sql)))
    end)
  end)
end)
