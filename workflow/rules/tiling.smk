# Stage 1 — tile: tissue segmentation and the patch grid, one job per slide (mambamil/tiling.py).


rule tile:
    input:
        slide=slide_input,
    output:
        **TILE,
    params:
        slide=lambda wc: SLIDE_PATHS[wc.slide_id],
        slide_state=lambda wc: slide_state(SLIDE_PATHS[wc.slide_id]),  # a changed slide reruns its chain
        out_dir=TILES_DIR,
        mpp=lambda wc: f"--mpp {SLIDE_MPP[wc.slide_id]}" if wc.slide_id in SLIDE_MPP else "",
        settings=settings_option("tiling"),
        qc=QC_OPTION,
    log:
        LOGS / "tile" / "{slide_id}.log",
    threads: resource("tile", "threads", 1)
    resources:
        mem_mb=mem_mb("tile", 2000),
        runtime=resource("tile", "runtime", 30),
    conda:
        "../../envs/mambamil.yaml"
    shell:
        "python -m mambamil tile {params.slide:q} --out {params.out_dir:q} --slide-id {wildcards.slide_id} "
        "{params.mpp} {params.settings} {params.qc} > {log:q} 2>&1"
