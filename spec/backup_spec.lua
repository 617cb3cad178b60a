-- moonshift.backup against a real server: pg_dump through the environment, safe files,
-- failures that leave nothing behind, restore, list and prune.
local backup = require("moonshift.backup")
local fs = require("moonshift.fs")
local pg = require("moonshift.pg")
local proc = require("moonshift.proc")
local helpers = require("spec.helpers")

local CANARY = "canary-Pw-7f3e9"
local FIXED_TIME = 1700000000 -- 2023-11-14T22:13:20Z
local FIXED_STAMP = "20231114T221320Z"

local function octal(s) return tonumber(s, 8) end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function exec(uri, sql)
  local conn <close> = assert(pg.connect(uri))
  assert(conn:exec(sql))
end

local function dbname(uri)
  return assert(pg.conninfo_parse(uri)).dbname
end

local function files_in(dir)
  return fs.list(dir) or {}
end

describe("pg.conninfo_parse", function()
  it("reads a URI, decoding the password and the query parameters", function()
    local t = assert(pg.conninfo_parse(
      "postgresql://alice:p%40ss@db.example:5433/app?sslmode=require&application_name=x"))
    assert.are.same({ user = "alice", password = "p@ss", host = "db.example", port = "5433",
      dbname = "app", sslmode = "require", application_name = "x" }, t)
  end)

  it("reads key=value strings, quoted values and explicit empty values", function()
    local t = assert(pg.conninfo_parse("host=/tmp port=5 password='a b\\'c' dbname=''"))
    assert.are.same({ host = "/tmp", port = "5", password = "a b'c", dbname = "" }, t)
    assert.are.same({}, assert(pg.conninfo_parse("")))
  end)

  it("rejects a bad string without echoing it", function()
    for _, s in ipairs({ "password=" .. CANARY .. " bogus", "nope=" .. CANARY,
      "postgresql://u:" .. CANARY .. "@h/db?nope=1" }) do
      local t, err = pg.conninfo_parse(s)
      assert.is_nil(t)
      assert.are.equal("invalid connection string", tostring(err))
      assert.is_nil(tostring(err):find(CANARY, 1, true))
    end
  end)
end)

describe("backup.env_for", function()
  it("maps every keyword to its libpq variable, the password to PGPASSWORD", function()
    local env, rest = assert(backup.env_for("postgresql://bob:" .. CANARY
      .. "@h1:6000/shop?sslmode=verify-full&connect_timeout=7&application_name=m"
      .. "&target_session_attrs=read-write&keepalives=1", {}))
    assert.are.same({ PGUSER = "bob", PGPASSWORD = CANARY, PGHOST = "h1", PGPORT = "6000",
      PGDATABASE = "shop", PGSSLMODE = "verify-full", PGCONNECT_TIMEOUT = "7", PGAPPNAME = "m",
      PGTARGETSESSIONATTRS = "read-write" }, env)
    assert.are.same({ keepalives = "1" }, rest)
  end)

  it("keeps the inherited PG* environment, overridden by the connection string", function()
    local inherited = { PGHOST = "/old", PGUSER = "u", PGPASSWORD = "x", HOME = "/root" }
    assert.are.same({ PGHOST = "/old", PGUSER = "u", PGPASSWORD = "x" },
      assert(backup.env_for("", inherited)))
    assert.are.same({ PGHOST = "/new", PGUSER = "u", PGPASSWORD = CANARY },
      assert(backup.env_for("host=/new password=" .. CANARY, inherited)))
  end)

  it("fails with kind backup on a bad connection string", function()
    local env, err = backup.env_for("password=" .. CANARY .. " junk", {})
    assert.is_nil(env)
    assert.are.equal("backup", err.kind)
    assert.is_nil(tostring(err):find(CANARY, 1, true))
  end)
end)

