#!/bin/sh
# Runs every benchmark with hyperfine; results go to bench/results/*.md.
# PART=apply, PART=status or PART=devices runs only that part of bench/migrate.lua (and not
# the splitter).
set -eu
cd "$(dirname "$0")/.."
BIN=${BIN:-build/moonshift}
RUNS=${RUNS:-10}
"$BIN" --run-lua bench/migrate.lua "$BIN" "$RUNS" bench/results ${PART:-}
[ -n "${PART:-}" ] || sh bench/split.sh
cat bench/results/*.md
