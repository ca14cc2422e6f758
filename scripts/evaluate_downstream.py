"""Rule evaluate_downstream: score one run on the real test images."""
from labelfactory.downstream.experiment import RealDataSpec, evaluate_downstream
from labelfactory.runtime import resolve_device, snakemake_job

with snakemake_job(snakemake):
    evaluate_downstream(snakemake.input.weights, snakemake.input.annotations,
                        RealDataSpec.from_dict(snakemake.params.real), snakemake.output[0],
                        device=resolve_device(snakemake.params.device))
