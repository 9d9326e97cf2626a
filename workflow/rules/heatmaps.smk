# Stage 5 — heatmaps: each slide drawn with the model of the fold that tested it (mambamil/heatmaps.py).


rule heatmap:
    input:
        slide=lambda wc: SLIDE_PATHS[wc.slide_id],
        features=FEATURES,
        checkpoint=test_fold_checkpoint,
    output:
        attention=report(
            HEATMAP["attention"],
            category="Heatmaps",
            labels={"slide": "{slide_id}", "map": "attention"},
        ),
        gradxinput=HEATMAP["gradxinput"],
        scores=HEATMAP["scores"],
        geojson=HEATMAP["geojson"],
    params:
        out_dir=lambda wc: paths.heatmap_dir(RESULTS, wc.slide_id),
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
