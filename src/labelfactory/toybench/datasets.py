"""The toy world as the downstream experiment's real data: a plugin reader.

``downstream.real.type: toyworld`` reads scenes rendered from seeds with exact
masks: part masks of one class, or (``labels: objects``) class-aware object
masks of several classes (BigDatasetGAN's labels); for the keypoint experiment,
scenes of one class with their exact keypoints. It registers into
:data:`labelfactory.downstream.real.REAL_DATASETS` and
:data:`labelfactory.downstream.real_keypoints.REAL_KEYPOINT_DATASETS` through the
``labelfactory.real_datasets`` entry point, so the method never imports the
toy bench.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from labelfactory.annotations.labels import LabelSet
from labelfactory.downstream.data import to_tensors
from labelfactory.downstream.real import REAL_DATASETS, DatasetError, RealDataSpec
from labelfactory.downstream.real_keypoints import REAL_KEYPOINT_DATASETS, KeypointImages
from labelfactory.toybench import world as toyworld


class ToyWorldSegmentation(Dataset):
    """Toy-world scenes of one class with their part masks, rendered on first
    use from ``seeds`` (deterministic) and kept (small at toy sizes)."""

    def __init__(self, seeds: Iterable[int], cls: str | int = "car", size: int = 32):
        self.seeds = [int(s) for s in seeds]
        self.cls, self.size = cls, size
        self._scenes: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i not in self._scenes:
            scene = toyworld.render(self.seeds[i], self.cls, self.size)
            self._scenes[i] = (scene.image, scene.parts)
        return to_tensors(*self._scenes[i])


class ToyWorldObjects(Dataset):
    """Toy-world scenes of several classes with class-aware object masks (BigDatasetGAN's
    labels): image ``i`` shows class ``classes[i % K]``, its object pixels labelled ``k + 1``."""

    def __init__(self, seeds: Iterable[int], classes: Sequence[str], size: int = 32):
        self.seeds = [int(s) for s in seeds]
        self.classes, self.size = list(classes), size
        self._scenes: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i not in self._scenes:
            k = i % len(self.classes)
            scene = toyworld.render(self.seeds[i], self.classes[k], self.size)
            self._scenes[i] = (scene.image, np.where(scene.parts > 0, k + 1, 0))
        return to_tensors(*self._scenes[i])


def split_seeds(spec: RealDataSpec, split: str) -> range:
    """The scene seeds of a split: ``train_images`` from ``train_seed_start``, ``test_images`` from
    ``test_seed_start``."""
    count, start = ((spec.train_images, spec.train_seed_start) if split == "train"
                    else (spec.test_images, spec.test_seed_start))
    return range(start, start + count)


@REAL_DATASETS.register("toyworld")
def toyworld_split(spec: RealDataSpec, split: str, labels: LabelSet) -> Dataset:
    """Toy-world scenes with exact masks; the task's labels must be the class's parts
    (``labels="parts"``) or background plus ``classes`` (``labels="objects"``)."""
    seeds = split_seeds(spec, split)
    if spec.labels == "objects":
        classes = spec.classes or (spec.cls,)
        if tuple(labels.names) != ("background", *classes):
            raise DatasetError(f"the task's labels {list(labels.names)} are not background + the toy-world "
                               f"classes {list(classes)} (in that order)")
        return ToyWorldObjects(seeds, classes, spec.size)
    parts = toyworld.part_labels(toyworld.class_name(spec.cls))
    if tuple(labels.names) != parts:
        raise DatasetError(f"the task's labels {list(labels.names)} are not the toy-world {spec.cls} parts "
                           f"{list(parts)}")
    return ToyWorldSegmentation(seeds, spec.cls, spec.size)


@REAL_KEYPOINT_DATASETS.register("toyworld")
def toyworld_keypoints(spec: RealDataSpec, split: str, names: Sequence[str]) -> KeypointImages:
    """Scenes of ``spec.cls`` with their exact keypoints (visibility 2 inside the image, 1 outside)
    and object areas; ``names`` must be the class's keypoint names in order."""
    cls = toyworld.class_name(spec.cls)
    if spec.labels != "parts" or tuple(names) != toyworld.keypoint_names(cls) or not names:
        raise DatasetError(f"the keypoints {list(names)} are not the toy-world {cls} keypoints "
                           f"{list(toyworld.keypoint_names(cls))} of a one-class (labels: parts) dataset")
    scenes = [toyworld.render(seed, cls, spec.size) for seed in split_seeds(spec, split)]
    return KeypointImages(np.stack([s.image for s in scenes]), np.stack([s.keypoints for s in scenes]),
                          np.array([s.object.sum() for s in scenes], dtype=np.float64))
