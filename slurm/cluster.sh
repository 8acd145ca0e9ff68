#!/usr/bin/env bash
# A SLURM cluster without systemd: munged, slurmctld and slurmd started by hand, all state under
# ${SCALARLM_STATE_DIR:-$HOME/.scalarlm}/slurm. Usage: cluster.sh start|stop|status|env|render
#
# Env (the same on every node of a multi-node cluster):
#   SCALARLM_SLURM_NODES       "name=addr ..." compute nodes (default "localhost=127.0.0.1")
#   SCALARLM_SLURM_CONTROLLER  head node: its hostname, or "name=addr" (default localhost)
#   SCALARLM_SLURM_ROLE        controller (default; runs slurmctld, and slurmd if listed) | node
#   SCALARLM_SLURM_NODENAME    this machine's entry in the node list (default: found by name/addr)
#   SCALARLM_SLURM_CPUS / _MEMORY_MB / _GPUS   per-node resources (default: detected here)
#   SCALARLM_SLURM_START_TIMEOUT  seconds to wait for the node to be idle (default 60)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(mkdir -p "${SCALARLM_STATE_DIR:-$HOME/.scalarlm}" && cd "${SCALARLM_STATE_DIR:-$HOME/.scalarlm}" && pwd)/slurm
CONF=$ROOT/conf/slurm.conf
RUN=$ROOT/run
LOG=$ROOT/log
NODES=${SCALARLM_SLURM_NODES:-localhost=127.0.0.1}
CONTROLLER=${SCALARLM_SLURM_CONTROLLER:-localhost}
ROLE=${SCALARLM_SLURM_ROLE:-controller}
TIMEOUT=${SCALARLM_SLURM_START_TIMEOUT:-60}
export SLURM_CONF=$CONF
MARK="# scalarlm: rendered by slurm/cluster.sh"  # first line of every conf this script renders
CTLD_PORT=6817 SLURMD_PORT=6818                  # slurm.conf.in keeps SLURM's default ports

log() { echo "cluster.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# --- processes ------------------------------------------------------------------------------

# pid from a pid file if that process is alive and named $2 (a stale file from a reboot is ignored)
live_pid() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]] && alive "$pid" && echo "$pid"
}

proc_conf() { { tr '\0' '\n' <"/proc/$1/environ"; } 2>/dev/null | sed -n 's/^SLURM_CONF=//p'; }

# Exited daemons can linger as zombies here (the sandbox's init reaps late): they count as gone.
alive() { local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [[ -n $st && $st != Z ]]; }
pids() { local p; for p in $(pgrep -x "$1"); do alive "$p" && echo "$p"; done; return 0; }

# TERM, wait up to $2 seconds, then KILL
stop_pid() {
    local pid=$1 wait=${2:-20} i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < wait * 10; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
    log "pid $pid ignored SIGTERM for ${wait}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    while alive "$pid"; do sleep 0.1; done
}

ping_ctld() { timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; }

# Cancel every job and wait until none is running, so no slurmstepd outlives its slurmd.
cancel_all_jobs() {
    local ids deadline=$((SECONDS + 45))  # KillWait (30 s) + margin
    ids=$(timeout 15 squeue -h -o %i 2>/dev/null) || return 0
    [[ -z $ids ]] && return 0
    log "cancelling jobs: $(echo $ids)"
    # shellcheck disable=SC2086
    timeout 15 scancel $ids 2>/dev/null || true
    while ((SECONDS < deadline)); do
        [[ -z $(timeout 15 squeue -h -t running,completing,configuring -o %i 2>/dev/null) ]] && return 0
        sleep 0.1
    done
    log "jobs still running after 45 s: $(squeue -h -o '%i %T' 2>/dev/null | tr '\n' ' ')"
}

