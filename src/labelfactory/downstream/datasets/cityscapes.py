"""Cityscapes (fine annotations): ``spec.path`` holds
``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` and
``gtFine/<split>/<city>/<stem>_gtFine_labelIds.png``; the test split is ``val``.

Label ids become the 19 train ids (255 ignored) by the official table of
cityscapesScripts (``cityscapesscripts/helpers/labels.py``, mcordts/cityscapesScripts),
written out below as data; ``license plate`` (id −1) never occurs in labelIds
images. Detection: detectron2's ``load_cityscapes_instances`` on the polygon
JSONs (it needs cityscapesScripts and shapely). As a transfer target
(:data:`~labelfactory.downstream.datasets.base.TARGET_SPLITS`) the instances come
from ``<stem>_gtFine_instanceIds.png`` (label id × 1000 + instance number for the
instances of a class with instances, the bare label id elsewhere): those of the
8 thing classes with a train id, as cityscapesScripts' instance evaluation.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from torch.utils.data import Dataset

from labelfactory.annotations.labels import LabelSet
from labelfactory.downstream.real import REAL_DATASETS, DatasetError, RealDataSpec
from labelfactory.downstream.datasets.base import (DETECTION_DATASETS, TARGET_SPLITS, LabelledSplit, MaskFileSegmentation,
                   check_names, check_shape, dataset_root, first_missing, instances_by_value, lookup, read_mask, require,
                   split_name)

# (name, id, trainId) of cityscapesScripts' labels table, ids 0..33.
LABELS = (
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255), ("out of roi", 3, 255),
    ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0), ("sidewalk", 8, 1),
    ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4),
    ("guard rail", 14, 255), ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9), ("sky", 23, 10),
    ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15),
    ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
)
CLASSES = tuple(name for name, _, train_id in sorted(LABELS, key=lambda r: r[2]) if train_id != 255)
THING_CLASSES = CLASSES[11:]  # person..bicycle: the classes with instances that are evaluated
SPLITS = {"train": "train", "test": "val"}
IMAGE_SUFFIX, LABEL_SUFFIX, INSTANCE_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png", "_gtFine_instanceIds.png"
# label id -> category id (1-based, in THING_CLASSES) of the classes whose instances are evaluated
THING_CATEGORY = {i: THING_CLASSES.index(name) + 1 for name, i, t in LABELS if name in THING_CLASSES}


def split_dirs(spec: RealDataSpec, split: str):
    root = dataset_root(spec)
    name = split_name(spec, split, SPLITS)
    return (require(root / "leftImg8bit" / name, "the split's images"),
            require(root / "gtFine" / name, "the split's fine annotations"))


@REAL_DATASETS.register("cityscapes")
def cityscapes_split(spec: RealDataSpec, split: str, labels: LabelSet) -> Dataset:
    """Cityscapes' semantic train-id masks; the task's labels must be the 19 train classes."""
    check_names(labels, CLASSES, "Cityscapes train-id")
    image_dir, gt_dir = split_dirs(spec, split)
    images = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
    if not images:
        raise DatasetError(f"{image_dir}: no <city>/*{IMAGE_SUFFIX} images")
    masks = [gt_dir / p.parent.name / (p.name[:-len(IMAGE_SUFFIX)] + LABEL_SUFFIX) for p in images]
    first_missing(masks, "labelIds annotation of an image")
    table = lookup(labels.ignore_index, {i: None if t == 255 else t for _, i, t in LABELS})
    return MaskFileSegmentation(images, [(m,) for m in masks], table, spec.resize)


@DETECTION_DATASETS.register("cityscapes")
def register_cityscapes(name: str, spec: RealDataSpec, split: str) -> None:
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.cityscapes import load_cityscapes_instances

    image_dir, gt_dir = split_dirs(spec, split)
    DatasetCatalog.register(name, partial(load_cityscapes_instances, str(image_dir), str(gt_dir),
                                          from_json=True, to_polygons=True))
    MetadataCatalog.get(name).set(thing_classes=list(THING_CLASSES), image_dir=str(image_dir), gt_dir=str(gt_dir),
                                  evaluator_type="cityscapes_instance")


@TARGET_SPLITS.register("cityscapes")
def cityscapes_target(spec: RealDataSpec, split: str) -> LabelledSplit:
    """Cityscapes' train-id masks with the thing instances of ``*_gtFine_instanceIds.png``."""
    semantic = cityscapes_split(spec, split, LabelSet(CLASSES))

    def instances(i: int) -> tuple[np.ndarray, list[int]]:
        label_path = semantic.masks[i][0]
        path = label_path.with_name(label_path.name[:-len(LABEL_SUFFIX)] + INSTANCE_SUFFIX)
        ids = read_mask(require(path, "instanceIds annotation of an image")).astype(np.int64)
        check_shape(ids, read_mask(label_path), path, label_path)
        return instances_by_value(ids, lambda v: THING_CATEGORY.get(v // 1000) if v >= 1000 else None)

    return LabelledSplit(semantic, CLASSES, THING_CLASSES, instances)
