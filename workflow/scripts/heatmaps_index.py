"""Heatmap index: every slide as drawn, excluded by QC (with the cause) or not in a test fold."""

import sys
from pathlib import Path

import pandas as pd

from mambamil.fileio import atomic_output
from mambamil.qc import EXCLUDED, read_qc_table

snakemake = snakemake  # noqa: F821 (injected by Snakemake)
with open(snakemake.log[0], "w") as log:
    sys.stderr = log
    drawn = {Path(p).parent.name: p for p in snakemake.input.heatmaps}
    qc = read_qc_table(snakemake.input.qc).set_index("slide_id")
    rows = []
    for sid in snakemake.params.slide_ids:
        if sid in drawn:
            rows.append((sid, "drawn", drawn[sid]))
        elif sid in qc.index and qc.loc[sid, "status"] == EXCLUDED:
            rows.append((sid, f"excluded by QC at {qc.loc[sid, 'stage']}: {qc.loc[sid, 'cause']}", ""))
        else:
            rows.append((sid, "not in a test fold (unlabelled or not in the task)", ""))
    table = pd.DataFrame(rows, columns=["slide_id", "status", "attention_png"])
    with atomic_output(snakemake.output.index) as tmp:
        table.to_csv(tmp, index=False)
    print(table.to_string(index=False), file=log)
