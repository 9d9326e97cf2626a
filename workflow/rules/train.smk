# Stage 4 — splits, train (one job per task × model × fold), evaluate, and the cohort summary (mambamil/train/).


checkpoint splits:
    input:
        labels=config["labels"],
        qc=QC_SLIDES,
        features=expand(FEATURES_DIR / "{slide_id}.h5", slide_id=SLIDE_IDS),
    output:
        splits=RESULTS / "splits" / "{task}.csv",
    params:
        features_dir=lambda wc, input: Path(input.features[0]).parent,
        settings=lambda wc: settings_option(task_spec(wc.task)),
    log:
        LOGS / "splits" / "{task}.log",
    threads: 1
    resources:
        mem_mb=mem_mb("splits", 1000),
        runtime=resource("splits", "runtime", 10),
    conda:
        "../../envs/mambamil.yaml"
    shell:
        "python -m mambamil --threads {threads} splits --labels {input.labels:q} --features-dir {params.features_dir:q} "
        "{params.settings} --qc {input.qc:q} --out {output.splits:q} > {log:q} 2>&1"


rule train:
    input:
        labels=config["labels"],
        qc=QC_SLIDES,
        splits=RESULTS / "splits" / "{task}.csv",
        features=expand(FEATURES_DIR / "{slide_id}.h5", slide_id=SLIDE_IDS),
        orders=lambda wc: expand(
            FEATURES_DIR / "order" / task_training(config, wc.task)["order"] / "{slide_id}.npy", slide_id=SLIDE_IDS
        ),
    output:
        checkpoint=RESULTS / "models" / "{task}" / "{model}" / "fold_{fold}" / "checkpoint.pt",
        predictions=RESULTS / "models" / "{task}" / "{model}" / "fold_{fold}" / "test_predictions.csv",
        log_csv=RESULTS / "models" / "{task}" / "{model}" / "fold_{fold}" / "log.csv",
        curves=report(
            RESULTS / "models" / "{task}" / "{model}" / "fold_{fold}" / "curves.png",
            category="Training curves",
            subcategory="{task} / {model}",
            labels={"task": "{task}", "model": "{model}", "fold": "{fold}"},
        ),
    params:
        features_dir=lambda wc, input: Path(input.features[0]).parent,
        order_dir=lambda wc, input: Path(input.orders[0]).parent,
        out_dir=lambda wc, output: Path(output.checkpoint).parent,
        settings=lambda wc: settings_option(task_spec(wc.task, wc.model)),
    log:
        LOGS / "train" / "{task}" / "{model}" / "fold_{fold}.log",
    wildcard_constraints:
        fold=r"\d+",
    threads: resource("train", "threads", 1)
    resources:
        mem_mb=mem_mb("train", 4000),
        runtime=resource("train", "runtime", 120),
        gpu=resource("train", "gpu", 0),
    conda:
        conda_env("train")
    shell:
        "python -m mambamil --threads {threads} train --labels {input.labels:q} --features-dir {params.features_dir:q} "
        "--order-dir {params.order_dir:q} --splits {input.splits:q} --fold {wildcards.fold} "
        "{params.settings} --qc {input.qc:q} --out {params.out_dir:q} > {log:q} 2>&1"


rule evaluate:
    input:
        predictions=lambda wc: expand(
            RESULTS / "models" / "{task}" / "{model}" / "fold_{fold}" / "test_predictions.csv",
            task=wc.task,
            model=wc.model,
            fold=task_folds(wc.task),
        ),
    output:
        metrics=RESULTS / "evaluation" / "{task}" / "{model}" / "metrics.json",
        predictions=RESULTS / "evaluation" / "{task}" / "{model}" / "predictions.csv",
        curves=report(
            RESULTS / "evaluation" / "{task}" / "{model}" / "test_curves.png",
            category="Evaluation",
            subcategory="{task}",
            labels={"task": "{task}", "model": "{model}"},
        ),
    params:
        out_dir=lambda wc, output: Path(output.metrics).parent,
        settings=lambda wc: settings_option(task_spec(wc.task, wc.model)),
    log:
        LOGS / "evaluate" / "{task}" / "{model}.log",
    threads: 1
    resources:
        mem_mb=mem_mb("evaluate", 2000),
        runtime=resource("evaluate", "runtime", 10),
    conda:
        "../../envs/mambamil.yaml"
    shell:
        "python -m mambamil --threads {threads} evaluate {input.predictions:q} {params.settings} --out {params.out_dir:q} "
        "> {log:q} 2>&1"


rule summary:
    input:
        metrics=[RESULTS / "evaluation" / t / m / "metrics.json" for t in TASKS for m in MODELS],
        qc=QC_SLIDES,
    output:
        summary=report(RESULTS / "evaluation" / "summary.csv", category="Evaluation"),
    log:
        LOGS / "summary.log",
    localrule: True
    conda:
        "../../envs/mambamil.yaml"
    script:
        "../scripts/summary.py"
