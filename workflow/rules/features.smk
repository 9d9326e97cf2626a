# Stage 2 — features: embed each slide's patches with the configured encoder, one job per slide
# (mambamil/features/). The output folder is named by the encoder tag (FEATURES_DIR, common.smk).
rule features:
    input:
        slide=slide_input,
        coords=RESULTS / "tiles" / "{slide_id}.h5",
        # A local checkpoint is an input, so replacing it reruns the stage.
        weights=lambda wc: [] if config["features"]["weights"] in (None, "random", "hub") else [config["features"]["weights"]],
    output:
        features=FEATURES_DIR / "{slide_id}.h5",
    params:
        options=feature_options(config["features"]),
        qc=QC_OPTION,
        slide=lambda wc: SLIDE_PATHS[wc.slide_id],
    log:
        LOGS / "features" / "{slide_id}.log",
    threads: resource("features", "threads", 2)
    resources:
        mem_mb=mem_mb("features", 4000),
        runtime=resource("features", "runtime", 60),
        gpu=resource("features", "gpu", 0),
    conda:
        conda_env("features")
    shell:
        "python -m mambamil --quiet features {params.slide:q} --coords {input.coords:q} --out {output.features:q} "
        "--slide-id {wildcards.slide_id} {params.options} --torch-threads {threads} {params.qc} > {log:q} 2>&1"