describe("backup.tools and check_version", function()
  it("finds pg_dump and pg_restore and reads the version", function()
    local t = assert(backup.tools())
    assert.matches("/pg_dump$", t.pg_dump)
    assert.matches("/pg_restore$", t.pg_restore)
    assert.are.equal("integer", math.type(t.version))
    assert.is_true(t.version >= 10)
    assert.matches("^%d+%.%d+", t.version_text)
  end)

  it("falls back to the newest /usr/lib/postgresql/*/bin when PATH has none", function()
    local t = assert(backup.tools({ path = "/nonexistent" }))
    assert.matches("^/usr/lib/postgresql/%d+/bin/pg_dump$", t.pg_dump)
  end)

  it("names where it looked and what to install when pg_dump is missing", function()
    local t, err = backup.tools({ pg_dump = "/nonexistent/pg_dump", server_version_num = 180001 })
    assert.is_nil(t)
    assert.are.equal("backup", err.kind)
    assert.are.equal("pg_dump not found (looked in: /nonexistent/pg_dump); set backup.pg_dump "
      .. "in migrate.lua or install postgresql-client-18", err.message)
  end)

  it("refuses a pg_dump older than the server, naming both versions and the path", function()
    local tools = { pg_dump = "/usr/lib/postgresql/15/bin/pg_dump", version = 15,
      version_num = 150004, version_text = "15.4" }
    local ok, err = backup.check_version(tools, 180001)
    assert.is_nil(ok)
    assert.are.equal("backup", err.kind)
    assert.are.equal("pg_dump 15.4 at /usr/lib/postgresql/15/bin/pg_dump is older than the "
      .. "server (18.1); pg_dump cannot dump a newer server. Install postgresql-client-18 or "
      .. "set backup.pg_dump", err.message)
    assert.is_true(backup.check_version(tools, 150013))
    assert.is_true(backup.check_version(tools, 140010))
    assert.is_true(backup.check_version(tools, 90624))
  end)
end)

