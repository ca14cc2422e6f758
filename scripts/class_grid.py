"""Rule class_grid: per class, random kept samples with their object masks."""
from labelfactory.synthesis.filtering import read_manifest
from labelfactory.experiments.reporting import plot_class_grid
from labelfactory.core.runtime import snakemake_job

with snakemake_job(snakemake):
    plot_class_grid(read_manifest(snakemake.input.manifest), snakemake.output[0], snakemake.params.class_names)
