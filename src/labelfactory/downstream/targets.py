"""The transfer experiment's targets: real datasets in what its finetunes read.

A target (config ``pretraining.targets.<name>``) is a reader type with its paths
and the tasks its annotations allow. Both finetunes read a COCO instances JSON
with absolute image paths (:func:`~.pretrain.subset_coco` takes the fractions
from it): detectron2's Mask R-CNN its instances (RLE masks), the project's
DeepLabV3 its semantic masks. Where those come from:

- ``toy_scenes`` and ``coco``: the JSON as it is (written by the workflow, or the
  dataset's ``annotations/instances_<split>.json``); the semantic masks are the
  instances painted with their class (:class:`~.datasets.coco.COCOSegmentation`);
- ``voc``, ``cityscapes``, ``chest_xray``: :func:`write_target` converts a split
  (:data:`~.datasets.base.TARGET_SPLITS`) to COCO JSON + PNGs, each image with its
  semantic mask (``semantic_file_name``, 255 = ignore) and the JSON with the
  label names of those masks (``semantic_labels``), which :func:`target_semantic`
  reads back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from labelfactory.core.io import atomic_write_text
from labelfactory.downstream.coco_export import CocoImage, write_coco
from labelfactory.downstream.data import IGNORE_INDEX
from labelfactory.downstream.datasets.base import (TARGET_SPLITS, FileSegmentation, LabelledSplit, Size, check_shape,
                                                   read_image, read_mask)
from labelfactory.downstream.datasets.coco import COCOSegmentation, class_names, coco_files, load_coco
from labelfactory.downstream.real import DatasetError, RealDataSpec

SEMANTIC_LABELS = "semantic_labels"  # the JSON key of a converted target's semantic label names


def target_spec(kind: str, data: dict) -> RealDataSpec:
    """The reader's view of a target entry: its type, folder and split names."""
    return RealDataSpec(type=kind, path=data.get("path"), splits=data.get("splits"))


def coco_source(data: dict, split: str) -> tuple[Path, Path]:
    """A ``coco`` target's instances JSON and image folder of ``split`` (``train``/``test``)."""
    return coco_files(target_spec("coco", data), split)


def target_images(source: LabelledSplit, instances: bool) -> Iterator[CocoImage]:
    """Every item of ``source`` with its semantic mask and, with ``instances``, its instance masks."""
    for i, path in enumerate(source.semantic.files):
        image, label = source.semantic.read(i)
        masks, categories = source.instances(i) if instances else (np.zeros((0, *label.shape), bool), [])
        yield CocoImage(image, masks, categories, semantic=label.astype(np.uint8), extra={"source": str(path)})


def write_target(kind: str, data: dict, split: str, instances: bool, json_path: str | Path) -> dict:
    """Convert ``split`` of the ``kind`` dataset at ``data["path"]`` to COCO JSON + PNGs at
    ``json_path`` (see the module docstring); ``instances``: with its instance masks, which
    the dataset must have. Returns the counts of :func:`~.coco_export.write_coco`."""
    source = TARGET_SPLITS.get(kind)(target_spec(kind, data), split)
    if instances and source.instances is None:
        raise DatasetError(f"{data['path']}: no instance masks for the instance task of this {kind} target "
                           "(VOC: SegmentationObject/)")
    json_path = Path(json_path)
    draft = json_path.with_name(f".{json_path.name}.draft")
    counts = write_coco(draft, source.categories, target_images(source, instances))
    coco = json.loads(draft.read_text())
    atomic_write_text(json_path, json.dumps({**coco, SEMANTIC_LABELS: list(source.labels)}) + "\n")
    draft.unlink()
    return counts


class SemanticFiles(FileSegmentation):
    """A converted target's images (sorted by id) with their ``semantic_file_name`` masks."""

    def __init__(self, records: Sequence[dict], root: Path, num_labels: int, size: Size | None):
        super().__init__([root / r["file_name"] for r in records], size)
        self.masks = [root / r["semantic_file_name"] for r in records]
        self.num_labels = num_labels

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = read_image(self.files[i]), read_mask(self.masks[i])
        check_shape(mask, image, self.masks[i], self.files[i])
        bad = mask[(mask != IGNORE_INDEX) & (mask >= self.num_labels)]
        if bad.size:
            raise DatasetError(f"{self.masks[i]}: label {int(bad.max())} outside 0..{self.num_labels - 1}")
        return image, mask.astype(np.int64)


def target_semantic(json_path: str | Path, size: Size | None = None):
    """A target's semantic masks and their label names from its (subset) COCO JSON: the
    converted masks where the JSON names ``semantic_labels``, else its instances painted
    with their class (background 0); every pair resized to ``size`` where given."""
    json_path = Path(json_path)
    coco = load_coco(json_path)
    size = tuple(size) if size else None
    if SEMANTIC_LABELS in coco.dataset:
        labels = tuple(coco.dataset[SEMANTIC_LABELS])
        records = [coco.imgs[i] for i in sorted(coco.imgs)]
        return SemanticFiles(records, json_path.parent, len(labels), size), labels
    return COCOSegmentation(coco, json_path, json_path.parent, IGNORE_INDEX, size), class_names(coco)
