rule train_downstream:
    """Train one segmentation run of a setting (few-shot, synthetic, filtered, combined, synthetic
    plus annotations, real) and seed."""
    input:
        annotations="results/{task}/annotations.h5",
        manifest=training_manifests,
    output:
        weights="results/{task}/downstream/{setting}/seed{seed}/model.safetensors",
        sidecar="results/{task}/downstream/{setting}/seed{seed}/model.json",
    params:
        options=train_options,
        real=real_training_data,
        class_aware=lambda w: class_aware_labels(task_of(w)),
        device=CFG.device,
    log:
        "results/logs/train_downstream/{task}/{setting}/seed{seed}.log",
    threads: lambda w: task_of(w).downstream.threads
    resources:
        mem_mb=attempt_scaled(8000),
        runtime=attempt_scaled(240),
        gpu=GPUS,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/train_downstream.py"


rule evaluate_downstream:
    """Score one run on the real test images: per-class IoU, mIoU, pixel accuracy."""
    input:
        weights="results/{task}/downstream/{setting}/seed{seed}/model.safetensors",
        annotations="results/{task}/annotations.h5",
    output:
        "results/{task}/downstream/{setting}/seed{seed}/scores.json",
    params:
        real=lambda w: task_of(w).downstream.real,
        class_aware=lambda w: class_aware_labels(task_of(w)),
        evaluation=lambda w: task_of(w).downstream.evaluation,
        device=CFG.device,
    log:
        "results/logs/evaluate_downstream/{task}/{setting}/seed{seed}.log",
    threads: 1
    resources:
        mem_mb=attempt_scaled(4000),
        runtime=attempt_scaled(30),
        gpu=GPUS,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/evaluate_downstream.py"


rule score_interpreter:
    """Diffusion tasks with `downstream.score_interpreter`: the interpreter itself labels the real
    test images from the model's taps of them (ddpm-segmentation's DDPM rows), scored as the runs are."""
    input:
        weights=checkpoint_weights,
        interpreter="results/{task}/interpreter.safetensors",
        annotations="results/{task}/annotations.h5",
    output:
        "results/{task}/report/interpreter_test.json",
    params:
        real=lambda w: task_of(w).downstream.real,
        cls=lambda w: task_of(w).cls if task_of(w).cls >= 0 else None,
        generator=lambda w: generator_options(task_of(w)),
        device=CFG.device,
    log:
        "results/logs/score_interpreter/{task}.log",
    threads: 2
    resources:
        mem_mb=attempt_scaled(8000),
        runtime=attempt_scaled(60),
        gpu=GPUS,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/score_interpreter.py"
