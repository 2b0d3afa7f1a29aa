#!/usr/bin/env bash
# tests/slurm/cluster.sh: a single-node SLURM cluster on localhost, for testing the pipeline's
# SLURM profile (workflow/profiles/slurm, snakemake-executor-plugin-slurm) without a real cluster.
#
#   tests/slurm/cluster.sh          install (first time), configure and start; exit 0 once
#                                   the cluster answers (sinfo, sacct); same as `start`
#   tests/slurm/cluster.sh status   which daemons run, sinfo and squeue
#   tests/slurm/cluster.sh stop     stop the daemons (configuration and state are kept)
#
# Debian only (bookworm ships SLURM 22.05), as root, without systemd: the daemons are started
# directly. It installs slurm-wlm (slurmctld, slurmd, client), slurmdbd, munge and
# mariadb-server, and starts munged (authentication), mariadbd (the accounting database),
# slurmdbd (so that sacct answers, as the executor plugin asks sacct for job states), slurmctld
# and slurmd. Configuration lives where Debian expects it: /etc/slurm/slurm.conf,
# /etc/slurm/slurmdbd.conf, state in /var/lib/slurm, logs in /var/log/slurm; the node line
# comes from `slurmd -C`. Notable settings:
#   ProctrackType=proctrack/linuxproc, TaskPlugin=task/none  no cgroups needed (containers)
#   SelectType=select/cons_tres, CR_Core_Memory              several 1-CPU jobs at once
#   MinJobAge=600                                            finished jobs stay in squeue 10 min
#   AccountingStorageEnforce=associations                    like real clusters: --account must
#                                                            exist; cluster `tomlocal`, account
#                                                            `tom`, user root in it (its
#                                                            default account)
# Every step checks first, so a second run only checks that the daemons answer (seconds).
set -Eeuo pipefail

CLUSTER=tomlocal
ACCOUNT=tom
PARTITION=debug
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=tomlocal-slurmdbd        # a throwaway test cluster on localhost: not a secret
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
TIMEOUT=60                       # seconds to wait for each daemon

NODE=                            # this machine's node name, from `slurmd -C`
LOG=/var/log/slurm
STATE=/var/lib/slurm
RUN=/run/slurm                   # pid files (Debian's systemd units would create it)

say() { echo "cluster.sh: $*"; }
die() { echo "cluster.sh: error: $*" >&2; exit 1; }
trap 'echo "cluster.sh: error: command failed at line $LINENO: $BASH_COMMAND" >&2' ERR

# wait_for NAME LOGFILE COMMAND...: run COMMAND once a second until it succeeds, or fail after
# $TIMEOUT seconds with the end of the daemon's log.
wait_for() {
    local name=$1 logfile=$2; shift 2
    local t
    for ((t = 0; t < TIMEOUT; t++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    [[ -f $logfile ]] && tail -n 20 "$logfile" >&2
    die "$name did not answer within ${TIMEOUT}s (log: $logfile)"
}

# pids NAME: the live processes called NAME (a daemon's exited parent may linger as a zombie).
pids() { { ps -C "$1" -o pid=,stat= || true; } | awk '$2 !~ /^Z/ { print $1 }' | paste -sd ' '; }
running() { [[ -n $(pids "$1") ]]; }

# write_file PATH MODE OWNER: write stdin to PATH if its content differs (then CHANGED=1).
CHANGED=0
write_file() {
    local path=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -f $path ]] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"
        chmod "$mode" "$path"; chown "$owner" "$path"
        return 0
    fi
    install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$tmp" "$path"
    rm -f "$tmp"
    say "wrote $path"
    CHANGED=1
}

check_system() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"
    [[ -f /etc/debian_version ]] || die "needs Debian (or a derivative): no /etc/debian_version"
    command -v apt-get >/dev/null || die "needs apt-get to install ${PACKAGES[*]}"
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] \
            || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    say "installing ${missing[*]} (a few minutes)"
    # Keep the packages' maintainer scripts from starting daemons: this script starts them.
    local policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
        >/tmp/cluster-sh-apt.log 2>&1; then
        tail -n 20 /tmp/cluster-sh-apt.log >&2
        die "apt-get install ${missing[*]} failed (log: /tmp/cluster-sh-apt.log)"
    fi
}

start_munge() {
    install -d -m 0755 -o munge -g munge /run/munge
    install -d -m 0700 -o munge -g munge /var/log/munge /var/lib/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
        say "created /etc/munge/munge.key"
    fi
    if ! running munged; then
        say "starting munged"
        runuser -u munge -- /usr/sbin/munged
    fi
    wait_for munged /var/log/munge/munged.log bash -c 'munge -n | unmunge'
}

start_mariadb() {
    install -d -m 0755 -o mysql -g mysql /run/mysqld /var/log/mysql
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        say "initialising /var/lib/mysql"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/var/log/mysql/install.log 2>&1
    fi
    if ! running mariadbd; then
        say "starting mariadbd"
        setsid /usr/sbin/mariadbd --user=mysql --log-error=/var/log/mysql/error.log \
            </dev/null >/dev/null 2>&1 &
    fi
    wait_for mariadbd /var/log/mysql/error.log mariadb-admin --silent ping
    # Root logs in through the unix socket; all three statements are no-ops the second time.
    mariadb -u root <<EOF
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
EOF
}

