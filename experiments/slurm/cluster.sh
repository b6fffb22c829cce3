#!/usr/bin/env bash
# Throwaway single-node SLURM cluster (munged + slurmctld + slurmd) living in one folder.
#
# Usage:
#   cluster.sh up DIR      install slurm-wlm/munge if missing, write config under DIR, start the
#                          daemons, wait until the node is idle; prints the two lines a shell needs
#                          (`eval "$(cluster.sh up DIR)"`): export SLURM_CONF=DIR/slurm.conf and
#                          export PATH=DIR/bin:$PATH. No-op (just reports) if the cluster is already up.
#   cluster.sh down DIR    stop everything started for DIR (jobs included); idempotent.
#   cluster.sh status DIR  sinfo/squeue of the cluster in DIR.
#
# Exit codes: 0 ok; 2 usage; 3 SLURM cannot be made available here (not root, no apt-get,
# install failed), one-line reason on stderr (a test fixture can skip on it);
# 4 daemons started but the cluster did not become ready (log tails on stderr).
# Needs root (daemons run as root: SlurmUser=root). Nothing is read from /etc/slurm or /etc/munge.
# Completed jobs: no slurmdbd, so plain `sacct` fails ("accounting storage is disabled");
# `sacct -c` reads DIR/log/jobcomp.log (jobcomp/filetxt). DIR/bin/sacct is a shim adding -c:
# put DIR/bin first in PATH for tools that call plain sacct (submitit polls job states with it
# and otherwise waits forever on a job that died without a result file).
# Env: SLURM_UP_TIMEOUT (s, default 60).
set -euo pipefail

die() { echo "cluster.sh: $2" >&2; exit "$1"; }
log() { echo "cluster.sh: $*" >&2; }

[[ $# -eq 2 ]] || die 2 "usage: $0 up|down|status DIR"
CMD=$1
case $CMD in up|down|status) ;; *) die 2 "usage: $0 up|down|status DIR" ;; esac
[[ $CMD != up || $(id -u) -eq 0 ]] || die 3 "not root (the test cluster runs its daemons as root)"
if [[ ! -d $2 ]]; then
    [[ $CMD == up ]] || { echo "cluster.sh: no cluster folder $2: nothing to do" >&2; exit 0; }
    mkdir -p "$2"
fi
DIR=$(cd "$2" && pwd -P)
CONF=$DIR/slurm.conf
RUN=$DIR/run
LOGD=$DIR/log
MUNGE_PID=$RUN/munged.pid
CTLD_PID=$RUN/slurmctld.pid
SLURMD_PID=$RUN/slurmd.pid
export SLURM_CONF=$CONF

