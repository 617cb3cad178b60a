-- moonshift.sql against psql itself: every corpus file through psql -f, the statements the
-- server logged compared one by one with the splitter's, COPY data checked in the tables.
local cjson = require("cjson")
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")
local sql = require("moonshift.sql")
local helpers = require("spec.helpers")

local fmt = string.format

local APP = "moonshift-diff"
local SETTINGS = {
  log_statement = "all",
  logging_collector = "on",
  log_destination = "jsonlog",
  log_filename = "statements.log", -- jsonlog writes statements.json beside it
  log_rotation_size = 0,
  log_min_error_statement = "error",
}

-- The throwaway server; swap these two for another way to get one.
local function start_server() return helpers.cluster({ settings = SETTINGS }) end
local function stop_server(server) server:stop() end

-- A client program: the server's own when its bin dir has one (Debian's does), else
-- Debian's 15 (bundles such as embedded-postgres ship only the server).
local function client_bin(server, name)
  for _, dir in ipairs({ server.bin_dir, "/usr/lib/postgresql/15/bin" }) do
    if fs.exists(dir .. "/" .. name) then return dir .. "/" .. name end
  end
  return name
end

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("a")
  f:close()
  return data
end

local function sorted_files(dir, pattern)
  local names = {}
  for _, name in ipairs(assert(fs.list(dir))) do
    if name:match(pattern) then names[#names + 1] = name end
  end
  table.sort(names)
  return names
end

-- True if text holds nothing but whitespace, comments and `;`: psql sends such a thing
-- (e.g. a trailing `/* end */`, or `;;`) but the splitter skips it. Written apart from
-- the splitter so the test does not grade itself.
local function is_empty_statement(text)
  local i, n = 1, #text
  while i <= n do
    local c = text:sub(i, i)
    if c:match("[ \t\r\n\f;]") then
      i = i + 1
    elseif text:sub(i, i + 1) == "--" then
      i = (text:find("[\r\n]", i) or n + 1)
    elseif text:sub(i, i + 1) == "/*" then
      local depth = 0
      i = i + 2
      while true do
        local a, b = text:find("/*", i, true), text:find("*/", i, true)
        if not b then return false end
        if a and a < b then
          depth, i = depth + 1, a + 2
        elseif depth == 0 then
          i = b + 2
          break
        else
          depth, i = depth - 1, b + 2
        end
      end
    else
      return false
    end
  end
  return true
end

-- Token soup for the randomized comparison: every quoting and comment form, the words
-- psql's BEGIN ... END heuristic looks at, numbers with junk, operators touching comments.
-- Mostly invalid SQL: only where psql cuts matters, and the server logs what it refuses.
local SOUP = {
  words = { "SELECT", "select", "create", "CREATE", "or", "OR", "replace", "function",
    "FUNCTION", "procedure", "begin", "BEGIN", "atomic", "case", "CASE", "end", "END", "x",
    "a$b", "e", "E", "b", "n", "u", "U", "N", "X", "one", "Begin", "eNd", "café", "_u" },
  strings = { "'a;b'", "'it''s'", "E'\\''", "E'\\\\'", "e'x\\''", "U&'x;'", "u&'!'", "N'x;'",
    "B'01'", "X'1f'", "'m\nl;'", "''", "'\\'", "E'\\\n'", "'x'\n'y'", "E'a\\'';'" },
  idents = { '"a;b"', '"a""b"', 'U&"x;"', 'u&"y"', '"begin"', '"$$"' },
  dollars = { "$$;$$", "$a$ $b$ ; $a$", "$1", "$2x", "$_$x;$_$", "$a$x$junk$a$", "$$\n;\n$$",
    "$A$$a$$A$", "$é$;$é$", "$x", "$", "$$$$" },
  comments = { "/* ; */", "/* /* ; */ */", "-- ;\n", "--\n", "/**/", "/*/ ; */", "/* ** / */",
    "-- x\r\n" },
  numbers = { "1", "1.5", ".5", "1e5", "1e", "1e+", "1..2", "1e$$", "1a", "1e'\\'", "0x1f", "5.",
    "1.e", "1.e'\\'", "2e-3x" },
  punct = { "(", ")", ";", ";", ";", ",", "::", ":=", "+", "-", "*", "/", "<", ">", "=", "~", "!",
    "@", "#", "%", "^", "&", "|", "`", "?", "[", "]", ".", ":", "+/*c*/", "-/*c*/", "*/",
    "=--x\n", ":x", ":'v'", ':"w"', "=>", "<=", "!=" },
  spaces = { " ", "  ", "\n", "\n\n", "\r\n", "\t", "\n  \n", "\n\n\n", "", " ", "\f", "\r\n\r\n" },
  prefixes = { "CREATE FUNCTION f() ", "create or replace procedure p() ",
    "CREATE OR REPLACE FUNCTION g(a int) ", "create (a) function ", "SELECT ", "BEGIN ", "" },
  ends = { ";", ";\n", ";;", " ;", "\n;", "", ";\n\n" },
}

local function soup(rand)
  local function pick(list) return list[rand(#list)] end
  local kinds = { { 30, SOUP.words }, { 12, SOUP.strings }, { 6, SOUP.idents },
    { 8, SOUP.dollars }, { 8, SOUP.comments }, { 8, SOUP.numbers }, { 28, SOUP.punct } }
  local function token()
    local r = rand(100)
    for _, k in ipairs(kinds) do
      if r <= k[1] then return pick(k[2]) end
      r = r - k[1]
    end
  end
  local parts = {}
  for _ = 1, rand(12) do
    parts[#parts + 1] = pick(SOUP.prefixes)
    for _ = 1, rand(15) - 1 do
      parts[#parts + 1] = token()
      parts[#parts + 1] = pick(SOUP.spaces)
    end
    parts[#parts + 1] = pick(SOUP.ends)
    parts[#parts + 1] = pick(SOUP.spaces)
  end
  return table.concat(parts)
end

-- A seeded generator (the same cases on every run); the low bits of an LCG repeat
-- quickly, so it uses the high ones.
local function seeded(seed)
  local state = seed
  return function(n)
    state = (state * 1103515245 + 12345) % 2147483648
    return (state >> 12) % n + 1
  end
end

-- Usable soup: it splits without error into plain statements (meta-commands are cut
-- where psql keeps the buffer, on purpose, so they cannot be compared this way).
local function plain_split(text)
  local stmts = sql.split(text)
  if not stmts then return nil end
  for _, st in ipairs(stmts) do
    if st.kind ~= "sql" then return nil end
  end
  return stmts
end

describe("moonshift.sql against psql #e2e", function()
  local server, log_path, psql_bin, pg_dump_bin, env
  local marker_count = 0

  lazy_setup(function()
    server = start_server()
    log_path = server.data .. "/log/statements.json"
    psql_bin = client_bin(server, "psql")
    pg_dump_bin = client_bin(server, "pg_dump")
    env = helpers.env(server:env())
    env.PGCLIENTENCODING = "UTF8" -- psql skips a BOM only in UTF8
    env.PSQLRC = "/dev/null"
  end)

  lazy_teardown(function()
    if server then stop_server(server) end
  end)

  local function run(argv, app)
    local e = {}
    for k, v in pairs(env) do e[k] = v end
    e.PGAPPNAME = app
    return assert(proc.run(argv, { env = e, timeout = 300000 }))
  end

  local function log_size()
    local f = io.open(log_path, "rb")
    if not f then return 0 end
    local size = f:seek("end")
    f:close()
    return size
  end

  -- The log entries written after `offset`, once a marker query shows everything is in.
  local function log_entries(offset, db)
    marker_count = marker_count + 1
    local marker = fmt("moonshift-diff-marker-%d", marker_count)
    local res = run({ psql_bin, "-X", "-d", db, "-c", fmt("SELECT '%s'", marker) }, "marker")
    assert.equal(0, res.code, res.stderr)
    local text
    for _ = 1, 200 do
      local f = assert(io.open(log_path, "rb"))
      f:seek("set", offset)
      text = f:read("a")
      f:close()
      if text:find(marker, 1, true) then break end
      proc.sleep(50)
    end
    assert.truthy(text:find(marker, 1, true), "the server log never showed the marker")
    local entries = {}
    for line in text:gmatch("[^\n]+") do
      entries[#entries + 1] = cjson.decode(line)
    end
    return entries
  end

  -- Runs a file through psql -f; returns what the server received from it, in order.
  local function psql_statements(path, db)
    local offset = log_size()
    local res = run({ psql_bin, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", path }, APP)
    local received = {}
    for _, e in ipairs(log_entries(offset, db)) do
      if e.application_name == APP then
        assert(e.error_severity ~= "ERROR",
          fmt("%s: the server refused %q: %s", path, tostring(e.statement), tostring(e.message)))
        local text = e.message:match("^statement: (.*)$")
        if text and not is_empty_statement(text) then received[#received + 1] = text end
      end
    end
    assert.equal(0, res.code, fmt("psql -f %s failed: %s", path, res.stderr))
    return received
  end

  -- Runs a file through psql -f without ON_ERROR_STOP: the server refuses most of it, and
  -- logs a refused statement with its error (a parse error logs nothing else).
  local function psql_statements_refused(path, db)
    local offset = log_size()
    local res = run({ psql_bin, "-X", "-q", "-d", db, "-f", path }, APP)
    assert.equal(0, res.code, res.stderr)
    local received, logged = {}, nil
    for _, e in ipairs(log_entries(offset, db)) do
      if e.application_name == APP then
        local text = e.message:match("^statement: (.*)$")
        if text then
          logged = text
          received[#received + 1] = text
        elseif e.error_severity == "ERROR" and e.statement then
          if e.statement == logged then logged = nil else received[#received + 1] = e.statement end
        end
      end
    end
    local kept = {}
    for _, text in ipairs(received) do
      if not is_empty_statement(text) then kept[#kept + 1] = text end
    end
    return kept
  end

  local function copy_out(db, statement)
    local query = statement:gsub("[Ff][Rr][Oo][Mm]%s+[Ss][Tt][Dd][Ii][Nn]", "TO STDOUT")
    local res = run({ psql_bin, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", query },
      "copy-out")
    assert.equal(0, res.code, res.stderr)
    return res.stdout
  end

  -- The whole proof for one file: same statements, same order, same bytes; COPY data landed.
  -- Returns the splitter's statements.
  local function check_file(path, db, opts)
    opts = opts or {}
    local stmts, err = sql.split(read_file(path))
    assert(stmts, fmt("%s: %s", path, tostring(err)))
    local received = psql_statements(path, db)
    local sent, metas = {}, {}
    for _, st in ipairs(stmts) do
      if st.kind == "meta" then metas[#metas + 1] = st.meta else sent[#sent + 1] = st end
    end
    for i = 1, math.max(#sent, #received) do
      local mine, theirs = sent[i], received[i]
      assert(mine and theirs, fmt("%s: psql sent %d statements, the splitter found %d",
        path, #received, #sent))
      if mine.text ~= theirs then
        error(fmt("%s: statement %d (line %d) differs\n  splitter: %q\n  psql:     %q",
          path, i, mine.line, mine.text, theirs))
      end
    end
    assert.same(opts.metas or {}, metas)
    if opts.copy_check ~= false then
      for _, st in ipairs(sent) do
        if st.kind == "copy" then
          -- The server reads CRLF data as LF; so does COPY TO write it back.
          local data = st.copy_data:gsub("\r\n", "\n")
          assert.equal(data, copy_out(db, st.text),
            fmt("%s line %d: the table does not hold the COPY data", path, st.line))
        end
      end
    end
    return stmts
  end

  it("agrees on every harbor migration, applied in order to one database", function()
    local dir, missing = helpers.corpus("harbor") -- raises with CI=true
    if not dir then return pending(missing) end
    local db = helpers.fresh_db(server):match("^postgresql:///([^?]+)")
    -- Harbor's runner (golang-migrate) owns this table; two of the migrations alter it.
    local res = run({ psql_bin, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c",
      "CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL)" },
      "setup")
    assert.equal(0, res.code, res.stderr)
    local files = sorted_files(dir, "%.sql$")
    assert.is_true(#files > 0)
    local total = 0
    for _, name in ipairs(files) do
      total = total + #check_file(dir .. "/" .. name, db)
    end
    assert.is_true(total > 100)
  end)

  it("agrees on each hard case, each in a fresh database", function()
    local dir = helpers.root() .. "/spec/fixtures/split"
    local files = sorted_files(dir, "%.sql$")
    assert.is_true(#files >= 10)
    -- psql before 18 sends the `\.` line as data, which a server from 18 on no longer
    -- takes for the end of CSV data: that pairing cannot load inline CSV at all.
    local res = run({ psql_bin, "--version" }, "version")
    local psql_major = tonumber(res.stdout:match("(%d+)%.%d+"))
    local uri = helpers.fresh_db(server)
    local server_major = tonumber(helpers.value(uri, "SHOW server_version_num")) // 10000
    for _, name in ipairs(files) do
      if not (name:find("csv") and psql_major < 18 and server_major >= 18) then
        local db = helpers.fresh_db(server):match("^postgresql:///([^?]+)")
        check_file(dir .. "/" .. name, db)
      end
    end
  end)

  it("agrees on seeded token soup, refused statements included", function()
    local db = helpers.fresh_db(server):match("^postgresql:///([^?]+)")
    local tmp = helpers.tmpdir()
    local rand, tried, statements = seeded(20240601), 0, 0
    -- Many small files: an unclosed parenthesis swallows the rest of its file.
    for file = 1, 40 do
      local parts = {}
      while #parts < 5 do
        local piece = soup(rand)
        tried = tried + 1
        if plain_split(piece) then parts[#parts + 1] = piece end
      end
      local text = table.concat(parts, "\n")
      local stmts = assert(plain_split(text), "usable pieces make a usable file")
      local path = fmt("%s/soup%d.sql", tmp, file)
      local f = assert(io.open(path, "wb"))
      f:write(text)
      f:close()
      local received = psql_statements_refused(path, db)
      for i = 1, math.max(#stmts, #received) do
        if not stmts[i] or stmts[i].text ~= received[i] then
          error(fmt("%s: statement %d differs\n  splitter: %q\n  psql:     %q", path, i,
            stmts[i] and stmts[i].text, received[i]))
        end
      end
      statements = statements + #stmts
    end
    assert.is_true(statements > 300 and tried < 600, fmt("%d statements from %d tries",
      statements, tried))
    helpers.rmdir(tmp)
  end)

  it("agrees on pg_dump output of a schema with functions, triggers, views and COPY data",
    function()
      local src = helpers.fresh_db(server):match("^postgresql:///([^?]+)")
      check_file(helpers.root() .. "/spec/fixtures/split/dump_source.sql", src)
      local tmp = helpers.tmpdir()
      local dump = tmp .. "/dump.sql"
      local res = run({ pg_dump_bin, "-d", src, "-f", dump }, "pg_dump")
      if res.code ~= 0 and res.stderr:find("server version mismatch", 1, true) then
        helpers.rmdir(tmp)
        return pending("no pg_dump for this server version: " .. pg_dump_bin)
      end
      assert.equal(0, res.code, res.stderr)
      local text = read_file(dump)
      assert.truthy(text:find("FROM stdin;\n", 1, true), "the dump holds no COPY data")
      assert.truthy(text:find("CREATE TRIGGER", 1, true))
      local dst = helpers.fresh_db(server):match("^postgresql:///([^?]+)")
      local metas = {}
      for _, st in ipairs(assert(sql.split(text))) do
        if st.kind == "meta" then metas[#metas + 1] = st.meta end
      end
      -- pg_dump 15.14+ brackets its output in \restrict ... \unrestrict (psql runs those).
      for _, m in ipairs(metas) do assert.truthy(m == "\\restrict" or m == "\\unrestrict") end
      local stmts = check_file(dump, dst, { metas = metas })
      local copies = 0
      for _, st in ipairs(stmts) do
        if st.kind == "copy" then copies = copies + 1 end
      end
      assert.is_true(copies >= 3)
      helpers.rmdir(tmp)
    end)
end)
