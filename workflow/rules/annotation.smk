rule sample_for_annotation:
    """Render seeded samples (PNG, latent, manifest) for a human to annotate; with
    `annotation.select: uncertainty` the current ensemble's most uncertain pool candidates."""
    input:
        weights=checkpoint_weights,
        average_latent=average_latent_file,
        interpreter=lambda w: ["results/{task}/interpreter.safetensors"] if task_selection(task_of(w)) else [],
        annotated=lambda w: ["results/{task}/annotations.h5"] if task_selection(task_of(w)) else [],
    output:
        directory("results/{task}/for_annotation"),
    params:
        seeds=lambda w: task_of(w).annotation.seeds,
        selection=lambda w: task_selection(task_of(w)),
        classes=lambda w: task_of(w).annotation_classes,
        truncation=lambda w: task_of(w).truncation,
        noise=lambda w: task_of(w).noise,
        generator=lambda w: generator_options(task_of(w)),
        device=CFG.device,
    log:
        "results/logs/sample_for_annotation/{task}.log",
    priority: UPSTREAM_PRIORITY
    threads: 2
    resources:
        mem_mb=attempt_scaled(4000),
        runtime=attempt_scaled(30),
        gpu=GPUS,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/sample_for_annotation.py"


rule import_annotations:
    """Validate the annotation folder against the generator and labels.yaml; one HDF5 set (samples
    re-rendered, or with `annotation.source: images` the annotated images themselves)."""
    wildcard_constraints:
        task=one_of(ANNOTATED_TASKS),
    input:
        weights=checkpoint_weights,
        average_latent=average_latent_file,
        files=annotation_files,
    output:
        "results/{task}/annotations.h5",
    params:
        annotations=lambda w: task_of(w).annotations,
        labels=lambda w: task_of(w).labels,
        truncation=lambda w: task_of(w).truncation,
        noise=lambda w: task_of(w).noise,
        expected_count=lambda w: task_of(w).annotation.expected_count,
        classes=lambda w: task_of(w).annotation_classes,
        expected_per_class=lambda w: task_of(w).annotation.expected_per_class,
        latents=lambda w: task_of(w).annotation.latents,
        merge=lambda w: task_of(w).annotation.merge,
        source=lambda w: task_of(w).annotation.source,
        masks=lambda w: task_of(w).annotation.masks,
        generator=lambda w: generator_options(task_of(w)),
        device=CFG.device,
    log:
        "results/logs/import_annotations/{task}.log",
    priority: UPSTREAM_PRIORITY
    threads: 2
    resources:
        mem_mb=attempt_scaled(4000),
        runtime=attempt_scaled(30),
        gpu=GPUS,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/import_annotations.py"


rule reuse_annotations:
    """Another task's annotations for a VQGAN (BigDatasetGAN: its annotated images encoded and decoded,
    the reconstructions keep its masks; report: per-image PSNR and annotator agreement) or for a
    diffusion model (the annotated images themselves, its features computed from them)."""
    wildcard_constraints:
        task=one_of(REUSE_TASKS),
    input:
        weights=checkpoint_weights,
        source=lambda w: f"results/{task_of(w).reuse['task']}/annotations.h5",
        annotator=lambda w: task_of(w).downstream.reference_annotator or [],
    output:
        annotations="results/{task}/annotations.h5",
        report="results/{task}/report/reuse.csv",
        summary="results/{task}/report/reuse.json",
    params:
        min_psnr=lambda w: task_of(w).reuse["min_psnr"],
        image_class=lambda w: reuse_image_class(task_of(w)),
        annotator_classes=lambda w: annotator_class_names(task_of(w)) if task_of(w).downstream.reference_annotator else {},
        generator=lambda w: generator_options(task_of(w)),
        device=CFG.device,
    log:
        "results/logs/reuse_annotations/{task}.log",
    priority: UPSTREAM_PRIORITY
    threads: 2
    resources:
        mem_mb=attempt_scaled(4000),
        runtime=attempt_scaled(30),
        gpu=GPUS,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/reuse_annotations.py"


rule annotate_push:
    """Hand results/{task}/for_annotation out in Label Studio (not part of `all`): a project titled
    after the task; with `annotation.select: uncertainty`, the interpreter that chose the samples
    labels them as pre-annotations. Server: label_studio.url, else $LABEL_STUDIO_URL; key: $LABEL_STUDIO_API_KEY."""
    wildcard_constraints:
        task=one_of(ANNOTATED_TASKS),
    input:
        weights=checkpoint_weights,
        average_latent=average_latent_file,
        samples="results/{task}/for_annotation",
        labels=lambda w: task_of(w).labels,
        interpreter=lambda w: [f"results/{w.task}/interpreter.safetensors"] if task_selection(task_of(w)) else [],
    output:
        "results/{task}/label_studio_push.json",
    params:
        project=lambda w: f"labelfactory {w.task}",
        url=config["label_studio"]["url"],
        interpreter_type=lambda w: task_of(w).interpreter["type"],
        masks=lambda w: task_of(w).annotation.masks,  # false: a keypoint-only project
        generator=lambda w: generator_options(task_of(w)),
        device=CFG.device,
    log:
        "results/logs/annotate_push/{task}.log",
    threads: 2
    resources:
        mem_mb=attempt_scaled(4000),
        runtime=attempt_scaled(30),
        gpu=GPUS,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/annotate_push.py"
