"""Rule simulated_annotator: the toy world's simulated human labels the samples picked for annotation."""
from labelfactory.toybench.annotator import Annotator, simulate_annotation
from labelfactory.core.runtime import snakemake_job

with snakemake_job(snakemake):
    simulate_annotation(snakemake.input.samples, snakemake.output[0], Annotator.load(snakemake.input.annotator),
                        snakemake.params.cls)
