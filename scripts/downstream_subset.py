"""Rule downstream_subset: a nested fraction of a downstream COCO split."""
from labelfactory.downstream.pretrain import subset_coco
from labelfactory.core.runtime import snakemake_job

with snakemake_job(snakemake):
    p = snakemake.params
    subset_coco(p.json, p.image_root, float(snakemake.wildcards.fraction), p.seed, snakemake.output[0])
