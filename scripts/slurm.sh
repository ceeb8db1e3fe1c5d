#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests (tests/service/test_slurm.py).
#
#   scripts/slurm.sh start    install Debian's slurmctld, slurmd, slurm-client and munge when
#                             missing; start munged (unless one answers), slurmctld and slurmd;
#                             wait until the node takes jobs; print the path of its slurm.conf
#   scripts/slurm.sh conf     print that path, when the cluster is up
#   scripts/slurm.sh status   what runs, and sinfo
#   scripts/slurm.sh stop     stop slurmd, slurmctld and the munged this script started
#   scripts/slurm.sh remove   stop, and delete its folder (state, logs, config)
#
# Commands reach it through SLURM_CONF:   export SLURM_CONF=$(bash scripts/slurm.sh start)
#
# start, stop and remove need root (slurmd runs jobs as their users; another user is asked
# for sudo); conf and status do not. It runs in a container too: no systemd, no cgroups
# (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none, no accounting). Starting a cluster
# that is up does nothing, so `start` is safe to repeat. Everything of it lives in
# HPO_SLURM_DIR (default
# /var/lib/hpo-slurm): its own slurm.conf, state, spool, pid and log files; /etc/slurm is not
# touched, so a real SLURM of the machine keeps its own. HPO_SLURM_PORT (default 16817; slurmd
# takes the next port) keeps it off SLURM's usual 6817/6818. HPO_SLURM_CPUS (default: the
# machine's cores, at least 4) is what the node offers, more than it has when asked
# (SlurmdParameters=config_overrides), so that a test's 3 one-CPU tasks run at once on 2 cores.
set -euo pipefail

PORT=${HPO_SLURM_PORT:-16817}
DIR=${HPO_SLURM_DIR:-/var/lib/hpo-slurm}
CONF=$DIR/slurm.conf
NODE=$(hostname -s)
CPUS=${HPO_SLURM_CPUS:-$(( $(nproc) > 4 ? $(nproc) : 4 ))}
export SLURM_CONF=$CONF

die() { echo "scripts/slurm.sh: $*" >&2; exit 1; }
note() { echo "scripts/slurm.sh: $*" >&2; }

if [ "$(id -u)" != 0 ] && [[ "${1:-}" =~ ^(start|stop|remove)$ ]]; then
    command -v sudo >/dev/null || die "slurmd runs as root: run this as root (or with sudo)"
    exec sudo --preserve-env=HPO_SLURM_PORT,HPO_SLURM_DIR,HPO_SLURM_CPUS bash "$0" "$@"
fi

install_slurm() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
        command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return
    fi
    note "installing SLURM and munge from Debian's packages"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    # (not the slurm-wlm metapackage: it adds every plugin's libraries, hundreds of MB)
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >&2
}

munge_answers() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    munge_answers && return
    [ -s /etc/munge/munge.key ] || {
        note "making /etc/munge/munge.key"
        (umask 077 && dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null)
        chown munge: /etc/munge/munge.key
    }
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    cp /run/munge/munged.pid "$DIR/munged.pid"   # ours to stop
    for _ in $(seq 50); do munge_answers && return; sleep 0.1; done
    die "munged started but does not answer; see /var/log/munge/munged.log"
}

write_conf() {
    cat > "$CONF.tmp" <<CONF
# Written by scripts/slurm.sh: a one-node test cluster, no cgroups, no accounting.
ClusterName=hpo-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
    mv "$CONF.tmp" "$CONF"
}

# The pid in a pid file, when that process is alive and runs the program named.
alive() {
    local file=$1 program=$2 pid
    [ -f "$file" ] || return 1
    pid=$(cat -- "$file")
    [[ "$pid" =~ ^[0-9]+$ ]] && [ -d "/proc/$pid" ] &&
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$program" ] || return 1
    echo "$pid"
}

node_state() { sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n 1; }

start() {
    install_slurm
    mkdir -p -m 755 "$DIR"
    mkdir -p -m 755 "$DIR/state" "$DIR/spool"
    start_munge
    if ! alive "$DIR/slurmctld.pid" slurmctld >/dev/null; then
        write_conf
        slurmctld -f "$CONF"
    fi
    for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
    scontrol ping 2>/dev/null | grep -q UP || die "slurmctld does not answer; see $DIR/slurmctld.log"
    if ! alive "$DIR/slurmd.pid" slurmd >/dev/null; then
        slurmd -f "$CONF" -N "$NODE"
    fi
    local state=""
    for _ in $(seq 150); do
        state=$(node_state)
        case "$state" in
            idle* | mix* | alloc*) break ;;
            drain* | down*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.2
    done
    case "$state" in
        idle* | mix* | alloc*) ;;
        *) die "node $NODE is ${state:-unknown}, not taking jobs; see $DIR/slurmd.log and" \
            "$DIR/slurmctld.log" ;;
    esac
    echo "$CONF"
}

conf() {
    alive "$DIR/slurmctld.pid" slurmctld >/dev/null || die "no cluster up; run scripts/slurm.sh start"
    echo "$CONF"
}

status() {
    local program
    for program in slurmctld slurmd munged; do
        if pid=$(alive "$DIR/$program.pid" "$program"); then
            echo "$program: running (pid $pid)"
        else
            echo "$program: not started by this script"
        fi
    done
    if [ -f "$CONF" ]; then sinfo || true; fi
}

stop_one() {
    local program=$1 pid
    pid=$(alive "$DIR/$program.pid" "$program") || return 0
    kill "$pid"
    for _ in $(seq 100); do [ -d "/proc/$pid" ] || return 0; sleep 0.1; done
    note "$program (pid $pid) did not stop in 10 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

stop() {
    [ -d "$DIR" ] || return 0
    stop_one slurmd
    stop_one slurmctld
    stop_one munged
}

remove() {
    stop
    rm -rf -- "$DIR"
}

case "${1:-}" in
    start | conf | status | stop | remove) ;;
    *) echo "usage: $0 start|conf|status|stop|remove" >&2; exit 2 ;;
esac
"$1"
