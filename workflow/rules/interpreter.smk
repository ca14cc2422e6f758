rule train_interpreter:
    """Fit the interpreter (DatasetGAN's pixel-MLP ensemble or BigDatasetGAN's conv ensemble)."""
    input:
        weights=checkpoint_weights,
        features="results/{task}/features.h5",
        annotations="results/{task}/annotations.h5",
    output:
        weights="results/{task}/interpreter.safetensors",
        sidecar="results/{task}/interpreter.json",
    params:
        interpreter=lambda w: task_of(w).interpreter,
        device=CFG.device,
    log:
        "results/logs/train_interpreter/{task}.log",
    priority: UPSTREAM_PRIORITY
    threads: 1
    resources:
        mem_mb=attempt_scaled(8000),
        runtime=attempt_scaled(120),
        gpu=GPUS,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/train_interpreter.py"
