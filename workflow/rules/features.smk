# Stage 2 — features: embed each slide's patches with the configured encoder (mambamil/features/). Slides are
# batched, features.slides_per_job per job (feature_batches, common.smk), so one process (Python, torch, the
# encoder, the CUDA context) serves several slides; each slide still has its own output
# FEATURES_DIR/<slide_id>.h5 (FEATURES_DIR: the encoder tag, common.smk), which is what later rules ask for.
# With qc.on_bad_slide: exclude (the default) a bad slide gets a QC stub and the job succeeds; with 'stop', a job
# whose slide fails exits non-zero after the others, and Snakemake then deletes the outputs of the whole batch.
for _batch, _ids in enumerate(feature_batches(SLIDE_IDS, config["features"]["slides_per_job"])):

    rule:
        name:
            f"features_batch{_batch}"
        input:
            slides=[p for s in _ids for p in slide_files([s])],
            coords=expand(TILE["coords"], slide_id=_ids),
            # A local checkpoint is an input, so replacing it reruns the stage.
            weights=[] if config["features"]["weights"] in (None, "random", "hub") else [config["features"]["weights"]],
        output:
            features=expand(FEATURES, slide_id=_ids),
        params:
            slides=" ".join(shlex.quote(str(SLIDE_PATHS[s])) for s in _ids),
            slide_ids=" ".join(shlex.quote(s) for s in _ids),
            qc=QC_OPTION,
            settings=settings_option("features"),
            workers=lambda wc, threads: (
                "" if config["features"]["num_workers"] is not None else f"--num-workers {max(0, threads - 1)}"
            ),
        log:
            LOGS / "features" / f"batch{_batch}.log",
        threads: resource("features", "threads", 2)
        resources:
            mem_mb=mem_mb("features", 4000),
            runtime=resource("features", "runtime", 60),
            gpu=resource("features", "gpu", 0),
        conda:
            conda_env("features")
        shell:
            "python -m mambamil --quiet features {params.slides} --coords {input.coords:q} "
            "--out {output.features:q} --slide-id {params.slide_ids} {params.settings} {params.workers} "
            "--torch-threads {threads} {params.qc} > {log:q} 2>&1"