# AF_UNIX socket paths are limited to 108 bytes: slurmstepd makes SPOOL/<host>_<job>.<step>
# sockets, munged RUN/munge.socket.2. For deep DIRs (pytest tmp_path) the daemons get the
# same folders through a short symlink /tmp/slurm-<crc> -> DIR.
SHORT=$DIR
if (( ${#DIR} + $(hostname -s | wc -c) + 32 > 107 )); then
    SHORT=/tmp/slurm-$(printf %s "$DIR" | cksum | cut -d' ' -f1)
fi
MUNGE_SOCK=$SHORT/run/munge.socket.2

alive() {  # running and not a zombie (kill -0 succeeds on zombies)
    [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null || return 1
    local st
    st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    st=${st##*) }
    [[ ${st:0:1} != Z ]]
}
pid_of() { [[ -s $1 ]] && tr -dc 0-9 <"$1" || true; }

# Processes tied to DIR: cmdline names our conf/key, or an open fd/cwd in our own subdirs
# (slurmstepd holds sockets in the spool dir). Catches daemons whose pid file is gone.
# Only our subdirs: a test may keep its own files under DIR and must not be killed.
dir_pids() {
    local p c d cands=""
    cands=$(grep -lsaF -e "$CONF" -e "$DIR/munge/" -e "$MUNGE_SOCK" /proc/[0-9]*/cmdline || true)
    for d in spool state run log munge; do  # one find per subdir: cheap, no per-process forks
        cands+=" $(find /proc/[0-9]*/fd /proc/[0-9]*/cwd -maxdepth 1 -lname "$DIR/$d/*" 2>/dev/null || true)"
    done
    for p in $(tr ' ' '\n' <<<"$cands" | sed -n 's|^/proc/\([0-9]*\)/.*|\1|p' | sort -u); do
        [[ $p == "$$" || $p == "$BASHPID" ]] && continue
        c=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) || continue
        [[ $c == *cluster.sh* ]] && continue  # ourselves / a concurrent invocation
        echo "$p"
    done
}

descendants() {  # all descendants of pids $@ (job processes under slurmstepd)
    local f st pid ppid todo=" $* " found=1
    local -A parent=()
    for f in /proc/[0-9]*/stat; do
        st=$(<"$f") 2>/dev/null || continue
        pid=${st%% *}
        st=${st##*) }  # comm may contain spaces/parens
        ppid=$(cut -d' ' -f2 <<<"$st")
        parent[$pid]=$ppid
    done
    while (( found )); do
        found=0
        for pid in "${!parent[@]}"; do
            if [[ $todo == *" ${parent[$pid]} "* && $todo != *" $pid "* ]]; then
                todo+="$pid "; echo "$pid"; found=1
            fi
        done
    done
}

port_busy() {  # listening TCP socket on port $1 (any address), from /proc/net/tcp{,6}
    local hex
    hex=$(printf ':%04X' "$1")
    awk -v h="$hex" '$4 == "0A" && substr($2, length($2) - 4) == h { f = 1 } END { exit !f }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

pick_ports() {  # deterministic per DIR (parallel clusters differ), skip busy ones
    local base i p
    base=$(( 20000 + ($(printf %s "$DIR" | cksum | cut -d' ' -f1) % 10000) * 2 ))
    for i in $(seq 0 50); do
        p=$(( base + 2 * i ))
        (( p > 65000 )) && p=$(( p - 45000 ))
        if ! port_busy "$p" && ! port_busy $((p + 1)); then echo "$p"; return; fi
    done
    die 4 "no free port pair found near $base"
}

is_up() {
    alive "$(pid_of "$MUNGE_PID")" && alive "$(pid_of "$CTLD_PID")" && alive "$(pid_of "$SLURMD_PID")" \
        && [[ -f $CONF ]] && timeout 10 sinfo -h -o %t >/dev/null 2>&1
}

ensure_installed() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || die 3 "slurm/munge not installed and no apt-get"
    export DEBIAN_FRONTEND=noninteractive
    local pkgs=(slurm-wlm munge) out=$DIR/log/apt.log
    mkdir -p "$DIR/log"
    log "installing ${pkgs[*]} (log: $out)"
    # Wait for a dpkg lock held by another apt (unattended upgrades on a fresh VM) instead of failing.
    local wait=(-o DPkg::Lock::Timeout=300)
    if ! apt-get install "${wait[@]}" -y --no-install-recommends "${pkgs[@]}" >"$out" 2>&1; then
        # Stale package lists are the usual cause: only then pay for an update.
        { apt-get update "${wait[@]}" && apt-get install "${wait[@]}" -y --no-install-recommends "${pkgs[@]}"; } >>"$out" 2>&1 \
            || die 3 "apt-get install slurm-wlm munge failed: $(tail -n 1 "$out")"
    fi
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        || die 3 "slurm-wlm/munge installed but slurmctld/slurmd/munged not on PATH"
}

write_conf() {
    local host cpus mem realmem port hw
    host=$(hostname -s)
    hw=$(slurmd -C 2>/dev/null | head -n 1) || true
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    [[ -n $cpus ]] || cpus=$(nproc)
    [[ -n $mem ]] || mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 ))
    # Under the reported value: a node claiming more memory than slurmd measures is drained.
    realmem=$(( mem * 95 / 100 ))
    port=$(pick_ports)
    cat >"$CONF" <<EOF
# Generated by cluster.sh for $DIR -- single-node test cluster.
ClusterName=kdl$(printf %s "$DIR" | cksum | cut -d' ' -f1)
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Own munged. cred_expire also gates the restart of a requeued job: measured 135 s at the
# default 120, 15 s at 10 (5 gives no further gain).
AuthInfo=socket=$MUNGE_SOCK,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$SHORT/spool
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGD/slurmctld.log
SlurmdLogFile=$LOGD/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Keep /etc/slurm/plugstack.conf (and its spank plugins) out.
PlugStackConfig=$DIR/plugstack.conf
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
# No cgroups in containers.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
# Real CPU/memory allocation per job.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without it a job with no --mem takes the whole node's memory and jobs cannot share the node.
DefMemPerCPU=$(( realmem / cpus ))
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2
JobRequeue=1
ReturnToService=2
# No grace minutes past --time; slurmctld checks limits every 30 s (hard-coded), so the kill
# lands 0-30 s after the limit and --signal=SIG@N arrives N..N+30 s before it. KillWait:
# SIGTERM->SIGKILL gap. MinJobAge: seconds a finished job stays in squeue/scontrol.
OverTimeLimit=0
KillWait=5
MinJobAge=60
InactiveLimit=0
MessageTimeout=10
SlurmctldTimeout=10
SlurmdTimeout=30
# No slurmdbd: plain sacct does not work; completed jobs go to a text file (sacct -c reads it).
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGD/jobcomp.log
# CPUs only (no socket/core/thread layout): each logical CPU is an allocatable core,
# so -c N gets N CPUs even on SMT machines; config_overrides: trust this line over hardware.
SlurmdParameters=config_overrides
NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$cpus RealMemory=$realmem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    : >"$DIR/plugstack.conf"
    mkdir -p "$DIR/bin"
    cat >"$DIR/bin/sacct" <<EOF
#!/bin/sh
# No slurmdbd here: answer from the job completion file (sacct -c).
export SLURM_CONF=\${SLURM_CONF:-$CONF}
for a in "\$@"; do case \$a in -c|--completion) exec $(command -v sacct) "\$@" ;; esac; done
exec $(command -v sacct) -c "\$@"
EOF
    chmod 755 "$DIR/bin/sacct"
}

start_munge() {
    local key=$DIR/munge/munge.key
    mkdir -p "$DIR/munge"
    # munged refuses group/other-writable dirs and readable keys; the logs stay readable (users read
    # log/jobcomp.log, and the sacct shim answers from it).
    chmod 700 "$DIR/munge"
    chmod 755 "$LOGD"
    chmod 755 "$RUN"  # clients (any user) must reach the socket
    if [[ ! -s $key ]]; then
        dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
    fi
    chmod 400 "$key"
    munged --force --socket="$MUNGE_SOCK" --key-file="$key" --pid-file="$MUNGE_PID" \
        --log-file="$LOGD/munged.log" --seed-file="$DIR/munge/munged.seed" 9>&- \
        || { tail -n 5 "$LOGD/munged.log" >&2 2>/dev/null; die 4 "munged failed to start"; }
    local i
    for i in $(seq 1 50); do
        [[ -S $MUNGE_SOCK ]] && munge -s x --socket="$MUNGE_SOCK" 2>/dev/null | unmunge --socket="$MUNGE_SOCK" >/dev/null 2>&1 && return
        sleep 0.2
    done
    die 4 "munged not answering on $MUNGE_SOCK"
}

wait_idle() {
    local t0=$SECONDS limit=${SLURM_UP_TIMEOUT:-60} st
    while (( SECONDS - t0 < limit )); do
        st=$(timeout 10 sinfo -h -N -o %t 2>/dev/null | head -n 1 || true)
        [[ $st == idle || $st == mix || $st == alloc ]] && return 0
        if ! alive "$(pid_of "$CTLD_PID")" || ! alive "$(pid_of "$SLURMD_PID")"; then
            sleep 1  # pid file may just not be written yet
            alive "$(pid_of "$CTLD_PID")" && alive "$(pid_of "$SLURMD_PID")" || break
        fi
        sleep 1
    done
    echo "--- node state: ${st:-none}" >&2
    tail -n 15 "$LOGD/slurmctld.log" "$LOGD/slurmd.log" >&2 2>/dev/null || true
    return 1
}

stop_all() {
    local p pf pids kids i
    # Cancel jobs first so slurmstepd and job processes end cleanly.
    if alive "$(pid_of "$CTLD_PID")" && [[ -f $CONF ]]; then
        pids=$(timeout 10 squeue -h -t R,CG,S -o %i 2>/dev/null || true)
        if [[ -n $pids ]]; then
            # shellcheck disable=SC2086
            timeout 10 scancel --full --signal=KILL $pids 2>/dev/null || true
            for i in $(seq 1 15); do
                [[ -z $(timeout 5 squeue -h -t R,CG -o %i 2>/dev/null) ]] && break
                sleep 1
            done
        fi
    fi
    # Order: slurmd, slurmctld, munged (daemons still need munge to shut down cleanly).
    for pf in "$SLURMD_PID" "$CTLD_PID" "$MUNGE_PID"; do
        p=$(pid_of "$pf")
        if alive "$p"; then
            kill -TERM "$p" 2>/dev/null || true
            for i in $(seq 1 50); do alive "$p" || break; sleep 0.2; done
            alive "$p" && kill -KILL "$p" 2>/dev/null || true
            # Let init reap it, so `ps` right after `down` shows no <defunct> daemon.
            for i in $(seq 1 25); do [[ -e /proc/$p ]] || break; sleep 0.2; done
        fi
        rm -f "$pf"
    done
    # Leftovers (slurmstepd, lost pid files) and their children.
    for i in 1 2 3 4; do
        pids=$(dir_pids)
        [[ -z $pids ]] && break
        (( i < 4 )) || { log "processes still alive: $pids"; return 1; }
        kids=$(descendants $pids | tr '\n' ' ')
        log "killing leftover processes:" $pids $kids
        # shellcheck disable=SC2086
        kill -KILL $pids $kids 2>/dev/null || true
        sleep 0.5
    done
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
    if [[ $SHORT != "$DIR" && -L $SHORT && $(readlink "$SHORT") == "$DIR" ]]; then rm -f "$SHORT"; fi
    return 0
}

print_env() {  # what clients need: the config, and the sacct shim first in PATH
    echo "export SLURM_CONF=$CONF"
    echo "export PATH=$DIR/bin:\$PATH"
}

cmd_up() {
    ensure_installed
    mkdir -p "$RUN" "$LOGD"
    if is_up; then
        log "cluster in $DIR already up"
        timeout 10 sinfo >&2 || true
        print_env
        return
    fi
    stop_all >/dev/null 2>&1 || true  # half-up leftovers
    rm -rf "$DIR/state" "$DIR/spool"   # fresh job ids/state each time
    # Job ids restart at 1: old completion records would answer for new jobs.
    [[ -f $LOGD/jobcomp.log ]] && mv -f "$LOGD/jobcomp.log" "$LOGD/jobcomp.log.prev"
    mkdir -p "$DIR/state" "$DIR/spool"
    [[ $SHORT == "$DIR" ]] || ln -sfn "$DIR" "$SHORT"
    write_conf
    start_munge
    # 9>&-: daemons must not inherit (and hold forever) the DIR lock.
    slurmctld -f "$CONF" 9>&- || die 4 "slurmctld failed to start (see $LOGD/slurmctld.log)"
    slurmd -f "$CONF" -N "$(hostname -s)" 9>&- || die 4 "slurmd failed to start (see $LOGD/slurmd.log)"
    if ! wait_idle; then
        stop_all >/dev/null 2>&1 || true
        die 4 "node did not become idle within ${SLURM_UP_TIMEOUT:-60}s (logs in $LOGD)"
    fi
    log "cluster up in $DIR"
    print_env
}

cmd_down() {
    if stop_all; then log "cluster in $DIR down"; else die 1 "could not stop everything for $DIR"; fi
}

cmd_status() {
    if ! is_up; then echo "cluster in $DIR is not up"; return 1; fi
    sinfo
    squeue
}

# One invocation per DIR at a time (parallel test workers).
exec 9>"$DIR/.lock"
flock -w 120 9 || die 4 "could not lock $DIR/.lock"

case $CMD in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) die 2 "usage: $0 up|down|status DIR" ;;
esac
