#!/usr/bin/env bash
# CI: the SLURM integration test (issue 7). Installs Debian's SLURM + munge if missing, starts a one-node cluster
# with two fake GPUs (tests/slurm/start_slurm.sh), runs the tests marked `slurm`, and always stops the daemons it
# started (by PID). Needs root and the project's environment (pytest, snakemake, the slurm executor plugin).
#   .ci/slurm.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
  echo "== installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

PYTHON=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${VIRTUAL_ENV:-}" ] && PYTHON=.venv/bin/python

export MAMBAMIL_SLURM_DIR=${MAMBAMIL_SLURM_DIR:-/tmp/mambamil-slurm}
trap 'tests/slurm/stop_slurm.sh' EXIT
echo "== starting SLURM"
tests/slurm/start_slurm.sh

echo "== SLURM integration test"
MAMBAMIL_SLURM=1 "$PYTHON" -m pytest -m slurm tests/test_slurm.py -v "$@"
