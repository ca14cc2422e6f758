"""Datasets for the downstream segmentation network.

Every dataset yields ``(image, label)``: a float tensor ``[3, H, W]``
normalised with the ImageNet statistics (what pretrained backbones expect) and
a long tensor ``[H, W]`` of class ids, :data:`IGNORE_INDEX` marking pixels that
take no part in loss or score, or, for training on soft targets, a float tensor
``[C, H, W]`` of class probabilities (a pixel whose probabilities are all 0 takes
no part). Sources: arrays in memory (the few annotated
images, real labelled images), generated samples in HDF5 shards listed by a manifest, and
both together (:class:`WithAnnotations`). Augmentation is a wrapper the trainer applies, so
evaluation never sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from labelfactory.core.metrics import IGNORE_INDEX
from labelfactory.synthesis.dataset import SyntheticDataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 image ``[H,W,3]`` and integer label ``[H,W]`` (or float class probabilities
    ``[C,H,W]``) → normalised float ``[3,H,W]`` and long ``[H,W]`` (or float32 ``[C,H,W]``)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 image [H,W,3], got {image.dtype} {image.shape}")
    soft = np.issubdtype(label.dtype, np.floating)
    if label.shape[-2:] != image.shape[:2] or label.ndim != (3 if soft else 2):
        raise ValueError(f"label shape {label.shape} does not match image {image.shape[:2]}")
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    target = torch.from_numpy(np.asarray(label, dtype=np.float32 if soft else np.int64))
    return (x - _MEAN) / _STD, target


class ArraySegmentation(Dataset):
    """Images ``[N,H,W,3]`` uint8 with labels ``[N,H,W]`` held in memory."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_tensors(self.images[i], self.labels[i])


LabelMap = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (labels [n,H,W], classes [n]) -> labels


class ShardSegmentation(Dataset):
    """Generated samples for training: the items of ``samples`` (a
    :class:`~labelfactory.synthesis.dataset.SyntheticDataset` whose fields are an image and its
    label, or, as soft targets, its float class probabilities ``[C,H,W]``) as normalised tensors,
    in its order. Its ``shards`` and ``window`` let :class:`ShardGroupedSampler` shuffle the
    samples of ``window`` shards at a time together, so a batch mixes shards (and, for per-class
    shards, classes: class-pure batches let batch norm learn the class of the batch instead of
    the pixels) while every shard is read once per epoch.
    ``label_map(labels, classes)`` turns the stored labels into the training labels (e.g.
    BigDatasetGAN's binary masks into class-aware labels, by the manifest's ``class``).
    """

    def __init__(self, samples: SyntheticDataset, label_map: LabelMap | None = None):
        if len(samples.fields) != 2:
            raise ValueError(f"a training dataset reads an image and its label, not {list(samples.fields)}")
        self.samples, self.label_map = samples, label_map
        self.classes = samples.rows["class"].to_numpy(dtype=np.int64) if label_map is not None else None

    @property
    def shards(self) -> np.ndarray:
        return self.samples.shards

    @property
    def window(self) -> int:
        return self.samples.window

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.samples.arrays(i)
        if self.label_map is not None:
            label = self.label_map(label[None], self.classes[i : i + 1])[0]
        return to_tensors(image, label)


class WithAnnotations(Dataset):
    """The generated samples of ``synthetic`` (a :class:`ShardSegmentation`), then the annotated
    images of ``annotations`` repeated in turn (0, 1, …, A-1, 0, 1, …) until they make up
    ``share`` of the items (each at least once): ``round(share·S / (1 - share))`` of them for S
    samples. Its ``shards`` name each generated item's shard and None for each annotated one
    (held in memory), which :class:`ShardGroupedSampler` spreads over the epoch."""

    def __init__(self, synthetic: ShardSegmentation, annotations: Dataset, share: float):
        if not 0 < share < 1:
            raise ValueError(f"the annotations' share of the training items must lie in (0, 1), got {share}")
        if len(annotations) == 0:
            raise ValueError("no annotated images to add to the generated samples")
        self.synthetic, self.annotations, self.share = synthetic, annotations, share
        repeats = max(len(annotations), round(share * len(synthetic) / (1 - share)))
        self.annotation_items = np.arange(repeats, dtype=np.int64) % len(annotations)
        self.shards = np.concatenate([np.asarray(synthetic.shards, dtype=object),
                                      np.full(repeats, None, dtype=object)])
        self.window = synthetic.window

    def __len__(self) -> int:
        return len(self.synthetic) + len(self.annotation_items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} of {len(self)}")
        i = i % len(self)
        s = len(self.synthetic)
        return self.synthetic[i] if i < s else self.annotations[int(self.annotation_items[i - s])]


