"""The synthetic set in the formats trainers read (docs/export.md): `snakemake export`, not part of `all`."""

EXPORT_FORMATS = schema_node("$defs/task/properties/export/properties/formats/items")["enum"]


rule export:
    """Target: every task's exports in its `export.formats` (none by default)."""
    input:
        lambda w: [f"results/{name}/export/{fmt}/SHA256SUMS" for name in TASKS
                   for fmt in config["tasks"][name]["export"]["formats"]],


rule export_format:
    """One task's kept samples (optionally all) in one format, streamed from its shards; a killed
    job resumes its finished pieces (Snakemake removes only SHA256SUMS, written last)."""
    input:
        manifest="results/{task}/manifest.parquet",
        shards=lambda w: expand("results/{{task}}/shards/{shard}.h5", shard=task_of(w).synthesis.shards),
        interpreter="results/{task}/interpreter.safetensors",
        annotations="results/{task}/annotations.h5",
    output:
        "results/{task}/export/{format}/SHA256SUMS",
    wildcard_constraints:
        format=one_of(EXPORT_FORMATS),
    params:
        options=lambda w: {k: v for k, v in config["tasks"][w.task]["export"].items() if k != "formats"},
        class_names=lambda w: dict(zip(task_of(w).classes, class_aware_names(task_of(w))))
        if task_of(w).conditional else None,
    log:
        "results/logs/export/{task}/{format}.log",
    threads: 1
    resources:
        mem_mb=attempt_scaled(4000),
        runtime=attempt_scaled(120),
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/export_dataset.py"
