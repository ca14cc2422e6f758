"""Rule train_interpreter: fit the task's interpreter on the annotated samples' features."""
from labelfactory.annotations.annotation_set import load_annotation_set
from labelfactory.features import FeatureStore
from labelfactory.generators.loading import load_generator
from labelfactory.interpreters import INTERPRETERS
from labelfactory.core.runtime import resolve_device, snakemake_job

with snakemake_job(snakemake):
    params = dict(snakemake.params.interpreter)
    kind = INTERPRETERS.get(params.pop("type"))
    ann = load_annotation_set(snakemake.input.annotations)
    conditioning = {}
    if kind.class_conditional:  # conditioned on the generator's class embedding
        embedding = load_generator(snakemake.input.weights).class_embedding()
        conditioning = dict(classes=None if embedding is None else ann.classes, class_embedding=embedding)
    model = kind.fit(FeatureStore.open(snakemake.input.features), ann.masks, len(ann.labels.names),
                     kind.config_class(**params), ignore_index=ann.labels.ignore_index,
                     device=resolve_device(snakemake.params.device), ids=ann.ids,
                     generator_hash=ann.generator_hash, label_names=list(ann.labels.names), **conditioning)
    model.save(snakemake.output.weights)
