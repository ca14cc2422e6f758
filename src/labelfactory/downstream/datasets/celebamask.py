"""CelebAMask-HQ face parts: ``spec.path`` is the ``CelebAMask-HQ`` folder with
``CelebA-HQ-img/<i>.jpg`` (1024 px) and, per part present,
``CelebAMask-HQ-mask-anno/<i // 2000>/<i:05d>_<part>.png`` (512 px, part where ≠ 0).

The label map is built as the release's ``g_mask.py`` builds it: the 18 parts
in its order become labels 1..18 (background 0) and a later part overwrites an
earlier one. Images are resized to the masks' size. Split: with
``spec.partition`` (CelebA's ``list_eval_partition.txt``: ``<file> <0|1|2>``
for train/val/test) an image goes where ``CelebA-HQ-to-CelebA-mapping.txt``
says its CelebA original is, ``splits`` naming the partitions (default train →
train, test → test); without it, an image is in the test split when the CRC32
of its index is divisible by 5 (:func:`~labelfactory.downstream.datasets.base.held_out`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from labelfactory.annotations.labels import LabelSet
from labelfactory.downstream.real import REAL_DATASETS, DatasetError, RealDataSpec
from labelfactory.downstream.datasets.base import (FileSegmentation, Size, check_names, dataset_root, held_out, read_image, read_mask, require,
                   resize_pair, split_name)

PARTS = ("skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth", "u_lip", "l_lip",
         "hair", "hat", "ear_r", "neck_l", "neck", "cloth")
CLASSES = ("background", *PARTS)
IMAGES_PER_FOLDER = 2000
MAPPING_FILE = "CelebA-HQ-to-CelebA-mapping.txt"
PARTITIONS = {"train": 0, "val": 1, "test": 2}
SPLITS = {"train": "train", "test": "test"}


def index_parts(anno_dir: Path) -> dict[int, dict[str, Path]]:
    """image index → part → mask file, for every mask in the annotation folders."""
    parts: dict[int, dict[str, Path]] = defaultdict(dict)
    for path in sorted(require(anno_dir, "the part masks").glob("*/*.png")):
        index, _, part = path.stem.partition("_")
        if not index.isdigit() or part not in PARTS:
            raise DatasetError(f"{path}: not <index:05d>_<part>.png with a part of {list(PARTS)}")
        if path.parent.name != str(int(index) // IMAGES_PER_FOLDER):
            raise DatasetError(f"{path}: belongs in folder {int(index) // IMAGES_PER_FOLDER}/")
        parts[int(index)][part] = path
    return dict(parts)


def read_table(path: Path) -> list[list[str]]:
    """The rows of a whitespace- or comma-separated table, without a header line."""
    rows = [line.replace(",", " ").split() for line in require(path, "a split table").read_text().splitlines()]
    rows = [r for r in rows if r]
    return rows[1:] if rows and not rows[0][-1].isdigit() else rows


def partition_of(mapping_path: Path, partition_path: Path) -> dict[int, int]:
    """CelebA-HQ index → CelebA partition (0 train, 1 val, 2 test)."""
    try:
        of_file = {int(Path(r[0]).stem): int(r[1]) for r in read_table(partition_path)}
        original = {int(r[0]): int(Path(r[2]).stem) for r in read_table(mapping_path)}
    except (ValueError, IndexError):
        raise DatasetError(f"{partition_path} / {mapping_path}: not CelebA's partition list and the "
                           "CelebA-HQ-to-CelebA mapping") from None
    missing = sorted(f for f in original.values() if f not in of_file)
    if missing:
        raise DatasetError(f"{partition_path}: no partition for CelebA image {missing[0]:06d}.jpg")
    return {i: of_file[f] for i, f in original.items()}


class CelebAMaskSegmentation(FileSegmentation):
    """CelebA-HQ images with their merged part masks."""

    def __init__(self, files: list[Path], parts: list[dict[str, Path]], size: Size | None):
        super().__init__(files, size)
        self.parts = parts

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        masks = [(k, path, read_mask(path, first_channel=True))
                 for k, part in enumerate(PARTS, start=1) if (path := self.parts[i].get(part)) is not None]
        _, first_path, first = masks[0]
        label = np.zeros(first.shape, dtype=np.int64)
        for k, path, mask in masks:
            if mask.shape != first.shape:
                raise DatasetError(f"{path}: {mask.shape[0]}x{mask.shape[1]} but {first_path} is "
                                   f"{first.shape[0]}x{first.shape[1]}")
            label[mask != 0] = k
        image = read_image(self.files[i])
        (h, w), (mh, mw) = image.shape[:2], label.shape
        if h * mw != w * mh:
            raise DatasetError(f"{self.files[i]}: {h}x{w} pixels, not the aspect of its {mh}x{mw} part masks")
        return resize_pair(image, label, (mh, mw))


@REAL_DATASETS.register("celebamask_hq")
def celebamask_split(spec: RealDataSpec, split: str, labels: LabelSet) -> Dataset:
    """CelebAMask-HQ part label maps; the task's labels must be background plus the 18 parts in the release's order."""
    root = dataset_root(spec)
    check_names(labels, CLASSES, "CelebAMask-HQ")
    image_dir = require(root / "CelebA-HQ-img", "the CelebA-HQ images")
    images = {int(p.stem): p for p in image_dir.glob("*.jpg") if p.stem.isdigit()}
    parts = index_parts(root / "CelebAMask-HQ-mask-anno")
    if not images:
        raise DatasetError(f"{image_dir}: no <index>.jpg images")
    unmasked = sorted(set(images) - set(parts))
    if unmasked:
        raise DatasetError(f"{images[unmasked[0]]}: no part masks in {root / 'CelebAMask-HQ-mask-anno'}")
    orphans = sorted(set(parts) - set(images))
    if orphans:
        raise DatasetError(f"{next(iter(parts[orphans[0]].values()))}: part mask without image {orphans[0]}.jpg")
    if spec.partition is None:
        ids = [i for i in sorted(images) if held_out(str(i)) == (split == "test")]
    else:
        name = split_name(spec, split, SPLITS)
        if name not in PARTITIONS:
            raise DatasetError(f"downstream.real.splits: {name!r} is not a CelebA partition {list(PARTITIONS)}")
        partition = partition_of(root / MAPPING_FILE, Path(spec.partition))
        unmapped = [i for i in sorted(images) if i not in partition]
        if unmapped:
            raise DatasetError(f"{root / MAPPING_FILE}: no CelebA original for {images[unmapped[0]]}")
        ids = [i for i in sorted(images) if partition[i] == PARTITIONS[name]]
    if not ids:
        raise DatasetError(f"{root}: no images in the {split} split")
    return CelebAMaskSegmentation([images[i] for i in ids], [parts[i] for i in ids], spec.resize)
