-- Passwords never printed: connection strings pasted unencoded, .env, failed statements.
local cjson = require("cjson")
local fs = require("moonshift.fs")
local helpers = require("spec.helpers")

local FILES = {
  ["migrations/0001_a.up.sql"] = "CREATE TABLE a (id int);\n",
}

-- Every file moonshift wrote under dir (the run logs, anything else; not the migrations
-- and .env the test wrote), as one text.
local function files_text(dir)
  local out = {}
  local function walk(d)
    for _, name in ipairs(fs.list(d) or {}) do
      local path = d .. "/" .. name
      local st = fs.stat(path)
      local ours = d == dir and (name == "migrations" or name == ".env")
      if st and not ours then
        if st.type == "directory" then walk(path) else out[#out + 1] = fs.read(path) or "" end
      end
    end
  end
  walk(dir)
  return table.concat(out, "\n")
end

-- Fails naming where a secret (or a piece of one) showed.
local function assert_nowhere(pieces, res, dir)
  local places = { stdout = res.stdout, stderr = res.stderr, files = files_text(dir) }
  for _, piece in ipairs(pieces) do
    for where, text in pairs(places) do
      assert.is_nil(text:find(piece, 1, true),
        string.format("%q shows in %s:\n%s", piece, where, text))
    end
  end
end

-- The parts of the current test's socket URI: socket directory, port, database name.
local function target(db)
  local name = db.uri:match("^postgresql:///([^?]+)")
  return db.cluster.socket_dir, db.cluster.port, name
end

describe("passwords in connection strings #e2e", function()
  local db = helpers.database({ files = FILES })

  -- A URL with the password written into it raw; the host is named in the authority.
  local function url(password, host)
    local sock, port, name = target(db)
    if host then return string.format("postgresql://postgres:%s@%s/%s", password, host, name) end
    return string.format("postgresql://postgres:%s@/%s?host=%s&port=%d", password, name, sock,
      port)
  end

  local function kv(password_part)
    local sock, port, name = target(db)
    return string.format("host=%s port=%d user=postgres dbname=%s %s", sock, port, name,
      password_part)
  end

  local function run(args, database)
    args[#args + 1] = "--database=" .. database
    return helpers.run(args, { cwd = db.dir })
  end

  it("refuses a URL whose password holds a raw @, without a piece of it (exit 2)", function()
    -- libpq splits at the first "@" and took "cr3tw0rd@localhost" for a host name
    local res = run({ "status", "--json" }, url("sek@cr3tw0rd", "localhost"))
    assert.are.equal(2, res.code, res.stderr)
    assert.matches("the connection string in %-%-database is refused: it holds more " ..
      "than one \"@\" before the host %(it is not shown because it may hold a password%); " ..
      "percent%-encode", res.stderr)
    assert.matches("@ as %%40", res.stderr)
    assert_nowhere({ "sek@cr3tw0rd", "cr3tw0rd", "sek@" }, res, db.dir)
  end)

  it("refuses a URL whose password holds a raw /, without a piece of it (exit 2)", function()
    -- libpq read "postgres:sekr3t" as host and port: invalid port "sekr3t"
    local res = run({ "up", "-y" }, url("sekr3t/w0rd", "localhost"))
    assert.are.equal(2, res.code, res.stderr)
    assert.matches("an \"@\" after a \"/\"", res.stderr)
    assert_nowhere({ "sekr3t", "w0rd@" }, res, db.dir)
    assert.are.equal(0, helpers.value(db.uri, "SELECT count(*) FROM pg_catalog.pg_tables " ..
      "WHERE tablename = 'a'"))
  end)

  it("masks a URL password holding a quote or a space in status --json and the run log",
    function()
      local pw = "sek'r3t \"w0rd"
      local status = run({ "status", "--json" }, url(pw))
      assert.are.equal(0, status.code, status.stderr)
      local doc = cjson.decode(status.stdout)
      assert.matches("^postgresql://postgres:%*%*%*@/", doc.database)
      assert_nowhere({ "sek'r3t", "r3t", "w0rd" }, status, db.dir)
      local up = run({ "up", "-y" }, url(pw))
      assert.are.equal(0, up.code, up.stderr)
      assert.matches('"database":"postgresql://postgres:%*%*%*@', files_text(db.dir))
      assert_nowhere({ "sek'r3t", "r3t", "w0rd" }, up, db.dir)
      assert.are.equal(1, helpers.value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    end)

  it("masks a key=value password holding a bare quote", function()
    local res = run({ "status", "--json" }, kv("password=sek'r3tw0rd"))
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("password=%*%*%*$", cjson.decode(res.stdout).database)
    assert_nowhere({ "r3tw0rd" }, res, db.dir)
  end)

  it("refuses an unterminated quote in a key=value string (exit 2), not showing it", function()
    local res = run({ "status" }, kv("password='sekr3t w0rd"))
    assert.are.equal(2, res.code, res.stderr)
    assert.matches("is refused: libpq cannot parse it: unterminated quoted string %(it is not shown", res.stderr)
    assert_nowhere({ "sekr3t", "w0rd" }, res, db.dir)
  end)

  it("refuses an unquoted key=value password holding a space (exit 2), not a piece of it",
    function()
      -- libpq: missing "=" after "morepieces"
      local res = run({ "status" }, kv("password=sekr3t morepieces"))
      assert.are.equal(2, res.code, res.stderr)
      assert.matches("a word is not followed by \"=\"", res.stderr)
      assert_nowhere({ "sekr3t", "morepieces" }, res, db.dir)
    end)

  it("reports a .env value split over two lines by file and line (exit 2)", function()
    local sock, port, name = target(db)
    helpers.write_files(db.dir, { [".env"] = string.format("# target\nPGAPPNAME=x\n" ..
      "DATABASE_URL=\"postgresql://postgres:sekr3t\nw0rd@/%s?host=%s&port=%d\"\n", name, sock,
      port) })
    local res = helpers.run({ "status" }, { cwd = db.dir })
    assert.are.equal(2, res.code, res.stderr)
    assert.matches("^moonshift: %.env:3: the value of DATABASE_URL opens a quote", res.stderr)
    assert.is_nil(res.stderr:find("sekr3t", 1, true), res.stderr)
  end)

  it("refuses a URL password cut at a line break in .env, which libpq reads as a port",
    function()
      helpers.write_files(db.dir, { [".env"] = "DATABASE_URL=postgresql://postgres:sekr3t\n" ..
        "w0rd@localhost/x\n" })
      local res = helpers.run({ "status" }, { cwd = db.dir })
      assert.are.equal(2, res.code, res.stderr)
      assert.matches("the port after the host is not a number", res.stderr)
      assert.is_nil(res.stderr:find("sekr3t", 1, true), res.stderr)
    end)

  it("names the .env file a refused DATABASE_URL came from", function()
    helpers.write_files(db.dir, { [".env"] = "DATABASE_URL=" .. url("sek@cr3tw0rd", "localhost")
      .. "\n" })
    local res = helpers.run({ "status" }, { cwd = db.dir })
    assert.are.equal(2, res.code, res.stderr)
    assert.matches("the connection string in DATABASE_URL %(from %.env%) is refused",
      res.stderr)
    assert.is_nil(res.stderr:find("cr3tw0rd", 1, true), res.stderr)
  end)
end)

describe("passwords in failed statements #e2e", function()
  local db = helpers.database({ files = FILES })

  local STATEMENTS = {
    role = "ALTER ROLE no_such_role PASSWORD 'sekrit';\n",
    encrypted = "CREATE ROLE postgres LOGIN ENCRYPTED PASSWORD 'sekrit';\n",
    mapping = "CREATE USER MAPPING FOR postgres SERVER no_such_server " ..
      "OPTIONS (user 'bob', password 'sekrit');\n",
    block = "DO $$ BEGIN EXECUTE 'ALTER ROLE no_such_role PASSWORD ''sekrit'''; END $$;\n",
    -- the server quotes a piece of a connection string it cannot parse
    subscription = "CREATE SUBSCRIPTION s CONNECTION 'dbname=x password=sekrit otherhalf' " ..
      "PUBLICATION p WITH (connect = false);\n",
  }

  for what, sql in pairs(STATEMENTS) do
    it("keeps the password of a failed statement out of output and run log: " .. what,
      function()
        helpers.write_files(db.dir, { ["migrations/0002_pw.up.sql"] = sql })
        for _, format in ipairs({ "text", "json" }) do
          local res = helpers.ms({ "up", "-y", "--log-format", format })
          assert.are.equal(6, res.code, res.stderr .. res.stdout)
          assert.matches("0002_pw", res.stderr .. res.stdout)
          assert.matches("%*%*%*", res.stderr .. res.stdout)
          assert_nowhere({ "sekrit", "otherhalf" }, res, db.dir)
        end
        assert.are.equal(1, helpers.value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
      end)
  end
end)
