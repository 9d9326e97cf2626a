# External validation cohorts (config `external`, README "External validation"): each cohort's slides are tiled,
# embedded and QC'd with the development cohort's settings under results/external/<cohort>/ (its own folders, so
# slide ids may repeat between cohorts), then predicted by every task × model's fold ensemble (and the final
# model, training.final_model), pooled into patients as training.level says. Sequence orders are computed at
# prediction from each checkpoint's stored order method and seed, with the order stage's function.


rule external_tile:
    input:
        slide=lambda wc: external_slide_files(wc.cohort, [wc.slide_id]),
    output:
        **EXTERNAL_TILE,
    params:
        slide=lambda wc: EXTERNAL_SHEETS[wc.cohort].loc[wc.slide_id, "path"],
        slide_state=lambda wc: slide_state(EXTERNAL_SHEETS[wc.cohort].loc[wc.slide_id, "path"]),
        out_dir=lambda wc: paths.tiles_dir(paths.external_dir(RESULTS, wc.cohort)),
        mpp=lambda wc: external_mpp_option(wc.cohort, wc.slide_id),
        settings=settings_option("tiling"),
        qc=QC_OPTION,
    log:
        LOGS / "external" / "{cohort}" / "tile" / "{slide_id}.log",
    wildcard_constraints:
        cohort=r"[^/]+",
    threads: resource("tile", "threads", 1)
    resources:
        mem_mb=mem_mb("tile", 2000),
        runtime=resource("tile", "runtime", 30),
    conda:
        "../../envs/mambamil.yaml"
    shell:
        "python -m mambamil tile {params.slide:q} --out {params.out_dir:q} --slide-id {wildcards.slide_id} "
        "{params.mpp} {params.settings} {params.qc} > {log:q} 2>&1"


# The development cohort's `features` settings, unchanged: the same encoder, weights and resolution (predict
# refuses features whose encoder, weights, µm/px or patch size differ from the checkpoints').
for _cohort, _ids_all in EXTERNAL_IDS.items():
    for _batch, _ids in enumerate(feature_batches(_ids_all, config["features"]["slides_per_job"])):

        rule:
            name:
                f"external_{_cohort}_features_batch{_batch}"
            input:
                slides=external_slide_files(_cohort, _ids),
                coords=expand(EXTERNAL_TILE["coords"], cohort=_cohort, slide_id=_ids),
                weights=(
                    [] if config["features"]["weights"] in (None, "random", "hub") else [config["features"]["weights"]]
                ),
            output:
                features=expand(EXTERNAL_FEATURES, cohort=_cohort, slide_id=_ids),
            params:
                slides=" ".join(shlex.quote(str(EXTERNAL_SHEETS[_cohort].loc[s, "path"])) for s in _ids),
                slide_ids=" ".join(shlex.quote(s) for s in _ids),
                qc=QC_OPTION,
                settings=settings_option("features"),
                workers=lambda wc, threads: (
                    "" if config["features"]["num_workers"] is not None else f"--num-workers {max(0, threads - 1)}"
                ),
            log:
                LOGS / "external" / _cohort / "features" / f"batch{_batch}.log",
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


rule external_qc:
    input:
        slides=lambda wc: EXTERNAL[wc.cohort]["slides"],
        tiles=lambda wc: expand(EXTERNAL_TILE["coords"], cohort=wc.cohort, slide_id=EXTERNAL_IDS[wc.cohort]),
        features=lambda wc: expand(EXTERNAL_FEATURES, cohort=wc.cohort, slide_id=EXTERNAL_IDS[wc.cohort]),
    output:
        slides=report(EXTERNAL_QC["slides"], category="QC", labels={"table": "slides", "cohort": "{cohort}"}),
        patients=report(EXTERNAL_QC["patients"], category="QC", labels={"table": "patients", "cohort": "{cohort}"}),
    params:
        stage_files=lambda wc: " ".join(
            f"--stage-file {shlex.quote(str(p))}"
            for p in expand([EXTERNAL_TILE["coords"], EXTERNAL_FEATURES], cohort=wc.cohort, allow_missing=True)
        ),
        out_dir=lambda wc: paths.qc_dir(paths.external_dir(RESULTS, wc.cohort)),
    log:
        LOGS / "external" / "{cohort}" / "qc.log",
    wildcard_constraints:
        cohort=r"[^/]+",
    localrule: True
    conda:
        "../../envs/mambamil.yaml"
    shell:
        "python -m mambamil qc --slides {input.slides:q} {params.stage_files} --out {params.out_dir:q} > {log:q} 2>&1"


