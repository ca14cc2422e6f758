"""Rule target_data: one split of a voc, cityscapes or chest_xray transfer target as COCO JSON + PNGs."""
from pathlib import Path

from labelfactory.downstream.targets import write_target
from labelfactory.core.runtime import snakemake_job

with snakemake_job(snakemake):
    p, split = snakemake.params, snakemake.wildcards.split
    write_target(p.type, p.data, split, p.instances, Path(snakemake.output[0]) / f"{split}.json")
