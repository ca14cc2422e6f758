"""Rule synthesize: one shard of seeded, labelled, uncertainty-scored samples (or, when the
task's interpreter diverged in training, the shard that records it)."""
from labelfactory.generators.view import load_task_generator
from labelfactory.interpreters.validation import require_validated
from labelfactory.core.runtime import resolve_device, snakemake_job
from labelfactory.synthesis.shard_job import synthesize_with_interpreter
from labelfactory.synthesis.shards import ShardSettings

with snakemake_job(snakemake):
    p = snakemake.params
    if snakemake.input.get("validation"):  # tasks.<t>.validation.stop: a failed check stops synthesis
        require_validated(snakemake.input.validation)
    backend = load_task_generator(snakemake.input.weights, resolve_device(p.device), **p.generator)
    classes = None if p.cls < 0 else [p.cls] * len(p.seeds)
    synthesize_with_interpreter(backend, snakemake.input.interpreter, snakemake.output[0], p.seeds, classes,
                                ShardSettings(truncation=p.truncation, noise=p.noise, **p.options),
                                interpreter_type=p.interpreter_type, precision=p.precision,
                                on_divergence=snakemake.config["on_divergence"])
