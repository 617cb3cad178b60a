#!/bin/sh
# Installs the other migration tools the peers specs (make test-peers) run: dbmate,
# node-pg-migrate and postgrator-cli from npm into build/peers, sql-migrate, Sqitch and
# Alembic from Debian. Versions are pinned so a fresh machine tests what this one did.
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh sql-migrate sqitch libdbd-pg-perl alembic python3-psycopg2
command -v npm >/dev/null || scripts/deps.sh nodejs npm
BIN=build/peers/node_modules/.bin
if [ -x "$BIN/dbmate" ] && [ -x "$BIN/node-pg-migrate" ] && [ -x "$BIN/postgrator" ]; then
    exit 0
fi
mkdir -p build/peers
npm install --prefix build/peers --no-audit --no-fund --loglevel=error \
    dbmate@2.36.0 node-pg-migrate@9.0.0 postgrator-cli@9.1.1 pg@8 >/dev/null