rule train_final:
    input:
        labels=config["labels"],
        qc=QC["slides"],
        features=expand(FEATURES, slide_id=SLIDE_IDS),
        orders=lambda wc: expand(ORDER, method=task_training(config, wc.task)["order"], slide_id=SLIDE_IDS),
        summaries=lambda wc: expand(FOLD["summary"], task=wc.task, model=wc.model, fold=task_folds(wc.task)),
    output:
        checkpoint=FINAL["checkpoint"],
        log_csv=FINAL["log_csv"],
        summary=FINAL["summary"],
    params:
        features_dir=FEATURES_DIR,
        order_dir=lambda wc: paths.order_dir(FEATURES_DIR, task_training(config, wc.task)["order"]),
        out_dir=lambda wc: paths.final_model_dir(RESULTS, wc.task, wc.model),
        settings=lambda wc: settings_option(task_spec(wc.task, wc.model)),
    log:
        LOGS / "train_final" / "{task}" / "{model}.log",
    wildcard_constraints:
        task=r"[^/]+",
        model=r"[^/]+",
    threads: resource("train", "threads", 1)
    resources:
        mem_mb=mem_mb("train", 4000),
        runtime=resource("train", "runtime", 120),
        gpu=resource("train", "gpu", 0),
    conda:
        conda_env("train")
    shell:
        "python -m mambamil --threads {threads} train-final --labels {input.labels:q} "
        "--features-dir {params.features_dir:q} --order-dir {params.order_dir:q} "
        "--fold-summaries {input.summaries:q} {params.settings} --qc {input.qc:q} --out {params.out_dir:q} "
        "> {log:q} 2>&1"


# One rule per cohort and predictor, so a cohort without labels declares its predictions only.
for _cohort in EXTERNAL:
    for _final in (False, True):

        rule:
            name:
                f"external_{_cohort}_predict{'_final' if _final else ''}"
            input:
                slides=EXTERNAL[_cohort]["slides"],
                labels=[EXTERNAL[_cohort]["labels"]] if EXTERNAL[_cohort].get("labels") else [],
                development=development_metrics(_cohort),
                qc=expand(EXTERNAL_QC["slides"], cohort=_cohort),
                features=expand(EXTERNAL_FEATURES, cohort=_cohort, slide_id=EXTERNAL_IDS[_cohort]),
                checkpoints=external_checkpoints(_final),
            output:
                **{
                    k: str(p).replace("{cohort}", _cohort)
                    for k, p in external_prediction_outputs(_cohort, final=_final).items()
                },
            params:
                features=lambda wc, input: " ".join(shlex.quote(str(p)) for p in input.features),
                level=lambda wc: task_training(config, wc.task)["level"],
                labels=external_labels_option(_cohort, _final),
                device=lambda wc: task_training(config, wc.task)["device"],
            log:
                LOGS / "external" / _cohort / ("predict_final" if _final else "predict") / "{task}" / "{model}.log",
            wildcard_constraints:
                task=r"[^/]+",
                model=r"[^/]+",
            threads: 1
            resources:
                mem_mb=mem_mb("predict", 4000),
                runtime=resource("predict", "runtime", 60),
            conda:
                "../../envs/mambamil.yaml"
            shell:
                "python -m mambamil --threads {threads} predict {params.features} --checkpoint {input.checkpoints:q} "
                "--slides {input.slides:q} --level {params.level} {params.labels} --device {params.device} "
                "--out {output.cohort_predictions:q} > {log:q} 2>&1"
