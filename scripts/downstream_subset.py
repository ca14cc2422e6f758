"""Rule downstream_subset: a nested fraction of a transfer target's split (COCO JSON)."""
from labelfactory.downstream.pretrain import subset_coco
from labelfactory.core.runtime import snakemake_job

with snakemake_job(snakemake):
    json_path, image_root = snakemake.params.source
    subset_coco(json_path, image_root, float(snakemake.wildcards.fraction), snakemake.params.seed,
                snakemake.output[0])
