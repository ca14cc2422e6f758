"""Multi-object toy scenes: the downstream detection and instance-segmentation set.

Unlike the generator's images (one object, centred and large, on a noise
background), a scene holds several objects of the toy classes at spread scales
and positions, later ones occluding earlier ones, over a striped background.
Each object is a toy-world render (:func:`labelfactory.toybench.world.render`) of
which only the object pixels are pasted. An object is placed only where every
object already there keeps ``min_visible`` of its pixels, so every instance
stays recognisable and every visible object pixel belongs to an instance.
Everything follows from the scene's seed.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from labelfactory.downstream.coco_export import CocoImage, write_coco
from labelfactory.toybench import world as toyworld

_STREAM = 0x5CE7E  # keeps scene seeds apart from the toy world's own (seed, class) streams
_TRIES = 8  # placements tried per wanted object


@dataclass(frozen=True)
class SceneSpec:
    """Scene size, object count range (inclusive), object size as a fraction of
    the image side, the visible fraction every object keeps, and the classes."""

    size: int = 64
    objects: tuple[int, int] = (2, 4)
    scale: tuple[float, float] = (0.3, 0.7)
    min_visible: float = 0.5
    classes: tuple[str, ...] = toyworld.CLASSES

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(int(n) for n in self.objects))
        object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))
        object.__setattr__(self, "classes", tuple(self.classes))
        for c in self.classes:
            toyworld.class_index(c)
        if not 1 <= self.objects[0] <= self.objects[1]:
            raise ValueError(f"objects must be a range 1 <= lo <= hi, got {self.objects}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must be a range in (0, 1], got {self.scale}")
        if not 0 <= self.min_visible <= 1:
            raise ValueError(f"min_visible must lie in [0, 1], got {self.min_visible}")


@dataclass(frozen=True)
class MultiScene:
    """uint8 ``image`` ``[H,W,3]``; boolean ``masks`` ``[K,H,W]`` (the visible
    pixels of each object, disjoint); ``classes`` ``[K]`` (indices into the
    spec's classes); ``semantic`` ``[H,W]`` uint8 (0 background, ``k + 1`` class ``k``)."""

    image: np.ndarray
    masks: np.ndarray
    classes: np.ndarray
    semantic: np.ndarray
    seed: int


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Soft stripes between two colours at a random angle and frequency, plus a gradient."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(c, c, indexing="ij")
    colours = [np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.7), rng.uniform(0.3, 0.9)),
                        dtype=np.float32) for _ in range(2)]
    angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(2.0, 6.0), rng.uniform(0, 2 * np.pi)
    t = 0.5 + 0.5 * np.sin(freq * np.pi * (np.cos(angle) * x + np.sin(angle) * y) + phase)
    img = colours[0] * (1 - t[..., None]) + colours[1] * t[..., None]
    return img + (rng.uniform(-0.15, 0.15) * (x + y) / 2)[..., None]


def render_scene(seed: int, spec: SceneSpec = SceneSpec()) -> MultiScene:
    """The scene of ``seed``: up to the drawn number of objects (fewer only where
    no placement keeps every object visible enough in ``_TRIES`` attempts each)."""
    rng = np.random.default_rng([int(seed), _STREAM])
    size = spec.size
    img = _background(rng, size)
    wanted = int(rng.integers(spec.objects[0], spec.objects[1] + 1))
    masks: list[np.ndarray] = []
    areas: list[int] = []
    classes: list[int] = []
    for _ in range(wanted * _TRIES):
        if len(masks) == wanted:
            break
        k = int(rng.integers(len(spec.classes)))
        px = max(4, round(rng.uniform(*spec.scale) * size))
        obj = toyworld.render(int(rng.integers(2**31)), spec.classes[k], px)
        top, left = (int(v) for v in rng.integers(0, size - px + 1, size=2))
        shape = obj.object.astype(bool)
        full = np.zeros((size, size), dtype=bool)
        full[top:top + px, left:left + px] = shape
        visible = [m & ~full for m in masks]
        if not full.any() or any(v.sum() < spec.min_visible * a for v, a in zip(visible, areas)):
            continue
        masks, areas, classes = visible + [full], areas + [int(full.sum())], classes + [k]
        img[top:top + px, left:left + px][shape] = obj.image[shape].astype(np.float32) / 255.0
    img = img + rng.uniform(0.01, 0.03) * rng.standard_normal(img.shape, dtype=np.float32)
    image = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    stack = np.stack(masks) if masks else np.zeros((0, size, size), dtype=bool)
    semantic = np.zeros((size, size), dtype=np.uint8)
    for m, k in zip(stack, classes):
        semantic[m] = k + 1
    return MultiScene(image, stack, np.array(classes, dtype=np.int64), semantic, int(seed))


def scene_images(seeds: Iterable[int], spec: SceneSpec = SceneSpec()) -> Iterator[CocoImage]:
    """The scenes of ``seeds`` as COCO images (category ``k + 1`` = class ``k``)."""
    for seed in seeds:
        s = render_scene(seed, spec)
        yield CocoImage(s.image, s.masks, (s.classes + 1).tolist(), s.semantic, {"seed": int(seed)})


def write_toy_scenes(json_path: str | Path, seeds: Iterable[int], spec: SceneSpec = SceneSpec()) -> dict:
    """The scenes of ``seeds`` as a COCO dataset at ``json_path`` (see :func:`~.coco_export.write_coco`)."""
    return write_coco(json_path, spec.classes, scene_images(seeds, spec))
