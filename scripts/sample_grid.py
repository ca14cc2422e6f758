"""Rule sample_grid: generated images with their label overlays."""
from labelfactory.manifest import read_manifest
from labelfactory.reporting import plot_sample_grid
from labelfactory.runtime import snakemake_job

with snakemake_job(snakemake):
    plot_sample_grid(read_manifest(snakemake.input.manifest), snakemake.output[0])
