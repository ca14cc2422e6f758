"""Rule label_quality: per-image uncertainty score against label error (truth masks or simulated annotator)."""
from labelfactory.core.runtime import snakemake_job
from labelfactory.experiments.reporting import label_errors, truth_label_errors, write_label_quality
from labelfactory.synthesis.filtering import read_manifest
from labelfactory.toybench.annotator import Annotator

with snakemake_job(snakemake):
    manifest, out = read_manifest(snakemake.input.manifest), snakemake.output
    if snakemake.input.truth:  # the user's own masks of some synthesised samples
        errors, reference = truth_label_errors(manifest, snakemake.input.truth), "truth masks"
    else:
        errors = label_errors(manifest, Annotator.load(snakemake.input.annotator), snakemake.params.cls,
                              snakemake.params.samples)
        reference = "simulated annotator"
    write_label_quality(errors, out.csv, out.summary, out.figure, reference)
