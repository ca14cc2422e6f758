"""Rule import_annotations: validate a task's annotation folder (or BigDatasetGAN's release) into one set."""
from labelfactory.annotations.importing import import_annotations, import_image_annotations
from labelfactory.annotations.labels import load_labels
from labelfactory.generators.view import load_task_generator
from labelfactory.core.runtime import resolve_device, snakemake_job

with snakemake_job(snakemake):
    p = snakemake.params
    backend = load_task_generator(snakemake.input.weights, resolve_device(p.device), **p.generator)
    # from the config, not a param: existing imports stay current (schema: only_masked)
    only_masked = snakemake.config["tasks"][snakemake.wildcards.task]["annotation"]["only_masked"]
    if p.source == "images":
        import_image_annotations(p.annotations, backend, snakemake.output[0], labels=load_labels(p.labels),
                                 expected_count=p.expected_count, classes=p.classes,
                                 expected_per_class=p.expected_per_class, only_masked=only_masked)
    else:
        import_annotations(p.annotations, backend, snakemake.output[0], truncation=p.truncation, noise=p.noise,
                           labels=load_labels(p.labels), expected_count=p.expected_count, classes=p.classes,
                           expected_per_class=p.expected_per_class, latents=p.latents, merge=p.merge,
                           only_masked=only_masked, masks=p.masks)
