"""Rule sample_for_annotation: seeded samples (images, latents, manifest) for a human to annotate."""
from labelfactory.annotations import sample_for_annotation
from labelfactory.generators.checkpoints import load_generator
from labelfactory.runtime import resolve_device, snakemake_job

with snakemake_job(snakemake):
    p = snakemake.params
    backend = load_generator(snakemake.input.weights, resolve_device(p.device))
    sample_for_annotation(backend, p.seeds, snakemake.output[0], truncation=p.truncation, noise=p.noise,
                          classes=p.classes)
