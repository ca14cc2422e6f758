"""Rule synthesize: one shard of seeded, labelled, uncertainty-scored samples."""
from labelfactory.generators.view import load_task_generator
from labelfactory.interpreters import load_interpreter
from labelfactory.interpreters.validation import require_validated
from labelfactory.core.io import sha256_file
from labelfactory.core.runtime import resolve_device, snakemake_job
from labelfactory.synthesis.shards import ShardSettings, synthesize_shard

with snakemake_job(snakemake):
    p = snakemake.params
    if snakemake.input.get("validation"):  # tasks.<t>.validation.stop: a failed check stops synthesis
        require_validated(snakemake.input.validation)
    device = resolve_device(p.device)
    backend = load_task_generator(snakemake.input.weights, device, **p.generator)
    interpreter = load_interpreter(p.interpreter_type, snakemake.input.interpreter, device, p.precision)
    classes = None if p.cls < 0 else [p.cls] * len(p.seeds)
    settings = ShardSettings(truncation=p.truncation, noise=p.noise, **p.options)
    synthesize_shard(backend, interpreter, snakemake.output[0], p.seeds, classes, settings,
                     attrs={"labeller_hash": sha256_file(snakemake.input.interpreter)}, progress=False)
