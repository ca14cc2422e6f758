"""Rule keypoint_label_quality: the synthetic keypoints' error against the reference annotator, kept vs dropped."""
from labelfactory.core.runtime import resolve_device, snakemake_job
from labelfactory.experiments.keypoint_report import keypoint_label_errors, write_keypoint_label_quality

with snakemake_job(snakemake):
    errors = keypoint_label_errors(snakemake.input.manifest, snakemake.input.annotator,
                                   resolve_device(snakemake.params.device))
    write_keypoint_label_quality(errors, snakemake.output.csv, snakemake.output.summary)
