"""Rule label_quality: per-image uncertainty score against label error (truth masks or simulated annotator)."""
from labelfactory.core.runtime import snakemake_job
from labelfactory.annotations.annotation_set import load_annotation_set
from labelfactory.experiments.reporting import (label_class_iou, label_errors, scored_samples, truth_label_errors,
                                                unlabelled_note, write_label_quality, write_unlabelled_quality)
from labelfactory.synthesis.filtering import read_manifest
from labelfactory.toybench.annotator import Annotator

with snakemake_job(snakemake):
    manifest, out = read_manifest(snakemake.input.manifest), snakemake.output
    if unlabelled_note(manifest) is not None:  # the interpreter diverged: no sample to score
        write_unlabelled_quality(manifest, out.csv, out.summary, out.figure)
    elif snakemake.input.truth:  # the user's own masks of some synthesised samples
        write_label_quality(truth_label_errors(manifest, snakemake.input.truth), out.csv, out.summary, out.figure,
                            "truth masks")
    else:
        annotator, cls, n = Annotator.load(snakemake.input.annotator), snakemake.params.cls, snakemake.params.samples
        annotated = load_annotation_set(snakemake.input.annotations)
        scored = scored_samples(manifest, annotator, cls, n)  # drawn and annotated once, scored twice
        write_label_quality(label_errors(scored), out.csv, out.summary, out.figure, "simulated annotator",
                            label_class_iou(scored, annotated.masks, annotated.labels.names))
