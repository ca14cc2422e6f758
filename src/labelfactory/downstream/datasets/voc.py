"""PASCAL VOC 2012: ``spec.path`` is the ``VOCdevkit/VOC2012`` folder.

Segmentation: ``JPEGImages/<id>.jpg`` with ``SegmentationClass/<id>.png``
(palette PNGs whose indices are the 21 class ids; 255, the void boundary, is
ignored), listed by ``ImageSets/Segmentation/<split>.txt``. The test split is
``val`` (the test set's masks are not public). Detection: detectron2's
``register_pascal_voc`` reads ``Annotations/<id>.xml`` listed by
``ImageSets/Main/<split>.txt`` (boxes only; VOC's XML has no masks). As a
transfer target (:data:`~labelfactory.downstream.datasets.base.TARGET_SPLITS`)
the segmentation split's instances come from ``SegmentationObject/<id>.png``
(palette indices: 0 background, 1..N objects, 255 void), each of the class its
pixels have in ``SegmentationClass``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from labelfactory.annotations.labels import LabelSet
from labelfactory.downstream.real import REAL_DATASETS, DatasetError, RealDataSpec
from labelfactory.downstream.datasets.base import (DETECTION_DATASETS, TARGET_SPLITS, LabelledSplit, MaskFileSegmentation,
                   check_names, check_shape, dataset_root, first_missing, instances_by_value, lookup, read_mask, require,
                   split_name)

CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
VOID = 255
SPLITS = {"train": "train", "test": "val"}
YEAR = 2012


def read_ids(path: Path) -> list[str]:
    """The image ids of an ``ImageSets`` list, one per line."""
    ids = require(path, "the split's list of image ids").read_text().split()
    if not ids:
        raise DatasetError(f"{path}: lists no image ids")
    return ids


@REAL_DATASETS.register("voc")
def voc_split(spec: RealDataSpec, split: str, labels: LabelSet) -> Dataset:
    """VOC's segmentation split; the task's labels must be VOC's 21 classes."""
    root = dataset_root(spec)
    check_names(labels, CLASSES, "PASCAL VOC")
    ids = read_ids(root / "ImageSets" / "Segmentation" / f"{split_name(spec, split, SPLITS)}.txt")
    images = [root / "JPEGImages" / f"{i}.jpg" for i in ids]
    masks = [root / "SegmentationClass" / f"{i}.png" for i in ids]
    first_missing(images, "image listed in the split")
    first_missing(masks, "mask of an image listed in the split")
    table = lookup(labels.ignore_index, {**{k: k for k in range(len(CLASSES))}, VOID: None})
    return MaskFileSegmentation(images, [(m,) for m in masks], table, spec.resize)


@DETECTION_DATASETS.register("voc")
def register_voc(name: str, spec: RealDataSpec, split: str) -> None:
    from detectron2.data.datasets import register_pascal_voc

    root = dataset_root(spec)
    voc_split_name = split_name(spec, split, SPLITS)
    ids = read_ids(root / "ImageSets" / "Main" / f"{voc_split_name}.txt")
    first_missing([root / "Annotations" / f"{i}.xml" for i in ids], "annotation of an image listed in the split")
    first_missing([root / "JPEGImages" / f"{i}.jpg" for i in ids], "image listed in the split")
    register_pascal_voc(name, str(root), voc_split_name, YEAR, list(CLASSES[1:]))


@TARGET_SPLITS.register("voc")
def voc_target(spec: RealDataSpec, split: str) -> LabelledSplit:
    """VOC's segmentation split with, where ``SegmentationObject/`` is there, its object masks."""
    semantic = voc_split(spec, split, LabelSet(CLASSES))
    objects = dataset_root(spec) / "SegmentationObject"

    def instances(i: int) -> tuple[np.ndarray, list[int]]:
        path = objects / f"{semantic.files[i].stem}.png"
        ids = read_mask(require(path, "object mask of an image listed in the split"))
        label = read_mask(semantic.masks[i][0])
        check_shape(ids, label, path, semantic.masks[i][0])

        def category(value: int) -> int | None:
            if value in (0, VOID):
                return None
            classes = np.unique(label[ids == value])
            classes = classes[(classes != 0) & (classes != VOID)]
            if len(classes) != 1:
                raise DatasetError(f"{path}: object {value} covers classes {classes.tolist()} in "
                                   f"{semantic.masks[i][0]}; expected one")
            return int(classes[0])

        return instances_by_value(ids, category)

    return LabelledSplit(semantic, CLASSES, CLASSES[1:], instances if objects.is_dir() else None)
