"""Rule finetune: detectron2 Mask R-CNN from a backbone on N GPUs (the rule's resources.gpu) or the CPU."""
from pathlib import Path

from labelfactory.downstream.detectron import FinetuneConfig, finetune
from labelfactory.core.runtime import resolve_device, snakemake_job

with snakemake_job(snakemake):
    gpus = int(snakemake.resources.gpu) if resolve_device(snakemake.params.device).type == "cuda" else 0
    cfg = FinetuneConfig.from_dict({**snakemake.params.options, "weights": snakemake.input.weights,
                                    "seed": int(snakemake.wildcards.seed), "num_gpus": gpus,
                                    "threads": snakemake.threads})
    finetune(cfg, snakemake.input.train, snakemake.input.test, Path(snakemake.output[0]).parent,
             on_divergence=snakemake.config["on_divergence"])
