rule synthesize:
    """One shard: seeded latents → images, member-vote labels, JS uncertainty (atomic HDF5)."""
    input:
        weights=checkpoint_weights,
        average_latent=average_latent_file,
        interpreter="results/{task}/interpreter.safetensors",
        validation=validation_gate,
    output:
        "results/{task}/shards/{shard}.h5",
    params:
        seeds=lambda w: task_of(w).synthesis.seeds(w.shard),
        cls=lambda w: task_of(w).synthesis.shard_class(w.shard, task_of(w).cls),
        truncation=lambda w: task_of(w).truncation,
        noise=lambda w: task_of(w).noise,
        interpreter_type=lambda w: task_of(w).interpreter["type"],
        precision=lambda w: task_of(w).synthesis.precision,
        options=lambda w: synthesis_options(task_of(w)),
        generator=lambda w: generator_options(task_of(w)),
        device=CFG.device,
    log:
        "results/logs/synthesize/{task}/{shard}.log",
    priority: UPSTREAM_PRIORITY
    threads: 1
    resources:
        mem_mb=attempt_scaled(8000),
        runtime=attempt_scaled(120),
        gpu=GPUS,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/synthesize.py"


rule filter:
    """Gather all shards' scores (not images); drop the most uncertain share; write the manifest."""
    input:
        shards=lambda w: expand("results/{{task}}/shards/{shard}.h5", shard=task_of(w).synthesis.shards),
    output:
        "results/{task}/manifest.parquet",
    params:
        ratio=lambda w: task_of(w).filter_ratio,
    log:
        "results/logs/filter/{task}.log",
    priority: UPSTREAM_PRIORITY
    threads: 1
    resources:
        mem_mb=attempt_scaled(4000),
        runtime=attempt_scaled(30),
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/filter_samples.py"
