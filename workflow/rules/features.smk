rule extract_features:
    """Re-render the annotated latents (annotated images: a diffusion generator's features of them);
    store each layer's features at native resolution."""
    input:
        weights=checkpoint_weights,
        average_latent=average_latent_file,
        annotations="results/{task}/annotations.h5",
    output:
        "results/{task}/features.h5",
    params:
        layers=lambda w: task_of(w).features.layers,
        batch_size=lambda w: task_of(w).features.batch_size,
        generator=lambda w: generator_options(task_of(w)),
        device=CFG.device,
    log:
        "results/logs/extract_features/{task}.log",
    priority: UPSTREAM_PRIORITY
    threads: 2
    resources:
        mem_mb=attempt_scaled(8000),
        runtime=attempt_scaled(60),
        gpu=GPUS,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/extract_features.py"
