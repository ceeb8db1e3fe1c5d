#!/bin/sh
# The official postgres image's start, in short: as root, own PGDATA and drop to postgres; on an
# empty PGDATA, initdb with POSTGRES_USER and the password of POSTGRES_PASSWORD_FILE (its first
# line) or POSTGRES_PASSWORD, create POSTGRES_DB, accept password logins from the network.
set -eu
if [ "${1:-}" = postgres ] && [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    user=${POSTGRES_USER:-postgres}
    db=${POSTGRES_DB:-$user}
    if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
        password=$(head -n 1 "$POSTGRES_PASSWORD_FILE")
    else
        password=${POSTGRES_PASSWORD:-}
    fi
    if [ -z "$password" ]; then
        echo "error: no password: set POSTGRES_PASSWORD_FILE (or POSTGRES_PASSWORD)" >&2
        exit 1
    fi
    work=$(mktemp -d)
    printf '%s\n' "$password" > "$work/pw"
    initdb --username="$user" --pwfile="$work/pw" --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 -D "$PGDATA" > "$work/initdb.log" \
        || { cat "$work/initdb.log" >&2; exit 1; }
    rm -f "$work/pw"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ "$db" != postgres ]; then
        # on a private socket: pg_isready (the healthcheck) says nothing until the real start
        pg_ctl -D "$PGDATA" -w -s \
            -o "-c listen_addresses='' -c unix_socket_directories=$work" start
        createdb -h "$work" -U "$user" "$db"
        pg_ctl -D "$PGDATA" -w -s stop
    fi
    rm -rf "$work"
    echo "initialised $PGDATA: role $user, database $db"
fi
exec "$@"
