-- status, check, history, stamp and force end to end.
local cjson = require("cjson")
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")
local helpers = require("spec.helpers")

local value = helpers.value

local FILES = {
  ["migrations/0001_a.up.sql"] = "CREATE TABLE a (id int);\n",
  ["migrations/0001_a.down.sql"] = "DROP TABLE a;\n",
  ["migrations/0002_b.up.sql"] = "CREATE TABLE b (id int);\n",
  ["migrations/0002_b.down.sql"] = "DROP TABLE b;\n",
  ["migrations/0003_c.up.sql"] = "CREATE TABLE c (id int);\n",
}

describe("status, check, history, stamp, force #e2e", function()
  local db = helpers.database({ files = FILES })

  local ms = helpers.ms

  it("status creates nothing and lists pending migrations", function()
    local res = ms({ "status" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("nothing applied", res.stdout)
    assert.matches("pending  0003_c", res.stdout)
    assert.matches("0 applied, 3 pending", res.stdout)
    assert.matches(": nothing applied; target 0003\n", res.stdout)
    assert.matches("pending  0001_a%s+sha256 %x%x%x%x%x%x%x%x%x%x%x%x\n", res.stdout)
    local quiet = ms({ "check", "-q" })
    assert.are.equal(3, quiet.code, quiet.stderr)
    assert.are.equal("", quiet.stdout)
    assert.are.equal(0, value(db.uri, "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = 'public'"))
  end)

  it("status --json is a stable document with checksums", function()
    assert.are.equal(0, ms({ "up", "-y", "--to", "0002" }).code)
    local res = ms({ "status", "--json" })
    assert.are.equal(0, res.code, res.stderr)
    local doc = cjson.decode(res.stdout)
    assert.are.equal(1, doc.format_version)
    assert.are.equal("0002", doc.current)
    assert.are.equal("0003", doc.target_version)
    assert.are.equal(2, #doc.applied)
    assert.are.equal(1, #doc.pending)
    assert.are.equal("0003_c", doc.pending[1].id)
    assert.matches("^%x+$", doc.applied[1].checksum)
    assert.are.equal(64, #doc.applied[1].checksum)
    assert.are.same({}, doc.drift)
    -- who and how long: in the document (status --json, check --json), not in the listing
    assert.are.equal("postgres", doc.applied[1].applied_by)
    assert.are.equal("number", type(doc.applied[1].duration_ms))
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", doc.applied[2].applied_at)
    local check = ms({ "check", "--json" })
    assert.are.equal(3, check.code)
    assert.are.equal("postgres", cjson.decode(check.stdout).applied[2].applied_by)
    local text = ms({ "status" }).stdout
    assert.matches("applied  0002_b%s+" .. doc.applied[2].applied_at:gsub("%p", "%%%0"), text)
  end)

  it("check exits 3 when pending, 0 when up to date, 9 on drift until stamp", function()
    assert.are.equal(3, ms({ "check" }).code)
    assert.are.equal(0, ms({ "up", "-y" }).code)
    assert.are.equal(0, ms({ "check" }).code)
    helpers.write_files(db.dir, { ["migrations/0002_b.up.sql"] = "CREATE TABLE b (id bigint);\n" })
    local res = ms({ "check" })
    assert.are.equal(9, res.code)
    assert.matches("CHANGED  0002_b", res.stdout)
    local up = ms({ "up", "-y" })
    assert.are.equal(9, up.code)
    assert.matches("changed on disk since they ran: 0002_b", up.stderr)
    assert.matches("`moonshift accept 0002` records the files as they are now", up.stderr)
    local st = ms({ "stamp", "0003", "-y" }) -- stamp no longer accepts a changed file
    assert.are.equal(0, st.code, st.stderr)
    assert.are.equal(9, ms({ "check" }).code)
    local acc = ms({ "accept", "0002", "-y" })
    assert.are.equal(0, acc.code, acc.stderr)
    assert.matches("accepted 1 changed file on .*: 0002_b", acc.stdout)
    assert.are.equal(0, ms({ "check" }).code)
    local ev = helpers.query(db.uri, "SELECT detail FROM moonshift_events WHERE action = 'accept'")
    assert.are.equal(1, #ev)
    local detail = type(ev[1].detail) == "string" and cjson.decode(ev[1].detail) or ev[1].detail
    assert.are_not.equal(detail.old_checksum, detail.new_checksum)
    assert.are.equal(value(db.uri, "SELECT checksum FROM moonshift_migrations WHERE version = '0002'"),
      detail.new_checksum)
    local again = ms({ "accept", "0002", "-y" })
    assert.are.equal(2, again.code)
    assert.matches("0002_b is unchanged since it ran", again.stderr)
  end)

  it("stamp refuses to un-record newer applied migrations unless --rewind, and logs", function()
    assert.are.equal(0, ms({ "up", "-y" }).code)
    local before = value(db.uri, "SELECT applied_at::text FROM moonshift_migrations WHERE version = '0003'")
    local res = ms({ "stamp", "0001", "-y" })
    assert.are.equal(9, res.code, res.stderr)
    assert.matches("stamping 0001_a would un%-record 2 migrations applied after it %(0002_b, " ..
      "0003_c%).-down %-%-to 0001.-nothing was changed", res.stderr)
    assert.are.equal(3, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    res = ms({ "stamp", "0003", "-y" }) -- everything up to 0003 is applied: no row rewritten
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("0 rows changed", res.stdout)
    assert.are.equal(before, value(db.uri, "SELECT applied_at::text FROM moonshift_migrations " ..
      "WHERE version = '0003'"))
    res = ms({ "stamp", "0001", "-y", "--rewind" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("2 rows changed", res.stdout)
    assert.are.equal(1, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    assert.are.equal("b", value(db.uri, "SELECT to_regclass('b')::text")) -- its objects stay
    local logs = {}
    for _, name in ipairs(fs.list(db.dir .. "/moonshift-backups") or {}) do
      local text = fs.read(db.dir .. "/moonshift-backups/" .. name) or ""
      if text:find('"command":"stamp"', 1, true) then logs[#logs + 1] = text end
    end
    assert.are.equal(2, #logs) -- the two stamps that changed something or nothing; not the refusal
    for _, text in ipairs(logs) do assert.matches('"event":"run_done"', text) end
  end)

  it("the checksum cache never hides a file edited after it was cached", function()
    local cache = db.dir .. "/cache"
    local function cached(args)
      return ms(args, { env = { MOONSHIFT_CACHE_DIR = cache } })
    end
    proc.sleep(2100) -- files changed in the last 2 s are not cached (racy timestamps)
    assert.are.equal(0, cached({ "up", "-y" }).code)
    local names = assert(fs.list(cache)) -- <dir>.cache, file by file, and <dir>.set, the set
    assert.are.equal(2, #names)
    assert.matches("%.cache$", names[1])
    assert.matches("0002_b.up.sql", fs.read(cache .. "/" .. names[1]))
    assert.matches("%.set$", names[2])
    assert.matches("0002_b.up.sql", fs.read(cache .. "/" .. names[2]))
    assert.are.equal(0, cached({ "check" }).code)
    -- same size, same mtime: only the ctime tells
    local path = db.dir .. "/migrations/0002_b.up.sql"
    local mtime = fs.stat(path).mtime
    helpers.write_files(db.dir, { ["migrations/0002_b.up.sql"] = "CREATE TABLE b (id int8);\n" })
    assert(os.execute(string.format("touch -m -d @%d %s", mtime, path)))
    local res = cached({ "status" })
    assert.are.equal(0, res.code)
    assert.matches("CHANGED  0002_b", res.stdout)
    assert.are.equal(9, cached({ "check" }).code)
  end)

  it("with a set cache, a broken file is still reported before an unreachable server",
    function()
    local cache = db.dir .. "/cache"
    local function cached(args, database)
      local argv = { table.unpack(args) }
      argv[#argv + 1] = "--database=" .. (database or db.uri)
      return helpers.run(argv, { cwd = db.dir, env = { MOONSHIFT_CACHE_DIR = cache } })
    end
    proc.sleep(2100) -- files changed in the last 2 s are not cached (racy timestamps)
    assert.are.equal(0, cached({ "up", "-y", "--to", "0002" }).code)
    local res = cached({ "status" }) -- answered by the set cache
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("applied  0002_b", res.stdout)
    assert.matches("2 applied, 1 pending", res.stdout)
    local nowhere = "postgresql:///app?host=" .. db.dir .. "&port=1&connect_timeout=2"
    res = cached({ "status" }, nowhere)
    assert.are.equal(4, res.code, res.stderr)
    assert.matches("cannot connect", res.stderr)
    helpers.write_files(db.dir, { ["migrations/0003_again.up.sql"] = "SELECT 1;\n" })
    res = cached({ "status" }, nowhere)
    assert.are.equal(2, res.code, res.stderr)
    assert.matches("duplicate.*0003_again.up.sql", res.stderr)
    assert.are.equal(res.stderr, cached({ "status" }).stderr) -- the same refusal with a server
  end)

  it("a CRLF checkout with a BOM is not drift", function()
    assert.are.equal(0, ms({ "up", "-y" }).code)
    helpers.write_files(db.dir, { ["migrations/0001_a.up.sql"] = "\239\187\191CREATE TABLE a (id int);\r\n" })
    assert.are.equal(0, ms({ "check" }).code)
  end)

  it("refuses a missing applied file and a pending migration older than the newest", function()
    assert.are.equal(0, ms({ "up", "-y", "--to", "0001" }).code)
    assert.are.equal(0, ms({ "stamp", "0003", "-y" }).code)
    assert.are.equal(0, ms({ "force", "0002", "--not-applied", "-y" }).code)
    local res = ms({ "up", "-y" })
    assert.are.equal(9, res.code)
    assert.matches("older than the newest applied one %(0003_c%): 0002_b", res.stderr)
    local ok = ms({ "up", "-y", "--out-of-order" })
    assert.are.equal(0, ok.code, ok.stderr)
    os.remove(db.dir .. "/migrations/0003_c.up.sql")
    local missing = ms({ "up", "-y" })
    assert.are.equal(9, missing.code)
    assert.matches("have no file: 0003_c", missing.stderr)
  end)

  it("status shows every reason check refuses for, and check counts changed repeatables",
    function()
    assert.are.equal(0, ms({ "up", "-y", "--to", "0001" }).code)
    assert.are.equal(0, ms({ "stamp", "0003", "-y" }).code)
    assert.are.equal(0, ms({ "force", "0002", "--not-applied", "-y" }).code)
    local st, ck = ms({ "status" }), ms({ "check" })
    assert.are.equal(9, ck.code, ck.stderr)
    assert.matches("pending  0002_b%s+sha256 %x+  out of order: older than the newest applied", st.stdout)
    assert.matches("2 applied, 1 pending, 1 out of order; up is refused", st.stdout)
    assert.are.equal(st.stdout, ck.stdout)

    local fly = helpers.tmpdir()
    finally(function() helpers.rmdir(fly) end)
    helpers.write_files(fly, { ["sql/V1__a.sql"] = "CREATE TABLE fa (id int);\n",
      ["sql/R__v.sql"] = "CREATE OR REPLACE VIEW fv AS SELECT 1 AS one;\n" })
    local function fly_ms(args)
      table.insert(args, "--migrations=sql")
      table.insert(args, "--table=fly_history")
      return helpers.ms(args, { cwd = fly })
    end
    assert.are.equal(0, fly_ms({ "up", "-y" }).code)
    assert.are.equal(0, fly_ms({ "check" }).code)
    helpers.write_files(fly, { ["sql/R__v.sql"] = "CREATE OR REPLACE VIEW fv AS SELECT 1 AS one, 2 AS two;\n" })
    local res = fly_ms({ "check" })
    assert.are.equal(3, res.code, res.stderr)
    assert.matches("pending  R__v %(repeatable%)", res.stdout)
    assert.matches("1 applied, 1 pending", res.stdout)
  end)

  it("a failed transactional migration is in the history though it rolled back", function()
    helpers.write_files(db.dir, { ["migrations/0002_b.up.sql"] =
      "CREATE TABLE b (id int);\nINSERT INTO b VALUES (1);\nSELECT 1/0;\n" })
    local res = ms({ "up", "-y" })
    assert.are.equal(6, res.code, res.stderr)
    assert.matches("rolled back, nothing of it was applied", res.stderr)
    assert.is_nil(value(db.uri, "SELECT to_regclass('b')::text"))
    local events = cjson.decode(ms({ "history", "--json" }).stdout)
    local last = events[#events]
    assert.are.equal("fail", last.action)
    assert.are.equal("0002_b", last.name)
    local detail = type(last.detail) == "string" and cjson.decode(last.detail) or last.detail
    assert.are.equal("22012", detail.sqlstate)
    assert.are.equal(3, detail.line)
    assert.matches("division by zero", detail.message)
    assert.matches("fail +0002_b", ms({ "history" }).stdout)
  end)

  it("history lists events, as text and JSON", function()
    assert.are.equal(0, ms({ "up", "-y", "--to", "2" }).code)
    local dn = ms({ "down", "-y" })
    assert.are.equal(0, dn.code, dn.stderr)
    local res = ms({ "history", "--json" })
    assert.are.equal(0, res.code, res.stderr)
    local events = cjson.decode(res.stdout)
    assert.are.equal(3, #events)
    assert.are.equal("apply", events[1].action)
    assert.are.equal("0001_a", events[1].name)
    assert.are.equal("revert", events[3].action)
    local text = ms({ "history" })
    assert.matches("revert +0002_b", text.stdout)
    local refused = ms({ "down", "--all", "-y" })
    assert.are.equal(0, refused.code, refused.stderr)
    assert.are.equal(0, ms({ "up", "-y" }).code)
    refused = ms({ "down", "-y" })
    assert.are.equal(9, refused.code)
    assert.matches("0003_c has no down script %(migrations/0003_c%.down%.sql%)", refused.stderr)
  end)

  it("--log-format json streams one event per line", function()
    local res = ms({ "up", "-y", "--log-format", "json" })
    assert.are.equal(0, res.code, res.stderr)
    local names = {}
    for line in res.stdout:gmatch("[^\n]+") do names[#names + 1] = cjson.decode(line).event end
    assert.are.equal("run_start", names[1])
    assert.are.equal("run_done", names[#names - 1])
    assert.are.equal("run_finished", names[#names])
    assert.is_truthy(table.concat(names, ","):find("migration_start,statement,migration_done", 1, true))
  end)

  it("--single-transaction rolls back the whole run on a failure", function()
    helpers.write_files(db.dir, { ["migrations/0003_c.up.sql"] = "CREATE TABLE c (id int);\nSELECT 1/0;\n" })
    local res = ms({ "up", "-y", "--single-transaction" })
    assert.are.equal(6, res.code)
    assert.matches("whole run was rolled back", res.stderr)
    assert.are.equal(0, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    assert.is_nil(value(db.uri, "SELECT to_regclass('a')::text"))
  end)

  it("rejects an unknown key in migrate.lua, naming it", function()
    helpers.write_files(db.dir, { ["migrate.lua"] = "return { migration = 'x' }\n" })
    local res = ms({ "status" })
    assert.are.equal(2, res.code)
    assert.matches("unknown key \"migration\"", res.stderr)
  end)

  it("reads the database from migrate.lua, the environment and .env in that order", function()
    helpers.write_files(db.dir, { ["migrate.lua"] = "return { database = env('APP_DB') }\n",
      [".env"] = "APP_DB=" .. db.uri .. "\n" })
    local res = helpers.run({ "status" }, { cwd = db.dir })
    assert.are.equal(0, res.code, res.stderr)
    local bad = helpers.run({ "status" }, { cwd = db.dir,
      env = { DATABASE_URL = "postgresql:///nope?user=postgres&host=" .. db.cluster.socket_dir } })
    assert.are.equal(4, bad.code)
    assert.matches("database \"nope\" does not exist", bad.stderr)
  end)
end)
