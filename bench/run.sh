#!/bin/sh
# Runs every benchmark with hyperfine; results go to bench/results/*.md.
# PART=apply, PART=status or PART=devices runs only that part of bench/migrate.lua (and not
# the splitter). PART=memory runs only bench/memory.lua: peak resident memory of `up` on
# one 20 MB, 200 MB and 1 GB migration (SIZES=20,200 for fewer; not part of a full run,
# which it would lengthen by about seven minutes).
set -eu
cd "$(dirname "$0")/.."
BIN=${BIN:-build/moonshift}
RUNS=${RUNS:-10}
if [ "${PART:-}" = memory ]; then
    "$BIN" --run-lua bench/memory.lua "$BIN" "${SIZES:-20,200,1000}" bench/results
    exit
fi
"$BIN" --run-lua bench/migrate.lua "$BIN" "$RUNS" bench/results ${PART:-}
[ -n "${PART:-}" ] || sh bench/split.sh
cat bench/results/*.md
