"""Rule sample_for_annotation: seeded samples (images, latents, manifest) for a human to annotate,
either a seed range or (active learning) picked from a pool by the current interpreter's uncertainty."""
from labelfactory.annotations.active_selection import next_round_seeds
from labelfactory.annotations.handout import sample_for_annotation
from labelfactory.generators.view import load_task_generator
from labelfactory.core.runtime import resolve_device, snakemake_job

with snakemake_job(snakemake):
    p = snakemake.params
    backend = load_task_generator(snakemake.input.weights, resolve_device(p.device), **p.generator)
    seeds = p.seeds
    if p.selection:
        seeds = next_round_seeds(p.selection, backend, list(snakemake.input.annotated),
                                 snakemake.input.interpreter[0] if snakemake.input.interpreter else None,
                                 truncation=p.truncation, noise=p.noise)
    sample_for_annotation(backend, seeds, snakemake.output[0], truncation=p.truncation, noise=p.noise,
                          classes=p.classes)
