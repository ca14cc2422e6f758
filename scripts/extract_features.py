"""Rule extract_features: the annotated samples re-rendered, or a diffusion generator on the annotated
images (annotation.source: images); each layer's features stored (HDF5)."""
from labelfactory.annotations.annotation_set import load_annotation_set
from labelfactory.features import extract_features, extract_image_features
from labelfactory.generators.view import load_task_generator
from labelfactory.core.runtime import resolve_device, snakemake_job

with snakemake_job(snakemake):
    p = snakemake.params
    backend = load_task_generator(snakemake.input.weights, resolve_device(p.device), **p.generator)
    ann = load_annotation_set(snakemake.input.annotations)
    if ann.source == "images":
        extract_image_features(backend, ann.ids, ann.images, snakemake.output[0], classes=ann.classes,
                               layers=p.layers, batch_size=p.batch_size)
    else:
        extract_features(backend, ann.ids, ann.latents, snakemake.output[0], classes=ann.classes, layers=p.layers,
                         truncation=ann.truncation, noise=ann.noise, batch_size=p.batch_size,
                         expected_images=ann.images)
