"""Rule synthesize_keypoints: one shard of seeded samples labelled with keypoints by the task's head."""
from labelfactory.core.runtime import resolve_device, snakemake_job
from labelfactory.generators.view import load_task_generator
from labelfactory.synthesis.keypoint_shards import synthesize_keypoint_shard

with snakemake_job(snakemake):
    p = snakemake.params
    backend = load_task_generator(snakemake.input.weights, resolve_device(p.device), **p.generator)
    synthesize_keypoint_shard(backend, snakemake.input.head, snakemake.output[0], p.seeds,
                              None if p.cls < 0 else p.cls, truncation=p.truncation, noise=p.noise,
                              batch_size=p.batch_size, store_heatmaps=p.store_heatmaps)
