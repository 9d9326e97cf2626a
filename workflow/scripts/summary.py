"""Cohort summary: one row per task × model with mean ± std of each test-fold metric and the pooled estimate with
its bootstrap interval; and every task's paired model comparisons in one table."""

import sys
from pathlib import Path

import pandas as pd

from mambamil.evaluation.compare import COMPARISON_COLUMNS
from mambamil.evaluation.summary import summary_table
from mambamil.fileio import atomic_output
from mambamil.qc import exclusion_report, qc_counts, read_qc_table

snakemake = snakemake  # noqa: F821 (injected by Snakemake)
with open(snakemake.log[0], "w") as log:
    sys.stderr = log
    files = {tuple(run): Path(p) for run, p in zip(snakemake.params.runs, snakemake.input.metrics, strict=True)}
    table = summary_table(files)
    qc = read_qc_table(snakemake.input.qc)
    for key, value in qc_counts(qc).items():  # how many slides/patients the study used (README "Bad slides and QC")
        table[key] = value
    print(exclusion_report(qc), file=log)
    with atomic_output(snakemake.output.summary) as tmp:
        table.to_csv(tmp, index=False)
    print(table.to_string(index=False), file=log)
    for row in table.to_dict("records"):  # test sets below evaluation.min_per_class: their intervals under-cover
        if row.get("warnings"):
            print(f"WARNING {row['task']} / {row['model']}: {row['warnings']}", file=log)
    frames = [pd.read_csv(p) for p in snakemake.input.comparisons]
    comparison = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COMPARISON_COLUMNS)
    with atomic_output(snakemake.output.comparison) as tmp:
        comparison.to_csv(tmp, index=False)
    print(comparison.to_string(index=False), file=log)
