"""Checks of annotation files shared by every importer; each appends ``<file>: <problem>``
lines to a list, so that one :class:`~labelfactory.annotations.labels.AnnotationError` names them all.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from labelfactory.annotations.labels import LabelSet
from labelfactory.generators.base import GeneratorBackend

REQUIRED_COLUMNS = ("id", "seed", "class")


IMAGE_TOLERANCE = 3  # max |annotated - re-rendered| per pixel channel, in 1/255


LATENT_TOLERANCE = 1e-6


def class_problem(backend: GeneratorBackend, cls: int, classes: Sequence[int] | None) -> str | None:
    """Why ``cls`` cannot be a sample's class (not the generator's, or not one of the
    task's ``classes``), or None."""
    try:
        backend.check_classes([cls], 1)
    except ValueError as e:
        return f"class {cls} is invalid for this generator ({e})"
    if classes is not None and cls not in classes:
        return f"class {cls} is not one of the task's classes {sorted(classes)}"
    return None


def count_problems(where: str, sample_classes: Sequence[int | None], classes: Sequence[int] | None,
                   expected_count: int | None, expected_per_class: int | None) -> list[str]:
    """The total (at least ``expected_count``) and per-class (at least
    ``expected_per_class`` of each of ``classes``, else of each class present)
    annotation counts that fall short, as ``<where>: <problem>``; a sample's class
    is None where it is unusable (counted in the total only)."""
    problems = []
    if expected_count is not None and len(sample_classes) < expected_count:
        problems.append(f"{where}: {len(sample_classes)} annotated samples, expected at least {expected_count}")
    counts = pd.Series([c for c in sample_classes if c is not None], dtype=np.int64).value_counts()
    missing = sorted(set(classes or ()) - set(counts.index))
    if missing:
        problems.append(f"{where}: no annotated samples of classes {missing}")
    short = counts[counts < (expected_per_class or 0)].sort_index()
    if len(short):
        problems.append(f"{where}: fewer than {expected_per_class} annotated samples of classes "
                        + ", ".join(f"{c} ({n})" for c, n in short.items()))
    return problems


def check_setting(name: str, col: str, values: pd.Series, ids: pd.Series, want, problems: list[str]) -> None:
    """Report manifest values of ``col`` (blank = not recorded) that differ from ``want``."""
    def differs(v: str) -> bool:
        if isinstance(want, float):
            try:
                return not math.isclose(float(v), want, rel_tol=0, abs_tol=1e-9)
            except ValueError:
                return True
        return v != want

    for value in sorted({v for v in values if v and differs(v)}):
        which = list(ids[values == value])
        rows = ", ".join(which[:5]) + (f" and {len(which) - 5} more" if len(which) > 5 else "")
        if col == "generator_hash":
            problems.append(f"{name}: generator_hash {value[:12]}… (ids {rows}) differs from this generator's "
                            f"{want[:12]}…: the annotations were made on another generator")
        else:
            problems.append(f"{name}: {col} {value!r} (ids {rows}) differs from the import setting {want!r}")


def open_png(path: Path, problems: list[str], name: str | None = None) -> Image.Image | None:
    """The fully decoded PNG at ``path``, or None (with the reason in ``problems``,
    under ``name``, by default the file name)."""
    name = name or path.name
    try:
        with Image.open(path) as im:
            im.load()
            if im.format != "PNG":
                problems.append(f"{name}: not a PNG file (found {im.format})")
                return None
            return im.copy()
    except (OSError, SyntaxError, ValueError) as e:
        problems.append(f"{name}: unreadable or corrupt PNG ({e})")
        return None


def read_png_mask(path: Path, problems: list[str]) -> np.ndarray | None:
    im = open_png(path, problems)
    if im is None:
        return None
    if im.mode not in ("L", "P"):
        problems.append(f"{path.name}: image mode {im.mode} is not a label map; save masks as single-channel "
                        "8-bit (L) or palette (P) PNGs whose pixel values are label ids")
        return None
    return np.asarray(im, dtype=np.uint8)