describe("backup.run", function()
  local c, uri, tmp, dir, server_version

  local function dump_schema(u)
    local env = c:env()
    env.PGDATABASE = dbname(u)
    local res = assert(proc.run({ c.bin_dir .. "/pg_dump", "--schema-only", "--no-password" },
      { env = env }))
    assert.are.equal(0, res.code, res.stderr)
    -- \restrict keys are random per dump (PostgreSQL 15.14+).
    return (res.stdout:gsub("\n\\u?n?restrict [^\n]*", ""))
  end

  local function counts(u)
    return {
      authors = helpers.value(u, "SELECT count(*) FROM public.authors"),
      books = helpers.value(u, "SELECT count(*) FROM public.books"),
      view = helpers.value(u, "SELECT count(*) FROM public.book_titles"),
    }
  end

  -- A fake pg_dump in its own directory, beside the real pg_restore. It answers --version
  -- like PostgreSQL 15 and knows its --file=; body does the rest.
  local function fake(name, body, version)
    local bin = tmp .. "/" .. name
    helpers.write_files(bin, { pg_dump = table.concat({
      "#!/bin/sh",
      'case "$1" in --version) echo "pg_dump (PostgreSQL) ' .. (version or "15.4") .. '"; '
        .. "exit 0;; esac",
      'for a do case "$a" in --file=*) out="${a#--file=}";; esac; done',
      body, "" }, "\n") })
    assert(fs.chmod(bin .. "/pg_dump", octal("755")))
    assert(fs.symlink(c.bin_dir .. "/pg_restore", bin .. "/pg_restore"))
    return bin .. "/pg_dump"
  end

  local function opts(extra)
    local o = { conninfo = uri, dir = dir, db_name = "app", version = "0002",
      server_version_num = server_version, pg_dump = c.bin_dir .. "/pg_dump" }
    for k, v in pairs(extra or {}) do o[k] = v end
    return o
  end

  lazy_setup(function()
    c = helpers.shared_cluster()
    local conn <close> = assert(pg.connect(c.uri))
    server_version = conn:server_version()
  end)
  before_each(function()
    tmp = helpers.tmpdir()
    dir = tmp .. "/backups"
    uri = helpers.fresh_db(c)
    exec(uri, [[
      CREATE TABLE authors (id serial PRIMARY KEY, name text NOT NULL UNIQUE);
      CREATE TABLE books (id bigserial PRIMARY KEY, author_id int NOT NULL REFERENCES authors,
        title text, published date);
      CREATE INDEX books_title ON books (title);
      CREATE VIEW book_titles AS
        SELECT a.name, b.title FROM books b JOIN authors a ON a.id = b.author_id;
      INSERT INTO authors (name) SELECT 'author ' || g FROM generate_series(1, 50) g;
      INSERT INTO books (author_id, title, published)
        SELECT 1 + g % 50, 'title ' || g, date '2020-01-01' + g FROM generate_series(1, 500) g;
    ]])
  end)
  after_each(function() helpers.rmdir(tmp) end)

  it("writes a 0600 dump in a new 0700 directory, whatever the umask", function()
    local old = fs.umask(0)
    local res, err = backup.run(opts({ conninfo = uri .. "&password=" .. CANARY }))
    fs.umask(old)
    assert.is_nil(err)
    assert.are.equal(octal("700"), fs.stat(dir).mode)
    assert.are.equal(octal("600"), fs.stat(res.path).mode)
    assert.are.equal(assert(fs.realpath(dir)), res.path:match("^(.*)/"))
    assert.matches("^app%-v0002%-%d%d%d%d%d%d%d%dT%d%d%d%d%d%dZ%.dump$", res.name)
    assert.is_nil(res.path:find(CANARY, 1, true))
    assert.are.equal(fs.stat(res.path).size, res.size)
    assert.is_true(res.size > 0)
    assert.are.equal("number", type(res.elapsed_ms))
    assert.are.same({ res.name }, files_in(dir))
    local list = assert(proc.run({ res.tools.pg_restore, "--list", res.path }))
    assert.are.equal(0, list.code, list.stderr)
    assert.matches("TABLE public books", list.stdout)
  end)

  it("keeps the mode of an existing directory", function()
    assert(fs.mkdir_p(dir, octal("750")))
    assert(backup.run(opts()))
    assert.are.equal(octal("750"), fs.stat(dir).mode)
  end)

  it("restores, with the printed command, to the same schema and row counts", function()
    local schema, rows = dump_schema(uri), counts(uri)
    local res = assert(backup.run(opts({ conninfo = uri .. "&password=" .. CANARY })))

    -- Into a fresh database.
    local copy = helpers.fresh_db(c)
    local r = assert(proc.run({ res.tools.pg_restore, "--no-owner", "--dbname=" .. copy,
      res.path }))
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(schema, dump_schema(copy))
    assert.are.same(rows, counts(copy))

    -- Over the original, after a "migration" changed it.
    exec(uri, [[
      ALTER TABLE books ADD COLUMN isbn text;
      DELETE FROM books WHERE id > 100;
      DROP VIEW book_titles;
      INSERT INTO authors (name) VALUES ('late');
    ]])
    assert.are_not.equal(schema, dump_schema(uri))
    local cmd = res.restore_command
    assert.are.equal(backup.restore_command(uri .. "&password=" .. CANARY, res.path,
      { pg_restore = res.tools.pg_restore }), cmd)
    assert.is_nil(cmd:find(CANARY, 1, true))
    assert.matches("%-%-clean %-%-create %-%-exit%-on%-error %-%-dbname='", cmd)
    r = assert(proc.run({ "/bin/sh", "-c", cmd }, { env = helpers.env() }))
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(schema, dump_schema(uri))
    assert.are.same(rows, counts(uri))
  end)

  it("passes the password only in pg_dump's environment, never in argv", function()
    local rec = tmp .. "/record"
    local pg_dump = fake("recording", table.concat({
      'printf "%s\\n" "$0" "$@" >> ' .. rec .. ".argv",
      "cat /proc/$$/cmdline >> " .. rec .. ".cmdline",
      "env >> " .. rec .. ".env",
      'exec "' .. c.bin_dir .. '/pg_dump" "$@"' }, "\n"))
    for _, conninfo in ipairs({
      uri .. "&password=" .. CANARY,
      string.format("postgresql://postgres:%s@/%s?host=%s&port=%d", CANARY, dbname(uri),
        c.socket_dir, c.port),
      string.format("dbname=%s host=%s port=%d user=postgres password=%s keepalives=1",
        dbname(uri), c.socket_dir, c.port, CANARY),
    }) do
      local res, err = backup.run(opts({ conninfo = conninfo, pg_dump = pg_dump }))
      assert.is_nil(err)
      assert.is_true(res.size > 0)
    end
    local argv, env = read(rec .. ".argv"), read(rec .. ".env")
    assert.matches("%-%-format=custom", argv)
    assert.matches("%-%-no%-password", argv)
    assert.is_nil(argv:find(CANARY, 1, true))
    assert.is_nil(read(rec .. ".cmdline"):find(CANARY, 1, true))
    assert.matches("--dbname=keepalives=1", argv, 1, true) -- no variable for it: on argv, no secret
    local _, n = env:gsub("PGPASSWORD=" .. CANARY:gsub("%-", "%%-"), "")
    assert.are.equal(3, n) -- one dump per connection string
    assert.matches("PGDATABASE=" .. dbname(uri), env, 1, true)
    for _, name in ipairs(files_in(dir)) do assert.is_nil(name:find(CANARY, 1, true)) end
  end)

  local failures = {
    { "exits 1 after partial output",
      "printf 'PGDMP-partial' > \"$out\"\necho 'pg_dump: error: connection to server lost; "
        .. "password=" .. CANARY .. "' >&2\nexit 1",
      "pg_dump exited with code 1", 13 },
    { "exits 0 and writes nothing", "exit 0", "pg_dump exited 0 but wrote nothing", 0 },
    { "exits 0 with output pg_restore cannot read", "printf 'not a dump' > \"$out\"\nexit 0",
      "the dump does not read back: pg_restore %-%-list exited with code 1", 10 },
    { "is killed by a signal", "printf 'PGDMP' > \"$out\"\nkill -KILL $$",
      "pg_dump was killed by SIGKILL", 5 },
  }
  for _, case in ipairs(failures) do
    local what, body, cause, bytes = case[1], case[2], case[3], case[4]
    it("fails with kind backup and leaves no file when pg_dump " .. what, function()
      local res, err = backup.run(opts({ pg_dump = fake("bad", body) }))
      assert.is_nil(res)
      assert.are.equal("backup", err.kind)
      assert.matches(cause, err.message)
      assert.are.equal(bytes, err.bytes)
      assert.matches(bytes .. " bytes written", err.message, 1, true)
      assert.is_nil(tostring(err):find(CANARY, 1, true))
      assert.are.same({}, files_in(dir))
    end)
  end

  it("kills pg_dump's whole process group when it times out", function()
    local pidfile = tmp .. "/grandchild.pid"
    local pg_dump = fake("slow", "sleep 30 &\necho $! > " .. pidfile .. "\nwait")
    local t0 = fs.clock_ms()
    local res, err = backup.run(opts({ pg_dump = pg_dump, timeout_ms = 300 }))
    assert.is_nil(res)
    assert.are.equal("backup", err.kind)
    assert.matches("did not finish within 300 ms", err.message)
    assert.is_true(fs.clock_ms() - t0 < 10000)
    assert.are.same({}, files_in(dir))
    local pid = read(pidfile):match("%d+")
    proc.sleep(100)
    local stat = io.open("/proc/" .. pid .. "/stat")
    if stat then -- a zombie waiting for init to reap it is dead too
      assert.matches("^%d+ %(sleep%) Z", stat:read("a"))
      stat:close()
    end
  end)

  it("refuses an old pg_dump before creating anything", function()
    local res, err = backup.run(opts({ pg_dump = fake("old", "exit 0", "14.2"),
      server_version_num = 150004 }))
    assert.is_nil(res)
    assert.are.equal("backup", err.kind)
    assert.matches("pg_dump 14.2 at .* is older than the server %(15.4%)", err.message)
    assert.is_nil(fs.stat(dir))
  end)

  it("fails with kind backup when pg_dump is missing", function()
    local res, err = backup.run(opts({ pg_dump = tmp .. "/none/pg_dump" }))
    assert.is_nil(res)
    assert.are.equal("backup", err.kind)
    assert.matches("pg_dump not found", err.message)
  end)

  it("fails with kind backup on an unwritable directory", function()
    helpers.write_files(tmp, { plain = "a file" })
    local res, err = backup.run(opts({ dir = tmp .. "/plain/backups" }))
    assert.is_nil(res)
    assert.are.equal("backup", err.kind)
    assert.matches("cannot create the backup directory", err.message)
  end)

  it("refuses a world-writable directory without the sticky bit", function()
    assert(fs.mkdir_p(dir, octal("777")))
    assert(fs.chmod(dir, octal("777")))
    local res, err = backup.run(opts())
    assert.is_nil(res)
    assert.are.equal("backup", err.kind)
    assert.matches("writable by everyone and has no sticky bit", err.message)
    assert.are.same({}, files_in(dir))
    assert(fs.chmod(dir, octal("1777")))
    assert(backup.run(opts()))
  end)

  it("never follows a symlink planted at the .partial name", function()
    assert(fs.mkdir_p(dir, octal("700")))
    helpers.write_files(tmp, { victim = "original" })
    local base = dir .. "/app-v0002-" .. FIXED_STAMP
    assert(fs.symlink(tmp .. "/victim", base .. ".dump.partial"))
    assert(fs.symlink(tmp .. "/created-by-link", base .. "-1.dump.partial"))
    local res = assert(backup.run(opts({ time = FIXED_TIME })))
    assert.are.equal(assert(fs.realpath(dir)) .. "/app-v0002-" .. FIXED_STAMP .. "-2.dump",
      res.path)
    assert.are.equal("original", read(tmp .. "/victim"))
    assert.is_nil(fs.stat(tmp .. "/created-by-link"))
    assert.are.equal("link", fs.stat(base .. ".dump.partial", false).type)
  end)

  it("gives two runs in the same second different names", function()
    local a = assert(backup.run(opts({ time = FIXED_TIME })))
    local b = assert(backup.run(opts({ time = FIXED_TIME })))
    assert.are.equal("app-v0002-" .. FIXED_STAMP .. ".dump", a.name)
    assert.are.equal("app-v0002-" .. FIXED_STAMP .. "-1.dump", b.name)
    local list = assert(backup.list(dir))
    assert.are.same({ a.path, b.path }, { list[1].path, list[2].path })
  end)

  it("uses the PG* environment when the connection string is empty", function()
    local env = c:env()
    env.PGDATABASE = dbname(uri)
    local res = assert(backup.run(opts({ conninfo = "", db_name = false, environ = env })))
    assert.matches("^" .. dbname(uri) .. "%-v0002%-", res.name)
  end)
end)

