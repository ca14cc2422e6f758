"""Rule label_quality: per-image uncertainty score against label error (simulated annotator)."""
from labelfactory.toybench.annotator import Annotator
from labelfactory.synthesis.filtering import read_manifest
from labelfactory.experiments.reporting import label_errors, write_label_quality
from labelfactory.core.runtime import snakemake_job

with snakemake_job(snakemake):
    errors = label_errors(read_manifest(snakemake.input.manifest), Annotator.load(snakemake.input.annotator),
                          snakemake.params.cls, snakemake.params.samples)
    write_label_quality(errors, snakemake.output.csv, snakemake.output.summary, snakemake.output.figure)