def read_npy_mask(path: Path, problems: list[str]) -> np.ndarray | None:
    """A napari/numpy label array ``<id>.npy``: 2-D integer label ids, as uint8."""
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        problems.append(f"{path.name}: unreadable .npy ({e})")
        return None
    if not isinstance(a, np.ndarray) or a.ndim != 2 or not np.issubdtype(a.dtype, np.integer):
        got = f"{a.dtype} {list(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__
        problems.append(f"{path.name}: must be a 2-D integer array of label ids [H, W], got {got}")
        return None
    if a.size and (a.min() < 0 or a.max() > 255):
        problems.append(f"{path.name}: label ids must lie in 0..255, found {a.min()}..{a.max()}")
        return None
    return a.astype(np.uint8)


def size_problem(shape: Sequence[int], resolution: int | tuple[int, int]) -> str | None:
    """Why a mask of ``shape`` does not fit a generator of ``resolution`` (or the (H, W) of its image view), or None."""
    expected = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if tuple(shape) == expected:
        return None
    what = "the generator's resolution" if isinstance(resolution, int) else "the task's image crop"
    return (f"wrong size: expected {expected[0]}x{expected[1]} (HxW, {what}), found "
            + "x".join(str(n) for n in shape))


def check_mask(name: str, mask: np.ndarray, resolution: int | tuple[int, int], labels: LabelSet | None,
                problems: list[str]) -> bool:
    """Size and label-range checks of a decoded mask; True if it passed."""
    problem = size_problem(mask.shape, resolution)
    if problem:
        problems.append(f"{name}: {problem}")
        return False
    if labels is None:
        return False
    values, counts = np.unique(mask, return_counts=True)
    bad = [(int(v), int(c)) for v, c in zip(values, counts) if v >= len(labels.names) and v != labels.ignore_index]
    if bad:
        problems.append(f"{name}: label ids out of range 0..{len(labels.names) - 1} (ignore "
                        f"{labels.ignore_index}): " + ", ".join(f"{v} ({c} px)" for v, c in bad))
        return False
    return True


def read_latent(path: Path, seed: int, expected: np.ndarray, problems: list[str]) -> np.ndarray | None:
    """The stored latent if it is the seed's latent, else None (with the reason)."""
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        problems.append(f"{path.name}: unreadable .npy ({e})")
        return None
    shape, codes = list(expected.shape), np.issubdtype(expected.dtype, np.integer)  # VQGAN latents are code grids
    kind = "integer" if codes else "float"
    if z.shape not in (expected.shape, (1, *expected.shape)) or \
            not np.issubdtype(z.dtype, np.integer if codes else np.floating):
        problems.append(f"{path.name}: latent must be {kind} {shape} or [1, {', '.join(map(str, shape))}], "
                        f"got {z.dtype} {list(z.shape)}")
        return None
    z = z.reshape(expected.shape).astype(expected.dtype)
    if codes:
        err = 0.0 if np.array_equal(z, expected) else math.inf
    else:
        err = float(np.max(np.abs(z - expected))) if np.all(np.isfinite(z)) else math.inf
    if err > LATENT_TOLERANCE:
        problems.append(f"{path.name}: latent disagrees with the latent of seed {seed} (max difference {err:.3g})")
        return None
    return z


def check_image(path: Path, rendered: np.ndarray, problems: list[str], name: str | None = None) -> None:
    """Compare the annotated image with the re-rendered one (tolerance 3/255)."""
    name = name or path.name
    im = open_png(path, problems, name)
    if im is None:
        return
    img = np.asarray(im.convert("RGB"), dtype=np.int16)
    if img.shape != rendered.shape:
        problems.append(f"{name}: size {img.shape[0]}x{img.shape[1]} differs from the generator's "
                        f"{rendered.shape[0]}x{rendered.shape[1]}")
        return
    diff = np.abs(img - rendered.astype(np.int16)).max(-1)
    if diff.max() > IMAGE_TOLERANCE:
        problems.append(f"{name}: differs from the re-rendered image by up to {diff.max()}/255 at "
                        f"{int((diff > IMAGE_TOLERANCE).sum())} px (tolerance {IMAGE_TOLERANCE}/255): the "
                        "generator, truncation or noise settings differ from those the image was annotated on")
