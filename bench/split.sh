#!/bin/sh
# Splitter throughput: moonshift.sql.split on a generated 50 MB migration, timed by
# hyperfine against a plain read of the same file and `wc -l`. psql's lexer cannot be run
# on its own (psql -f also executes), so there is no psql baseline. Writes
# bench/results/split.md. BIN, MB, RUNS override the binary, the size and the run count.
set -eu
cd "$(dirname "$0")/.."
BIN=${BIN:-build/moonshift}
MB=${MB:-50}
RUNS=${RUNS:-10}
OUT=bench/results

if ! command -v hyperfine >/dev/null 2>&1; then
    echo "bench/split.sh needs hyperfine: apt-get install -y hyperfine" >&2
    exit 1
fi
mkdir -p "$OUT"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

"$BIN" --run-lua bench/gen_migration.lua "$tmp/migration.sql" "$MB"

cat >"$tmp/read.lua" <<'EOF'
local f = assert(io.open(arg[1], "rb"))
local text = f:read("a")
f:close()
assert(#text > 0)
os.exit(0) -- no lua_close: freeing at exit is not the work being measured
EOF

cat >"$tmp/split.lua" <<'EOF'
local f = assert(io.open(arg[1], "rb"))
local text = f:read("a")
f:close()
assert(#assert(require("moonshift.sql").split(text)) > 0)
os.exit(0)
EOF

# The same split timed inside the process (best of 5): no start-up, read or exit costs.
cat >"$tmp/inproc.lua" <<'EOF'
local fs = require("moonshift.fs")
local sql = require("moonshift.sql")
local f = assert(io.open(arg[1], "rb"))
local text = f:read("a")
f:close()
local best, count = math.huge, 0
for _ = 1, 5 do
  collectgarbage("collect")
  local t0 = fs.clock_ms()
  local stmts = assert(sql.split(text))
  best = math.min(best, fs.clock_ms() - t0)
  count = #stmts
end
io.write(string.format("%d %d %.3f\n", #text, count, best))
EOF

cat >"$tmp/report.lua" <<'EOF'
local cjson = require("cjson")
local json_path, inproc, md = arg[1], arg[2], arg[3]
local f = assert(io.open(json_path, "rb"))
local results = cjson.decode(f:read("a")).results
f:close()
local size, count, best_ms = inproc:match("^(%d+) (%d+) ([%d.]+)")
size, count, best_ms = tonumber(size), tonumber(count), tonumber(best_ms)
local by = {}
for _, r in ipairs(results) do by[r.command] = r end
local mb = size / 1048576
local split_s = by.split.mean - by.read.mean
local lines = {
  "## Splitter (bench/split.sh)",
  "",
  string.format("Input: %.1f MB of generated DDL, %d statements (%.0f bytes each on average).",
    mb, count, size / count),
  "",
  "| command | mean (ms) | σ (ms) |",
  "|---|---|---|",
}
for _, name in ipairs({ "wc -l", "read", "split" }) do
  local r = by[name]
  lines[#lines + 1] = string.format("| %s | %.1f | %.1f |", name, r.mean * 1000, r.stddev * 1000)
end
lines[#lines + 1] = ""
lines[#lines + 1] = string.format(
  "split - read (hyperfine, processes exit without lua_close): %.1f ms = **%.0f MB/s**",
  split_s * 1000, mb / split_s)
lines[#lines + 1] = string.format("sql.split alone (in process, best of 5): %.1f ms = **%.0f MB/s**",
  best_ms, mb / (best_ms / 1000))
lines[#lines + 1] = ""
local out = assert(io.open(md, "wb"))
out:write(table.concat(lines, "\n"))
out:close()
print(table.concat(lines, "\n"))
EOF

hyperfine --warmup 2 --runs "$RUNS" --export-json "$tmp/hyperfine.json" \
    -n "wc -l" "wc -l $tmp/migration.sql" \
    -n read "$BIN --run-lua $tmp/read.lua $tmp/migration.sql" \
    -n split "$BIN --run-lua $tmp/split.lua $tmp/migration.sql"
inproc=$("$BIN" --run-lua "$tmp/inproc.lua" "$tmp/migration.sql")
"$BIN" --run-lua "$tmp/report.lua" "$tmp/hyperfine.json" "$inproc" "$OUT/split.md"
