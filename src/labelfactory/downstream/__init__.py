"""Downstream evaluation: train a segmentation network on labelled images (few
annotations, generated samples, or real images) and score it on real ones."""

from labelfactory.downstream.data import (IGNORE_INDEX, ArraySegmentation, Augment, ShardGroupedSampler, ShardSegmentation)
from labelfactory.downstream.models import SEGMENTATION_MODELS, SegmentationNet, WeightsError, build_segmentation_model
from labelfactory.downstream.segmentation import (SegTrainConfig, confusion_matrix, evaluate_segmentation, load_model, save_model,
                           scores_from_confusion, train_segmentation)

__all__ = [
    "IGNORE_INDEX", "ArraySegmentation", "Augment", "ShardGroupedSampler", "ShardSegmentation",
    "SEGMENTATION_MODELS", "SegmentationNet", "WeightsError", "build_segmentation_model",
    "SegTrainConfig", "confusion_matrix", "evaluate_segmentation", "load_model", "save_model",
    "scores_from_confusion", "train_segmentation",
]
