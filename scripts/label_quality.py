"""Rule label_quality: per-image uncertainty score against label error (truth masks or simulated annotator)."""
from labelfactory.core.runtime import snakemake_job
from labelfactory.annotations.annotation_set import load_annotation_set
from labelfactory.experiments.reporting import label_class_iou, label_errors, truth_label_errors, write_label_quality
from labelfactory.synthesis.filtering import read_manifest
from labelfactory.toybench.annotator import Annotator

with snakemake_job(snakemake):
    manifest, out = read_manifest(snakemake.input.manifest), snakemake.output
    class_iou = None
    if snakemake.input.truth:  # the user's own masks of some synthesised samples
        errors, reference = truth_label_errors(manifest, snakemake.input.truth), "truth masks"
    else:
        annotator, cls, n = Annotator.load(snakemake.input.annotator), snakemake.params.cls, snakemake.params.samples
        errors, reference = label_errors(manifest, annotator, cls, n), "simulated annotator"
        annotated = load_annotation_set(snakemake.input.annotations)
        class_iou = label_class_iou(manifest, annotator, cls, n, annotated.masks, annotated.labels.names)
    write_label_quality(errors, out.csv, out.summary, out.figure, reference, class_iou)
