# Stage 3 — order: each slide's instance sequence for the scan, per method (mambamil/order.py).


rule order:
    input:
        features=FEATURES,
    output:
        order=ORDER,
    params:
        settings=settings_option("order"),
        qc=QC_OPTION,
    log:
        LOGS / "order" / "{method}" / "{slide_id}.log",
    wildcard_constraints:
        method="raster|snake|hilbert|random",
    threads: 1
    resources:
        mem_mb=mem_mb("order", 1000),
        runtime=resource("order", "runtime", 10),
    conda:
        "../../envs/mambamil.yaml"
    shell:
        "python -m mambamil order {input.features:q} --method {wildcards.method} {params.settings} "
        "--out {output.order:q} {params.qc} > {log:q} 2>&1"
