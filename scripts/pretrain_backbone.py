"""Rule pretrain_backbone: one init's backbone in detectron2's and torchvision's formats."""
from pathlib import Path

from labelfactory.downstream.pretrain import PretrainConfig, pretrain_backbone, pretrain_inputs
from labelfactory.core.runtime import resolve_device, snakemake_job

with snakemake_job(snakemake):
    p, files = snakemake.params, snakemake.input
    inputs = pretrain_inputs(p.method, annotations=files.get("annotations"), manifest=files.get("manifest"),
                             class_aware=p.class_aware, real=p.real, weights=files.get("weights"))
    cfg = PretrainConfig.from_dict({**p.options, "threads": snakemake.threads})
    pretrain_backbone(p.method, cfg, inputs, Path(snakemake.output.info).parent, resolve_device(p.device),
                      on_divergence=snakemake.config["on_divergence"])