describe("backup.restore_command", function()
  it("quotes for the shell and leaves the password out", function()
    local cmd = backup.restore_command("postgresql://app:" .. CANARY .. "@db:5432/shop",
      "/b/it's.dump", { environ = {} })
    assert.are.equal("pg_restore --clean --create --exit-on-error "
      .. "--dbname='dbname=postgres host=db port=5432 user=app' '/b/it'\\''s.dump'", cmd)
    cmd = backup.restore_command("dbname=postgres host=h", "/x.dump", { environ = {} })
    assert.are.equal("pg_restore --clean --create --exit-on-error "
      .. "--dbname='dbname=template1 host=h' '/x.dump'", cmd)
  end)

  it("fills host, port and user from the environment, connecting to postgres meanwhile", function()
    local cmd = backup.restore_command("", "/b/x.dump", { pg_restore = "/usr/bin/pg_restore",
      environ = { PGHOST = "/run/pg", PGDATABASE = "d", PGPASSWORD = CANARY } })
    assert.are.equal("'/usr/bin/pg_restore' --clean --create --exit-on-error "
      .. "--dbname='dbname=postgres host=/run/pg' '/b/x.dump'", cmd)
  end)

  it("redacts a connection string it cannot parse", function()
    local cmd = backup.restore_command("postgresql://u:" .. CANARY .. "@h/db?nope=1", "/x.dump")
    assert.is_nil(cmd:find(CANARY, 1, true))
  end)
end)

