#!/usr/bin/env bash
# A private PostgreSQL for the tests, on 127.0.0.1 only.
#
#   scripts/postgres.sh start   install Debian's postgresql when missing, init and start a
#                               cluster, create role and database; print the URL
#   scripts/postgres.sh url     print the URL of the running cluster
#   scripts/postgres.sh restart stop and start it again (the tests use it to drop connections)
#   scripts/postgres.sh stop    stop it
#
# The password is generated at init and kept in the cluster folder, never in the repo.
# HPO_PG_PORT (default 54329) and HPO_PG_DIR (default /tmp/hpo-postgres-$HPO_PG_PORT) move it.
set -euo pipefail

PORT=${HPO_PG_PORT:-54329}
DIR=${HPO_PG_DIR:-/tmp/hpo-postgres-$PORT}
DATA=$DIR/data

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

pg_bin() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$bin" ]; then
        echo "installing PostgreSQL from Debian's packages" >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
        bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    echo "$bin"
}

# PostgreSQL refuses to run as root: run its programs as the postgres user then.
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

url() { cat "$DIR/url"; }

start() {
    local bin
    bin=$(pg_bin)
    if [ ! -f "$DATA/PG_VERSION" ]; then
        mkdir -p "$DIR"
        [ "$(id -u)" = 0 ] && chown postgres: "$DIR"
        local password
        password=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
        as_pg bash -c "umask 077; printf '%s\n' '$password' > '$DIR/pwfile'"
        as_pg "$bin/initdb" -D "$DATA" -U postgres --auth=scram-sha-256 \
            --pwfile="$DIR/pwfile" >/dev/null
        echo "postgresql+psycopg://hpo:$password@127.0.0.1:$PORT/hpo" > "$DIR/url.tmp"
        chmod 600 "$DIR/url.tmp"
    fi
    if ! as_pg "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
        as_pg "$bin/pg_ctl" -D "$DATA" -w -t 60 -l "$DIR/server.log" start \
            -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c max_connections=200" >/dev/null
    fi
    if [ -f "$DIR/url.tmp" ]; then
        local password
        password=$(cat "$DIR/pwfile")
        as_pg env PGPASSWORD="$password" "$bin/psql" -q -h 127.0.0.1 -p "$PORT" -U postgres \
            -d postgres -v ON_ERROR_STOP=1 \
            -c "CREATE ROLE hpo LOGIN CREATEDB PASSWORD '$password'" \
            -c "CREATE DATABASE hpo OWNER hpo" >/dev/null
        mv "$DIR/url.tmp" "$DIR/url"
    fi
    url
}

stop() {
    local bin
    bin=$(pg_bin)
    [ -f "$DATA/PG_VERSION" ] && as_pg "$bin/pg_ctl" -D "$DATA" -w stop -m fast >/dev/null || true
}

restart() {
    local bin
    bin=$(pg_bin)
    as_pg "$bin/pg_ctl" -D "$DATA" -w -t 60 -l "$DIR/server.log" restart -m fast >/dev/null
}

case "${1:-}" in
    start) start ;;
    restart) restart ;;
    stop) stop ;;
    url) url ;;
    *) echo "usage: $0 start|restart|stop|url" >&2; exit 2 ;;
esac