# True if pid $1 is a daemon that cluster.sh started (for any state dir): its SLURM_CONF is a conf
# cluster.sh rendered (first line $MARK) and the pid is in a pid file of that conf's state dir.
# A site's own SLURM (systemd's, another tool's) never matches, so it is never touched.
started_here() {
    local conf root f
    conf=$(proc_conf "$1")
    [[ -n $conf && $(head -n 1 "$conf" 2>/dev/null) == "$MARK" ]] || return 1
    root=$(dirname "$(dirname "$conf")")
    for f in "$root"/run/*.pid; do
        [[ $(cat "$f" 2>/dev/null) == "$1" ]] && return 0
    done
    return 1
}

# SLURM daemons are machine-wide (fixed ports): stop those named $@ that cluster.sh started for
# another state dir (their jobs first); leave every other process alone.
stop_foreign() {
    local name pid conf stopped=()
    for name in "$@"; do
        for pid in $(pids "$name"); do
            conf=$(proc_conf "$pid")
            [[ $conf == "$CONF" ]] && continue
            started_here "$pid" || continue
            stopped+=("$pid")
            log "stopping $name (pid $pid) of another ScalarLM cluster (SLURM_CONF=$conf)"
            SLURM_CONF=$conf cancel_all_jobs
        done
    done
    for pid in "${stopped[@]}"; do stop_pid "$pid"; done  # slurmd pids come first
    for pid in $(pids slurmstepd); do  # job steps left by those clusters' slurmd
        conf=$(proc_conf "$pid")
        [[ -n $conf && $conf != "$CONF" && $(head -n 1 "$conf" 2>/dev/null) == "$MARK" ]] && stop_pid "$pid" 5
    done
    return 0
}

# Fail, naming it, if a process that is not this cluster's holds one of the TCP ports $@ (found
# with iproute2's ss; without it the daemon's own log says "Address already in use").
check_ports() {
    local port pid
    for port in "$@"; do
        for pid in $(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
            [[ $(proc_conf "$pid") == "$CONF" ]] && continue
            die "port $port is held by $(cat /proc/"$pid"/comm 2>/dev/null) (pid $pid," \
                "SLURM_CONF=$(proc_conf "$pid")), which slurm/cluster.sh did not start: stop that SLURM" \
                "(e.g. systemctl stop slurmctld slurmd) or run ScalarLM's cluster on another machine"
        done
    done
}

# --- configuration --------------------------------------------------------------------------

# This machine's node name: SCALARLM_SLURM_NODENAME, else the entry matching our name or an address.
local_node() {
    if [[ -n ${SCALARLM_SLURM_NODENAME:-} ]]; then echo "$SCALARLM_SLURM_NODENAME"; return; fi
    local addrs=" 127.0.0.1 $(hostname -I 2>/dev/null) " host entry
    host=$(hostname -s)
    for entry in $NODES; do
        if [[ ${entry%%=*} == "$host" || $addrs == *" ${entry#*=} "* ]]; then echo "${entry%%=*}"; return; fi
    done
}

gpu_count() {
    if [[ -n ${SCALARLM_SLURM_GPUS:-} ]]; then echo "$SCALARLM_SLURM_GPUS"; return; fi
    local n=0
    command -v nvidia-smi >/dev/null && n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ') || true
    echo "${n:-0}"
}

render() {
    local cpus mem gpus gres="" nodes="" entry controller=$CONTROLLER tpl
    cpus=${SCALARLM_SLURM_CPUS:-$(nproc)}
    # 90% of MemTotal: RealMemory above what slurmd detects would drain the node.
    mem=${SCALARLM_SLURM_MEMORY_MB:-$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)}
    gpus=$(gpu_count)
    if ((gpus > 0)); then
        gres=" Gres=gpu:$gpus"
        printf 'Name=gpu File=/dev/nvidia[0-%d]\n' $((gpus - 1)) >"$ROOT/conf/gres.conf.new"
    fi
    for entry in $NODES; do
        nodes+="NodeName=${entry%%=*} NodeAddr=${entry#*=} CPUs=$cpus RealMemory=$mem$gres State=UNKNOWN"$'\n'
    done
    [[ $controller == *=* ]] && controller="${controller%%=*}(${controller#*=})"
    tpl=$MARK$'\n'$(<"$HERE/slurm.conf.in")
    tpl=${tpl//@CONTROLLER@/$controller}
    tpl=${tpl//@STATE_DIR@/$ROOT}
    if ((gpus > 0)); then tpl=${tpl//@GRES_TYPES@/GresTypes=gpu}; else tpl=${tpl//@GRES_TYPES@/# no GPUs: no GresTypes}; fi
    tpl=${tpl//@NODES@/${nodes%$'\n'}}
    echo "$tpl" >"$CONF.new"
}

# Install the new conf; returns 0 if it differs from the one the daemons run with.
install_conf() {
    local changed=1 f
    for f in "$CONF" "$ROOT/conf/gres.conf"; do
        if [[ -e $f.new ]]; then
            cmp -s "$f.new" "$f" || changed=0
            mv "$f.new" "$f"
        elif [[ -e $f ]]; then
            rm -f "$f"; changed=0
        fi
    done
    return $changed
}

# --- daemons --------------------------------------------------------------------------------

ensure_packages() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
    log "installing slurmctld slurmd slurm-client munge (log: $LOG/apt.log)"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge; } \
        >>"$LOG/apt.log" 2>&1 || die "apt-get failed: $(tail -5 "$LOG/apt.log")"
}

ensure_munged() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key (copy it to every node of a multi-node cluster)"
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    [[ -n $(pids munged) ]] && return 0  # the site's, or another cluster's: it serves ours too
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged </dev/null >>"$LOG/munged.stderr" 2>&1 \
        || die "munged failed to start: $(tail -3 "$LOG/munged.stderr")"
    cp /run/munge/munged.pid "$(munged_pidfile)"  # so that stop stops this munged only
}

start_daemon() {  # name pidfile args...
    local name=$1 pidfile=$2
    shift 2
    live_pid "$pidfile" "$name" >/dev/null && return 0
    # stdio off pytest's pipes: a daemon holding them would hang the caller
    setsid "$@" </dev/null >>"$LOG/$name.stderr" 2>&1 || die "$name failed to start: $(tail -5 "$LOG/$name.stderr")"
}

# Wait up to TIMEOUT for a check to pass; fail early if the daemon it waits on has exited (after
# 3 s: it writes its pid file only once it has forked).
wait_for() {  # name pidfile logfile check...
    local name=$1 pidfile=$2 logfile=$3 t0=$SECONDS deadline=$((SECONDS + TIMEOUT))
    shift 3
    until "$@"; do
        ((SECONDS - t0 < 3)) || live_pid "$pidfile" "$name" >/dev/null || die "$name exited: $(grep -E 'fatal|error' "$logfile" | tail -3)"
        ((SECONDS < deadline)) || die "$name: not ready after ${TIMEOUT}s ($(timeout 5 sinfo -h -N -o '%N %t %E' 2>&1 | tr '\n' ';')); see $logfile"
        sleep 0.2
    done
}

node_ready() {  # idle, mix or alloc; a node left down or drained by an earlier run is resumed
    local st
    st=$(timeout 5 sinfo -h -n "$1" -o %t 2>/dev/null | head -1)
    case $st in
        idle | mix | alloc | comp) return 0 ;;
        down | drain | drng) timeout 5 scontrol update NodeName="$1" State=RESUME 2>/dev/null || true ;;
    esac
    return 1
}

slurmd_pidfile() { echo "$RUN/slurmd-$1.pid"; }
munged_pidfile() { echo "$RUN/munged-$(hostname -s).pid"; }

start() {
    mkdir -p "$ROOT"/{conf,spool,state,log,run}
    ensure_packages
    local node p
    node=$(local_node)
    [[ $ROLE == node && -z $node ]] && die "this machine is not in SCALARLM_SLURM_NODES ($NODES); set SCALARLM_SLURM_NODENAME"
    # Slurm treats the name localhost specially: with other nodes it fails "Duplicated NodeHostName"
    if (($(wc -w <<<"$NODES") > 1)); then
        [[ " $NODES" == *" localhost="* ]] && die "a multi-node cluster needs real node names, not localhost"
        [[ $CONTROLLER == localhost* ]] && die "a multi-node cluster needs SCALARLM_SLURM_CONTROLLER=<head hostname>[=addr]"
    fi
    if [[ $ROLE == controller ]]; then
        stop_foreign slurmd slurmctld
        check_ports "$CTLD_PORT" ${node:+"$SLURMD_PORT"}
    else
        stop_foreign slurmd
        check_ports "$SLURMD_PORT"
    fi
    render
    if install_conf; then
        # the daemons (if any) run an older conf: restart them; jobs survive in StateSaveLocation
        [[ -n $node ]] && { p=$(live_pid "$(slurmd_pidfile "$node")" slurmd) && stop_pid "$p" || true; }
        [[ $ROLE == controller ]] && { p=$(live_pid "$RUN/slurmctld.pid" slurmctld) && stop_pid "$p" || true; }
    fi
    ensure_munged
    if [[ $ROLE == controller ]]; then
        start_daemon slurmctld "$RUN/slurmctld.pid" slurmctld
        wait_for slurmctld "$RUN/slurmctld.pid" "$LOG/slurmctld.log" ping_ctld
    fi
    if [[ -n $node ]]; then
        start_daemon slurmd "$(slurmd_pidfile "$node")" slurmd -N "$node"
        if [[ $ROLE == node ]] && ! ping_ctld; then
            log "controller not reachable yet: slurmd registers node $node once it is"
        else
            wait_for slurmd "$(slurmd_pidfile "$node")" "$LOG/slurmd-$node.log" node_ready "$node"
        fi
    fi
    log "up: SLURM_CONF=$CONF"
}

stop() {
    local node p pid
    node=$(local_node)
    [[ $ROLE == controller ]] && ping_ctld && cancel_all_jobs
    if [[ -n $node ]] && p=$(live_pid "$(slurmd_pidfile "$node")" slurmd); then stop_pid "$p"; fi
    if [[ $ROLE == controller ]] && p=$(live_pid "$RUN/slurmctld.pid" slurmctld); then stop_pid "$p"; fi
    for p in $(pids slurmstepd); do [[ $(proc_conf "$p") == "$CONF" ]] && stop_pid "$p" 5; done
    # munged serves every SLURM daemon on this machine: stop the one start started, once none is left
    if [[ -z $(pids slurmd)$(pids slurmctld)$(pids slurmstepd) ]] && pid=$(live_pid "$(munged_pidfile)" munged); then
        stop_pid "$pid"
    fi
    return 0
}

status() {
    if ! ping_ctld; then
        echo "slurmctld not reachable (SLURM_CONF=$CONF)"
        return 1
    fi
    sinfo
    squeue
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    render)  # print what start would write, to check a multi-node setup before starting it
        mkdir -p "$ROOT/conf"
        render
        cat "$CONF.new"
        [[ -e $ROOT/conf/gres.conf.new ]] && { echo "# gres.conf:"; cat "$ROOT/conf/gres.conf.new"; }
        rm -f "$CONF.new" "$ROOT/conf/gres.conf.new" ;;
    *) die "usage: $0 start|stop|status|env|render" ;;
esac
