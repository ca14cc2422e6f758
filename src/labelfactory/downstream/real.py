"""Real labelled images for the downstream experiment: where they come from.

:class:`RealDataSpec` is the config's ``downstream.real``; :data:`REAL_DATASETS`
maps its ``type`` to a reader that returns one split as a segmentation dataset.
This module registers ``folder`` (PNG images and masks on the user's disk); the
public datasets' readers register from :mod:`labelfactory.downstream.datasets`,
and the toy world's from :mod:`labelfactory.toybench.datasets` (a plugin, found
through the ``labelfactory.real_datasets`` entry point group).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from labelfactory.annotations.labels import LabelSet
from labelfactory.core.registry import Registry
from labelfactory.downstream.data import ArraySegmentation


class DatasetError(ValueError):
    """A real dataset is missing, incomplete or disagrees with the task's labels."""


@dataclass(frozen=True)
class RealDataSpec:
    """Where the real labelled images come from (config ``downstream.real``).

    ``toyworld``: scenes of class ``cls`` at ``size`` pixels, ``train_images``
    from ``train_seed_start`` and ``test_images`` from ``test_seed_start``; with
    ``labels="objects"``, scenes of every class in ``classes`` with class-aware
    object masks (BigDatasetGAN's labels) instead of part masks.
    ``folder``: ``path/{train,test}/images/<id>.png`` with masks at
    ``path/{train,test}/masks/<id>.png`` (class ids, 255 = ignore).
    The readers of :mod:`labelfactory.downstream.datasets` (``voc``, ``coco``, ``cityscapes``,
    ``chest_xray``, ``celebamask_hq``) read ``path`` in the dataset's own layout;
    ``splits`` maps ``train``/``test`` to the dataset's split names, ``resize``
    (``[height, width]``) resizes every pair, and ``partition`` names CelebA's
    ``list_eval_partition.txt``.
    """

    type: str = "toyworld"
    cls: str = "car"
    size: int = 32
    train_images: int = 1000
    train_seed_start: int = 2_000_000_000
    test_images: int = 500
    test_seed_start: int = 3_000_000_000
    path: str | None = None
    classes: tuple[str, ...] | None = None
    labels: str = "parts"
    splits: dict[str, str] | None = None
    resize: tuple[int, int] | None = None
    partition: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "RealDataSpec":
        d = dict(d)
        if "class" in d:
            d["cls"] = d.pop("class")
        if d.get("classes") is not None:
            d["classes"] = tuple(d["classes"])
        if isinstance(d.get("resize"), int):
            d["resize"] = (d["resize"], d["resize"])
        elif d.get("resize") is not None:
            d["resize"] = tuple(d["resize"])
        return cls(**d)


REAL_DATASETS: Registry[Callable[[RealDataSpec, str, LabelSet], Dataset]] = Registry("real dataset", plugins="labelfactory.real_datasets")


@REAL_DATASETS.register("folder")
def folder_split(spec: RealDataSpec, split: str, labels: LabelSet) -> Dataset:
    """PNG images and masks under ``spec.path/split``, checked pair by pair."""
    if spec.path is None:
        raise DatasetError("downstream.real.path must name the folder of a `folder` dataset")
    root = Path(spec.path) / split
    image_dir, mask_dir = root / "images", root / "masks"
    if not image_dir.is_dir() or not mask_dir.is_dir():
        raise DatasetError(f"{root}: expected sub-folders images/ and masks/")
    ids = sorted(p.stem for p in image_dir.glob("*.png"))
    missing = [i for i in ids if not (mask_dir / f"{i}.png").is_file()]
    extra = sorted({p.stem for p in mask_dir.glob("*.png")} - set(ids))
    problems = [f"no mask for {mask_dir / i}.png" for i in missing[:5]]
    problems += [f"mask without image: {mask_dir / i}.png" for i in extra[:5]]
    if not ids:
        problems.append(f"no PNG images in {image_dir}")
    images, masks = [], []
    for i in ids if not problems else []:
        image = np.asarray(Image.open(image_dir / f"{i}.png").convert("RGB"))
        mask = np.asarray(Image.open(mask_dir / f"{i}.png"))
        bad = mask[mask != labels.ignore_index]
        if mask.shape != image.shape[:2]:
            problems.append(f"{mask_dir / i}.png: mask {mask.shape} vs image {image.shape[:2]}")
        elif bad.size and bad.max() >= len(labels.names):
            problems.append(f"{mask_dir / i}.png: label id {int(bad.max())} outside 0..{len(labels.names) - 1}")
        images.append(image)
        masks.append(mask)
    if problems:
        raise DatasetError(f"{root}: " + "; ".join(problems))
    if len({m.shape for m in masks}) > 1:
        raise DatasetError(f"{root}: images differ in size; resize them to one size first")
    return ArraySegmentation(np.stack(images), np.stack(masks).astype(np.int64))


def real_dataset(spec: RealDataSpec, split: str, labels: LabelSet) -> Dataset:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return REAL_DATASETS.get(spec.type)(spec, split, labels)
