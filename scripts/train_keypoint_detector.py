"""Rule train_keypoint_detector: train one keypoint detector of a setting and seed."""
from labelfactory.core.runtime import resolve_device, snakemake_job
from labelfactory.downstream.experiment import seg_config
from labelfactory.downstream.keypoint_experiment import KeypointInputs, train_keypoint_run
from labelfactory.downstream.real import RealDataSpec
from labelfactory.generators.view import ImageView

with snakemake_job(snakemake):
    p, w = snakemake.params, snakemake.wildcards
    inputs = KeypointInputs(snakemake.input.annotations, snakemake.input.manifest[0] if snakemake.input.manifest else None,
                            RealDataSpec.from_dict(p.real) if p.real else None, ImageView.from_dict(p.image))
    train_keypoint_run(w.setting, inputs, seg_config(p.options, int(w.seed), p.threads), p.sigma,
                       snakemake.output.weights, device=resolve_device(p.device))
