"""BigDatasetGAN's released annotations, read as they are into an :class:`AnnotationSet`.

The release (nv-tlabs/bigdatasetgan_code) ships BigGAN samples annotated with
binary object masks, in one of two layouts told apart by their folders:

- ``nested``, its README's ``data/`` folder: ``annotations/<gan>/<synset>/<name>.png``
  masks beside ``latents/<gan>/<synset>/<name>.npy`` and, once its
  ``prepare_biggan_images.py`` has run, ``images/<gan>/<synset>/<name>.png``
  (``<gan>`` is ``biggan512``). The annotated real ImageNet photos
  (``annotations/real-random-list.txt``, ``images/real-random/``) are no
  generator's samples and are left alone.
- ``flat``, its first loader's: ``label/<name>.npy`` masks, ``latent/<name>.npy``,
  ``classes.json`` and, if rendered, ``image/<name>.png``.

``<name>`` is ``<synset>_<class>_<k>``; the loaders read the ImageNet class id
from its second-to-last field. A latent is BigGAN's z ``[1, z_dim]``, already
truncated, and the only address of its sample: the seed is unknown and
recorded as -1. Masks are binarised as the release's loaders do: a PNG is
converted to ``L`` and every non-zero pixel is the object (1); a ``.npy`` mask is
used as it is, so it must hold 0 and 1 only. Either kind may sit in either
layout. ``classes.json`` maps class ids to synsets (``{"0": "n01440764", ...}``,
as the release's ``imagenet2synset.json``) or synsets to entries with an
``imagenet_id`` (as its ``imagenetclass992.json``). The release's per-use subsets
(dogs, birds, PASCAL classes, 100 random or 992 classes) are lists of classes:
pass one as ``classes`` and the samples of other classes are skipped.

Released images were written by ``torchvision.utils.save_image(x,
normalize=True)``, which stretches each image to its own min..max; each is
compared with the re-render normalised the same way.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from labelfactory.annotations.annotation_set import AnnotationSet
from labelfactory.annotations.checks import check_image, class_problem, count_problems, open_png, size_problem
from labelfactory.annotations.labels import AnnotationError, LabelSet, resolve_labels
from labelfactory.generators.base import GeneratorBackend, images_to_uint8

# layout → the folders of masks, latents and (optional) images
LAYOUTS = {"nested": ("annotations", "latents", "images"), "flat": ("label", "latent", "image")}
CLASSES_FILE = "classes.json"
NAME = re.compile(r"^(?P<synset>.+)_(?P<cls>\d+)_(?P<k>\d+)$")
RELEASE_LABELS = LabelSet(("background", "object"))
PNG_BINARY = ({0, 1}, {0, 255})  # a PNG mask is 0/1 or 0/255 after convert("L")
UNKNOWN_SEED = -1  # the seed of every released sample: its latent is its address
RENDER_CHUNK = 64  # latents rendered at a time: raw float images of 512² cost 3 MB each


def release_layout(root: str | os.PathLike) -> str | None:
    """``"nested"`` or ``"flat"`` if ``root`` has the folders of that release layout, else None."""
    root = Path(root)
    for layout, (masks, latents, _) in LAYOUTS.items():
        if (root / masks).is_dir() and (root / latents).is_dir():
            return layout
    return None


def saved_image(raw: np.ndarray) -> np.ndarray:
    """uint8 ``[H,W,3]`` as ``torchvision.utils.save_image(x, normalize=True)`` writes the raw image ``[3,H,W]``."""
    x = torch.from_numpy(np.asarray(raw, dtype=np.float32))
    lo, hi = float(x.min()), float(x.max())
    x = (x.clamp(lo, hi) - lo) / max(hi - lo, 1e-5)
    return x.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


@dataclass
class _Sample:
    """The files of one released sample (``folder``: its synset folder, or "" when flat)."""

    folder: str
    stem: str
    mask: Path | None = None
    latent: Path | None = None
    image: Path | None = None


def _base_dirs(root: Path, layout: str, problems: list[str]) -> list[Path] | None:
    """The mask, latent and image folders whose files are the samples."""
    dirs = [root / d for d in LAYOUTS[layout]]
    if layout == "flat":
        return dirs
    gans = sorted(d.name for d in dirs[1].iterdir() if d.is_dir() and (dirs[0] / d.name).is_dir())
    if len(gans) != 1:
        problems.append(f"{LAYOUTS[layout][1]}: need one generator folder (as biggan512) in both "
                        f"{LAYOUTS[layout][0]}/ and {LAYOUTS[layout][1]}/, found {gans}")
        return None
    return [d / gans[0] for d in dirs]


def _find_samples(root: Path, dirs: list[Path], nested: bool, problems: list[str]) -> list[_Sample]:
    """Pair the masks, latents and images of the samples by folder and file stem
    (a sample with two masks is reported and left out)."""
    samples: dict[tuple[str, str], _Sample] = {}
    ambiguous = set()
    for kind, base, suffixes in zip(("mask", "latent", "image"), dirs, ((".png", ".npy"), (".npy",), (".png",))):
        folders = sorted(d for d in base.iterdir() if d.is_dir()) if nested and base.is_dir() else [base]
        for f in (f for d in folders if d.is_dir() for f in sorted(d.iterdir())):
            if not f.is_file() or f.name.startswith(".") or f.suffix not in suffixes:
                continue
            key = (f.parent.name if nested else "", f.stem)
            if kind == "image" and key not in samples:  # a rendered image alone is no annotation
                continue
            s = samples.setdefault(key, _Sample(*key))
            if kind == "mask" and s.mask is not None:
                problems.append(f"{_rel(f, root)}: both {s.mask.name} and {f.name} exist; keep one mask")
                ambiguous.add(key)
            setattr(s, kind, f)
    return [samples[k] for k in sorted(samples) if k not in ambiguous]


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _read_class_map(path: Path, required: bool, problems: list[str]) -> dict[int, str] | None:
    """``{class id: synset}`` from ``classes.json`` (None if absent or unusable)."""
    if not path.is_file():
        if required:
            problems.append(f"{path.name}: missing (the release's flat layout names its classes there)")
        return None
    shape = "must map class ids to synsets or synsets to entries with an 'imagenet_id'"
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict):
            raise TypeError(f"found a {type(doc).__name__}")
        out = {}
        for key, value in doc.items():
            if not isinstance(value, dict):
                out[int(key)] = str(value)
            elif value.get("imagenet_id") is not None:  # its 'background' entry has none
                out[int(value["imagenet_id"])] = key
        return out
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(f"{path.name}: unreadable JSON ({e})")
    except (TypeError, ValueError) as e:
        problems.append(f"{path.name}: {shape} ({e})")
    return None


def _read_latent(path: Path, name: str, z_dim: int, problems: list[str]) -> np.ndarray | None:
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        problems.append(f"{name}: unreadable .npy ({e})")
        return None
    if z.shape != (1, z_dim) or not np.issubdtype(z.dtype, np.floating):
        problems.append(f"{name}: latent must be float [1, {z_dim}] (BigGAN's z, as released), "
                        f"got {z.dtype} {list(z.shape)}")
    elif not np.all(np.isfinite(z)):
        problems.append(f"{name}: latent has non-finite values")
    else:
        return z[0].astype(np.float32)
    return None


def _read_mask(path: Path, name: str, resolution: int, problems: list[str]) -> np.ndarray | None:
    """The binary uint8 mask (1 = object), binarised as the release's loaders do."""
    if path.suffix == ".png":
        im = open_png(path, problems, name)
        if im is None:
            return None
        mask, binary = np.asarray(im.convert("L")), PNG_BINARY
    else:
        try:
            mask = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            problems.append(f"{name}: unreadable .npy ({e})")
            return None
        binary = ({0, 1},)
    problem = size_problem(mask.shape, resolution)
    if problem:
        problems.append(f"{name}: {problem}")
        return None
    values = np.unique(mask).tolist()
    if not any(set(values) <= b for b in binary):
        allowed = " or ".join("/".join(map(str, sorted(b))) for b in binary)
        problems.append(f"{name}: mask values {values[:8]} are not binary ({allowed})")
        return None
    return (mask != 0).astype(np.uint8)


