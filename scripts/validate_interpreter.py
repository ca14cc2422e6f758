"""Rule validate_interpreter: the interpreter cross-validated on its annotations, before synthesis."""
from labelfactory.config.specs import ValidationSpec
from labelfactory.core.runtime import resolve_device, snakemake_job
from labelfactory.experiments.validation_report import validate_interpreter
from labelfactory.generators.loading import load_generator
from labelfactory.interpreters import INTERPRETERS

with snakemake_job(snakemake):
    p, out = snakemake.params, snakemake.output
    conditional = INTERPRETERS.get(p.interpreter["type"]).class_conditional
    embedding = load_generator(snakemake.input.weights).class_embedding() if conditional else None
    validate_interpreter(snakemake.wildcards.task, snakemake.input.features, snakemake.input.annotations,
                         p.interpreter, ValidationSpec(**p.validation), out.csv, out.summary, out.figure,
                         class_embedding=embedding, device=resolve_device(p.device), downstream=p.downstream,
                         threads=snakemake.threads, on_divergence=snakemake.config["on_divergence"])
