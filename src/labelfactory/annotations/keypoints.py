"""Keypoint annotations: one COCO-keypoints JSON file per annotated image, read and validated.

Beside (or instead of) its mask ``<id>.png``, an annotated image ``<id>`` may have
``<id>.keypoints.json``, a JSON object whose ``keypoints`` is either

- COCO's flat list ``[x1, y1, v1, x2, y2, v2, ...]``, one triple per keypoint in the order of
  ``labels.yaml``'s ``keypoints.names``, or
- a mapping ``{name: [x, y, v]}``; keypoints it leaves out are not labelled (``v = 0``).

``x, y`` are pixels of the annotated image, the centre of pixel ``(row i, column j)`` at
``(j, i)``, so a labelled point lies in ``[-0.5, W - 0.5) × [-0.5, H - 0.5)``. ``v`` is COCO's
visibility: 0 not labelled (its ``x, y`` are ignored), 1 labelled but occluded, 2 visible.
Every problem of every file is reported at once, one line each, as ``<file>: <problem>``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from labelfactory.annotations.labels import AnnotationError, KeypointSpec

KEYPOINTS_SUFFIX = ".keypoints.json"
VISIBILITY = (0, 1, 2)


@dataclass
class KeypointSet:
    """Keypoints of annotated images: ``keypoints`` float32 ``[N, K, 3]`` (``x, y, v`` per
    keypoint of ``spec``, in its order) of the images ``ids``."""

    ids: list[str]
    keypoints: np.ndarray
    spec: KeypointSpec

    def __post_init__(self):
        self.ids = list(self.ids)
        self.keypoints = np.asarray(self.keypoints, dtype=np.float32)
        shape = (len(self.ids), len(self.spec.names), 3)
        if self.keypoints.shape != shape:
            raise ValueError(f"keypoints must be [N, K, 3] = {list(shape)}, got {list(self.keypoints.shape)}")

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, ids: Sequence[str]) -> "KeypointSet":
        """The keypoints of ``ids``, in that order."""
        index = {i: n for n, i in enumerate(self.ids)}
        return KeypointSet(list(ids), self.keypoints[[index[i] for i in ids]], self.spec)


def _triples(name: str, entries, spec: KeypointSpec) -> tuple[list | None, list[str]]:
    """The ``[K]`` list of ``[x, y, v]`` of a file's ``keypoints`` entry, and its problems."""
    k = len(spec.names)
    if isinstance(entries, dict):
        unknown = sorted(set(entries) - set(spec.names))
        problems = [f"{name}: unknown keypoints {unknown}; labels.yaml names {list(spec.names)}"] if unknown else []
        bad = sorted(n for n, t in entries.items() if n in spec.names and (not isinstance(t, list) or len(t) != 3))
        if bad:
            problems.append(f"{name}: keypoints {bad} must each be [x, y, v]")
        if problems:
            return None, problems
        return [entries.get(n, [0, 0, 0]) for n in spec.names], []
    if isinstance(entries, list):
        if len(entries) != 3 * k:
            return None, [f"{name}: keypoints has {len(entries)} values; {k} keypoints need {3 * k} "
                          "(x, y, v each)"]
        return [entries[3 * i : 3 * i + 3] for i in range(k)], []
    return None, [f"{name}: keypoints must be a flat [x, y, v, ...] list or a {{name: [x, y, v]}} mapping, "
                  f"got {type(entries).__name__}"]


def parse_keypoints(name: str, doc, spec: KeypointSpec, width: int, height: int
                    ) -> tuple[np.ndarray | None, list[str]]:
    """The float32 ``[K, 3]`` keypoints of one file's JSON ``doc`` (named ``name`` in problems)
    on a ``width`` × ``height`` image, and every problem found (the array is None if any)."""
    if not isinstance(doc, dict) or "keypoints" not in doc:
        return None, [f"{name}: must be a JSON object with a 'keypoints' entry"]
    triples, problems = _triples(name, doc["keypoints"], spec)
    if triples is None:
        return None, problems
    out = np.zeros((len(spec.names), 3), np.float32)
    for kp, triple in zip(spec.names, triples):
        if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in triple):
            problems.append(f"{name}: keypoint {kp!r}: x, y, v must be finite numbers, got {triple}")
            continue
        x, y, v = triple
        if v not in VISIBILITY:
            problems.append(f"{name}: keypoint {kp!r}: visibility {v} is not one of {list(VISIBILITY)}")
            continue
        if v > 0 and not (-0.5 <= x < width - 0.5 and -0.5 <= y < height - 0.5):
            problems.append(f"{name}: keypoint {kp!r} at ({x}, {y}) lies outside the {width}x{height} image")
            continue
        out[spec.names.index(kp)] = (x, y, v) if v > 0 else (0.0, 0.0, 0.0)
    return (None if problems else out), problems


def keypoint_path(folder: str | os.PathLike, image_id: str) -> Path:
    """Where the keypoints of image ``image_id`` lie in an annotation folder."""
    return Path(folder) / f"{image_id}{KEYPOINTS_SUFFIX}"


def read_keypoint_files(folder: str | os.PathLike, ids: Sequence[str], spec: KeypointSpec, size: int | tuple[int, int]
                        ) -> tuple[KeypointSet | None, list[str]]:
    """The keypoints of images ``ids`` (the manifest's rows) from ``<id>.keypoints.json`` in
    ``folder``, on images of ``size`` (``S`` or ``(width, height)``), and every problem of every
    file (a missing one included); the set is None if there is any."""
    width, height = (size, size) if isinstance(size, int) else size
    problems: list[str] = []
    rows = []
    for image_id in ids:
        path = keypoint_path(folder, image_id)
        if not path.is_file():
            problems.append(f"{path.name}: missing (the manifest lists {image_id!r})")
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            problems.append(f"{path.name}: unreadable JSON ({e})")
            continue
        row, file_problems = parse_keypoints(path.name, doc, spec, width, height)
        problems += file_problems
        rows.append(row)
    if problems:
        return None, problems
    return KeypointSet(list(ids), np.stack(rows) if rows else np.zeros((0, len(spec.names), 3)), spec), []


def load_keypoints(folder: str | os.PathLike, ids: Sequence[str], spec: KeypointSpec,
                   size: int | tuple[int, int]) -> KeypointSet:
    """:func:`read_keypoint_files`, raising :class:`AnnotationError` with every problem."""
    keypoints, problems = read_keypoint_files(folder, ids, spec, size)
    if problems:
        raise AnnotationError(folder, problems)
    return keypoints


def write_keypoints(folder: str | os.PathLike, keypoints: KeypointSet) -> list[Path]:
    """Write every image's keypoints as ``<id>.keypoints.json`` (COCO's flat list; the inverse
    of :func:`read_keypoint_files`); returns the paths."""
    paths = []
    for image_id, row in zip(keypoints.ids, keypoints.keypoints):
        flat: list[float | int] = []
        for x, y, v in row.tolist():
            flat += [float(x), float(y), int(v)]
        path = keypoint_path(folder, image_id)
        path.write_text(json.dumps({"keypoints": flat, "num_keypoints": int((row[:, 2] > 0).sum())}))
        paths.append(path)
    return paths