def _read_pair(s: _Sample, root: Path, dirs: list[Path], backend: GeneratorBackend,
               problems: list[str]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The sample's mask and latent, each None if missing or unusable (with the reason)."""
    mask = z = None
    if s.mask is None:
        problems.append(f"{_rel(s.latent, root)}: latent without a mask (no "
                        f"{_rel(dirs[0] / s.folder / s.stem, root)}.png or .npy)")
    else:
        mask = _read_mask(s.mask, _rel(s.mask, root), backend.resolution, problems)
    if s.latent is None:
        problems.append(f"{_rel(s.mask, root)}: mask without a latent (no "
                        f"{_rel(dirs[1] / s.folder / s.stem, root)}.npy)")
    else:
        z = _read_latent(s.latent, _rel(s.latent, root), backend.z_dim, problems)
    return mask, z


def import_release_annotations(root: str | os.PathLike, backend: GeneratorBackend, out_h5: str | os.PathLike,
                               truncation: float = 1.0, noise: str = "const",
                               labels: LabelSet | str | os.PathLike | None = None,
                               expected_count: int | None = None, classes: Sequence[int] | None = None,
                               expected_per_class: int | None = None) -> AnnotationSet:
    """Validate a folder in a layout of BigDatasetGAN's release, re-render its latents
    with ``backend`` and write the samples (of ``classes``, if given) to HDF5.

    ``labels`` defaults to ``[background, object]`` and must have two names.
    Problems are collected as :func:`~labelfactory.annotations.annotation_set.import_annotations`
    collects them, each naming its file relative to ``root``, and raised as one
    :class:`AnnotationError`; ``out_h5`` is written only when there are none.
    """
    root = Path(root)
    layout = release_layout(root)
    if layout is None:
        raise AnnotationError(root, [f"{root.name}: not a layout of BigDatasetGAN's release (annotations/ + "
                                     "latents/, or label/ + latent/)"])
    problems: list[str] = []
    labelset = RELEASE_LABELS if labels is None else resolve_labels(labels, root, problems)
    if labelset is not None and len(labelset.names) != 2:
        problems.append(f"labels: the release's masks are binary, so they need 2 label names (background, "
                        f"object), got {list(labelset.names)}")
    class_map = _read_class_map(root / CLASSES_FILE, layout == "flat", problems)
    dirs = _base_dirs(root, layout, problems)
    samples = _find_samples(root, dirs, layout == "nested", problems) if dirs else []

    wanted = None if classes is None else set(classes)
    kept: list[tuple[_Sample, int]] = []
    sample_classes: list[int | None] = []
    masks, latents = {}, {}
    for s in samples:
        where = _rel(s.latent or s.mask, root)
        m = NAME.match(s.stem)
        if m is None:
            problems.append(f"{where}: file name must be <synset>_<class>_<k> (the release's naming)")
            continue
        cls, synset = int(m["cls"]), m["synset"]
        if wanted is not None and cls not in wanted:
            continue
        if s.folder and synset != s.folder:
            problems.append(f"{where}: the file name's synset {synset} differs from its folder {s.folder}")
        problem = class_problem(backend, cls, None)
        if problem is None and class_map is not None and class_map.get(cls) != synset:
            problem = (f"class {cls} is not in {CLASSES_FILE}" if cls not in class_map
                       else f"class {cls} is {class_map[cls]} in {CLASSES_FILE}, not {synset}")
        if problem:
            problems.append(f"{where}: {problem}")
        else:
            kept.append((s, cls))
        sample_classes.append(None if problem else cls)
        mask, z = _read_pair(s, root, dirs, backend, problems)
        if mask is not None:
            masks[s.folder, s.stem] = mask
        if z is not None:
            latents[s.folder, s.stem] = z
    where = _rel(dirs[0], root) if dirs else LAYOUTS[layout][0]
    if not kept and not problems:
        problems.append(f"{where}: no annotated samples")
    problems += count_problems(where, sample_classes, classes, expected_count, expected_per_class)

    images = []
    renderable = [(s, c) for s, c in kept if (s.folder, s.stem) in latents]
    for i in range(0, len(renderable), RENDER_CHUNK):
        chunk = renderable[i : i + RENDER_CHUNK]
        raw = backend.render(np.stack([latents[s.folder, s.stem] for s, _ in chunk]),
                             np.array([c for _, c in chunk]), truncation, noise)
        images.append(images_to_uint8(torch.from_numpy(raw)))
        for (s, _), r in zip(chunk, raw):
            if s.image is not None:
                check_image(s.image, saved_image(r), problems, _rel(s.image, root))
    if problems:
        raise AnnotationError(root, problems)

    keys = [(s.folder, s.stem) for s, _ in kept]
    aset = AnnotationSet(
        ids=[stem for _, stem in keys], seeds=np.full(len(keys), UNKNOWN_SEED, dtype=np.int64),
        classes=np.array([c for _, c in kept], dtype=np.int32), latents=np.stack([latents[k] for k in keys]),
        images=np.concatenate(images), masks=np.stack([masks[k] for k in keys]), labels=labelset,
        generator_hash=backend.generator_hash, truncation=float(truncation), noise=noise,
    )
    aset.save(out_h5)
    return aset
