#!/usr/bin/env bash
# A private PostgreSQL for the tests, on 127.0.0.1 only.
#
#   scripts/postgres.sh start   install Debian's postgresql when missing, init and start a
#                               cluster, create role and database; print the URL
#   scripts/postgres.sh url     print the URL of the running cluster
#   scripts/postgres.sh restart stop and start it again (the tests use it to drop connections)
#   scripts/postgres.sh stop    stop it
#   scripts/postgres.sh remove  stop it and delete its folder (data, passwords, URL)
#
# Two passwords, generated at init, never in the repo and never on a command line: the
# `postgres` superuser's (only in the cluster folder, mode 600, readable by the user PostgreSQL
# runs as) and the `hpo` role's, which is the only one in the URL file. The server listens on
# 127.0.0.1:PORT and on no Unix socket.
#
# HPO_PG_PORT (default 54329) and HPO_PG_DIR move it. The default folder is one no other local
# user can create first or redirect: ${XDG_CACHE_HOME:-~/.cache}/hpo-postgres-PORT, or, as
# root (PostgreSQL then runs as the postgres user), ~postgres/hpo-postgres-PORT (usually
# /var/lib/postgresql). The folder is made with mode 700; an existing one that is a symlink,
# belongs to another user or is writable by others is refused.
#
# Earlier versions kept the cluster in /tmp/hpo-postgres-PORT, with the superuser's password
# for the hpo role too. `start` finds such a cluster holding the port: unused (no client
# connected, no process with HPO_TEST_POSTGRES_URL naming the port), it is stopped and the new
# one started; in use, its URL is printed, with a warning, until a later `start` finds it free.
set -euo pipefail

PORT=${HPO_PG_PORT:-54329}
OLD_DIR=/tmp/hpo-postgres-$PORT   # the earlier versions' folder: only looked at, never used

die() { echo "scripts/postgres.sh: $*" >&2; exit 1; }
note() { echo "scripts/postgres.sh: $*" >&2; }

is_root() { [ "$(id -u)" = 0 ]; }
as_root() { if is_root; then "$@"; else sudo "$@"; fi; }

