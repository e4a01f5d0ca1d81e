#!/usr/bin/env bash
# Starts a one-node Slurm on this machine for the executor's tests: Debian's munge, slurmctld and slurmd
# (installed when missing), a generated slurm.conf under DIR (default target/slurm), state and logs beside
# it. Idempotent: a controller already answering for DIR's config is reused. Prints SLURM_CONF=<path> last.
# Needs root (the daemons run as root here; munged as its own user).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$(realpath -m "${1:-$root/target/slurm}")"
exec 9>"$root/.chromium.lock"
flock 9
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
  || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  packages=(slurmctld slurmd slurm-client munge)
  apt-get install -y -qq "${packages[@]}" >&2 \
    || { apt-get update -qq >&2 && apt-get install -y -qq "${packages[@]}" >&2; }
fi
conf="$dir/slurm.conf"
export SLURM_CONF="$conf"
alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [[ -f "$conf" ]] && alive "$dir/slurmctld.pid" && alive "$dir/slurmd.pid"; then
  started=1
fi
if [[ -z "${started:-}" ]]; then
mkdir -p "$dir/state" "$dir/spool" "$dir/log"
host="$(hostname -s)"
cpus="$(nproc)"
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat > "$conf" <<CONF
ClusterName=strata-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
# munge: a key, its run folder, the daemon as the munge user
if ! pgrep -x munged >/dev/null; then
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  [[ -s /etc/munge/munge.key ]] || mungekey -c >&2
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  chmod 0700 /etc/munge
  chmod 0400 /etc/munge/munge.key
  # (the daemons must not inherit the lock: fd 9 closed for them)
  runuser -u munge -- munged >&2 9>&- || munged --force >&2 9>&-
fi
for _ in $(seq 30); do
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
  sleep 0.5
done
munge -n | unmunge >/dev/null
slurmctld -c -f "$conf" >&2 9>&-
slurmd -f "$conf" >&2 9>&-
fi
for _ in $(seq 60); do
  if sinfo -h -o %t 2>/dev/null | grep -q idle; then
    echo "SLURM_CONF=$conf"
    exit 0
  fi
  sleep 1
done
echo "slurm did not come up; logs in $dir/log" >&2
tail -20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
exit 1
