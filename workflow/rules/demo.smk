# The synthetic demo cohort, generated only when the config points at it and it is missing.
if GENERATE_DEMO:

    localrules:
        demo_cohort,

    rule demo_cohort:
        output:
            slides=config["slides"],
            labels=str(DEMO_DIR / "labels.csv"),
            images=[SLIDE_PATHS[s] for s in SLIDE_IDS],
        params:
            out_dir=lambda wc, output: Path(output.slides).parent,
            n_slides=DEMO["n_slides"],
            seed=DEMO["seed"],
        log:
            str(LOGS / "demo_cohort.log"),
        threads: resource("demo_cohort", "threads", 1)
        resources:
            mem_mb=mem_mb("demo_cohort", 4000),
            runtime=resource("demo_cohort", "runtime", 30),
        conda:
            "../../envs/mambamil.yaml"
        shell:
            "python -m mambamil --quiet demo-cohort {params.out_dir:q} --n-slides {params.n_slides} "
            "--seed {params.seed} > {log:q} 2>&1"
