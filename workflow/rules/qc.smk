# Slide-level QC (mambamil/qc.py, README "Bad slides and QC"): every slide's outcome in one table that splits,
# train and the summary read; heatmaps follow the splits; excluded slides are listed again at the end of the run.
import sys

import pandas as pd

from mambamil.qc import EXCLUDED, exclusion_report, read_qc_table


rule qc:
    input:
        slides=config["slides"],
        tiles=expand(RESULTS / "tiles" / "{slide_id}.h5", slide_id=SLIDE_IDS),
        features=expand(FEATURES_DIR / "{slide_id}.h5", slide_id=SLIDE_IDS),
        orders=expand(FEATURES_DIR / "order" / TRAIN_ORDER / "{slide_id}.npy", slide_id=SLIDE_IDS),
    output:
        slides=report(QC_SLIDES, category="QC", labels={"table": "slides"}),
        patients=report(QC_PATIENTS, category="QC", labels={"table": "patients"}),
    params:
        # A function, so Snakemake does not expand the {slide_id} placeholders that `mambamil qc` fills in.
        stage_files=lambda wc: " ".join(
            f"--stage-file {shlex.quote(str(p))}"
            for p in (
                RESULTS / "tiles" / "{slide_id}.h5",
                FEATURES_DIR / "{slide_id}.h5",
                FEATURES_DIR / "order" / TRAIN_ORDER / "{slide_id}.npy",
            )
        ),
        out_dir=lambda wc, output: Path(output.slides).parent,
    log:
        LOGS / "qc.log",
    localrule: True
    conda:
        "../../envs/mambamil.yaml"
    shell:
        "python -m mambamil qc --slides {input.slides:q} {params.stage_files} --out {params.out_dir:q} > {log:q} 2>&1"


def tested_heatmaps(wildcards):
    """Heatmaps of the slides that passed QC and whose patient is in a test fold of the heatmap task."""
    import pandas as pd

    splits = pd.read_csv(checkpoints.splits.get(task=HEATMAP_TASK).output.splits, dtype={"case_id": str})
    tested = set(splits.loc[splits["split"] == "test", "case_id"])
    labels = read_label_sheet(config["labels"])
    qc = read_qc_table(QC_SLIDES)
    usable = set(qc.loc[qc["status"] != EXCLUDED, "slide_id"])
    slides = [s for s in SLIDE_IDS if s in usable and s in labels.index and labels.loc[s, "case_id"] in tested]
    return expand(RESULTS / "heatmaps" / "{slide_id}" / "{slide_id}.attention.png", slide_id=slides)


rule heatmaps_index:
    input:
        heatmaps=tested_heatmaps,
        qc=QC_SLIDES,
    output:
        index=RESULTS / "heatmaps" / "index.csv",
    localrule: True
    run:
        from mambamil.fileio import atomic_output

        drawn = {Path(p).parent.name: p for p in input.heatmaps}
        qc = read_qc_table(input.qc).set_index("slide_id")
        rows = []
        for sid in SLIDE_IDS:
            if sid in drawn:
                rows.append((sid, "drawn", drawn[sid]))
            elif qc.loc[sid, "status"] == EXCLUDED:
                rows.append((sid, f"excluded by QC at {qc.loc[sid, 'stage']}: {qc.loc[sid, 'cause']}", ""))
            else:
                rows.append((sid, "not in a test fold (unlabelled or not in the task)", ""))
        with atomic_output(output.index) as tmp:
            pd.DataFrame(rows, columns=["slide_id", "status", "attention_png"]).to_csv(tmp, index=False)


def _print_qc_summary():
    if QC_SLIDES.exists():
        text = exclusion_report(read_qc_table(QC_SLIDES))
        if text:
            print(f"\n{text}\n(full table: {QC_SLIDES})", file=sys.stderr)


onsuccess:
    _print_qc_summary()


onerror:
    _print_qc_summary()
