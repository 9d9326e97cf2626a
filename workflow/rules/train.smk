# Stage 4 — splits, train (one job per task × model × fold), evaluate, compare (the models of a task), the cohort
# summary and the HTML report (mambamil/train/, mambamil/report.py).


checkpoint splits:
    input:
        labels=config["labels"],
        qc=QC["slides"],
        features=expand(FEATURES, slide_id=SLIDE_IDS),
    output:
        splits=SPLITS,
    params:
        features_dir=FEATURES_DIR,
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
        qc=QC["slides"],
        splits=SPLITS,
        features=expand(FEATURES, slide_id=SLIDE_IDS),
        orders=lambda wc: expand(ORDER, method=task_training(config, wc.task)["order"], slide_id=SLIDE_IDS),
    output:
        checkpoint=FOLD["checkpoint"],
        predictions=FOLD["predictions"],
        val_predictions=FOLD["val_predictions"],
        log_csv=FOLD["log_csv"],
        summary=FOLD["summary"],
        curves=report(
            FOLD["curves"],
            category="Training curves",
            subcategory="{task} / {model}",
            labels={"task": "{task}", "model": "{model}", "fold": "{fold}"},
        ),
    params:
        features_dir=FEATURES_DIR,
        order_dir=lambda wc: paths.order_dir(FEATURES_DIR, task_training(config, wc.task)["order"]),
        out_dir=lambda wc: paths.fold_dir(RESULTS, wc.task, wc.model, wc.fold),
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
        predictions=lambda wc: expand(FOLD["predictions"], task=wc.task, model=wc.model, fold=task_folds(wc.task)),
        # read beside each test file: the validation predictions that choose the operating point
        val_predictions=lambda wc: expand(
            FOLD["val_predictions"], task=wc.task, model=wc.model, fold=task_folds(wc.task)
        ),
    output:
        metrics=EVALUATION["metrics"],
        predictions=EVALUATION["predictions"],
        curves=report(
            EVALUATION["curves"],
            category="Evaluation",
            subcategory="{task}",
            labels={"task": "{task}", "model": "{model}"},
        ),
    params:
        out_dir=lambda wc: paths.evaluation_dir(RESULTS, wc.task, wc.model),
        settings=lambda wc: settings_option(evaluation_spec(wc.task, wc.model)),
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


rule compare:
    input:
        predictions=lambda wc: expand(EVALUATION["predictions"], task=wc.task, model=MODELS),
    output:
        comparison=COMPARISON,
    params:
        models=MODELS,
        settings=lambda wc: settings_option(evaluation_spec(wc.task)),
    log:
        LOGS / "compare" / "{task}.log",
    threads: 1
    resources:
        mem_mb=mem_mb("compare", 2000),
        runtime=resource("compare", "runtime", 10),
    conda:
        "../../envs/mambamil.yaml"
    shell:
        "python -m mambamil --threads {threads} compare {input.predictions:q} --names {params.models:q} "
        "{params.settings} --out {output.comparison:q} > {log:q} 2>&1"


rule summary:
    input:
        metrics=[expand(EVALUATION["metrics"], task=t, model=m)[0] for t in TASKS for m in MODELS],
        comparisons=expand(COMPARISON, task=TASKS),
        qc=QC["slides"],
    output:
        summary=report(SUMMARY, category="Evaluation"),
        comparison=report(COMPARISON_TABLE, category="Evaluation"),
    params:
        runs=[(t, m) for t in TASKS for m in MODELS],
    log:
        LOGS / "summary.log",
    localrule: True
    conda:
        "../../envs/mambamil.yaml"
    script:
        "../scripts/summary.py"


rule report:
    input:
        summary=SUMMARY,
        comparison=COMPARISON_TABLE,
        qc=QC["slides"],
        extra=report_inputs,
    output:
        report=REPORT,
    log:
        LOGS / "report.log",
    localrule: True
    conda:
        "../../envs/mambamil.yaml"
    script:
        "../scripts/report.py"
