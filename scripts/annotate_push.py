"""Rule annotate_push: the task's samples for annotation as Label Studio tasks, with the choosing
interpreter's labels as pre-annotations when active selection picked them."""
from labelfactory.annotations.label_studio import (
    LabelStudio,
    interpreter_predictions,
    model_version,
    push,
)
from labelfactory.annotations.labels import load_labels
from labelfactory.core.io import atomic_write_json
from labelfactory.core.runtime import resolve_device, snakemake_job
from labelfactory.generators.view import load_task_generator
from labelfactory.interpreters import load_interpreter

with snakemake_job(snakemake):
    p, files = snakemake.params, snakemake.input
    predictions, version = None, "labelfactory"
    if files.interpreter:
        device = resolve_device(p.device)
        backend = load_task_generator(files.weights, device, **p.generator)
        interpreter = load_interpreter(p.interpreter_type, files.interpreter[0], device)
        predictions = interpreter_predictions(backend, interpreter, files.samples)
        version = model_version(files.interpreter[0])
    done = push(LabelStudio(p.url), files.samples, load_labels(files.labels), p.project, predictions, version,
                masks=p.masks)
    atomic_write_json(snakemake.output[0], done)