# PostgreSQL refuses to run as root: run its programs as the postgres user then.
as_pg() {
    if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

# The uid the cluster's folder and server belong to.
pg_uid() {
    if is_root; then
        id -u postgres 2>/dev/null || die "no postgres user (is PostgreSQL installed?)"
    else
        id -u
    fi
}

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

cluster_dir() {
    if [ -n "${HPO_PG_DIR:-}" ]; then
        echo "$HPO_PG_DIR"
    elif is_root; then
        local home
        home=$(getent passwd postgres | cut -d: -f6) || die "no postgres user (is PostgreSQL installed?)"
        [ -d "$home" ] && [ ! -L "$home" ] ||
            die "the postgres user's home $home is no folder; set HPO_PG_DIR to one it can enter"
        echo "$home/hpo-postgres-$PORT"
    else
        echo "${XDG_CACHE_HOME:-${HOME:?HOME is not set; set HPO_PG_DIR}/.cache}/hpo-postgres-$PORT"
    fi
}

# Refuse a folder another user could have made or redirected.
check_dir() {
    local dir=$1 owner mode
    [ ! -L "$dir" ] || die "$dir is a symlink; refusing it (remove it, or set HPO_PG_DIR)"
    [ -d "$dir" ] || die "$dir is not a folder; refusing it (remove it, or set HPO_PG_DIR)"
    owner=$(stat -c %u -- "$dir")
    # the user PostgreSQL runs as, or the one running this (root hands it to postgres)
    [ "$owner" = "$(pg_uid)" ] || [ "$owner" = "$(id -u)" ] ||
        die "$dir belongs to $(stat -c %U -- "$dir"), not to $(id -nu "$(pg_uid)"); refusing it" \
            "(remove it, or set HPO_PG_DIR)"
    mode=$(stat -c %a -- "$dir")
    (( (8#$mode & 8#022) == 0 )) ||
        die "$dir is writable by other users (mode $mode); refusing it (remove it, or set HPO_PG_DIR)"
}

# The cluster's folder, made (mode 700, for the user PostgreSQL runs as) when missing.
make_dir() {
    local dir=$1
    if [ ! -e "$dir" ] && [ ! -L "$dir" ]; then
        mkdir -p -- "$(dirname -- "$dir")"
        mkdir -m 700 -- "$dir"   # not -p: fails, rather than adopts, a folder made meanwhile
    fi
    check_dir "$dir"
    if is_root && [ "$(stat -c %u -- "$dir")" = 0 ]; then chown -h postgres: -- "$dir"; fi
    as_pg test -r "$dir" -a -w "$dir" -a -x "$dir" ||
        die "the postgres user cannot enter $dir; set HPO_PG_DIR to a folder it can reach"
}

random_password() { head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

# The pid of a running cluster of the old layout on PORT, verified: folder of the expected
# owner and no symlink, its postmaster alive, of that owner, on this port.
old_postmaster() {
    local pidfile=$OLD_DIR/data/postmaster.pid pid port
    [ "$DIR" != "$OLD_DIR" ] && [ -d "$OLD_DIR" ] && [ ! -L "$OLD_DIR" ] &&
        [ ! -L "$OLD_DIR/data" ] && [ "$(stat -c %u -- "$OLD_DIR")" = "$(pg_uid)" ] &&
        [ -f "$pidfile" ] || return 1
    pid=$(sed -n 1p "$pidfile") port=$(sed -n 4p "$pidfile")
    [[ "$pid" =~ ^[0-9]+$ ]] && [ "$port" = "$PORT" ] && [ -d "/proc/$pid" ] &&
        [ "$(stat -c %u "/proc/$pid")" = "$(pg_uid)" ] || return 1
    echo "$pid"
}

# Why the old cluster counts as in use (nothing when it does not): a client connected, or a
# process started with HPO_TEST_POSTGRES_URL pointing at it (a test run between connections).
old_users() {
    local pid=$1 clients environ other
    command -v ps >/dev/null || { echo "ps is missing, so its clients cannot be counted"; return; }
    clients=$(ps -o args= --ppid "$pid" | grep -cE '^postgres: \S+ \S+ (127\.0\.0\.1\(|\[local\])') || true
    if [ "$clients" != 0 ]; then echo "$clients client connection(s)"; return; fi
    if [[ "${HPO_TEST_POSTGRES_URL:-}" == *"@127.0.0.1:$PORT/"* ]]; then
        echo "this command runs with HPO_TEST_POSTGRES_URL naming it"
        return
    fi
    for environ in /proc/[0-9]*/environ; do
        other=${environ#/proc/} other=${other%/environ}
        [ "$other" != $$ ] && [ "$other" != "$BASHPID" ] || continue
        if grep -qzE "^HPO_TEST_POSTGRES_URL=.*@127\.0\.0\.1:$PORT/" "$environ" 2>/dev/null; then
            echo "process $other runs with HPO_TEST_POSTGRES_URL naming it"
            return
        fi
    done
}

# Port taken while our own cluster is down: step an unused old-layout cluster aside, hand out
# a busy one's URL for now, refuse anything else.
free_port_or_use_old() {
    local bin=$1 pid users
    port_taken || return 0
    if ! pid=$(old_postmaster); then
        die "port $PORT on 127.0.0.1 is taken by another program; set HPO_PG_PORT to a free one"
    fi
    users=$(old_users "$pid")
    if [ -z "$users" ]; then
        note "stopping the test cluster of the old layout in $OLD_DIR (port $PORT, unused): its" \
            "hpo role has the superuser's password; the new one lives in $DIR"
        as_pg "$bin/pg_ctl" -D "$OLD_DIR/data" -w -t 60 stop -m fast >/dev/null
        note "its files are left in place; delete them with: rm -rf $OLD_DIR"
        return 0
    fi
    note "port $PORT is held by the test cluster of the old layout in $OLD_DIR, in use" \
        "($users): printing its URL for now. A later start replaces it once it is unused; or" \
        "stop it yourself when nobody needs it:" \
        "$(is_root && echo 'runuser -u postgres -- ')$bin/pg_ctl -D $OLD_DIR/data stop -m fast"
    old_url
    exit 0
}

old_url() {
    local file=$OLD_DIR/url
    [ -f "$file" ] && [ ! -L "$file" ] && [ "$(stat -c %u -- "$file")" = "$(id -u)" ] ||
        die "no usable URL file in $OLD_DIR"
    cat -- "$file"
}

url() {
    if [ -e "$DIR" ] || [ -L "$DIR" ]; then check_dir "$DIR"; fi
    if [ -f "$DIR/url" ]; then
        cat -- "$DIR/url"
    elif port_taken && old_postmaster >/dev/null; then
        note "the cluster on port $PORT is of the old layout ($OLD_DIR); scripts/postgres.sh" \
            "start replaces it once it is unused"
        old_url
    else
        die "no cluster in $DIR; run scripts/postgres.sh start"
    fi
}

# The role hpo and its database, and the one thing of the superuser's that hpo may do: make
# (and drop) powerless login roles named hpo_test_*, with a password of the test's choosing
# (tests/e2e/test_compose.py logs in with one holding @ / : %). hpo has no CREATEROLE: up to
# PostgreSQL 15 that lets a role grant itself pg_execute_server_program, a superuser's power.
setup_sql() {
    cat <<SQL
SET client_min_messages = warning;
SELECT 'CREATE ROLE hpo' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hpo') \gexec
ALTER ROLE hpo LOGIN CREATEDB PASSWORD '$1';
SELECT 'CREATE DATABASE hpo OWNER hpo' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'hpo') \gexec
\connect hpo
SQL
    cat <<'SQL'
SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS hpo_admin;
REVOKE ALL ON SCHEMA hpo_admin FROM PUBLIC;
GRANT USAGE ON SCHEMA hpo_admin TO hpo;
CREATE OR REPLACE FUNCTION hpo_admin.create_test_role(role_name text, password text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
    IF role_name !~ '^hpo_test_[a-z0-9_]{1,40}$' THEN
        RAISE EXCEPTION 'a test role is named hpo_test_[a-z0-9_]+, not %', role_name;
    END IF;
    EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION '
                   'NOBYPASSRLS PASSWORD %L VALID UNTIL %L',
                   role_name, password, now() + interval '1 day');
    EXECUTE format('GRANT %I TO hpo', role_name);  -- so hpo can DROP OWNED BY it
END
$f$;
CREATE OR REPLACE FUNCTION hpo_admin.drop_test_role(role_name text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
    IF role_name !~ '^hpo_test_[a-z0-9_]{1,40}$' THEN
        RAISE EXCEPTION 'a test role is named hpo_test_[a-z0-9_]+, not %', role_name;
    END IF;
    EXECUTE format('DROP ROLE IF EXISTS %I', role_name);
END
$f$;
REVOKE ALL ON FUNCTION hpo_admin.create_test_role(text, text), hpo_admin.drop_test_role(text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hpo_admin.create_test_role(text, text), hpo_admin.drop_test_role(text)
    TO hpo;
SQL
}

start() {
    local bin
    bin=$(pg_bin)
    if [ -e "$DIR" ] || [ -L "$DIR" ]; then check_dir "$DIR"; fi
    if ! as_pg "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
        free_port_or_use_old "$bin"
    fi
    make_dir "$DIR"
    if [ ! -f "$DATA/PG_VERSION" ]; then
        # The superuser's password is made by (and readable by) the user PostgreSQL runs as.
        as_pg bash -c 'umask 077 && head -c 18 /dev/urandom | od -An -tx1 | tr -d " \n" > "$1"' \
            _ "$DIR/superuser-password"
        as_pg "$bin/initdb" -D "$DATA" -U postgres --auth=scram-sha-256 \
            --pwfile="$DIR/superuser-password" >/dev/null
        (umask 077 && echo "postgresql+psycopg://hpo:$(random_password)@127.0.0.1:$PORT/hpo" \
            > "$DIR/url.tmp")
    fi
    if ! as_pg "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
        as_pg "$bin/pg_ctl" -D "$DATA" -w -t 60 -l "$DIR/server.log" start \
            -o "-p $PORT -k '' -c listen_addresses=127.0.0.1 -c max_connections=200" >/dev/null
    fi
    if [ -f "$DIR/url.tmp" ]; then
        local password
        password=$(sed -E 's|^[^:]*://hpo:([0-9a-f]+)@.*|\1|' "$DIR/url.tmp")
        [[ "$password" =~ ^[0-9a-f]{36}$ ]] || die "$DIR/url.tmp is damaged; remove $DIR"
        # Passwords go through a file and stdin only: a command line is visible to all users.
        setup_sql "$password" |
            as_pg bash -c 'export PGPASSWORD; PGPASSWORD=$(cat "$1"); exec "$2/psql" -q -X -h 127.0.0.1 -p "$3" \
                -U postgres -d postgres -v ON_ERROR_STOP=1 >/dev/null' \
                _ "$DIR/superuser-password" "$bin" "$PORT"
        mv -- "$DIR/url.tmp" "$DIR/url"
    fi
    cat -- "$DIR/url"
}

stop() {
    local bin
    bin=$(pg_bin)
    [ -e "$DIR" ] || [ -L "$DIR" ] || return 0
    check_dir "$DIR"
    if as_pg "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
        as_pg "$bin/pg_ctl" -D "$DATA" -w -t 60 stop -m fast >/dev/null
    fi
}

restart() {
    local bin
    bin=$(pg_bin)
    check_dir "$DIR"
    as_pg "$bin/pg_ctl" -D "$DATA" -w -t 60 -l "$DIR/server.log" restart -m fast >/dev/null
}

remove() {
    stop
    if [ -e "$DIR" ] || [ -L "$DIR" ]; then
        rm -rf -- "$DIR"   # checked by stop; rm follows no symlink inside
    fi
}

case "${1:-}" in
    start | restart | stop | url | remove) ;;
    *) echo "usage: $0 start|restart|stop|url|remove" >&2; exit 2 ;;
esac
DIR=$(cluster_dir)
DATA=$DIR/data
"$1"
