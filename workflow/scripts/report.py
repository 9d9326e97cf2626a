"""The self-contained HTML report of the run (mambamil/report.py)."""

import sys

from mambamil.report import write_report

snakemake = snakemake  # noqa: F821 (injected by Snakemake)
with open(snakemake.log[0], "w") as log:
    sys.stderr = log
    print(write_report(snakemake.config["results"], snakemake.output.report, dict(snakemake.config)), file=log)