# Sets CHANGED=1 if either file changed (running SLURM daemons then restart to read it).
write_config() {
    local node
    install -d -m 0755 /etc/slurm
    install -d -m 0755 -o slurm -g slurm "$RUN" "$LOG" "$STATE" "$STATE/slurmctld"
    install -d -m 0755 "$STATE/slurmd"      # slurmd runs as root
    # First line of `slurmd -C`: NodeName=<hostname> CPUs=... RealMemory=... (then UpTime=...).
    node=$(slurmd -C | head -n 1)
    [[ $node == NodeName=* ]] || die "unexpected output from slurmd -C: $node"
    NODE=${node%% *}; NODE=${NODE#NodeName=}
    getent hosts "$NODE" >/dev/null \
        || die "host name $NODE does not resolve: add '127.0.1.1 $NODE' to /etc/hosts"

    write_file /etc/slurm/slurmdbd.conf 0600 slurm:slurm <<EOF
# Written by tests/slurm/cluster.sh (a single-node test cluster); edits are overwritten.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=$DB_NAME
StorageUser=$DB_USER
StoragePass=$DB_PASS
EOF

    write_file /etc/slurm/slurm.conf 0644 root:root <<EOF
# Written by tests/slurm/cluster.sh (a single-node test cluster); edits are overwritten.
ClusterName=$CLUSTER
SlurmctldHost=$NODE
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
# No cgroups: works in containers.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Several small jobs share the node; a job without --mem gets DefMemPerCPU per CPU.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
# Finished jobs stay visible to squeue for 10 minutes; SIGTERM, then SIGKILL 30 s later.
MinJobAge=600
KillWait=30
# Accounting through slurmdbd, so that sacct answers; --account must name an existing one.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
$node State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

# node_ready: the node takes jobs; one left DOWN or DRAINED by an earlier run (e.g. a slurmd
# stopped under a running job) is resumed once slurmd answers for it.
node_ready() {
    local state
    state=$(sinfo -h -N -o %T | head -n 1)
    case $state in
        idle | mixed | allocated | completing) return 0 ;;
        down | drained | draining) scontrol update nodename="$NODE" state=resume || true ;;
    esac
    return 1
}

stop_daemon() {  # stop_daemon NAME: SIGTERM, then wait up to $TIMEOUT s for it to exit
    local name=$1 t
    running "$name" || return 0
    say "stopping $name"
    pkill -x "$name" || true
    for ((t = 0; t < TIMEOUT; t++)); do
        running "$name" || return 0
        sleep 1
    done
    die "$name did not stop within ${TIMEOUT}s"
}

start_slurm() {
    local restart=$1
    if ((restart)); then
        stop_daemon slurmd; stop_daemon slurmctld; stop_daemon slurmdbd
    fi
    if ! running slurmdbd; then
        say "starting slurmdbd"
        slurmdbd
    fi
    wait_for slurmdbd "$LOG/slurmdbd.log" sacctmgr -n show cluster
    # The cluster must exist in the database before slurmctld registers with it.
    if [[ -z $(sacctmgr -n -P show cluster "$CLUSTER" format=cluster) ]]; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
        say "added cluster $CLUSTER to the accounting database"
    fi
    if [[ -z $(sacctmgr -n -P show account "$ACCOUNT" format=account) ]]; then
        sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="tom tests" \
            organization=tom >/dev/null
        say "added account $ACCOUNT"
    fi
    if [[ -z $(sacctmgr -n -P show assoc where user=root account="$ACCOUNT" \
            cluster="$CLUSTER" format=user) ]]; then
        sacctmgr -i add user root account="$ACCOUNT" cluster="$CLUSTER" >/dev/null
        say "added user root to account $ACCOUNT"
    fi
    if [[ $(sacctmgr -n -P show user root format=defaultaccount) != "$ACCOUNT" ]]; then
        sacctmgr -i modify user root set defaultaccount="$ACCOUNT" >/dev/null
        say "made $ACCOUNT root's default account"
    fi
    if ! running slurmctld; then
        say "starting slurmctld"
        slurmctld
    fi
    wait_for slurmctld "$LOG/slurmctld.log" scontrol ping
    if ! running slurmd; then
        say "starting slurmd"
        slurmd
    fi
    wait_for slurmd "$LOG/slurmd.log" node_ready
    # sacct answers through slurmctld and slurmdbd.
    wait_for sacct "$LOG/slurmdbd.log" sacct -n -X -S now-1minutes
}

cmd_start() {
    check_system
    install_packages
    start_munge
    start_mariadb
    write_config
    start_slurm "$CHANGED"
    say "cluster $CLUSTER is up: partition $PARTITION, account $ACCOUNT"
    sinfo
}

cmd_stop() {
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    stop_daemon slurmd
    stop_daemon slurmctld
    stop_daemon slurmdbd
    if running mariadbd; then
        say "stopping mariadbd"
        mariadb-admin shutdown >/dev/null 2>&1 || pkill -x mariadbd || true
        local t
        for ((t = 0; t < TIMEOUT; t++)); do running mariadbd || break; sleep 1; done
        running mariadbd && die "mariadbd did not stop within ${TIMEOUT}s"
    fi
    stop_daemon munged
    say "stopped"
}

cmd_status() {
    local d stopped=()
    for d in munged mariadbd slurmdbd slurmctld slurmd; do
        if running "$d"; then
            printf '%-10s running (pid %s)\n' "$d" "$(pids "$d")"
        else
            printf '%-10s stopped\n' "$d"; stopped+=("$d")
        fi
    done
    if ((${#stopped[@]})); then
        echo "cluster.sh: not running: ${stopped[*]} (start with: $0)" >&2
        exit 1
    fi
    sinfo
    squeue
}

case ${1:-start} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) die "usage: $0 [start|stop|status]" ;;
esac
