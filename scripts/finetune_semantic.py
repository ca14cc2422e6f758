"""Rule finetune_semantic: DeepLabV3 with a pretrained trunk on a transfer target's semantic masks."""
from labelfactory.downstream.pretrain import finetune_semantic, semantic_config
from labelfactory.core.runtime import resolve_device, snakemake_job

with snakemake_job(snakemake):
    p = snakemake.params
    cfg = semantic_config(p.options, p.arch, seed=int(snakemake.wildcards.seed), threads=snakemake.threads)
    finetune_semantic(snakemake.input.weights, snakemake.input.train, snakemake.input.test, cfg, snakemake.output[0],
                      resolve_device(p.device), on_divergence=snakemake.config["on_divergence"], size=p.size)
