# DatasetGAN's keypoint experiment, for tasks with a `keypoints` section (docs/keypoints.md):
# head -> keypoint shards -> filter -> one detector per setting and seed -> table.


rule train_keypoint_head:
    """Fit the keypoint head (an ensemble of per-pixel heatmap regressors) on the annotated keypoints."""
    input:
        features="results/{task}/features.h5",
        annotations="results/{task}/annotations.h5",
    output:
        weights="results/{task}/keypoints/head.safetensors",
        sidecar="results/{task}/keypoints/head.json",
    params:
        head=lambda w: task_of(w).keypoints.head,
        device=CFG.device,
    log:
        "results/logs/train_keypoint_head/{task}.log",
    priority: UPSTREAM_PRIORITY
    threads: 1
    resources:
        mem_mb=attempt_scaled(8000),
        runtime=attempt_scaled(120),
        gpu=GPUS,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/train_keypoint_head.py"


rule synthesize_keypoints:
    """One keypoint shard: seeded samples (the task's synthesis seeds), the head's keypoints, confidence and spread."""
    input:
        weights=checkpoint_weights,
        average_latent=average_latent_file,
        head="results/{task}/keypoints/head.safetensors",
    output:
        "results/{task}/keypoints/shards/{shard}.h5",
    params:
        seeds=lambda w: task_of(w).synthesis.seeds(w.shard),
        cls=lambda w: task_of(w).cls,
        truncation=lambda w: task_of(w).truncation,
        noise=lambda w: task_of(w).noise,
        batch_size=lambda w: task_of(w).synthesis.batch_size,
        store_heatmaps=lambda w: task_of(w).keypoints.store_heatmaps,
        generator=lambda w: generator_options(task_of(w)),
        device=CFG.device,
    log:
        "results/logs/synthesize_keypoints/{task}/{shard}.log",
    priority: UPSTREAM_PRIORITY
    threads: 1
    resources:
        mem_mb=attempt_scaled(8000),
        runtime=attempt_scaled(120),
        gpu=GPUS,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/synthesize_keypoints.py"


rule filter_keypoints:
    """Drop the share of keypoint samples whose head members disagree most (mean spread); write the manifest."""
    input:
        shards=lambda w: expand("results/{{task}}/keypoints/shards/{shard}.h5", shard=task_of(w).synthesis.shards),
    output:
        "results/{task}/keypoints/manifest.parquet",
    params:
        ratio=lambda w: task_of(w).keypoints.filter_ratio,
    log:
        "results/logs/filter_keypoints/{task}.log",
    priority: UPSTREAM_PRIORITY
    threads: 1
    resources:
        mem_mb=attempt_scaled(4000),
        runtime=attempt_scaled(30),
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/filter_keypoints.py"


rule train_keypoint_detector:
    """Train one keypoint detector of a setting (few-shot, synthetic, filtered, real) and seed."""
    input:
        annotations="results/{task}/annotations.h5",
        manifest=lambda w: ["results/{task}/keypoints/manifest.parquet"] if w.setting.startswith("synthetic") else [],
    output:
        weights="results/{task}/keypoints/{setting}/seed{seed}/model.safetensors",
        sidecar="results/{task}/keypoints/{setting}/seed{seed}/model.json",
    params:
        options=lambda w: task_of(w).keypoint_train,
        sigma=lambda w: task_of(w).keypoints.sigma,
        threads=lambda w: task_of(w).keypoints.threads,
        real=lambda w: task_of(w).keypoint_real if w.setting == "fully_supervised" else None,
        image=lambda w: task_of(w).image,
        device=CFG.device,
    log:
        "results/logs/train_keypoint_detector/{task}/{setting}/seed{seed}.log",
    threads: lambda w: task_of(w).keypoints.threads
    resources:
        mem_mb=attempt_scaled(8000),
        runtime=attempt_scaled(240),
        gpu=GPUS,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/train_keypoint_detector.py"


rule evaluate_keypoint_detector:
    """Score one detector on the real test images with exact keypoints: PCK@0.05, PCK@0.1, COCO keypoint AP."""
    input:
        weights="results/{task}/keypoints/{setting}/seed{seed}/model.safetensors",
        annotations="results/{task}/annotations.h5",
    output:
        "results/{task}/keypoints/{setting}/seed{seed}/scores.json",
    params:
        real=lambda w: task_of(w).keypoint_real,
        device=CFG.device,
    log:
        "results/logs/evaluate_keypoint_detector/{task}/{setting}/seed{seed}.log",
    threads: 1
    resources:
        mem_mb=attempt_scaled(4000),
        runtime=attempt_scaled(30),
        gpu=GPUS,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/evaluate_keypoint_detector.py"


rule keypoint_table:
    """Gather every detector run: the keypoint table (CSV + Markdown) and the runs."""
    input:
        lambda w: expand("results/{{task}}/keypoints/{setting}/seed{seed}/scores.json",
                         setting=task_of(w).keypoints.settings, seed=range(task_of(w).keypoints.seeds)),
    output:
        csv="results/{task}/report/keypoints.csv",
        md="results/{task}/report/keypoints.md",
        runs="results/{task}/report/keypoint_runs.csv",
    params:
        real=lambda w: {k: task_of(w).keypoint_real.get(k) for k in ("type", "path")},
    log:
        "results/logs/keypoint_table/{task}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/keypoint_table.py"


rule keypoint_sample_grid:
    """Generated images with the head's keypoints: most certain, random kept, most uncertain."""
    input:
        manifest="results/{task}/keypoints/manifest.parquet",
        labels=lambda w: task_of(w).labels,
    output:
        "results/{task}/report/keypoint_samples.png",
    log:
        "results/logs/keypoint_sample_grid/{task}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/keypoint_sample_grid.py"


rule keypoint_label_quality:
    """The synthetic keypoints against the task's `keypoints.reference_annotator`: error of kept and dropped samples."""
    input:
        manifest="results/{task}/keypoints/manifest.parquet",
        annotator=lambda w: task_of(w).keypoints.reference_annotator,
    output:
        csv="results/{task}/report/keypoint_quality.csv",
        summary="results/{task}/report/keypoint_quality.json",
    params:
        device=CFG.device,
    log:
        "results/logs/keypoint_label_quality/{task}.log",
    threads: 1
    resources:
        mem_mb=attempt_scaled(4000),
        runtime=attempt_scaled(30),
        gpu=GPUS,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/keypoint_label_quality.py"


rule keypoints:
    """Every keypoint task's table (and, with a reference annotator, the filter's report): `snakemake keypoints`."""
    input:
        [t for name in KEYPOINT_TASKS for t in keypoint_targets(name)],
