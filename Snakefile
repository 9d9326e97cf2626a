# mambamil: whole-slide images → patch coordinates → features → sequences → MIL models → heatmaps.
# Run from the repository root:  snakemake --cores 2   (or --profile profiles/slurm on a cluster)
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"


rule all:
    input:
        all_targets(),
    default_target: True


include: "workflow/rules/demo.smk"
include: "workflow/rules/tiling.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/order.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/heatmaps.smk"
include: "workflow/rules/qc.smk"
include: "workflow/rules/external.smk"
