#!/usr/bin/env bash
# Stop the daemons tests/slurm/start_slurm.sh started — only those, by the PIDs it recorded — and put back any
# /etc/slurm files it moved aside. Safe to run twice.
# Usage: tests/slurm/stop_slurm.sh     (env MAMBAMIL_SLURM_DIR, default /tmp/mambamil-slurm)
set -uo pipefail

STATE=${MAMBAMIL_SLURM_DIR:-/tmp/mambamil-slurm}
ETC=/etc/slurm
PIDS="$STATE/pids"

if [ -s "$PIDS" ]; then
  # Jobs still queued from an interrupted test would keep slurmstepd processes alive.
  if command -v scancel >/dev/null && scancel --quiet --user root 2>/dev/null; then
    for _ in $(seq 30); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 1; done
  fi
  # Reverse order: slurmd, slurmctld, then munged.
  tac "$PIDS" | while read -r name pid; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      if kill -0 "$pid" 2>/dev/null; then
        echo "stop_slurm.sh: $name ($pid) ignored TERM, sending KILL" >&2
        kill -KILL "$pid" 2>/dev/null
      fi
    fi
    echo "stop_slurm.sh: stopped $name ($pid)"
  done
  rm -f "$PIDS"
fi

for f in slurm.conf gres.conf cgroup.conf; do
  if [ -e "$ETC/$f" ] && grep -q "written by mambamil" "$ETC/$f"; then
    rm -f "$ETC/$f"
  fi
  [ -e "$ETC/$f.mambamil-bak" ] && mv "$ETC/$f.mambamil-bak" "$ETC/$f"
done
exit 0
