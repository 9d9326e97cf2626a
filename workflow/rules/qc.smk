# Slide-level QC (mambamil/qc.py, README "Bad slides and QC"): every slide's outcome in one table that splits,
# train and the summary read; heatmaps follow the splits; excluded slides are listed again at the end of the run.
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


rule heatmaps_index:
    input:
        heatmaps=tested_heatmaps,
        qc=QC_SLIDES,
    output:
        index=RESULTS / "heatmaps" / "index.csv",
    params:
        slide_ids=SLIDE_IDS,
    log:
        LOGS / "heatmaps_index.log",
    localrule: True
    conda:
        "../../envs/mambamil.yaml"
    script:
        "../scripts/heatmaps_index.py"


onsuccess:
    print_qc_summary()


onerror:
    print_qc_summary()