describe("backup.list and backup.prune", function()
  local dir

  before_each(function()
    dir = helpers.tmpdir()
    helpers.write_files(dir, {
      ["app-v0003-20240103T000000Z.dump"] = "333",
      ["app-v0001-20240101T000000Z.dump"] = "1",
      ["app-v0002-20240102T000000Z-1.dump"] = "22",
      ["app-v0002-20240102T000000Z.dump"] = "2",
      ["my-db-v0-20230101T120000Z.dump"] = "m",
      ["app-v0004-20240104T000000Z.dump.partial"] = "partial",
      ["notes.txt"] = "not a backup",
    })
  end)
  after_each(function() helpers.rmdir(dir) end)

  it("lists our backups oldest first, ignoring other files", function()
    local list = assert(backup.list(dir))
    local names = {}
    for i, b in ipairs(list) do names[i] = b.name end
    assert.are.same({ "my-db-v0-20230101T120000Z.dump", "app-v0001-20240101T000000Z.dump",
      "app-v0002-20240102T000000Z.dump", "app-v0002-20240102T000000Z-1.dump",
      "app-v0003-20240103T000000Z.dump" }, names)
    assert.are.equal("my-db", list[1].db)
    assert.are.equal("0", list[1].version)
    assert.are.equal("2023-01-01T12:00:00Z", list[1].time)
    assert.are.equal(1672574400, list[1].epoch)
    assert.are.equal(3, list[5].size)
    assert.are.equal(dir .. "/app-v0003-20240103T000000Z.dump", list[5].path)
    assert.is_true(list[5].age_s > 0 and list[5].age_s < list[1].age_s)
  end)

  it("lists nothing for a missing directory", function()
    assert.are.same({}, assert(backup.list(dir .. "/missing")))
  end)

  it("prunes the oldest beyond keep, per database when asked", function()
    local removed = assert(backup.prune(dir, 2, "app"))
    assert.are.same({ dir .. "/app-v0001-20240101T000000Z.dump",
      dir .. "/app-v0002-20240102T000000Z.dump" }, removed)
    assert.are.same({ "app-v0002-20240102T000000Z-1.dump", "app-v0003-20240103T000000Z.dump",
      "app-v0004-20240104T000000Z.dump.partial", "my-db-v0-20230101T120000Z.dump",
      "notes.txt" }, fs.list(dir))
    removed = assert(backup.prune(dir, 1))
    assert.are.equal(2, #removed)
    assert.are.same({ "app-v0003-20240103T000000Z.dump", "app-v0004-20240104T000000Z.dump.partial",
      "notes.txt" }, fs.list(dir))
    assert.has_error(function() backup.prune(dir, 0) end)
  end)
end)
