# Slide-level QC (mambamil/qc.py, README "Bad slides and QC"): every slide's outcome in one table that splits,
# train and the summary read; heatmaps follow the splits; excluded slides are listed again at the end of the run.


rule qc:
    input:
        slides=config["slides"],
        tiles=expand(TILE["coords"], slide_id=SLIDE_IDS),
        features=expand(FEATURES, slide_id=SLIDE_IDS),
        orders=expand(ORDER, method=TRAIN_ORDER, slide_id=SLIDE_IDS),
    output:
        slides=report(QC["slides"], category="QC", labels={"table": "slides"}),
        patients=report(QC["patients"], category="QC", labels={"table": "patients"}),
    params:
        # A function, so Snakemake does not expand the {slide_id} placeholders that `mambamil qc` fills in.
        stage_files=lambda wc: " ".join(
            f"--stage-file {shlex.quote(str(p))}"
            for p in (TILE["coords"], FEATURES, *expand(ORDER, method=TRAIN_ORDER, allow_missing=True))
        ),
        out_dir=paths.qc_dir(RESULTS),
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
        qc=QC["slides"],
    output:
        index=HEATMAPS_INDEX,
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
    print_review_hint()


onerror:
    print_qc_summary()
