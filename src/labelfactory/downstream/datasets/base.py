"""What the real-dataset readers share: reading and checking files, the lazy
file-backed dataset, split names, the held-out rule and detectron2 registration.

Every problem is a one-line :class:`DatasetError` that starts with the file at
fault. Pairs are read on access (real datasets do not fit in memory); the
trainer batches images of one size, so a dataset either resizes every pair to
``spec.resize`` (bilinear image, nearest label; the aspect ratio is not kept)
or refuses, naming the file, an image whose size differs from its first one's.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from labelfactory.annotations.labels import LabelSet
from labelfactory.downstream.data import to_tensors
from labelfactory.downstream.real import DatasetError, RealDataSpec
from labelfactory.core.registry import Registry

HOLDOUT_MODULUS = 5  # an id is held out for testing when crc32(id) % 5 == 0 (about 20%)

Size = tuple[int, int]


def dataset_root(spec: RealDataSpec) -> Path:
    """The folder ``spec.path``, which must exist."""
    if spec.path is None:
        raise DatasetError(f"downstream.real.path must name the folder of the {spec.type} dataset")
    root = Path(spec.path)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder (downstream.real.path of the {spec.type} dataset)")
    return root


def require(path: Path, what: str) -> Path:
    """``path`` if it exists, else a :class:`DatasetError` saying what it should hold."""
    if not path.exists():
        raise DatasetError(f"{path}: missing ({what})")
    return path


def split_name(spec: RealDataSpec, split: str, defaults: dict[str, str]) -> str:
    """The dataset's own name of ``split`` (``train``/``test``): ``spec.splits`` or the reader's defaults."""
    names = spec.splits or defaults
    if split not in names:
        raise DatasetError(f"downstream.real.splits {names} does not name the {split!r} split")
    return names[split]


def held_out(key: str) -> bool:
    """Whether ``key`` (a file stem or image index) belongs to the test split of a dataset
    without an official split: by its CRC32, so the rule does not depend on which other
    files are present or on their order."""
    return zlib.crc32(key.encode()) % HOLDOUT_MODULUS == 0


def check_names(labels: LabelSet, names: Sequence[str], dataset: str) -> None:
    if tuple(labels.names) != tuple(names):
        raise DatasetError(f"the task's labels {list(labels.names)} are not the {dataset} classes {list(names)}")


def first_missing(paths: Sequence[Path], what: str) -> None:
    """A :class:`DatasetError` naming the first of ``paths`` that does not exist."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetError(f"{missing[0]}: missing ({what}){more}")


def read_image(path: Path) -> np.ndarray:
    """uint8 RGB ``[H,W,3]``; grey images get three equal channels, 16-bit grey ones
    (X-rays) are first scaled by their own maximum."""
    try:
        with Image.open(path) as im:
            if im.mode.startswith("I"):
                grey = np.asarray(im).astype(np.float64)
                grey = np.round(grey * (255.0 / max(grey.max(), 1.0))).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=-1)
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{path}: unreadable image ({e})") from None


def read_mask(path: Path, first_channel: bool = False) -> np.ndarray:
    """The stored values ``[H,W]`` of a single-channel or palette mask (palette indices,
    not colours); ``first_channel`` takes channel 0 of a colour mask (as ``cv2.imread(f)[..., 0]``)."""
    try:
        with Image.open(path) as im:
            mask = np.asarray(im)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{path}: unreadable mask ({e})") from None
    if mask.ndim == 3 and first_channel:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise DatasetError(f"{path}: a {mask.shape[-1]}-channel mask; expected one channel or a palette")
    return mask


def check_shape(mask: np.ndarray, image: np.ndarray, mask_path: Path, image_path: Path) -> None:
    if mask.shape != image.shape[:2]:
        raise DatasetError(f"{mask_path}: mask {mask.shape[0]}x{mask.shape[1]} but image {image_path} is "
                           f"{image.shape[0]}x{image.shape[1]}")


def lookup(ignore_index: int, mapping: dict[int, int | None]) -> np.ndarray:
    """A table for :func:`remap` of 8-bit mask values: ``mapping`` (value → label, ``None`` →
    ``ignore_index``); every other value is invalid (−1)."""
    table = np.full(256, -1, dtype=np.int64)
    for value, label in mapping.items():
        table[value] = ignore_index if label is None else label
    return table


