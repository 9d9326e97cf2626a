#!/usr/bin/env bash
# Mutation testing of the code that decides a study's numbers (mutmut 3, config in pyproject.toml [tool.mutmut]):
# the training loop, metrics and survival loss (mambamil/train/), inference (ensembling, gradient × input),
# heatmaps and the QC stubs/table (mambamil/qc.py), against the fast behaviour tests.
#
#   benchmarks/mutation.sh                       # everything in [tool.mutmut] only_mutate (hours on 2 cores)
#   benchmarks/mutation.sh 'mambamil.evaluation.metrics.*' 'mambamil.inference.*'   # a restricted scope
#   MUTATION_WALL_S=1800 benchmarks/mutation.sh ...                             # stop after 30 min (default)
#
# Run from the repository root in the project's virtual environment. Writes mutants/ (git-ignored) and prints
# the surviving mutants and the per-file counts (`mutmut show <name>` shows one mutant's diff).
set -euo pipefail
cd "$(dirname "$0")/.."
export MAMBAMIL_TEST_SLIDE="${MAMBAMIL_TEST_SLIDE:-$(cd .. && pwd)/shared/data/CMU-1-Small-Region.svs}"
# The mutated copy must win over an editable install of the package: mutmut runs pytest inside mutants/.
export PYTHONPATH=.
wall="${MUTATION_WALL_S:-1800}"
children="${MUTATION_CHILDREN:-1}"
timeout --signal=INT "$wall" mutmut run --max-children "$children" "$@" || echo "mutmut stopped (exit $?; wall limit ${wall}s?)"
mutmut results --all true > mutants/results.txt || true
python - <<'PY'
"""Per-file counts of mutmut's verdicts (killed, survived, timeout, not checked) from `mutmut results --all`."""
import collections
import re

counts = collections.defaultdict(collections.Counter)
for line in open("mutants/results.txt"):
    m = re.match(r"\s*([\w.]+)\.x\w*?__mutmut_\d+: (.+)", line) or re.match(r"\s*([\w.]+?)\.\w+__mutmut_\d+: (.+)", line)
    if m:
        counts[m.group(1)][m.group(2).strip()] += 1
for module, c in sorted(counts.items()):
    tested = c["killed"] + c["survived"] + c["timeout"]
    share = f"{100 * c['survived'] / tested:.0f} %" if tested else "-"
    print(f"{module}: killed {c['killed']}, survived {c['survived']} ({share} of tested), timeout {c['timeout']}, "
          f"not checked {c['not checked']}, other {sum(c.values()) - tested - c['not checked']}")
PY
grep -E ": survived" mutants/results.txt || true
