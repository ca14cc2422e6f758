"""Downstream evaluation: train a segmentation network on labelled images (few
annotations, generated samples, or real images) and score it on real ones."""

from .data import (IGNORE_INDEX, ArraySegmentation, Augment, ShardGroupedSampler, ShardSegmentation,
                   ToyWorldSegmentation)
from .models import SEGMENTATION_MODELS, SegmentationNet, WeightsError, build_segmentation_model
from .segmentation import (SegTrainConfig, confusion_matrix, evaluate_segmentation, load_model, save_model,
                           scores_from_confusion, train_segmentation)

__all__ = [
    "IGNORE_INDEX", "ArraySegmentation", "Augment", "ShardGroupedSampler", "ShardSegmentation",
    "ToyWorldSegmentation", "SEGMENTATION_MODELS", "SegmentationNet", "WeightsError", "build_segmentation_model",
    "SegTrainConfig", "confusion_matrix", "evaluate_segmentation", "load_model", "save_model",
    "scores_from_confusion", "train_segmentation",
]
