"""Rule ablation_annotations: a variant's annotation set (a subset of the task's, or a selection round's union)."""
from labelfactory.experiments.ablations import write_combined
from labelfactory.core.runtime import snakemake_job

with snakemake_job(snakemake):
    write_combined(list(snakemake.input), snakemake.output[0], keep=snakemake.params.keep, draw=snakemake.params.draw)
