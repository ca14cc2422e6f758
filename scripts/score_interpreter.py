"""Rule score_interpreter: a diffusion task's interpreter itself scored on the real test images."""
from labelfactory.config import check_downstream_files
from labelfactory.downstream.interpreter_test import score_interpreter
from labelfactory.downstream.real import RealDataSpec
from labelfactory.generators.view import load_task_generator
from labelfactory.interpreters import load_interpreter
from labelfactory.core.runtime import resolve_device, snakemake_job

with snakemake_job(snakemake):
    check_downstream_files(snakemake.config, snakemake.wildcards.task)  # the real data
    p = snakemake.params
    device = resolve_device(p.device)
    backend = load_task_generator(snakemake.input.weights, device, **p.generator)
    score_interpreter(backend, load_interpreter(None, snakemake.input.interpreter, device),
                      snakemake.input.annotations, RealDataSpec.from_dict(p.real), snakemake.output[0], cls=p.cls)
