"""BigDatasetGAN's class-aware label space.

A BigDatasetGAN task labels every sample with a binary object mask (0
background, 1 the object of the sample's class, 255 ignore) and records the
sample's class. Downstream, a segmentation network learns the *class-aware*
labels that follow: background plus one label per class, the object pixels of
a sample of class ``c`` taking the label of ``c``. The same mapping turns the
annotated masks, the synthetic shards and (for the toy world) the real object
masks into one label space, so every setting is trained and scored alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from labelfactory.annotations.labels import LabelSet

BACKGROUND, OBJECT = 0, 1


@dataclass(frozen=True)
class ClassAwareLabels:
    """Background plus one label per generator class: class ``classes[k]`` is label ``k + 1``."""

    classes: tuple[int, ...]
    names: tuple[str, ...]
    ignore_index: int = 255

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        if len(self.classes) != len(self.names) or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"need one name per distinct class, got classes {list(self.classes)[:8]} "
                             f"and names {list(self.names)[:8]}")

    @classmethod
    def from_dict(cls, d: dict) -> "ClassAwareLabels":
        return cls(tuple(d["classes"]), tuple(d["names"]), int(d.get("ignore_index", 255)))

    def to_dict(self) -> dict:
        return {"classes": list(self.classes), "names": list(self.names), "ignore_index": self.ignore_index}

    @property
    def label_set(self) -> LabelSet:
        """The downstream label set (labels are uint8-sized: up to 254 classes; a 1k-class task
        is scored class-agnostically with ``downstream.labels: annotated``)."""
        if len(self.names) + 1 > self.ignore_index:
            raise ValueError(f"class-aware labels hold at most {self.ignore_index - 1} classes, got "
                             f"{len(self.names)}; use downstream.labels: annotated (object vs background)")
        return LabelSet(("background", *self.names), self.ignore_index)

    def label_of(self, classes: Sequence[int] | np.ndarray) -> np.ndarray:
        """The class-aware label of each generator class (an unknown class is an error)."""
        lookup = {c: k + 1 for k, c in enumerate(self.classes)}
        try:
            return np.array([lookup[int(c)] for c in np.asarray(classes).reshape(-1)], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"class {e.args[0]} is not one of the task's classes {list(self.classes)[:8]}") from None

    def apply(self, masks: np.ndarray, classes: Sequence[int] | np.ndarray) -> np.ndarray:
        """Binary masks ``[N,H,W]`` of samples of ``classes`` ``[N]`` → class-aware int64 labels."""
        masks = np.asarray(masks)
        bad = np.unique(masks[(masks != BACKGROUND) & (masks != OBJECT) & (masks != self.ignore_index)])
        if bad.size:
            raise ValueError(f"binary object masks hold only {BACKGROUND}, {OBJECT} and {self.ignore_index}; "
                             f"found {bad.tolist()[:8]}")
        label = self.label_of(classes).reshape(-1, *([1] * (masks.ndim - 1)))
        out = np.where(masks == OBJECT, label, BACKGROUND).astype(np.int64)
        out[masks == self.ignore_index] = self.ignore_index
        return out


def class_names_for(classes: Sequence[int], given: Sequence[str] | None,
                    generator_names: Sequence[str] | None) -> tuple[str, ...]:
    """Names of ``classes``: the config's, else the generator's own (by class id), else ``class<id>``."""
    if given is not None:
        if len(given) != len(classes):
            raise ValueError(f"{len(given)} class names for {len(classes)} classes")
        return tuple(given)
    if generator_names is not None:
        return tuple(generator_names[int(c)] for c in classes)
    return tuple(f"class{int(c)}" for c in classes)
