#!/usr/bin/env bash
# CI: the one-node SLURM test cluster (issue 7, 23). Installs Debian's SLURM + munge if missing and starts a cluster
# with two fake GPUs and enforced memory limits (tests/slurm/start_slurm.sh); stops exactly the daemons it started
# (by PID, tests/slurm/stop_slurm.sh). Needs root.
#   .ci/slurm.sh start     install if missing, start (what .ci/run does before the README's test command, where
#                          tests/test_slurm.py finds the cluster through `sinfo`)
#   .ci/slurm.sh stop      stop it again (safe to run twice)
#   .ci/slurm.sh [pytest args]   start, run tests/test_slurm.py (MAMBAMIL_REQUIRE_SLURM=1), stop
set -euo pipefail
cd "$(dirname "$0")/.."
export MAMBAMIL_SLURM_DIR=${MAMBAMIL_SLURM_DIR:-/tmp/mambamil-slurm}

install_slurm() {
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
      || ! command -v munged >/dev/null; then
    echo "== installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
  fi
}

start() {
  install_slurm
  echo "== starting SLURM"
  tests/slurm/start_slurm.sh
}

case "${1:-}" in
  start) start ;;
  stop) tests/slurm/stop_slurm.sh ;;
  *)
    PYTHON=${PYTHON:-python}
    [ -x .venv/bin/python ] && [ -z "${VIRTUAL_ENV:-}" ] && PYTHON=.venv/bin/python
    trap 'tests/slurm/stop_slurm.sh' EXIT
    start
    echo "== SLURM integration test"
    MAMBAMIL_REQUIRE_SLURM=1 "$PYTHON" -m pytest tests/test_slurm.py -v "$@"
    ;;
esac
