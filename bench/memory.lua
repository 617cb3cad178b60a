-- Benchmark: peak resident memory of `moonshift up` on one large migration (issue 14, item 12).
-- moonshift --run-lua bench/memory.lua BIN [SIZES_MB=20,200,1000] [OUT_DIR] (or PART=memory
-- sh bench/run.sh)
-- For each size, two migrations are generated in a temporary directory (removed at the end):
-- one COPY ... FROM stdin of that many megabytes of rows, one of the same rows as INSERTs;
-- each is applied to a fresh database under /usr/bin/time -v and its "Maximum resident set
-- size" reported (bench/results/memory.md), with the row count checked.
local cluster = require("moonshift.cluster")
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")

local bin = arg[1] or "build/moonshift"
if bin:sub(1, 1) ~= "/" then bin = fs.realpath(".") .. "/" .. bin end
local sizes = {}
for s in (arg[2] or "20,200,1000"):gmatch("%d+") do sizes[#sizes + 1] = tonumber(s) end
local out_dir = arg[3] or "bench/results"

local fmt = string.format

local c = assert(cluster.start({ settings = { autovacuum = "off", fsync = "off" } }))
local work = assert(fs.mkdtemp("/tmp/moonshift-memory-"))

-- Writes dir/0001_big.up.sql: a table and `mb` megabytes of rows, as COPY data or INSERTs.
local function generate(dir, mb, kind)
  assert(fs.mkdir_p(dir, tonumber("755", 8)))
  local f = assert(io.open(dir .. "/0001_big.up.sql", "w"))
  f:write("CREATE TABLE big (id bigint PRIMARY KEY, note text, n int);\n")
  if kind == "copy" then f:write("COPY big (id, note, n) FROM stdin;\n") end
  local target, written, i = mb * 1024 * 1024, 0, 0
  local pad = string.rep("x", 40)
  local buf = {}
  while written < target do
    i = i + 1
    local line
    if kind == "copy" then
      line = fmt("%d\trow %d %s\t%d\n", i, i, pad, i % 1000)
    else
      line = fmt("INSERT INTO big (id, note, n) VALUES (%d, 'row %d %s', %d);\n", i, i, pad,
        i % 1000)
    end
    buf[#buf + 1] = line
    written = written + #line
    if #buf == 4096 then
      f:write(table.concat(buf))
      buf = {}
    end
  end
  f:write(table.concat(buf))
  if kind == "copy" then f:write("\\.\n") end
  f:close()
  return i
end

local function run(argv)
  local env = proc.environ()
  for k, v in pairs(c:env()) do env[k] = v end
  return assert(proc.run(argv, { env = env, timeout = 3600000 }))
end

local rows = { "## Peak memory of `moonshift up` on one large migration (bench/memory.lua)", "",
  "| file | rows | peak RSS (MB) | wall (s) |", "|---|---:|---:|---:|" }
for _, mb in ipairs(sizes) do
  for _, kind in ipairs({ "copy", "insert" }) do
    local dir = fmt("%s/%s-%d", work, kind, mb)
    local n = generate(dir, mb, kind)
    local db = fmt("mem_%s_%d", kind, mb)
    assert(c:create_database(db))
    local res = run({ "/usr/bin/time", "-v", bin, "up", "-y", "-q", "--migrations", dir, "-d",
      c:uri_for(db) })
    if res.code ~= 0 then error(fmt("%s %d MB: exit %d\n%s", kind, mb, res.code, res.stderr)) end
    local kb = tonumber(res.stderr:match("Maximum resident set size %(kbytes%): (%d+)"))
    local wall = res.stderr:match("Elapsed %(wall clock%) time %(h:mm:ss or m:ss%): ([%d:.]+)")
    local count = run({ c.bin_dir .. "/psql", "-X", "-At", "-d", c:uri_for(db), "-c",
      "select count(*) from big" }).stdout:match("%d+")
    assert(tonumber(count) == n, fmt("%s %d MB: %s rows, expected %d", kind, mb, count, n))
    rows[#rows + 1] = fmt("| %d MB of %s | %d | %.1f | %s |", mb,
      kind == "copy" and "COPY data" or "INSERTs", n, kb / 1024, wall)
    print(rows[#rows])
    proc.run({ "rm", "-rf", dir })
  end
end
proc.run({ "rm", "-rf", work })
c:stop()
local out = assert(io.open(out_dir .. "/memory.md", "w"))
out:write(table.concat(rows, "\n"), "\n")
out:close()
print(table.concat(rows, "\n"))
