#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests and for trying `run_grid.sh --slurm`.
#
#   bash tests/slurm/start_local_cluster.sh          (as root) start it, or reuse it if it is up
#   bash tests/slurm/start_local_cluster.sh --stop   (as root) cancel its jobs, stop its daemons
#
# Needs root and Debian's packages (apt-get install slurmctld slurmd slurm-client munge); no
# systemd, no cgroups. Writes /etc/slurm/slurm.conf (where sbatch, squeue, ... look for it) and
# refuses to overwrite one it did not write. State and spool in /var/spool/ftkit-slurm, logs in
# /var/log/ftkit-slurm, pid files in /run/ftkit-slurm.
#
# The node offers twice the machine's cores as CPUs (SlurmdParameters=config_overrides), so on a
# 2-core machine two tests can each have a job running at once; jobs then share the cores.
# A cluster that is up with this checkout's configuration is reused; one started from another
# checkout (or with another configuration) is stopped, its job state wiped, and started again.
set -euo pipefail
die() { echo "error: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "run it as root (it starts munged, slurmctld and slurmd)"

root=$(cd "$(dirname "$0")/../.." && pwd)
conf=/etc/slurm/slurm.conf
state=/var/spool/ftkit-slurm logs=/var/log/ftkit-slurm pids=/run/ftkit-slurm
marker="# ftkit local test cluster, written by $root/tests/slurm/start_local_cluster.sh"

stop_daemon() {  # $1 = pid file: TERM its process, wait for it to go, KILL after 30 s
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  kill -TERM "$pid" 2>/dev/null || { rm -f "$1"; return 0; }
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$1"
}
stop_cluster() {  # its jobs first (their slurmstepd would outlive the daemons), then the daemons
  local jobs
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ') || true  # no controller: no jobs
  if [ -n "$jobs" ]; then
    echo "cancelling the jobs still in it: $jobs"
    scancel $jobs
    for _ in $(seq 1 90); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 1; done
  fi
  stop_daemon "$pids/slurmd.pid"
  stop_daemon "$pids/slurmctld.pid"
}
node_state() { sinfo -h -N -o %t 2>/dev/null | head -n 1; }

if [ "${1:-}" = --stop ]; then
  stop_cluster
  echo "local SLURM stopped (munged left running)"
  exit 0
fi
[ $# = 0 ] || die "unknown argument $1 (usage: start_local_cluster.sh [--stop])"
for tool in munged slurmctld slurmd sinfo sbatch; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install slurmctld slurmd slurm-client munge)"
done

host=$(hostname -s)
cpus=$(( $(nproc --all) * 2 ))  # --all: nproc alone follows OMP_NUM_THREADS
wanted="$marker
ClusterName=ftkit
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$pids/slurmctld.pid
SlurmdPidFile=$pids/slurmd.pid
SlurmctldLogFile=$logs/slurmctld.log
SlurmdLogFile=$logs/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=1
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
KillWait=30
MinJobAge=600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"

if [ -f "$conf" ] && ! head -n 1 "$conf" | grep -q '^# ftkit local test cluster'; then
  die "$conf exists and was not written by this script; not touching a real cluster's configuration (if that SLURM answers to sinfo, use it: .ci/run does)"
fi
if [ "$(cat "$conf" 2>/dev/null)" = "$wanted" ] && kill -0 "$(cat "$pids/slurmctld.pid" 2>/dev/null)" 2>/dev/null \
   && [[ "$(node_state)" =~ ^(idle|mix|alloc) ]]; then
  echo "local SLURM already up: node $host, $cpus CPUs ($(node_state))"
  exit 0
fi

echo "starting local SLURM (node $host, $cpus CPUs)..."
stop_cluster
rm -rf "$state"
mkdir -p "$state/ctld" "$state/d" "$logs" "$pids"
printf '%s\n' "$wanted" > "$conf"

# munge: authentication between the daemons and the commands; one is enough, reuse it if running
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  [ -s /etc/munge/munge.key ] || { mungekey --create --force >/dev/null; chown munge:munge /etc/munge/munge.key; }
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- munged
  for _ in $(seq 1 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
  munge -n | unmunge >/dev/null || die "munged did not start (see /var/log/munge/munged.log)"
fi

slurmctld || die "slurmctld did not start (see $logs/slurmctld.log)"
slurmd || die "slurmd did not start (see $logs/slurmd.log)"
for _ in $(seq 1 60); do
  if [[ "$(node_state)" =~ ^(idle|mix|alloc) ]]; then
    echo "local SLURM up: $(sinfo -h -o '%P %D nodes %C CPUs(A/I/O/T) %t')"
    exit 0
  fi
  sleep 1
done
die "the node is not idle after 60 s (sinfo: $(node_state)); see $logs/slurmctld.log and $logs/slurmd.log"