class ShardGroupedSampler(Sampler[int]):
    """Endless random order, epoch after epoch; for a :class:`ShardSegmentation`
    the shards are shuffled, taken ``dataset.window`` at a time, and the samples of
    those shards shuffled together, so every shard is read once per epoch instead
    of once per sample and batches mix shards. Items whose shard is None (held in
    memory, e.g. the annotations of :class:`WithAnnotations`) are shuffled and dealt
    to the windows in proportion to their sizes, so every part of the epoch has its share."""

    def __init__(self, dataset: Dataset, generator: torch.Generator):
        self.shards = getattr(dataset, "shards", np.zeros(len(dataset), dtype=object))
        self.window = getattr(dataset, "window", 1)
        self.generator = generator
        memory = np.array([s is None for s in self.shards], dtype=bool)
        self.in_memory, self.stored = np.flatnonzero(memory), np.flatnonzero(~memory)

    def _epoch(self) -> list[int]:
        stored = self.shards[self.stored]
        names = list(dict.fromkeys(stored))
        shuffled = [names[s] for s in torch.randperm(len(names), generator=self.generator).tolist()]
        windows = [self.stored[np.isin(stored, shuffled[start : start + self.window])]
                   for start in range(0, len(shuffled), self.window)]
        if len(self.in_memory):
            windows = self._deal_in_memory(windows)
        order: list[int] = []
        for members in windows:
            order.extend(members[torch.randperm(len(members), generator=self.generator).numpy()].tolist())
        return order

    def _deal_in_memory(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """``windows`` with the in-memory items, shuffled, split among them by their sizes."""
        dealt = self.in_memory[torch.randperm(len(self.in_memory), generator=self.generator).numpy()]
        if not windows:
            return [dealt]
        sizes = np.cumsum([0] + [len(w) for w in windows])
        cuts = len(dealt) * sizes // max(int(sizes[-1]), 1)
        cuts[-1] = len(dealt)
        return [np.concatenate([w, dealt[a:b]]) for w, a, b in zip(windows, cuts[:-1], cuts[1:])]

    def __iter__(self) -> Iterator[int]:
        while True:
            yield from self._epoch()


@dataclass
class Augment:
    """Training augmentation applied identically to image and label: a random
    horizontal flip and a random rescale by ``scale`` (then a random crop, or
    padding with the mean colour and ignore, back to the original size; soft
    targets are padded with all-zero probabilities, which are ignored too)."""

    hflip: bool = True
    scale: tuple[float, float] = (1.0, 1.0)


def augment_pair(image: torch.Tensor, label: torch.Tensor, aug: Augment) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment one normalised pair with the global torch RNG (seeded per run and
    per DataLoader worker, so training stays deterministic)."""
    if aug.hflip and torch.rand(()) < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    lo, hi = aug.scale
    if (lo, hi) != (1.0, 1.0):
        h, w = label.shape[-2:]
        s = lo + (hi - lo) * float(torch.rand(()))
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        if label.is_floating_point():  # soft targets [C, H, W]
            label, fill = F.interpolate(label[None], size=(nh, nw), mode="nearest")[0], 0.0
        else:
            label = F.interpolate(label[None, None].float(), size=(nh, nw), mode="nearest")[0, 0].long()
            fill = IGNORE_INDEX
        ph, pw = max(h - nh, 0), max(w - nw, 0)
        image = F.pad(image, (pw, pw, ph, ph), value=0.0)
        label = F.pad(label, (pw, pw, ph, ph), value=fill)
        top = int(torch.randint(label.shape[-2] - h + 1, ()))
        left = int(torch.randint(label.shape[-1] - w + 1, ()))
        image, label = image[:, top:top + h, left:left + w], label[..., top:top + h, left:left + w]
    return image, label


class Augmented(Dataset):
    """``dataset`` with :func:`augment_pair` applied to every item."""

    def __init__(self, dataset: Dataset, aug: Augment):
        self.dataset, self.aug = dataset, aug

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return augment_pair(*self.dataset[i], self.aug)
