#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine for tests/test_slurm.py: munged, slurmctld and slurmd, as root,
# talking over 127.0.0.1. Needs Debian's `slurmctld slurmd slurm-client munge` (installed by .ci/slurm.sh).
#
# - The config goes to /etc/slurm/slurm.conf (+ gres.conf, cgroup.conf): the slurm executor plugin strips SLURM_*
#   variables, SLURM_CONF included, before its nested `srun`, so only the default path works. Files already there
#   are moved aside to *.mambamil-bak and put back by stop_slurm.sh.
# - No accounting (so the test uses `slurm-status-command: squeue`); MinJobAge=300 keeps finished jobs visible to
#   squeue/scontrol long enough for the plugin (and the test) to see them.
# - Memory limits are enforced without cgroups: jobacct_gather/linux samples each job's processes every second and
#   OverMemoryKill kills a job above its --mem (state OUT_OF_MEMORY), so Snakemake's memory-scaled retries can be
#   tested.
# - Two fake GPUs: GresTypes=gpu, gres.conf maps Name=gpu to two existing device files, AutoDetect=off.
# - Daemons run in the foreground, backgrounded here; their PIDs go to $MAMBAMIL_SLURM_DIR/pids, which
#   stop_slurm.sh reads to kill exactly these processes.
#
# Usage: tests/slurm/start_slurm.sh     (env MAMBAMIL_SLURM_DIR, default /tmp/mambamil-slurm: state, logs, pids)
set -euo pipefail

STATE=${MAMBAMIL_SLURM_DIR:-/tmp/mambamil-slurm}
ETC=/etc/slurm
NODE=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.8 }' /proc/meminfo)   # leave 20 % to the OS

for cmd in munged slurmctld slurmd sinfo scontrol; do
  command -v "$cmd" >/dev/null || { echo "start_slurm.sh: $cmd not found (apt-get install slurmctld slurmd slurm-client munge)" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "start_slurm.sh: must run as root" >&2; exit 1; }
if [ -s "$STATE/pids" ]; then
  echo "start_slurm.sh: $STATE/pids exists — run tests/slurm/stop_slurm.sh first" >&2; exit 1
fi

rm -rf "$STATE/spool" "$STATE/log"   # a fresh cluster every time: no jobs left from an earlier run
mkdir -p "$STATE"/{spool/ctld,spool/d,log} "$ETC"
: > "$STATE/pids"

# Two existing character devices stand in for GPUs (nothing opens them: no cgroups, TaskPlugin=task/none).
GPU_FILES=()
for f in /dev/tty0 /dev/tty1 /dev/null /dev/zero /dev/full /dev/random; do
  [ -c "$f" ] && GPU_FILES+=("$f")
  [ "${#GPU_FILES[@]}" -eq 2 ] && break
done
[ "${#GPU_FILES[@]}" -eq 2 ] || { echo "start_slurm.sh: no two character devices for the fake GPUs" >&2; exit 1; }

for f in slurm.conf gres.conf cgroup.conf; do
  if [ -e "$ETC/$f" ] && [ ! -e "$ETC/$f.mambamil-bak" ] && ! grep -q "written by mambamil" "$ETC/$f"; then
    mv "$ETC/$f" "$ETC/$f.mambamil-bak"
  fi
done

cat > "$ETC/slurm.conf" <<EOF
# written by mambamil tests/slurm/start_slurm.sh — a one-node test cluster; stop_slurm.sh removes it
ClusterName=mambamil-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldPort=6817
SlurmdPort=6818
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
MinJobAge=300
KillWait=5
SlurmdTimeout=60
InactiveLimit=0
Waittime=0
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

cat > "$ETC/gres.conf" <<EOF
# written by mambamil tests/slurm/start_slurm.sh — two fake GPUs backed by existing device files
AutoDetect=off
NodeName=$NODE Name=gpu File=${GPU_FILES[0]}
NodeName=$NODE Name=gpu File=${GPU_FILES[1]}
EOF

# No cgroups are used (proctrack/linuxproc, task/none). Slurm >= 23.11 can switch the cgroup plugin off; 22.05
# (Debian 12) always loads one, so there it autodetects the host's cgroup version and constrains nothing.
read -r major minor _ <<< "$(slurmd -V | awk '{ print $2 }' | tr . ' ')"
if [ "$major" -gt 23 ] || { [ "$major" -eq 23 ] && [ "$minor" -ge 11 ]; }; then cgroup_plugin=disabled; else cgroup_plugin=autodetect; fi
cat > "$ETC/cgroup.conf" <<EOF
# written by mambamil tests/slurm/start_slurm.sh — nothing is constrained (proctrack/linuxproc, task/none)
CgroupPlugin=$cgroup_plugin
EOF

# munged: its Debian key is made at install; make one if it is missing.
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
setpriv --reuid munge --regid munge --clear-groups munged --foreground > "$STATE/log/munged.out" 2>&1 &
echo "munged $!" >> "$STATE/pids"
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
munge -n | unmunge >/dev/null || { echo "start_slurm.sh: munged did not come up" >&2; cat "$STATE/log/munged.out" >&2; exit 1; }

slurmctld -D -i > "$STATE/log/slurmctld.out" 2>&1 &
echo "slurmctld $!" >> "$STATE/pids"
slurmd -D -N "$NODE" > "$STATE/log/slurmd.out" 2>&1 &
echo "slurmd $!" >> "$STATE/pids"

# Wait until the node is idle.
for _ in $(seq 60); do
  state=$(sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null || true)
  [ "$state" = "idle" ] && break
  if [ "$state" = "down" ] || [ "$state" = "drain" ] || [ "$state" = "inval" ]; then
    scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true
  fi
  sleep 1
done
if [ "$(sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null)" != "idle" ]; then
  echo "start_slurm.sh: node $NODE did not become idle" >&2
  sinfo -N -l >&2 || true
  tail -n 30 "$STATE"/log/slurmctld.log "$STATE"/log/slurmd.log "$STATE"/log/*.out >&2 || true
  exit 1
fi
echo "start_slurm.sh: SLURM is up — node $NODE idle, $CPUS CPUs, ${MEM_MB} MB, gres gpu:2 (${GPU_FILES[*]}); state in $STATE"
