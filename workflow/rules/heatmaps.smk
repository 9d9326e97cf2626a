# Stage 5 — heatmaps: each slide drawn with the model of the fold that tested it (mambamil/heatmaps.py).


rule heatmap:
    input:
        slide=lambda wc: SLIDE_PATHS[wc.slide_id],
        features=FEATURES_DIR / "{slide_id}.h5",
        checkpoint=test_fold_checkpoint,
    output:
        attention=report(
            RESULTS / "heatmaps" / "{slide_id}" / "{slide_id}.attention.png",
            category="Heatmaps",
            labels={"slide": "{slide_id}", "map": "attention"},
        ),
        gradxinput=RESULTS / "heatmaps" / "{slide_id}" / "{slide_id}.gradxinput.png",
        scores=RESULTS / "heatmaps" / "{slide_id}" / "{slide_id}.scores.csv",
        geojson=RESULTS / "heatmaps" / "{slide_id}" / "{slide_id}.patches.geojson",
    params:
        out_dir=lambda wc, output: Path(output.scores).parent,
        mpp=lambda wc: f"--slide-mpp {SLIDE_MPP[wc.slide_id]}" if wc.slide_id in SLIDE_MPP else "",
        settings=settings_option("heatmaps"),
    log:
        LOGS / "heatmap" / "{slide_id}.log",
    threads: 1
    resources:
        mem_mb=mem_mb("heatmap", 3000),
        runtime=resource("heatmap", "runtime", 30),
    conda:
        "../../envs/mambamil.yaml"
    shell:
        "python -m mambamil --threads {threads} heatmap {input.slide:q} --features {input.features:q} "
        "--checkpoint {input.checkpoint:q} --out {params.out_dir:q} --slide-id {wildcards.slide_id} "
        "{params.mpp} {params.settings} > {log:q} 2>&1"
