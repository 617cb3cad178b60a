#!/bin/sh
# Installs the Debian packages moonshift builds (`deps.sh build`) or tests (`deps.sh test`)
# with, or the packages named, if any are missing. As root it runs apt-get; otherwise it
# names what to install and fails.
set -eu
BUILD="cmake make gcc pkg-config liblua5.4-dev libpq-dev libssl-dev lua-cjson-dev lua-argparse"
# the tests: a server, PgBouncer, busted and luacheck, pg_dump/psql, script(1), man(1),
# a JSON Schema validator and GNU time (a child's true peak memory)
TEST="$BUILD lua-busted lua-check postgresql-15 postgresql-client-15 pgbouncer openssl
  bsdutils man-db python3-jsonschema time"
case "${1:-build}" in
    build) PACKAGES=$BUILD; set -- ;;
    test) PACKAGES=$TEST; set -- ;;
    *) PACKAGES=$* ;;
esac
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# psql 15.19 stopped counting words inside parentheses when it looks for CREATE FUNCTION
# ... BEGIN; the splitter follows the current psql and the specs compare with it.
if [ "$PACKAGES" = "$TEST" ]; then
    minor=$(dpkg-query -W -f='${Version}' postgresql-client-15 2>/dev/null |
        sed -n 's/^15\.\([0-9]*\).*/\1/p')
    [ -n "$minor" ] && [ "$minor" -lt 19 ] && missing="$missing postgresql-client-15 postgresql-15"
fi
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "moonshift needs these Debian packages:$missing" >&2
    echo "install them with: sudo apt-get install$missing" >&2
    exit 1
fi
echo "installing:$missing" >&2
# The server package would start a cluster of its own; the tests start throwaway ones.
mkdir -p /etc/postgresql-common
[ -f /etc/postgresql-common/createcluster.conf ] ||
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing >/dev/null
