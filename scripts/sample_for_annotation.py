"""Rule sample_for_annotation: seeded samples (images, latents, manifest) for a human to annotate,
either a seed range or (active learning) picked from a pool by the current interpreter's uncertainty."""
from labelfactory.active_learning import candidate_seeds, choose_seeds
from labelfactory.annotations import load_annotation_set, sample_for_annotation
from labelfactory.generators.view import load_task_generator
from labelfactory.interpreters import INTERPRETERS
from labelfactory.runtime import resolve_device, snakemake_job

with snakemake_job(snakemake):
    p = snakemake.params
    backend = load_task_generator(snakemake.input.weights, resolve_device(p.device), **p.generator)
    seeds, s = p.seeds, p.selection
    if s:
        annotated = [seed for path in snakemake.input.annotated for seed in load_annotation_set(path).seeds]
        labeller = (INTERPRETERS.get(s["interpreter_type"]).load(snakemake.input.interpreter[0], backend.device)
                    if snakemake.input.interpreter else None)
        seeds = choose_seeds(s["select"], candidate_seeds(s["pool_start"], s["pool_size"], annotated), s["k"],
                             backend=backend, labeller=labeller, diversity=s["diversity"],
                             oversample=s["oversample"], draw=s["draw"], truncation=p.truncation, noise=p.noise)
    sample_for_annotation(backend, seeds, snakemake.output[0], truncation=p.truncation, noise=p.noise,
                          classes=p.classes)
