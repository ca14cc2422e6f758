"""MS-COCO: ``spec.path`` holds ``annotations/instances_<split>.json`` and the
images in ``<split>/`` (default splits ``train2017`` and ``val2017``).

Semantic masks come from the instance annotations through pycocotools: the
categories, sorted by id, become labels 1..K (background 0), and, as in
torchvision's ``references/segmentation/coco_utils.py``, every instance is
painted with its class and pixels covered by more than one instance are
ignored. Detection: detectron2's ``register_coco_instances``.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from labelfactory.annotations.labels import LabelSet
from labelfactory.downstream.real import REAL_DATASETS, DatasetError, RealDataSpec
from labelfactory.downstream.datasets.base import (DETECTION_DATASETS, FileSegmentation, Size, check_names, dataset_root, first_missing, read_image,
                   require, split_name)

SPLITS = {"train": "train2017", "test": "val2017"}


def coco_files(spec: RealDataSpec, split: str) -> tuple[Path, Path]:
    """The instances JSON and the image folder of ``split``."""
    root = dataset_root(spec)
    name = split_name(spec, split, SPLITS)
    return root / "annotations" / f"instances_{name}.json", root / name


def load_coco(json_path: Path):
    """pycocotools' index of ``json_path``, its annotations checked against its images and categories."""
    from pycocotools.coco import COCO

    require(json_path, "COCO instances annotations")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(json_path))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{json_path}: not a COCO instances file ({type(e).__name__}: {e})") from None
    if not coco.cats:
        raise DatasetError(f"{json_path}: no categories")
    for ann in coco.anns.values():
        if ann["image_id"] not in coco.imgs:
            raise DatasetError(f"{json_path}: annotation {ann['id']} refers to image {ann['image_id']}, "
                               "which is not in its images")
        if ann["category_id"] not in coco.cats:
            raise DatasetError(f"{json_path}: annotation {ann['id']} has category id {ann['category_id']}, "
                               f"not one of its categories {sorted(coco.cats)}")
    return coco


def class_names(coco) -> tuple[str, ...]:
    return ("background", *(coco.cats[c]["name"] for c in sorted(coco.cats)))


def semantic_mask(coco, image_id: int, ignore_index: int) -> np.ndarray:
    """The class of every pixel of ``image_id``: labels 1..K by sorted category id, 0 where
    no instance lies, ``ignore_index`` where instances overlap."""
    label_of = {c: k + 1 for k, c in enumerate(sorted(coco.cats))}
    info = coco.imgs[image_id]
    label = np.zeros((info["height"], info["width"]), dtype=np.int64)
    count = np.zeros(label.shape, dtype=np.int32)
    for ann in coco.imgToAnns[image_id]:
        if ann.get("segmentation"):
            inside = coco.annToMask(ann).astype(bool)
            label[inside] = np.maximum(label[inside], label_of[ann["category_id"]])
            count += inside
    label[count > 1] = ignore_index
    return label


class COCOSegmentation(FileSegmentation):
    """COCO images (sorted by id) with :func:`semantic_mask` labels."""

    def __init__(self, coco, json_path: Path, image_root: Path, ignore_index: int, size: Size | None):
        self.ids = sorted(coco.imgs)
        super().__init__([image_root / coco.imgs[i]["file_name"] for i in self.ids], size)
        self.coco, self.json_path, self.ignore_index = coco, json_path, ignore_index

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(self.files[i])
        info = self.coco.imgs[self.ids[i]]
        if image.shape[:2] != (info["height"], info["width"]):
            raise DatasetError(f"{self.files[i]}: {image.shape[0]}x{image.shape[1]} pixels but {self.json_path} "
                               f"says {info['height']}x{info['width']}")
        return image, semantic_mask(self.coco, self.ids[i], self.ignore_index)


@REAL_DATASETS.register("coco")
def coco_split(spec: RealDataSpec, split: str, labels: LabelSet) -> Dataset:
    """COCO's semantic masks; the task's labels must be background plus the JSON's categories in id order."""
    json_path, image_root = coco_files(spec, split)
    coco = load_coco(json_path)
    check_names(labels, class_names(coco), f"{json_path}")
    if not coco.imgs:
        raise DatasetError(f"{json_path}: no images")
    dataset = COCOSegmentation(coco, json_path, image_root, labels.ignore_index, spec.resize)
    first_missing(dataset.files, f"image listed in {json_path.name}")
    return dataset


@DETECTION_DATASETS.register("coco")
def register_coco(name: str, spec: RealDataSpec, split: str) -> None:
    from detectron2.data.datasets import register_coco_instances

    json_path, image_root = coco_files(spec, split)
    require(json_path, "COCO instances annotations")
    require(image_root, "the split's images")
    register_coco_instances(name, {}, str(json_path), str(image_root))
