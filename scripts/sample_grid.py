"""Rule sample_grid: generated images with their label overlays."""
from labelfactory.synthesis.filtering import read_manifest
from labelfactory.experiments.reporting import plot_sample_grid
from labelfactory.core.runtime import snakemake_job

with snakemake_job(snakemake):
    plot_sample_grid(read_manifest(snakemake.input.manifest), snakemake.output[0])
