"""Real images with keypoints for the downstream keypoint experiment: where they come from.

:data:`REAL_KEYPOINT_DATASETS` maps ``downstream.real``'s ``type`` (a :class:`RealDataSpec`)
to a reader that returns one split as :class:`KeypointImages`. Its plugins come through the
same ``labelfactory.real_datasets`` entry point group as the segmentation readers', so a
plugin module (the toy world's :mod:`labelfactory.toybench.datasets`) registers into both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from labelfactory.core.registry import Registry
from labelfactory.downstream.real import RealDataSpec


@dataclass
class KeypointImages:
    """One object per image: ``images`` uint8 ``[N, H, W, 3]``, its ``keypoints`` float32
    ``[N, K, 3]`` (x, y, v in pixels, COCO's visibility) and the object ``areas`` ``[N]`` in
    pixels (the scale of COCO's OKS)."""

    images: np.ndarray
    keypoints: np.ndarray
    areas: np.ndarray

    def __post_init__(self):
        self.keypoints = np.asarray(self.keypoints, dtype=np.float32)
        self.areas = np.asarray(self.areas, dtype=np.float64)
        n = len(self.images)
        if self.images.ndim != 4 or self.keypoints.ndim != 3 or len(self.keypoints) != n or len(self.areas) != n:
            raise ValueError(f"need images [N, H, W, 3], keypoints [N, K, 3] and areas [N], got "
                             f"{list(self.images.shape)}, {list(self.keypoints.shape)} and {list(self.areas.shape)}")

    def __len__(self) -> int:
        return len(self.images)


REAL_KEYPOINT_DATASETS: Registry[Callable[[RealDataSpec, str, Sequence[str]], KeypointImages]] = Registry(
    "real keypoint dataset", plugins="labelfactory.real_datasets")


def real_keypoint_images(spec: RealDataSpec, split: str, names: Sequence[str]) -> KeypointImages:
    """The ``split`` (``train`` or ``test``) of ``spec``'s dataset with the keypoints ``names``, in order."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return REAL_KEYPOINT_DATASETS.get(spec.type)(spec, split, names)
