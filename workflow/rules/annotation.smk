rule sample_for_annotation:
    """Render seeded samples (PNG, latent, manifest) for a human to annotate."""
    input:
        weights=checkpoint_weights,
    output:
        directory("results/{task}/for_annotation"),
    params:
        seeds=lambda w: task_of(w).annotation.seeds,
        classes=lambda w: task_of(w).annotation_classes,
        truncation=lambda w: task_of(w).truncation,
        noise=lambda w: task_of(w).noise,
        device=CFG.device,
    log:
        "results/logs/sample_for_annotation/{task}.log",
    threads: 2
    resources:
        mem_mb=attempt_scaled(4000),
        runtime=attempt_scaled(30),
        gpu=GPUS,
    script:
        "../../scripts/sample_for_annotation.py"


rule import_annotations:
    """Validate the annotation folder against the generator and labels.yaml; one HDF5 set."""
    input:
        weights=checkpoint_weights,
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
        device=CFG.device,
    log:
        "results/logs/import_annotations/{task}.log",
    threads: 2
    resources:
        mem_mb=attempt_scaled(4000),
        runtime=attempt_scaled(30),
        gpu=GPUS,
    script:
        "../../scripts/import_annotations.py"
