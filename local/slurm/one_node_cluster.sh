#!/bin/bash
# A real SLURM cluster of one machine, on loopback: Debian's slurm-wlm and munge, a slurm.conf for this host
# with its CPUs and memory, munged, slurmctld and slurmd started. For trying local/slurm/train.sbatch (see
# local/slurm/prove_requeue.sh), not for production.
#
#   sudo local/slurm/one_node_cluster.sh            # install if needed, configure, start
#   export SLURM_CONF=/tmp/anyphone-slurm/slurm.conf # then sbatch/squeue/scontrol talk to it
#   sudo local/slurm/one_node_cluster.sh stop        # stop the daemons it started
#
# Runs as root (it installs packages and starts daemons). State lives in $SLURM_DIR (default
# /tmp/anyphone-slurm). No accounting daemon (slurmdbd needs a database), so sacct has nothing to report;
# scontrol show job and squeue show the job's state and restarts.
set -euo pipefail
SLURM_DIR=${SLURM_DIR:-/tmp/anyphone-slurm}
CONF=$SLURM_DIR/slurm.conf

stop() {
    for d in slurmd slurmctld; do
        if [ -f "$SLURM_DIR/$d.pid" ] && kill -0 "$(cat "$SLURM_DIR/$d.pid")" 2>/dev/null; then
            kill "$(cat "$SLURM_DIR/$d.pid")"
        fi
    done
    if [ -f "$SLURM_DIR/munged.pid" ] && kill -0 "$(cat "$SLURM_DIR/munged.pid")" 2>/dev/null; then
        kill "$(cat "$SLURM_DIR/munged.pid")"
    fi
    echo "stopped the cluster of $SLURM_DIR"
}
if [ "${1:-}" = stop ]; then
    stop
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "one_node_cluster.sh: run as root (it installs slurm-wlm and munge and starts their daemons)" >&2
    exit 2
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge
fi
mkdir -p "$SLURM_DIR/state" "$SLURM_DIR/spool" "$SLURM_DIR/log" /run/munge
chown munge:munge /run/munge

# this machine as slurmd sees it (CPUs, sockets, cores, threads, memory), under the name "localhost"
HW=$(slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]* //')
MEM=$(echo "$HW" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
HW=$(echo "$HW" | sed -e "s/RealMemory=[0-9]*/RealMemory=$((MEM * 9 / 10))/")  # leave the OS some room
cat > "$CONF" <<CONF
# written by local/slurm/one_node_cluster.sh
ClusterName=anyphone-local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
JobRequeue=1
KillWait=30
MinJobAge=3600
NodeName=localhost NodeAddr=127.0.0.1 $HW State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$CONF

stop >/dev/null 2>&1 || true
munged --force --pid-file "$SLURM_DIR/munged.pid" --log-file "$SLURM_DIR/log/munged.log" 2>/dev/null \
    || munged --force
slurmctld -f "$CONF"
slurmd -f "$CONF"
for _ in $(seq 1 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        break
    fi
    scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    sleep 1
done
sinfo
echo "cluster up: export SLURM_CONF=$CONF"
