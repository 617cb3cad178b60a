-- Large migrations end to end (issue 14, item 12): files over source.STREAM_SIZE are checked,
-- hashed and run statement by statement, COPY data in pieces, so the runner's peak memory
-- stays flat whatever the file's size; line numbers and failures stay honest.
local helpers = require("spec.helpers")
local hash = require("moonshift.hash")

local ms, value = helpers.ms, helpers.value
local fmt = string.format

-- The peak memory a run may use, whatever the size of its files (bench/memory.lua measures
-- about 30 MB for 20 MB to 1 GB).
local PEAK_KB = 64 * 1024

-- Writes path with rows 1..n of table big, as COPY data (kind "copy") or INSERTs, after a
-- CREATE TABLE (with `create`); `line` (function(i) -> text) may replace row i's line.
-- Returns the number of lines written.
local function write_rows(path, kind, first, n, opts)
  opts = opts or {}
  local f = assert(io.open(path, "w"))
  local lines = 0
  local function put(s)
    f:write(s)
    lines = lines + select(2, s:gsub("\n", ""))
  end
  if opts.create then put("CREATE TABLE big (id bigint PRIMARY KEY, note text, n int);\n") end
  if kind == "copy" then put("COPY big (id, note, n) FROM stdin;\n") end
  local buf = {}
  for i = first, first + n - 1 do
    local line = opts.line and opts.line(i)
    if not line then
      local note = fmt("row %d %s", i, string.rep("x", i % 50))
      if kind == "copy" then
        line = fmt("%d\t%s\t%d\n", i, note, i % 1000)
      else
        line = fmt("INSERT INTO big (id, note, n) VALUES (%d, '%s', %d);\n", i, note, i % 1000)
      end
    end
    buf[#buf + 1] = line
    if #buf == 4096 then
      put(table.concat(buf))
      buf = {}
    end
  end
  put(table.concat(buf))
  if kind == "copy" then put("\\.\n") end
  f:close()
  return lines
end

-- What the table holds when rows 1..n went in as written: count, sum of n, and a digest of
-- every note in order (computed here, not by moonshift or the server).
local function expected(n)
  local notes = {}
  local sum = 0
  for i = 1, n do
    notes[i] = fmt("row %d %s", i, string.rep("x", i % 50))
    sum = sum + i % 1000
  end
  return { count = n, sum = sum, digest = hash.sha256(table.concat(notes, "\n")) }
end

local function actual(uri)
  return {
    count = tonumber(value(uri, "SELECT count(*) FROM big")),
    sum = tonumber(value(uri, "SELECT sum(n) FROM big")),
    digest = value(uri, "SELECT encode(sha256(convert_to(string_agg(note, E'\\n' ORDER BY id), " ..
      "'UTF8')), 'hex') FROM big"),
  }
end

local function size_mb(path)
  local f = assert(io.open(path, "rb"))
  local size = f:seek("end")
  f:close()
  return size / 1024 / 1024
end

describe("moonshift up with large migration files #e2e", function()
  local db = helpers.database({ files = { ["migrations/.keep"] = "" } })

  it("applies 48 MB of COPY data and 16 MB of INSERTs with flat memory, as psql would load them",
    function()
      local dir = db.dir .. "/migrations"
      local copy_rows, insert_rows = 950000, 160000
      write_rows(dir .. "/0001_copy.up.sql", "copy", 1, copy_rows, { create = true })
      write_rows(dir .. "/0002_insert.up.sql", "insert", copy_rows + 1, insert_rows)
      assert.is_true(size_mb(dir .. "/0001_copy.up.sql") > 40)
      assert.is_true(size_mb(dir .. "/0002_insert.up.sql") > 14)

      -- Under AddressSanitizer freed memory waits in a quarantine (256 MB by default) that
      -- would be counted too; without it a sanitized build peaks near a plain one.
      local asan = os.getenv("ASAN_OPTIONS")
      -- GNU time reports its own child's peak: a child's ru_maxrss counts what it inherited
      -- from its parent before exec, here the whole test process
      local proc = require("moonshift.proc")
      local res = assert(proc.run({ "/usr/bin/time", "-f", "peak_kb=%M", helpers.bin(), "up",
        "-y", "--database=" .. db.uri }, { cwd = db.dir, timeout = 600000,
        env = helpers.env({ ASAN_OPTIONS = (asan and asan ~= "" and asan .. ":" or "") ..
          "quarantine_size_mb=0:thread_local_quarantine_size_kb=0" }) }))
      assert.are.equal(0, res.code, res.stderr)
      local peak_kb = tonumber(res.stderr:match("peak_kb=(%d+)%s*$"))
      assert.is_truthy(peak_kb, res.stderr)
      assert.is_true(peak_kb < PEAK_KB, fmt("peak resident memory %.1f MB, over %d MB",
        peak_kb / 1024, PEAK_KB // 1024))
      assert.are.same(expected(copy_rows + insert_rows), actual(db.uri))
      -- the checksum is the file's, hashed while it streamed past
      assert.are.equal(hash.sha256_file(dir .. "/0001_copy.up.sql"),
        value(db.uri, "SELECT checksum FROM moonshift_migrations WHERE version = '0001'"))
      assert.are.equal(hash.sha256_file(dir .. "/0002_insert.up.sql"),
        value(db.uri, "SELECT checksum FROM moonshift_migrations WHERE version = '0002'"))

      -- status reads the checksums again (from the cache or the files): nothing pending, no drift
      res = ms({ "status" })
      assert.are.equal(0, res.code, res.stderr)
      assert.is_truthy(res.stdout:find("2 applied, 0 pending", 1, true), res.stdout)
    end)

  it("names the right line of a syntax error deep in a large file, and rolls it all back",
    function()
      local dir = db.dir .. "/migrations"
      local bad = 150000
      local lines = write_rows(dir .. "/0001_big.up.sql", "insert", 1, 160000, { create = true,
        line = function(i)
          if i == bad then return "INSERT INTO big (id, note, n) VALUES (1, 'x', 1) oops;\n" end
        end })
      assert.is_true(size_mb(dir .. "/0001_big.up.sql") > 8)
      assert.are.equal(160001, lines)

      local res = ms({ "up", "-y" }, { timeout = 600000 })
      assert.are.equal(6, res.code, res.stderr)
      local line = bad + 1 -- the CREATE TABLE comes first
      assert.is_truthy(res.stderr:find("0001_big.up.sql:" .. line .. ":", 1, true), res.stderr)
      assert.is_truthy(res.stderr:find("syntax error", 1, true), res.stderr)
      assert.is_truthy(res.stderr:find("rolled back", 1, true), res.stderr)
      assert.are.equal(nil, value(db.uri, "SELECT to_regclass('big')::text"))
      assert.are.equal(0, tonumber(value(db.uri, "SELECT count(*) FROM moonshift_migrations")))
    end)

  it("names the file line of a bad COPY data line in a large file", function()
    local dir = db.dir .. "/migrations"
    local bad = 400000
    write_rows(dir .. "/0001_copy.up.sql", "copy", 1, 450000, { create = true,
      line = function(i) if i == bad then return "not a number\tx\t1\n" end end })
    assert.is_true(size_mb(dir .. "/0001_copy.up.sql") > 8)

    local res = ms({ "up", "-y" }, { timeout = 600000 })
    assert.are.equal(6, res.code, res.stderr)
    -- CREATE TABLE on line 1, COPY on line 2, row i on line i + 2
    assert.is_truthy(res.stderr:find("0001_copy.up.sql:" .. (bad + 2) .. ":1", 1, true),
      res.stderr)
    assert.is_truthy(res.stderr:find("22P02", 1, true), res.stderr)
    assert.are.equal(nil, value(db.uri, "SELECT to_regclass('big')::text"))
  end)

  it("runs a large non-transactional file one statement at a time and says where it stopped",
    function()
      local dir = db.dir .. "/migrations"
      local f = assert(io.open(dir .. "/0001_nt.up.sql", "w"))
      f:write("-- moonshift:no-transaction\nCREATE TABLE nt (id int PRIMARY KEY, note text);\n")
      for i = 1, 160000 do
        f:write(fmt("INSERT INTO nt VALUES (%d, 'row %d %s');\n", i == 100000 and 1 or i, i,
          string.rep("x", 20)))
      end
      f:close()
      assert.is_true(size_mb(dir .. "/0001_nt.up.sql") > 8)

      local res = ms({ "up", "-y" }, { timeout = 600000 })
      assert.are.equal(6, res.code, res.stderr)
      assert.is_truthy(res.stderr:find("0001_nt.up.sql:100002:1", 1, true), res.stderr)
      assert.is_truthy(res.stderr:find("statements before this one stayed applied", 1, true))
      assert.are.equal(99999, tonumber(value(db.uri, "SELECT count(*) FROM nt")))
      assert.is_true(size_mb(dir .. "/0001_nt.up.sql") < 16)
      assert.are.equal("dirty", value(db.uri, "SELECT state FROM moonshift_migrations"))
    end)

  it("refuses a large file that changed after it was checked, before sending any of it",
    function()
      local dir = db.dir .. "/migrations"
      local path = dir .. "/0001_copy.up.sql"
      write_rows(path, "copy", 1, 200000, { create = true })
      assert.is_true(size_mb(path) > 8)
      -- the pre hook runs after the check and before the statements are read again
      helpers.write_files(dir, { ["0001_copy.lua"] =
        "return { pre = function(ctx) ctx.db:query('select pg_sleep(2)') end }\n" })
      local a = helpers.spawn({ "up", "-y", "-d", db.uri }, db.dir)
      helpers.wait_for_query(db.uri, "%pg_sleep%")
      local f = assert(io.open(path, "a"))
      f:write("DROP TABLE big;\n")
      f:close()
      local res = a:wait(60000)
      assert.are.equal(9, res.code, res.stderr)
      assert.is_truthy(res.stderr:find("0001_copy: migrations/0001_copy.up.sql changed after " ..
        "moonshift checked it; rolled back, nothing of it was applied", 1, true), res.stderr)
      assert.are.equal(nil, value(db.uri, "SELECT to_regclass('big')::text"))
      assert.are.equal(0, tonumber(value(db.uri, "SELECT count(*) FROM moonshift_migrations")))
    end)

  it("refuses transaction control deep in a large file before anything runs", function()
    local dir = db.dir .. "/migrations"
    helpers.write_files(dir, { ["0001_small.up.sql"] = "CREATE TABLE small (id int);\n" })
    write_rows(dir .. "/0002_big.up.sql", "insert", 1, 120000, { create = true,
      line = function(i) if i == 100000 then return "COMMIT;\n" end end })
    assert.is_true(size_mb(dir .. "/0002_big.up.sql") > 8)

    local res = ms({ "up", "-y" }, { timeout = 600000 })
    assert.are.equal(2, res.code, res.stderr)
    assert.is_truthy(res.stderr:find("0002_big.up.sql:100001: COMMIT", 1, true), res.stderr)
    assert.are.equal(nil, value(db.uri, "SELECT to_regclass('big')::text"))
  end)
end)