def remap(mask: np.ndarray, table: np.ndarray, path: Path) -> np.ndarray:
    """``table[mask]``: stored values to labels; values the table marks −1 (or beyond it) are an error."""
    values = np.asarray(mask, dtype=np.int64)
    inside = (values >= 0) & (values < len(table))
    label = np.where(inside, table[np.where(inside, values, 0)], -1)
    if (label < 0).any():
        bad = np.unique(values[label < 0])
        raise DatasetError(f"{path}: mask values {bad[:8].tolist()} are not label ids of this dataset "
                           f"(valid: {np.flatnonzero(table >= 0).tolist()})")
    return label


def resize_pair(image: np.ndarray, label: np.ndarray, size: Size) -> tuple[np.ndarray, np.ndarray]:
    """Image (bilinear) and label (nearest) at ``size`` = (height, width)."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image, label
    image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    label = np.asarray(Image.fromarray(label.astype(np.uint8)).resize((w, h), Image.NEAREST))
    return image, label


class FileSegmentation(Dataset):
    """Image/label pairs read from disk on access. Subclasses implement :meth:`read`;
    ``files`` are the images (named in errors). With ``size`` = (height, width) every
    pair is resized to it; without, every image must have the size of the first."""

    def __init__(self, files: Sequence[Path], size: Size | None):
        self.files = list(files)
        self.size = size
        self._first: Size | None = None

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 image ``[H,W,3]`` and integer label ``[H,W]`` of item ``i``, checked."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.read(i)
        if self.size is not None:
            return to_tensors(*resize_pair(image, label, self.size))
        if self._first is None:
            self._first = image.shape[:2] if i == 0 else self.read(0)[0].shape[:2]
        if image.shape[:2] != self._first:
            raise DatasetError(f"{self.files[i]}: {image.shape[0]}x{image.shape[1]} pixels but {self.files[0]} has "
                               f"{self._first[0]}x{self._first[1]}; set downstream.real.resize for images of "
                               "different sizes")
        return to_tensors(image, label)


class MaskFileSegmentation(FileSegmentation):
    """Images with mask files whose values ``table`` turns into labels; several masks
    per image (Montgomery's left and right lung) merge by maximum."""

    def __init__(self, files: Sequence[Path], masks: Sequence[tuple[Path, ...]], table: np.ndarray,
                 size: Size | None):
        super().__init__(files, size)
        self.masks, self.table = list(masks), table

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(self.files[i])
        labels = []
        for path in self.masks[i]:
            mask = read_mask(path)
            check_shape(mask, image, path, self.files[i])
            labels.append(remap(mask, self.table, path))
        return image, np.maximum.reduce(labels)


# name → register(catalog_name, spec, split): puts the split into detectron2's DatasetCatalog
# and MetadataCatalog, read by detectron2's own loader for the format.
DETECTION_DATASETS: Registry[Callable[[str, RealDataSpec, str], None]] = Registry("detection dataset")


def register_detection(name: str, spec: RealDataSpec, split: str) -> None:
    """Register ``split`` (``train``/``test``) of the real dataset ``spec`` in detectron2's
    catalogs as ``name``; ``DatasetCatalog.get(name)`` then gives its dataset dicts."""
    DETECTION_DATASETS.get(spec.type)(name, spec, split)


@dataclass(frozen=True)
class LabelledSplit:
    """One split of a real dataset as a transfer target reads it: ``semantic`` (pairs of
    uint8 image and label, :meth:`FileSegmentation.read`) with its label names ``labels``,
    the instance ``categories`` and, where the dataset has instance masks on disk,
    ``instances(i)``: item ``i``'s boolean masks ``[K,H,W]`` and their category ids (1-based)."""

    semantic: FileSegmentation
    labels: tuple[str, ...]
    categories: tuple[str, ...]
    instances: Callable[[int], tuple[np.ndarray, list[int]]] | None = None


# type -> split(spec, split): what the rule target_data converts for the transfer experiment.
TARGET_SPLITS: Registry[Callable[[RealDataSpec, str], LabelledSplit]] = Registry("transfer target")


def instances_by_value(ids: np.ndarray, category_of: Callable[[int], int | None]) -> tuple[np.ndarray, list[int]]:
    """Boolean masks ``[K,H,W]`` of the instance ids in ``ids`` (an instance-id image) whose
    ``category_of(id)`` is a category id, in id order, with those category ids."""
    masks, categories = [], []
    for value in np.unique(ids).tolist():
        category = category_of(value)
        if category is not None:
            masks.append(ids == value)
            categories.append(category)
    return np.asarray(masks, dtype=bool).reshape(-1, *ids.shape), categories
