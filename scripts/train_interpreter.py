"""Rule train_interpreter: fit the task's interpreter on the annotated samples' features."""
from labelfactory.annotations.annotation_set import load_annotation_set
from labelfactory.features import FeatureStore
from labelfactory.generators.loading import load_generator
from labelfactory.interpreters import INTERPRETERS, TrainingData
from labelfactory.core.runtime import resolve_device, snakemake_job

with snakemake_job(snakemake):
    params = dict(snakemake.params.interpreter)
    kind = INTERPRETERS.get(params.pop("type"))
    ann = load_annotation_set(snakemake.input.annotations)
    # a class-conditional interpreter conditions on the generator's class embedding (None: unconditional)
    embedding = load_generator(snakemake.input.weights).class_embedding() if kind.class_conditional else None
    data = TrainingData.from_annotations(FeatureStore.open(snakemake.input.features), ann, class_embedding=embedding)
    model = kind.fit(data, kind.config_class(**params), device=resolve_device(snakemake.params.device),
                     on_divergence=snakemake.config["on_divergence"])
    model.save(snakemake.output.weights)
