"""Chest X-ray lung masks in the layouts of the NLM sets; ``spec.path`` is the set's folder:

- Montgomery: ``CXR_png/<id>.png`` with ``ManualMask/leftMask/<id>.png`` and
  ``ManualMask/rightMask/<id>.png``, merged into one lung mask; every image
  needs both.
- Shenzhen: ``CXR_png/<id>.png`` with ``mask/<id>_mask.png``. Its masks cover
  only part of the images, so images without a mask are left out (and counted
  in the log); a mask without its image is an error.

Masks are binary (0 background; 1 or 255 lung). Neither set has an official
split: an image is in the test split when the CRC32 of its file stem is
divisible by 5 (:func:`~labelfactory.downstream.datasets.base.held_out`), about 20%.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch.utils.data import Dataset

from labelfactory.annotations.labels import LabelSet
from labelfactory.downstream.real import REAL_DATASETS, DatasetError, RealDataSpec
from labelfactory.downstream.datasets.base import (TARGET_SPLITS, LabelledSplit, MaskFileSegmentation, check_names,
                                                   dataset_root, first_missing, held_out, lookup, require)

log = logging.getLogger(__name__)

CLASSES = ("background", "lung")


def montgomery_masks(root: Path, images: list[Path]) -> list[tuple[Path, ...]]:
    masks = [(root / "ManualMask" / "leftMask" / p.name, root / "ManualMask" / "rightMask" / p.name) for p in images]
    first_missing([m for pair in masks for m in pair], "lung mask of an image")
    return masks


def shenzhen_pairs(root: Path, images: list[Path]) -> tuple[list[Path], list[tuple[Path, ...]]]:
    mask_dir = root / "mask"
    by_stem = {p.stem: p for p in images}
    masks = sorted(mask_dir.glob("*_mask.png"))
    orphans = [m for m in masks if m.name[:-len("_mask.png")] not in by_stem]
    if orphans:
        raise DatasetError(f"{orphans[0]}: mask without an image in {root / 'CXR_png'}")
    kept = [by_stem[m.name[:-len("_mask.png")]] for m in masks]
    if len(kept) < len(images):
        log.info("%s: %d of %d images have no lung mask and are left out", root, len(images) - len(kept),
                 len(images))
    return kept, [(m,) for m in masks]


@REAL_DATASETS.register("chest_xray")
def chest_xray_split(spec: RealDataSpec, split: str, labels: LabelSet) -> Dataset:
    """Binary lung masks of a Montgomery or Shenzhen folder; the task's labels must be background, lung."""
    root = dataset_root(spec)
    check_names(labels, CLASSES, "chest X-ray")
    images = sorted(require(root / "CXR_png", "the X-ray images").glob("*.png"))
    if (root / "ManualMask").is_dir():
        masks = montgomery_masks(root, images)
    elif (root / "mask").is_dir():
        images, masks = shenzhen_pairs(root, images)
    else:
        raise DatasetError(f"{root}: neither ManualMask/ (Montgomery) nor mask/ (Shenzhen)")
    pairs = [(p, m) for p, m in zip(images, masks) if held_out(p.stem) == (split == "test")]
    if not pairs:
        raise DatasetError(f"{root}: no annotated images in the {split} split")
    table = lookup(labels.ignore_index, {0: 0, 1: 1, 255: 1})
    return MaskFileSegmentation([p for p, _ in pairs], [m for _, m in pairs], table, spec.resize)


@TARGET_SPLITS.register("chest_xray")
def chest_xray_target(spec: RealDataSpec, split: str) -> LabelledSplit:
    """The lung masks, semantic only (the lungs are no instances to detect)."""
    return LabelledSplit(chest_xray_split(spec, split, LabelSet(CLASSES)), CLASSES, CLASSES[1:])
