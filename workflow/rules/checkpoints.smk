rule fetch_checkpoint:
    """Download (resumable), verify sha256, convert to safetensors + JSON sidecar."""
    input:
        source=lambda w: local_source(CFG.checkpoints[w.ckpt].url),
    output:
        weights="resources/checkpoints/{ckpt}.safetensors",
        sidecar="resources/checkpoints/{ckpt}.json",
    params:
        url=lambda w: CFG.checkpoints[w.ckpt].url,
        sha256=lambda w: CFG.checkpoints[w.ckpt].sha256,
        format=lambda w: CFG.checkpoints[w.ckpt].format,
        generator=lambda w: CFG.checkpoints[w.ckpt].generator,
        model_flags=lambda w: CFG.checkpoints[w.ckpt].model_flags,
        download_dir="resources/downloads",
    log:
        "results/logs/fetch_checkpoint/{ckpt}.log",
    threads: 1
    resources:
        mem_mb=attempt_scaled(4000),
        runtime=attempt_scaled(60),
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/fetch_checkpoint.py"
