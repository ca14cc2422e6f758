"""Rule keypoint_sample_grid: generated images with the head's keypoints, most certain to most uncertain."""
from labelfactory.annotations.labels import load_labels
from labelfactory.core.runtime import snakemake_job
from labelfactory.experiments.keypoint_report import plot_keypoint_grid
from labelfactory.synthesis.filtering import read_manifest

with snakemake_job(snakemake):
    spec = load_labels(snakemake.input.labels).keypoints
    plot_keypoint_grid(read_manifest(snakemake.input.manifest), snakemake.output[0], spec.skeleton)
