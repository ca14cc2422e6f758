"""Rule evaluate_downstream: score one run on the real test images."""
from labelfactory.downstream.class_aware import ClassAwareLabels
from labelfactory.downstream.experiment import evaluate_downstream
from labelfactory.downstream.real import RealDataSpec
from labelfactory.config import check_downstream_files
from labelfactory.core.runtime import resolve_device, snakemake_job

with snakemake_job(snakemake):
    check_downstream_files(snakemake.config, snakemake.wildcards.task)  # the real data, weights, ...
    p = snakemake.params
    evaluate_downstream(snakemake.input.weights, snakemake.input.annotations, RealDataSpec.from_dict(p.real),
                        snakemake.output[0], device=resolve_device(p.device),
                        class_aware=ClassAwareLabels.from_dict(p.class_aware) if p.class_aware else None,
                        **p.evaluation)
