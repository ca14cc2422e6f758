"""Human annotations of generated samples: hand-out folders, validation, import.

A task's annotation folder holds ``labels.yaml`` (label names, optional
``ignore_index``), ``manifest.csv`` (one row per annotated sample: ``id``,
``seed``, ``class`` and optionally ``truncation``, ``noise``,
``generator_hash``) and per sample a mask ``<id>.png`` (8-bit single-channel or
palette PNG of label ids) or a LabelMe ``<id>.json``, optionally with the latent
``<id>.latent.npy`` and the annotated image ``<id>.image.png``.

:func:`sample_for_annotation` writes such a folder (without masks) for a human
to annotate, for class-conditional generators the same seeds for each class;
:func:`import_annotations` checks a filled-in folder against the generator
(and the task's classes and per-class counts), re-renders every sample and
stores one validated :class:`AnnotationSet` as HDF5. A folder in the layout of
BigDatasetGAN's release is recognised and read by
:mod:`labelfactory.release_annotations`. Every problem found is reported at once
in a single :class:`AnnotationError`, each as ``<file>: <problem>``, so a user
fixes a folder in one round instead of one error at a time.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image, ImageDraw

from .generators.base import UNCONDITIONAL, GeneratorBackend, images_to_uint8
from .generators.view import view_of
from .io import atomic_path

LABELS_FILE = "labels.yaml"
MANIFEST_FILE = "manifest.csv"
REQUIRED_COLUMNS = ("id", "seed", "class")
IMAGE_SUFFIX = ".image.png"
LATENT_SUFFIX = ".latent.npy"
IMAGE_TOLERANCE = 3  # max |annotated - re-rendered| per pixel channel, in 1/255
LATENT_TOLERANCE = 1e-6
LABELME_IGNORE = "__ignore__"  # LabelMe's conventional name for "do not train on these pixels"
LABELME_SHAPES = ("polygon", "rectangle", "circle")
H5_DATASETS = ("images", "masks", "latents", "seeds", "classes", "ids")
H5_ATTRS = ("generator_hash", "labels", "ignore_index", "truncation", "noise", "resolution")


class AnnotationError(ValueError):
    """Invalid annotations: ``problems`` lists every one as ``<file>: <problem>``."""

    def __init__(self, source: str | os.PathLike, problems: Sequence[str]):
        self.source = str(source)
        self.problems = list(problems)
        n = len(self.problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} in {self.source}:\n  " + "\n  ".join(self.problems))

    def __reduce__(self):  # picklable across processes despite the two-argument constructor
        return type(self), (self.source, self.problems)


# -- labels -----------------------------------------------------------------------
def _label_problems(names, ignore_index) -> list[str]:
    if not isinstance(names, (list, tuple)):
        return [f"'names' must be a list of label names, got {type(names).__name__}"]
    problems = []
    if not 2 <= len(names) <= 255:
        problems.append(f"need 2 to 255 label names, got {len(names)}")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        problems.append(f"label names must be non-empty strings, got {bad}")
    dup = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
    if dup:
        problems.append(f"duplicate label names {dup}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        problems.append(f"ignore_index must be an integer, got {ignore_index!r}")
    elif not len(names) <= ignore_index <= 255:
        problems.append(f"ignore_index {ignore_index} must lie outside the label ids 0..{len(names) - 1} "
                        "and fit in a uint8 mask (<= 255)")
    return problems


@dataclass(frozen=True)
class LabelSet:
    """Label names (index = label id in the masks) and the mask value to ignore."""

    names: tuple[str, ...]
    ignore_index: int = 255

    def __post_init__(self):
        problems = _label_problems(self.names, self.ignore_index)
        if problems:
            raise ValueError("invalid label set: " + "; ".join(problems))
        object.__setattr__(self, "names", tuple(self.names))


def _read_labels(path: Path) -> tuple[LabelSet | None, list[str]]:
    """The label set in ``path`` and, if none could be made, why not."""
    if not path.is_file():
        return None, [f"{path.name}: missing (label names are required)"]
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        return None, [f"{path.name}: unreadable YAML ({e})"]
    if not isinstance(doc, dict) or "names" not in doc:
        return None, [f"{path.name}: must be a mapping with a 'names' list"]
    unknown = sorted(set(doc) - {"names", "ignore_index"})
    problems = [f"unknown keys {unknown}"] if unknown else []
    problems += _label_problems(doc["names"], doc.get("ignore_index", 255))
    if problems:
        return None, [f"{path.name}: {p}" for p in problems]
    return LabelSet(tuple(doc["names"]), doc.get("ignore_index", 255)), []


def resolve_labels(labels: LabelSet | str | os.PathLike | None, default: Path,
                   problems: list[str]) -> LabelSet | None:
    """``labels`` itself, or the label set read from its path (``default`` if None);
    None, with the reasons added to ``problems``, if it cannot be read."""
    if isinstance(labels, LabelSet):
        return labels
    labelset, label_problems = _read_labels(Path(labels) if labels is not None else default)
    problems += label_problems
    return labelset


def load_labels(path: str | os.PathLike) -> LabelSet:
    """Read ``labels.yaml`` (``names``, optional ``ignore_index``); raises
    :class:`AnnotationError` naming every problem."""
    labels, problems = _read_labels(Path(path))
    if problems:
        raise AnnotationError(path, problems)
    return labels


# -- hand-out folders ---------------------------------------------------------------
def sample_id(seed: int, cls: int) -> str:
    """Canonical id of a sample: ``s{seed:08d}``, or ``c{cls:04d}_s{seed:08d}`` for a class."""
    return f"s{int(seed):08d}" if int(cls) == UNCONDITIONAL else f"c{int(cls):04d}_s{int(seed):08d}"


def _render_uint8(backend: GeneratorBackend, z: np.ndarray, classes: np.ndarray, truncation: float,
                  noise: str) -> np.ndarray:
    """uint8 ``[N,H,W,3]`` renders, exactly as written to and compared with ``<id>.image.png``."""
    return images_to_uint8(torch.from_numpy(backend.render(z, classes, truncation, noise)))


def sample_for_annotation(backend: GeneratorBackend, seeds: Sequence[int], out_dir: str | os.PathLike,
                          truncation: float = 1.0, noise: str = "const",
                          classes: Sequence[int] | None = None) -> pd.DataFrame:
    """Render the seeded samples into a fresh folder for a human to annotate:
    ``<id>.image.png``, ``<id>.latent.npy`` and ``manifest.csv`` (returned).

    A class-conditional generator renders every seed once for each of
    ``classes``, class by class (BigDatasetGAN annotates a few samples per
    class); an unconditional one takes no classes. The folder is built beside
    ``out_dir`` and renamed into place when complete, so an interrupted run never
    leaves a folder that looks ready. An existing non-empty ``out_dir`` is
    refused: it may hold a person's annotations.
    """
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; refusing to overwrite annotations")
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
    if classes is None:
        cls = backend.check_classes(None, len(seeds))
    else:
        per_class = np.asarray(classes, dtype=np.int64).reshape(-1)
        cls = backend.check_classes(np.repeat(per_class, len(seeds)), len(per_class) * len(seeds))
        seeds = np.tile(seeds, len(per_class))
    ids = [sample_id(s, c) for s, c in zip(seeds, cls)]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate (seed, class) pairs: " + ", ".join(sorted({i for i in ids if ids.count(i) > 1})))
    z = backend.draw_latents(seeds, cls if backend.num_classes else None, truncation)
    images = _render_uint8(backend, z, cls, truncation, noise)
    manifest = pd.DataFrame({"id": ids, "seed": seeds, "class": cls, "truncation": float(truncation),
                             "noise": noise, "generator_hash": backend.generator_hash})
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        view = view_of(backend)  # the annotator sees the crop that the masks hold
        for i, sid in enumerate(ids):
            image = view.cut(images[i], backend.resolution, channels_last=True)
            Image.fromarray(image).save(tmp / f"{sid}{IMAGE_SUFFIX}")
            np.save(tmp / f"{sid}{LATENT_SUFFIX}", z[i])
        manifest.to_csv(tmp / MANIFEST_FILE, index=False)
        tmp.chmod(0o755)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return manifest


# -- annotation sets ----------------------------------------------------------------
@dataclass
class AnnotationSet:
    """Validated annotations with the generator's re-rendered images.

    ``images`` uint8 ``[N,H,W,3]``, ``masks`` uint8 ``[N,H,W]``, ``latents``
    float32 ``[N,z_dim]`` (VQGAN: int64 code grids flattened to ``[N, h*w]``, see
    :mod:`labelfactory.vqgan_reuse`), ``seeds`` int64 ``[N]``, ``classes`` int32 ``[N]``.
    """

    ids: list[str]
    seeds: np.ndarray
    classes: np.ndarray
    latents: np.ndarray
    images: np.ndarray
    masks: np.ndarray
    labels: LabelSet
    generator_hash: str
    truncation: float
    noise: str

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])

    def save(self, path: str | os.PathLike) -> None:
        """Write to HDF5 atomically (temporary file beside ``path``, renamed at the end)."""
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("images", data=self.images.astype(np.uint8))
            f.create_dataset("masks", data=self.masks.astype(np.uint8))
            f.create_dataset("latents", data=_latent_array(self.latents))
            f.create_dataset("seeds", data=self.seeds.astype(np.int64))
            f.create_dataset("classes", data=self.classes.astype(np.int32))
            f.create_dataset("ids", data=list(self.ids), dtype=h5py.string_dtype("utf-8"))
            f.attrs.update(generator_hash=self.generator_hash, labels=json.dumps(list(self.labels.names)),
                           ignore_index=self.labels.ignore_index, truncation=float(self.truncation),
                           noise=self.noise, resolution=self.resolution)


def _latent_array(latents: np.ndarray) -> np.ndarray:
    """Latents as stored: int64 code indices stay integers, every other latent is float32."""
    latents = np.asarray(latents)
    return latents.astype(np.int64 if latents.dtype.kind in "iu" else np.float32)


def load_annotation_set(path: str | os.PathLike) -> AnnotationSet:
    """Read an HDF5 annotation set, checking it is complete and consistent."""
    try:
        with h5py.File(path, "r") as f:
            problems = [f"missing dataset '{k}'" for k in H5_DATASETS if k not in f]
            problems += [f"missing attribute '{k}'" for k in H5_ATTRS if k not in f.attrs]
            if problems:
                raise AnnotationError(path, problems)
            data = {k: f[k].asstr()[()] if k == "ids" else f[k][()] for k in H5_DATASETS}
            attrs = {k: f.attrs[k] for k in H5_ATTRS}
    except (OSError, TypeError) as e:
        raise AnnotationError(path, [f"unreadable HDF5 file ({e})"]) from e
    problems = []
    lengths = {k: len(v) for k, v in data.items()}
    if len(set(lengths.values())) > 1:
        problems.append(f"datasets differ in length: {lengths}")
    images, masks, latents = data["images"], data["masks"], data["latents"]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        problems.append(f"images must be uint8 [N,H,W,3], got {images.dtype} {list(images.shape)}")
    elif images.shape[1:3] != (int(attrs["resolution"]),) * 2:
        problems.append(f"images are {images.shape[1]}x{images.shape[2]} but resolution says {attrs['resolution']}")
    if masks.ndim != 3 or masks.shape[1:] != images.shape[1:3] or masks.dtype != np.uint8:
        problems.append(f"masks must be uint8 [N,H,W] matching the images, got {masks.dtype} {list(masks.shape)}")
    if latents.ndim != 2:
        problems.append(f"latents must be [N, z_dim], got {list(latents.shape)}")
    try:
        labels = LabelSet(tuple(json.loads(attrs["labels"])), int(attrs["ignore_index"]))
    except (ValueError, TypeError) as e:
        problems.append(f"bad label attributes ({e})")
    if problems:
        raise AnnotationError(path, problems)
    return AnnotationSet(
        ids=[str(i) for i in data["ids"]], seeds=data["seeds"].astype(np.int64),
        classes=data["classes"].astype(np.int32), latents=_latent_array(latents), images=images,
        masks=masks, labels=labels, generator_hash=str(attrs["generator_hash"]),
        truncation=float(attrs["truncation"]), noise=str(attrs["noise"]),
    )


# -- reading a filled-in folder -----------------------------------------------------
@dataclass
class _Row:
    """A manifest row; ``seed``/``cls`` are None where the manifest value is unusable."""

    id: str
    seed: int | None
    cls: int | None


def _as_int(value: str) -> int | None:
    try:
        return int(value.strip())
    except ValueError:
        return None


def _read_manifest(path: Path, backend: GeneratorBackend, truncation: float, noise: str,
                   classes: Sequence[int] | None, problems: list[str]) -> list[_Row]:
    """Parse and check ``manifest.csv``; returns one row per distinct usable id."""
    name = path.name
    if not path.is_file():
        problems.append(f"{name}: missing (one row per annotated sample: {', '.join(REQUIRED_COLUMNS)})")
        return []
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        problems.append(f"{name}: unreadable CSV ({e})")
        return []
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        problems.append(f"{name}: missing required columns {missing} (has {list(df.columns)})")
        return []
    if df.empty:
        problems.append(f"{name}: no annotated samples")
        return []
    ids = df["id"].str.strip()
    dup = sorted(set(ids[ids.duplicated()]))
    if dup:
        problems.append(f"{name}: duplicate ids {dup}")
    rows, seen = [], set()
    for line, (sid, seed_s, cls_s) in enumerate(zip(ids, df["seed"], df["class"]), start=2):
        where = f"{name}: line {line} (id {sid!r})"
        if not sid or sid.startswith(".") or "/" in sid or "\\" in sid:
            problems.append(f"{where}: id must be a non-empty file name stem")
            continue
        seed, cls = _as_int(seed_s), _as_int(cls_s)
        if seed is None:
            problems.append(f"{where}: seed {seed_s!r} is not an integer")
        elif not 0 <= seed < 2**32:
            problems.append(f"{where}: seed {seed} is outside [0, 2**32)")
            seed = None
        if cls is None:
            problems.append(f"{where}: class {cls_s!r} is not an integer (use {UNCONDITIONAL} for unconditional)")
        else:
            problem = class_problem(backend, cls, classes)
            if problem:
                problems.append(f"{where}: {problem}")
                cls = None
        if sid not in seen:
            seen.add(sid)
            rows.append(_Row(sid, seed, cls))
    expected = {"generator_hash": backend.generator_hash, "truncation": truncation, "noise": noise}
    for col, want in expected.items():
        if col in df.columns:
            _check_setting(name, col, df[col].str.strip(), ids, want, problems)
    return rows


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


def _check_setting(name: str, col: str, values: pd.Series, ids: pd.Series, want, problems: list[str]) -> None:
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


def _read_png_mask(path: Path, problems: list[str]) -> np.ndarray | None:
    im = open_png(path, problems)
    if im is None:
        return None
    if im.mode not in ("L", "P"):
        problems.append(f"{path.name}: image mode {im.mode} is not a label map; save masks as single-channel "
                        "8-bit (L) or palette (P) PNGs whose pixel values are label ids")
        return None
    return np.asarray(im, dtype=np.uint8)


def _draw_shape(draw: ImageDraw.ImageDraw, shape, ids: dict[str, int]) -> str | None:
    """Draw one LabelMe shape (as LabelMe itself rasterizes it); returns why not, if not."""
    try:
        label, kind = shape["label"], shape.get("shape_type") or "polygon"
        pts = [(float(x), float(y)) for x, y in shape["points"]]
    except (KeyError, TypeError, ValueError, AttributeError):
        return "needs 'label' and 'points' as [[x, y], ...]"
    if label not in ids:
        return f"label {label!r} is not in labels.yaml {sorted(ids, key=ids.get)}"
    if kind not in LABELME_SHAPES:
        return f"shape_type {kind!r} is not supported (use one of {list(LABELME_SHAPES)})"
    if kind == "polygon" and len(pts) < 3 or kind != "polygon" and len(pts) != 2:
        return f"a {kind} needs {'at least 3' if kind == 'polygon' else 'exactly 2'} points, got {len(pts)}"
    v = ids[label]
    if kind == "polygon":
        draw.polygon(pts, fill=v, outline=v)
    elif kind == "rectangle":
        (x0, y0), (x1, y1) = pts
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=v, outline=v)
    else:
        (cx, cy), (px, py) = pts
        r = math.hypot(px - cx, py - cy)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=v, outline=v)
    return None


def _read_labelme_mask(path: Path, labels: LabelSet | None, problems: list[str]) -> np.ndarray | None:
    """Rasterize a LabelMe JSON: shapes drawn in order over background (label 0);
    the label ``__ignore__`` marks ignored pixels."""
    try:
        doc = json.loads(path.read_text())
        h, w = int(doc["imageHeight"]), int(doc["imageWidth"])
        shapes = list(doc.get("shapes") or [])
        if h <= 0 or w <= 0:
            raise ValueError(f"image size {h}x{w} must be positive")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        problems.append(f"{path.name}: unreadable LabelMe JSON ({type(e).__name__}: {e})")
        return None
    if labels is None:
        return None
    ids = {n: i for i, n in enumerate(labels.names)} | {LABELME_IGNORE: labels.ignore_index}
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    shape_problems = [f"{path.name}: shape {k}: {p}" for k, s in enumerate(shapes)
                      if (p := _draw_shape(draw, s, ids)) is not None]
    problems += shape_problems
    return None if shape_problems else np.asarray(mask, dtype=np.uint8)


def size_problem(shape: Sequence[int], resolution: int | tuple[int, int]) -> str | None:
    """Why a mask of ``shape`` does not fit a generator of ``resolution`` (or the (H, W) of its image view), or None."""
    expected = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if tuple(shape) == expected:
        return None
    what = "the generator's resolution" if isinstance(resolution, int) else "the task's image crop"
    return (f"wrong size: expected {expected[0]}x{expected[1]} (HxW, {what}), found "
            + "x".join(str(n) for n in shape))


def _check_mask(name: str, mask: np.ndarray, resolution: int | tuple[int, int], labels: LabelSet | None,
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


def _read_latent(path: Path, seed: int, expected: np.ndarray, problems: list[str]) -> np.ndarray | None:
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


def import_annotations(ann_dir: str | os.PathLike, backend: GeneratorBackend, out_h5: str | os.PathLike,
                       truncation: float = 1.0, noise: str = "const",
                       labels: LabelSet | str | os.PathLike | None = None,
                       expected_count: int | None = None, classes: Sequence[int] | None = None,
                       expected_per_class: int | None = None, latents: str | os.PathLike | None = None,
                       merge: str | None = None) -> AnnotationSet:
    """Validate an annotation folder, re-render its samples and write them to HDF5.

    ``labels`` (a :class:`LabelSet` or a ``labels.yaml`` path) replaces the
    folder's own ``labels.yaml``. Each sample is re-rendered from its stored
    latent (or its seed's) with ``truncation``/``noise``; constant noise makes the
    image exactly the one annotated, which ``<id>.image.png`` confirms. For a
    class-conditional task, ``classes`` are the task's classes (every sample must
    be of one, every one must have samples) and ``expected_per_class`` the
    fewest annotations of each. A folder in the layout of BigDatasetGAN's release
    is read by :func:`~labelfactory.release_annotations.import_release_annotations`, one
    of DatasetGAN's (with its ``latents`` file and class ``merge``) by
    :func:`~labelfactory.datasetgan_release.import_datasetgan_annotations`. With an
    image view (:mod:`labelfactory.generators.view`), masks and images are its crop.
    Raises one :class:`AnnotationError` listing every problem; ``out_h5`` is
    written atomically and only when there are none.
    """
    ann_dir = Path(ann_dir)
    if not ann_dir.is_dir():
        raise AnnotationError(ann_dir, [f"{ann_dir.name}: annotation folder not found"])
    from .datasetgan_release import datasetgan_layout, import_datasetgan_annotations  # they build on this module
    from .release_annotations import import_release_annotations, release_layout

    if not (ann_dir / MANIFEST_FILE).exists() and datasetgan_layout(ann_dir):
        return import_datasetgan_annotations(ann_dir, backend, out_h5, truncation=truncation, noise=noise,
                                             labels=labels, latents=latents, merge=merge,
                                             expected_count=expected_count)
    if latents is not None or merge is not None:
        raise AnnotationError(ann_dir, [f"{ann_dir.name}: a latent file and a class merge are for folders of "
                                        "DatasetGAN's release (image_mask<i>.npy), which this is not"])
    if not (ann_dir / MANIFEST_FILE).exists() and release_layout(ann_dir):
        return import_release_annotations(ann_dir, backend, out_h5, truncation=truncation, noise=noise,
                                          labels=labels, expected_count=expected_count, classes=classes,
                                          expected_per_class=expected_per_class)
    problems: list[str] = []
    labelset = resolve_labels(labels, ann_dir / LABELS_FILE, problems)
    rows = _read_manifest(ann_dir / MANIFEST_FILE, backend, float(truncation), noise, classes, problems)
    res, view = backend.resolution, view_of(backend)
    shape = res if view.crop is None else view.shape(res)

    masks: dict[str, np.ndarray] = {}
    latents: dict[str, np.ndarray] = {}
    for row in rows:
        png, lm = ann_dir / f"{row.id}.png", ann_dir / f"{row.id}.json"
        if png.is_file() and lm.is_file():
            problems.append(f"{lm.name}: both {png.name} and {lm.name} exist; keep one mask")
        elif not png.is_file() and not lm.is_file():
            problems.append(f"{png.name}: missing mask for manifest row {row.id!r}")
        else:
            mask = _read_png_mask(png, problems) if png.is_file() else _read_labelme_mask(lm, labelset, problems)
            if mask is not None and _check_mask(png.name if png.is_file() else lm.name, mask, shape, labelset,
                                                problems):
                masks[row.id] = view.pad(mask, res, labelset.ignore_index)
        if row.seed is not None:
            expected = backend.draw_latents([row.seed], None if row.cls is None or not backend.num_classes
                                            else [row.cls], truncation)[0]
            lat = ann_dir / f"{row.id}{LATENT_SUFFIX}"
            z = _read_latent(lat, row.seed, expected, problems) if lat.is_file() else expected
            if z is not None and row.cls is not None:
                latents[row.id] = z

    known = {r.id for r in rows}
    for f in sorted(ann_dir.iterdir()):
        if (f.name.startswith(".") or f.name.endswith(IMAGE_SUFFIX) or f.suffix not in (".png", ".json")
                or not f.is_file()):
            continue
        if f.stem not in known:
            problems.append(f"{f.name}: mask without a manifest row (extra file)")

    by_id = {r.id: r for r in rows}
    rendered: dict[str, np.ndarray] = {}
    if latents:
        images = _render_uint8(backend, np.stack(list(latents.values())),
                               np.array([by_id[i].cls for i in latents]), truncation, noise)
        rendered = dict(zip(latents, images))
        for sid in rendered:
            img = ann_dir / f"{sid}{IMAGE_SUFFIX}"
            if img.is_file():
                check_image(img, view.cut(rendered[sid], res, channels_last=True), problems)
    problems += count_problems(MANIFEST_FILE, [r.cls for r in rows], classes, expected_count, expected_per_class)
    if problems:
        raise AnnotationError(ann_dir, problems)

    ids = [r.id for r in rows]
    aset = AnnotationSet(
        ids=ids, seeds=np.array([by_id[i].seed for i in ids], dtype=np.int64),
        classes=np.array([by_id[i].cls for i in ids], dtype=np.int32),
        latents=_latent_array(np.stack([latents[i] for i in ids]).reshape(len(ids), -1)),
        images=np.stack([rendered[i] for i in ids]), masks=np.stack([masks[i] for i in ids]),
        labels=labelset, generator_hash=backend.generator_hash, truncation=float(truncation), noise=noise,
    )
    aset.save(out_h5)
    return aset
