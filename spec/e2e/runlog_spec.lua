-- The run log end to end: a log that cannot be written, and reconciling the previous run.
local cjson = require("cjson")
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")
local helpers = require("spec.helpers")

local value = helpers.value

-- The log lines of dir's logs, decoded: { [name] = { event, ... } }.
local function logs(dir)
  local out = {}
  for _, name in ipairs(fs.list(dir) or {}) do
    if name:match("%.log$") then
      local events = {}
      for line in assert(fs.read(dir .. "/" .. name)):gmatch("[^\n]+") do
        local ok, e = pcall(cjson.decode, line)
        events[#events + 1] = ok and e or { event = "(not JSON)" }
      end
      out[name] = events
    end
  end
  return out
end

-- Twenty migrations: a run log of ~14 kB whose first line (the plan) takes ~4 kB.
local function twenty()
  local files = {}
  for i = 1, 20 do
    files[string.format("migrations/%04d_m.up.sql", i)] = "CREATE TABLE t" .. i .. " (id int);\n"
  end
  return files
end

describe("a run log that cannot be written #e2e", function()
  local db = helpers.database({ files = twenty() })

  -- moonshift under a file-size limit (RLIMIT_FSIZE; moonshift ignores SIGXFSZ, so a write
  -- past it fails with EFBIG as one on a full disk fails with ENOSPC): no mount, no
  -- privileges; works in a container. bash's ulimit -f counts kilobytes.
  local function limited(kb, args)
    local argv = { "bash", "-c", 'ulimit -f "$1" && shift && exec "$@"', "bash", tostring(kb),
      helpers.bin() }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    argv[#argv + 1] = "--database=" .. db.uri
    return assert(proc.run(argv, { cwd = db.dir, env = helpers.env(), timeout = 120000 }))
  end

  -- The bytes written to the run logs (the limit really cut them: the spec cannot pass
  -- with a log that was written whole).
  local function logged()
    local n = 0
    for _, name in ipairs(fs.list(db.dir .. "/moonshift-backups") or {}) do
      n = n + fs.stat(db.dir .. "/moonshift-backups/" .. name).size
    end
    return n
  end

  it("warns naming the log and its error when a write fails mid-run, applies, exits 10", function()
    local res = limited(8, { "up", "-y" })
    assert.matches("warning: cannot write the run log: moonshift%-backups/[^\n]+%.log: write: " ..
      "File too large %(EFBIG%)", res.stderr)
    assert.matches("the run itself finished %(applied 20 migrations on %S+, now at 0020_m%): " ..
      "the database's history", res.stderr)
    assert.are.equal(10, res.code, res.stderr)
    -- the database is the truth: everything ran
    assert.are.equal(20, value(db.uri, "SELECT count(*) FROM moonshift_migrations " ..
      "WHERE state = 'applied'"))
    -- one warning, however many events could not be written
    local _, warnings = res.stderr:gsub("warning: cannot write the run log", "")
    assert.are.equal(1, warnings)
    assert.is_true(logged() <= 8192, logged() .. " bytes logged")
  end)

  it("keeps a failed migration's own exit code, and still warns about the log", function()
    helpers.write_files(db.dir, { ["migrations/0020_m.up.sql"] = "SELECT nosuch;\n" })
    local res = limited(8, { "up", "-y" })
    assert.are.equal(6, res.code, res.stderr)
    assert.matches("warning: cannot write the run log: [^\n]+EFBIG", res.stderr)
    assert.are.equal(19, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
  end)

  it("refuses before anything runs when not even its first line can be written", function()
    local res = limited(1, { "up", "-y" })
    assert.are.equal(10, res.code, res.stderr)
    assert.matches("moonshift: cannot write the run log: moonshift%-backups/[^\n]+%.log: " ..
      "write: File too large %(EFBIG%); nothing was migrated", res.stderr)
    assert.are.equal(0, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    assert.is_true(logged() <= 1024, logged() .. " bytes logged")
  end)

  it("refuses before anything runs when the log cannot be created", function()
    helpers.write_files(db.dir, { ["migrate.lua"] = "return { log = { dir = 'logs' } }\n",
      ["logs"] = "a file where the directory should be\n" })
    local res = helpers.ms({ "up", "-y" })
    assert.are.equal(10, res.code, res.stderr)
    assert.matches("cannot create the log directory: [^\n]+; nothing was migrated", res.stderr)
    assert.are.equal(0, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
  end)
end)

describe("reconciling the previous run #e2e", function()
  local db = helpers.database({ files = {
    ["migrations/0001_a.up.sql"] = "CREATE TABLE a (id int);\n",
    ["migrations/0002_b.up.sql"] = "CREATE TABLE b (id int);\n",
  } })

  it("looks only at logs of the same database", function()
    local other = helpers.fresh_db(db.cluster)
    -- the other database's run is killed after its first migration: its log has no end
    local a = helpers.spawn({ "up", "-y", "-d", other }, db.dir,
      { MOONSHIFT_TEST_PAUSE = "after_commit:0001" })
    for _ = 1, 200 do
      local ok, n = pcall(value, other, "SELECT count(*) FROM moonshift_migrations")
      if ok and n == 1 then break end
      proc.sleep(50)
    end
    a:kill("KILL")
    a:wait(10000)
    local res = helpers.ms({ "up", "-y" })
    assert.are.equal(0, res.code, res.stderr)
    assert.not_matches("ended without a final status", res.stderr)
    assert.are.equal(2, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    -- and the other database's next run still hears of its own
    res = helpers.run({ "up", "-y", "-d", other }, { cwd = db.dir })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("previous run %S+ ended without a final status %(moonshift%-backups/[^)]+%.log%); " ..
      "the database shows 0001_a applied at", res.stderr)
  end)

  it("does not follow a failed backup: its log has a final status", function()
    -- a pg_dump that says its version (as backup.ready asks) and then fails
    helpers.write_files(db.dir, {
      ["migrate.lua"] = "return { backup = { pg_dump = '" .. db.dir .. "/bin/pg_dump' } }\n",
      ["bin/pg_dump"] = "#!/bin/sh\n[ \"$1\" = --version ] && echo 'pg_dump (PostgreSQL) 99.0' " ..
        "&& exit 0\necho 'pg_dump: error: no space left' >&2\nexit 1\n",
      ["bin/pg_restore"] = "#!/bin/sh\nexit 0\n",
    })
    assert(fs.chmod(db.dir .. "/bin/pg_dump", tonumber("755", 8)))
    assert(fs.chmod(db.dir .. "/bin/pg_restore", tonumber("755", 8)))
    local res = helpers.ms({ "up", "-y", "--backup-first" })
    assert.are.equal(10, res.code, res.stderr)
    local found
    for _, events in pairs(logs(db.dir .. "/moonshift-backups")) do
      found = events[#events]
    end
    assert.are.equal("run_failed", found and found.event)
    res = helpers.ms({ "up", "-y" })
    assert.are.equal(0, res.code, res.stderr)
    assert.not_matches("ended without a final status", res.stderr)
  end)

  it("takes the newest log by its recorded start, not by the file's time", function()
    local res = helpers.ms({ "up", "-y", "--to", "1" })
    assert.are.equal(0, res.code, res.stderr)
    local dir = db.dir .. "/moonshift-backups"
    local name = next(logs(dir))
    -- an older unfinished log of the same database, whose file was touched later and whose
    -- name sorts after the finished one
    local text = assert(fs.read(dir .. "/" .. name))
    local header = cjson.decode(text:match("^[^\n]+"))
    header.run_id, header.started_at = "19990101T000000Z-00000000", "1999-01-01T00:00:00.000000Z"
    assert(fs.write_atomic(dir .. "/zzzz-old.log", cjson.encode(header) .. "\n"))
    res = helpers.ms({ "up", "-y" })
    assert.are.equal(0, res.code, res.stderr)
    assert.not_matches("ended without a final status", res.stderr)
  end)

  it("does not call a run still connected (lock = \"table\" beside a pooler) unfinished",
    function()
    local res = helpers.ms({ "up", "-y", "--to", "1" })
    assert.are.equal(0, res.code, res.stderr)
    local dir = db.dir .. "/moonshift-backups"
    local header = cjson.decode(assert(fs.read(dir .. "/" .. next(logs(dir)))):match("^[^\n]+"))
    -- a newer run, still connected as moonshift names its sessions, whose log has no end yet
    header.run_id, header.started_at = "29990101T000000Z-00000001", "2999-01-01T00:00:00.000000Z"
    header.pid = 4242424
    assert(fs.write_atomic(dir .. "/zzzz-running.log", cjson.encode(header) .. "\n"))
    local running = assert(require("moonshift.pg").connect(db.uri, {
      application_name = "moonshift/0.0.0/" .. header.host .. "/4242424" }))
    res = helpers.ms({ "status" })
    assert.are.equal(0, res.code, res.stderr)
    helpers.write_files(db.dir, { ["migrations/0009_z.up.sql"] = "SELECT 1;\n" })
    res = helpers.ms({ "up", "-y", "--to", "2" })
    assert.are.equal(0, res.code, res.stderr)
    assert.not_matches("ended without a final status", res.stderr)
    running:close()
    os.remove(dir .. "/" .. (function()
      for name, events in pairs(logs(dir)) do
        if events[1].run_id ~= header.run_id and events[#events].event == "run_done" and
          name ~= "zzzz-running.log" and events[1].to == "0002" then return name end
      end
    end)() or "none")
    res = helpers.ms({ "up", "-y" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("previous run 29990101T000000Z%-00000001 ended without a final status", res.stderr)
  end)
end)
