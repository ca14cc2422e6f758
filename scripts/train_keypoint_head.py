"""Rule train_keypoint_head: fit the keypoint head on the annotated images' features and keypoints."""
from labelfactory.annotations.annotation_set import load_annotation_set
from labelfactory.core.runtime import resolve_device, snakemake_job
from labelfactory.features import FeatureStore
from labelfactory.interpreters import TrainingData
from labelfactory.interpreters.keypoints import KeypointHeadConfig, train_keypoint_head

with snakemake_job(snakemake):
    ann = load_annotation_set(snakemake.input.annotations)
    if ann.keypoints is None:
        raise ValueError(f"{snakemake.input.annotations}: no keypoints; name them in labels.yaml (`keypoints`) "
                         "and add <id>.keypoints.json files to the annotation folder")
    data = TrainingData.from_annotations(FeatureStore.open(snakemake.input.features), ann)
    head = train_keypoint_head(data, ann.keypoints.keypoints, ann.keypoints.spec.names,
                               KeypointHeadConfig(**snakemake.params.head), resolve_device(snakemake.params.device))
    head.save(snakemake.output.weights)
