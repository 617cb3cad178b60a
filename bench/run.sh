#!/bin/sh
# Runs every benchmark with hyperfine; results go to bench/results/*.md.
set -eu
cd "$(dirname "$0")/.."
BIN=${BIN:-build/moonshift}
RUNS=${RUNS:-10}
"$BIN" --run-lua bench/migrate.lua "$BIN" "$RUNS" bench/results
[ -f bench/split.sh ] && sh bench/split.sh
cat bench/results/*.md
