"""Rule evaluate_keypoint_detector: score one detector on the real test images with exact keypoints."""
from labelfactory.annotations.annotation_set import load_annotation_set
from labelfactory.core.runtime import resolve_device, snakemake_job
from labelfactory.downstream.keypoint_experiment import evaluate_keypoint_run
from labelfactory.downstream.real import RealDataSpec

with snakemake_job(snakemake):
    names = load_annotation_set(snakemake.input.annotations).keypoints.spec.names
    evaluate_keypoint_run(snakemake.input.weights, names, RealDataSpec.from_dict(snakemake.params.real),
                          snakemake.output[0], device=resolve_device(snakemake.params.device))
