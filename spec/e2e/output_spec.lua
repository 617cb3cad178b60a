-- What reaches the terminal and the reader of stdout: hostile names escaped, columns in
-- characters, a reader that goes away.
local cjson = require("cjson")
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")
local helpers = require("spec.helpers")

local value = helpers.value

-- A name that tries to recolour the terminal, erase the line above and forge a line of
-- moonshift's own (a file name cannot hold "/", so not a progress line's "[3/3]").
local EVIL = "0002_a\27[1A\27[2K\27[31m\nmoonshift: forged"
local EVIL_SHOWN = "0002_a\\x1b[1A\\x1b[2K\\x1b[31m\\nmoonshift: forged"

local function no_raw_controls(text, what)
  assert.is_nil(text:find("\27", 1, true), what .. " holds a raw ESC:\n" .. text)
  for line in text:gmatch("[^\n]+") do
    assert.is_nil(line:find("^moonshift: forged"), what .. " holds a forged line:\n" .. text)
  end
end

describe("names with control characters #e2e", function()
  local db = helpers.database({ files = {
    ["migrations/0001_a.up.sql"] = "CREATE TABLE a (id int);\n",
    ["migrations/" .. EVIL .. ".up.sql"] = "CREATE TABLE evil (id int);\n",
    ["migrations/0003_c.up.sql"] = "CREATE TABLE c (id int);\n",
  } })

  it("are printed escaped by up, status and a failure; JSON keeps them exact", function()
    local res = helpers.ms({ "up", "-y" })
    assert.are.equal(0, res.code, res.stderr)
    no_raw_controls(res.stderr, "up's stderr")
    no_raw_controls(res.stdout, "up's stdout")
    assert.matches("[2/3] " .. EVIL_SHOWN .. "  ok", res.stderr, 1, true)
    assert.are.equal(3, value(db.uri, "SELECT count(*) FROM moonshift_migrations"))

    res = helpers.ms({ "status" })
    assert.are.equal(0, res.code, res.stderr)
    no_raw_controls(res.stdout, "status")
    assert.matches("applied  " .. EVIL_SHOWN, res.stdout, 1, true)

    res = helpers.ms({ "status", "--json" })
    assert.are.equal(0, res.code, res.stderr)
    local st = cjson.decode(res.stdout)
    local ids = {}
    for _, m in ipairs(st.applied) do ids[#ids + 1] = m.id end
    assert.are.same({ "0001_a", EVIL, "0003_c" }, ids)

    res = helpers.ms({ "history" })
    assert.are.equal(0, res.code, res.stderr)
    no_raw_controls(res.stdout, "history")
    assert.matches("apply    " .. EVIL_SHOWN, res.stdout, 1, true)

    -- the file vanished: the name now comes from the history row
    assert(os.remove(db.dir .. "/migrations/" .. EVIL .. ".up.sql"))
    res = helpers.ms({ "up", "-y" })
    assert.are.equal(9, res.code, res.stderr)
    no_raw_controls(res.stderr, "the refusal")
    assert.matches(EVIL_SHOWN, res.stderr, 1, true)
  end)

  it("are printed escaped in a failure's message and its progress line", function()
    helpers.write_files(db.dir, { ["migrations/" .. EVIL .. ".up.sql"] = "SELECT nosuch;\n" })
    local res = helpers.ms({ "up", "-y" })
    assert.are.equal(6, res.code, res.stderr)
    no_raw_controls(res.stderr, "the failure")
    assert.matches("[2/3] " .. EVIL_SHOWN .. "  FAILED", res.stderr, 1, true)
    assert.matches(EVIL_SHOWN .. " failed; rolled back", res.stderr, 1, true)
    res = helpers.ms({ "up", "-y", "--log-format", "json" })
    assert.are.equal(6, res.code, res.stderr)
    for line in res.stdout:gmatch("[^\n]+") do
      local e = cjson.decode(line) -- every line stays valid JSON
      if e.event == "migration_failed" then assert.are.equal(EVIL, e.id) end
    end
  end)
end)

describe("error columns #e2e", function()
  helpers.database({ files = {
    ["migrations/0001_a.up.sql"] = "SELECT 'ééé'; SELECT nosuch;\n",
  } })

  it("are counted in characters after multibyte text", function()
    local res = helpers.ms({ "up", "-y" })
    assert.are.equal(6, res.code, res.stderr)
    -- `nosuch` is the 22nd character of the line (the 25th byte)
    assert.matches("at migrations/0001_a.up.sql:1:22\n", res.stderr, 1, true)
  end)

end)

describe("a reader of stdout that goes away #e2e", function()
  local db = helpers.database({ files = {
    -- long enough for `head -1` to have read its line and gone when it commits
    ["migrations/0001_slow.up.sql"] = "CREATE TABLE a (id int);\nSELECT pg_sleep(1);\n",
    ["migrations/0002_b.up.sql"] = "CREATE TABLE b (id int);\n",
    ["migrations/0003_c.up.sql"] = "CREATE TABLE c (id int);\n",
  } })

  -- Runs `up --log-format json | READER` through sh; returns stderr, exit code, what the
  -- reader kept, and the run log's last event.
  local function piped(reader)
    local script = '( "$@" 2>stderr.txt; echo $? > code.txt ) | ' .. reader .. ' > first.txt'
    local argv = { "sh", "-c", script, "sh", helpers.bin(), "up", "-y", "--log-format", "json",
      "--database=" .. db.uri }
    local r = assert(proc.run(argv, { cwd = db.dir, env = helpers.env(), timeout = 120000 }))
    assert.are.equal(0, r.code, r.stderr)
    local log
    for _, name in ipairs(fs.list(db.dir .. "/moonshift-backups")) do
      log = assert(fs.read(db.dir .. "/moonshift-backups/" .. name))
    end
    return assert(fs.read(db.dir .. "/stderr.txt")),
      tonumber(assert(fs.read(db.dir .. "/code.txt")):match("%d+")),
      assert(fs.read(db.dir .. "/first.txt")), cjson.decode(log:match("([^\n]+)\n$"))
  end

  local function applied()
    return value(db.uri, "SELECT string_agg(version || ' ' || state, ', ' ORDER BY version) " ..
      "FROM moonshift_migrations")
  end

  it("with `head -1`: stops before a migration, says why, exits 141, leaves no dirty row", function()
    local stderr, code, first, last = piped("head -1")
    assert.are.equal(141, code, stderr)
    assert.are.equal("run_start", cjson.decode(first).event) -- the line head read is whole
    local before = stderr:match("^moonshift: standard output was closed %(Broken pipe%); " ..
      "stopped before (%S+), nothing of it was applied\n$")
    assert.is_truthy(before, stderr)
    -- head may go before the first migration starts or while it runs (it is slow)
    if before == "0001_slow" then
      assert.is_nil(applied())
    else
      assert.are.equal("0002_b", before)
      assert.are.equal("0001 applied", applied())
    end
    assert.are.equal("run_failed", last.event)
    assert.matches("standard output was closed", last.message)
  end)

  it("finishes the migration in flight when the reader goes during it", function()
    -- the reader goes once it has read that 0001 started (it runs for a second)
    local stderr, code, _, last = piped("sed -n '/migration_start/{p;q;}'")
    assert.are.equal(141, code, stderr)
    assert.matches("standard output was closed %(Broken pipe%); stopped before 0002_b, " ..
      "nothing of it was applied", stderr)
    assert.are.equal("0001 applied", applied())
    assert.are.equal("run_failed", last.event)
  end)
end)
