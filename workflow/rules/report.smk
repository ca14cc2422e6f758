rule main_table:
    """Gather every run's scores: the main table (CSV + Markdown) and per-class IoU."""
    input:
        downstream_scores,
        compared_scores,
    params:
        variants=compared_variants,
        real=lambda w: {k: task_of(w).downstream.real[k] for k in ("type", "path")},  # names a table row
    output:
        csv=report("results/{task}/report/main_table.csv", caption="../report/main_table.rst",
                   category="Downstream", subcategory="{task}"),
        md="results/{task}/report/main_table.md",
        runs="results/{task}/report/runs.csv",
        figure=report("results/{task}/report/per_class_iou.png", caption="../report/per_class_iou.rst",
                      category="Downstream", subcategory="{task}"),
    log:
        "results/logs/main_table/{task}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/main_table.py"


rule sample_grid:
    """Generated images with label overlays: most certain, random kept, most uncertain."""
    input:
        manifest="results/{task}/manifest.parquet",
    output:
        report("results/{task}/report/samples.png", caption="../report/samples.rst", category="Synthetic data",
               subcategory="{task}"),
    log:
        "results/logs/sample_grid/{task}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/sample_grid.py"


rule class_grid:
    """Class-conditional tasks: random kept samples of every class with their object masks."""
    input:
        manifest="results/{task}/manifest.parquet",
    output:
        report("results/{task}/report/samples_by_class.png", caption="../report/samples_by_class.rst",
               category="Synthetic data", subcategory="{task}"),
    params:
        class_names=lambda w: dict(zip(task_of(w).classes, class_aware_names(task_of(w)))),
    log:
        "results/logs/class_grid/{task}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/class_grid.py"


rule label_quality:
    """Per-image uncertainty against label error (vs the user's truth masks, else the simulated annotator)."""
    input:
        manifest="results/{task}/manifest.parquet",
        annotator=lambda w: [] if task_of(w).downstream.truth_masks else task_of(w).downstream.reference_annotator,
        truth=lambda w: task_of(w).downstream.truth_masks or [],
        annotations="results/{task}/annotations.h5",
    output:
        figure=report("results/{task}/report/uncertainty_vs_error.png", caption="../report/uncertainty_vs_error.rst",
                      category="Synthetic data", subcategory="{task}"),
        csv="results/{task}/report/label_errors.csv",
        summary="results/{task}/report/label_quality.json",
    params:
        cls=lambda w: toy_classes(task_of(w)),
        samples=lambda w: task_of(w).downstream.report_samples,
    log:
        "results/logs/label_quality/{task}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/label_quality.py"
