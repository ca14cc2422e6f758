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


rule validate_interpreter:
    """Cross-validate the interpreter on its annotations before synthesis: held-out IoU per
    class against the average mask (and, with validation.few_shot, the downstream model trained
    on the same folds), a table and figure, a console warning per weak class."""
    input:
        weights=checkpoint_weights,
        features="results/{task}/features.h5",
        annotations="results/{task}/annotations.h5",
    output:
        csv="results/{task}/report/validation.csv",
        summary="results/{task}/report/validation.json",
        figure=report("results/{task}/report/validation.png", caption="../report/validation.rst",
                      category="Interpreter validation", subcategory="{task}"),
    params:
        interpreter=lambda w: task_of(w).interpreter,
        validation=lambda w: vars(task_of(w).validation),  # a dict: Snakemake records it, so a change reruns the job
        downstream=lambda w: task_of(w).downstream.train if task_of(w).validation.few_shot else None,
        device=CFG.device,
    log:
        "results/logs/validate_interpreter/{task}.log",
    priority: UPSTREAM_PRIORITY
    threads: lambda w: task_of(w).downstream.threads if task_of(w).validation.few_shot else 1
    resources:
        mem_mb=attempt_scaled(8000),
        runtime=attempt_scaled(240),
        gpu=GPUS,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/validate_interpreter.py"
