"""Import a filled-in annotation folder: validate it against the generator and the task, re-render
every sample and write one :class:`~labelfactory.annotations.annotation_set.AnnotationSet`.

A task's annotation folder holds ``labels.yaml`` (label names, optional
``ignore_index``), ``manifest.csv`` (one row per annotated sample: ``id``,
``seed``, ``class`` and optionally ``truncation``, ``noise``,
``generator_hash``) and per sample one mask: ``<id>.png`` (8-bit single-channel or
palette PNG of label ids), a LabelMe ``<id>.json``, a napari/numpy label array
``<id>.npy`` or, where a CVAT "Segmentation mask 1.1" export is unpacked in the
folder (``labelmap.txt``), its ``SegmentationClass/<id>[.image].png``; optionally with the latent
``<id>.latent.npy`` and the annotated image ``<id>.image.png``. Folders in the
layout of DatasetGAN's or BigDatasetGAN's release are recognised and read by
:mod:`.datasetgan_release` and :mod:`.bigdatasetgan_release`. A diffusion task's folder of
annotated *images* (``annotation.source: images``) is read by :func:`import_image_annotations`.
Every problem found
is reported at once in a single ``AnnotationError``, each as ``<file>: <problem>``,
so a user fixes a folder in one round instead of one error at a time.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from labelfactory.annotations.annotation_set import AnnotationSet, latent_array
from labelfactory.annotations.bigdatasetgan_release import import_release_annotations, release_layout
from labelfactory.annotations.checks import (
    REQUIRED_COLUMNS,
    check_image,
    check_mask,
    check_setting,
    class_problem,
    count_problems,
    read_latent,
    read_npy_mask,
    read_png_mask,
)
from labelfactory.annotations.cvat import (
    LABELMAP_FILE,
    SEGMENTATION_DIR,
    cvat_mask_files,
    cvat_mask_ids,
    read_cvat_mask,
    read_labelmap,
)
from labelfactory.annotations.cvat_keypoints import COCO_KEYPOINTS_EXPORT, read_coco_export_keypoints
from labelfactory.annotations.datasetgan_release import datasetgan_layout, import_datasetgan_annotations
from labelfactory.annotations.handout import IMAGE_SUFFIX, LATENT_SUFFIX, MANIFEST_FILE, render_uint8
from labelfactory.annotations.keypoints import KEYPOINTS_SUFFIX, KeypointSet, read_keypoint_files
from labelfactory.annotations.labelme import read_labelme_mask
from labelfactory.annotations.labels import LABELS_FILE, AnnotationError, LabelSet, resolve_labels
from labelfactory.annotations.reuse import resize_annotations
from labelfactory.generators.base import UNCONDITIONAL, GeneratorBackend
from labelfactory.generators.view import ImageView, view_of

log = logging.getLogger(__name__)

MASK_SUFFIXES = (".png", ".json", ".npy")


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
                   classes: Sequence[int] | None, problems: list[str], samples: bool = True) -> list[_Row]:
    """Parse and check ``manifest.csv``; returns one row per distinct usable id. Rows of given
    images (not ``samples``) need no seed (it is not read) and no class where the generator is
    unconditional, and the sample settings (generator hash, truncation, noise) are not theirs."""
    name = path.name
    required = REQUIRED_COLUMNS if samples else ("id",)
    if not path.is_file():
        what = "sample" if samples else "image"
        problems.append(f"{name}: missing (one row per annotated {what}: {', '.join(required)})")
        return []
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        problems.append(f"{name}: unreadable CSV ({e})")
        return []
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
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
    seeds = df["seed"] if samples else [""] * len(df)
    cls_values = df["class"] if "class" in df.columns else [str(UNCONDITIONAL)] * len(df)
    for line, (sid, seed_s, cls_s) in enumerate(zip(ids, seeds, cls_values), start=2):
        where = f"{name}: line {line} (id {sid!r})"
        if not sid or sid.startswith(".") or "/" in sid or "\\" in sid:
            problems.append(f"{where}: id must be a non-empty file name stem")
            continue
        seed, cls = _as_int(seed_s) if samples else None, _as_int(cls_s)
        if samples and seed is None:
            problems.append(f"{where}: seed {seed_s!r} is not an integer")
        elif seed is not None and not 0 <= seed < 2**32:
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
        if samples and col in df.columns:
            check_setting(name, col, df[col].str.strip(), ids, want, problems)
    return rows


def _mask_files(ann_dir: Path, sid: str) -> list[Path]:
    """The masks of sample ``sid`` present in the folder, in any of the formats."""
    own = [p for p in (ann_dir / f"{sid}{suffix}" for suffix in MASK_SUFFIXES) if p.is_file()]
    return own + cvat_mask_files(ann_dir, sid)


def _read_mask(path: Path, name: str, labelset: LabelSet | None, colours: dict[int, int] | None,
               problems: list[str]) -> np.ndarray | None:
    if path.parent.name == SEGMENTATION_DIR:
        return read_cvat_mask(path, name, colours, problems)
    if path.suffix == ".json":
        return read_labelme_mask(path, labelset, problems)
    return read_npy_mask(path, problems) if path.suffix == ".npy" else read_png_mask(path, problems)


def _row_mask(ann_dir: Path, sid: str, labelset: LabelSet | None, colours: dict[int, int] | None,
              problems: list[str]) -> tuple[str, np.ndarray | None]:
    """The name (relative to the folder) and the decoded mask of row ``sid``; None (with the reason)
    where it has none, several or an unreadable one."""
    found = _mask_files(ann_dir, sid)
    names = [p.relative_to(ann_dir).as_posix() for p in found]
    if len(found) > 1:
        problems.append(f"{names[-1]}: {', '.join(names[:-1])} and {names[-1]} exist; keep one mask")
        return names[-1], None
    if not found:
        problems.append(f"{sid}.png: missing mask for manifest row {sid!r}")
        return f"{sid}.png", None
    return names[0], _read_mask(found[0], names[0], labelset, colours, problems)


def _masked_rows(ann_dir: Path, rows: list[_Row], problems: list[str]) -> list[_Row]:
    """``only_masked``: the rows that have a mask (how many were skipped logged)."""
    masked = [r for r in rows if _mask_files(ann_dir, r.id)]
    if len(masked) < len(rows):
        log.warning("%s: importing the %d of %d manifest rows that have a mask; %d without one skipped",
                    ann_dir, len(masked), len(rows), len(rows) - len(masked))
    if not masked and rows:
        problems.append(f"{MANIFEST_FILE}: no row has a mask")
    return masked


def _labelmap_colours(ann_dir: Path, labelset: LabelSet | None, problems: list[str]) -> dict[int, int] | None:
    """The colours of a CVAT export's masks (its ``labelmap.txt``), None where the folder holds none."""
    if (ann_dir / LABELMAP_FILE).is_file():
        return read_labelmap(ann_dir / LABELMAP_FILE, labelset, problems)
    if cvat_mask_ids(ann_dir):
        problems.append(f"{LABELMAP_FILE}: missing (the colours of the masks in {SEGMENTATION_DIR}/; "
                        "unpack the whole CVAT export)")
    return None


def _extra_masks(ann_dir: Path, known: set[str]) -> list[str]:
    """A problem for each mask, in any of the formats, of no manifest row."""
    files = [f for f in sorted(ann_dir.iterdir()) if f.suffix in MASK_SUFFIXES and f.is_file() and not (
        f.name.startswith(".") or f.name.endswith((IMAGE_SUFFIX, LATENT_SUFFIX, KEYPOINTS_SUFFIX)))]
    names = [f.name for f in files if f.stem not in known]
    names += [f.name for f in sorted(ann_dir.glob(f"*{KEYPOINTS_SUFFIX}"))
              if f.name.removesuffix(KEYPOINTS_SUFFIX) not in known]
    names += [f"{SEGMENTATION_DIR}/{f.name}" for sid, f in cvat_mask_ids(ann_dir).items() if sid not in known]
    return [f"{name}: {'keypoints' if name.endswith(KEYPOINTS_SUFFIX) else 'mask'} without a manifest row "
            "(extra file)" for name in names]


def folder_keypoints(ann_dir: Path, ids: Sequence[str], labelset: LabelSet | None, width: int, height: int,
                     problems: list[str]) -> KeypointSet | None:
    """The ``<id>.keypoints.json`` of every image ``ids`` (``width`` x ``height``) where labels.yaml
    names keypoints (None where it does not), every file's problems added to ``problems``; where there
    are none, a CVAT "COCO Keypoints 1.0" export unpacked in the folder."""
    if labelset is None or labelset.keypoints is None:  # no labels.yaml: its problem is reported already
        return None
    cvat = (ann_dir / COCO_KEYPOINTS_EXPORT).is_file() and not any(ann_dir.glob(f"*{KEYPOINTS_SUFFIX}"))
    read = read_coco_export_keypoints if cvat else read_keypoint_files
    keypoints, found = read(ann_dir, ids, labelset.keypoints, (width, height))
    problems += found
    return keypoints


def moved_keypoints(keypoints: KeypointSet, shift: tuple[float, float] = (0.0, 0.0), scale: float = 1.0
                    ) -> KeypointSet:
    """Labelled keypoints (v > 0) in another frame: shifted by ``(dx, dy)`` (a crop's left, top in the
    whole image), then scaled about pixel centres by ``scale`` (an image resized by that factor)."""
    k = keypoints.keypoints.copy()
    labelled = k[..., 2] > 0
    for axis, d in enumerate(shift):
        k[..., axis] = np.where(labelled, (k[..., axis] + d + 0.5) * scale - 0.5, 0.0)
    return KeypointSet(keypoints.ids, k, keypoints.spec)


DDPM_SEGMENTATION_IMAGES = (".png", ".jpg", ".jpeg")


def _read_image(path: Path, problems: list[str]) -> np.ndarray | None:
    """An annotated image (PNG or JPEG) as uint8 ``[H, W, 3]`` (RGB, or grey repeated), square."""
    if not path.is_file():
        problems.append(f"{path.name}: missing (the annotated image of its mask)")
        return None
    try:
        with Image.open(path) as im:
            im.load()
            im = im.copy()
    except (OSError, SyntaxError, ValueError) as e:
        problems.append(f"{path.name}: unreadable or corrupt image ({e})")
        return None
    if im.mode not in ("RGB", "L"):
        problems.append(f"{path.name}: image mode {im.mode}; save the image as an RGB (or greyscale) PNG")
        return None
    if im.width != im.height:
        problems.append(f"{path.name}: {im.height}x{im.width} (HxW) is not square; crop it and its mask to a square")
        return None
    return np.array(im.convert("RGB"), dtype=np.uint8)


def ddpm_segmentation_layout(ann_dir: Path) -> bool:
    """A folder of ddpm-segmentation's datasets (``datasets/<name>/real/train``): no manifest, label
    arrays ``<name>.npy`` beside the images."""
    return not (ann_dir / MANIFEST_FILE).exists() and any(ann_dir.glob("*.npy"))


def _ddpm_segmentation_pairs(ann_dir: Path, backend: GeneratorBackend, only_masked: bool,
                             problems: list[str]) -> dict[str, tuple[Path, Path]]:
    """``{name: (image, mask)}`` in sorted image order (its ``ImageLabelDataset``'s): every
    ``<name>.{png,jpg,jpeg}`` with its ``<name>.npy``; an image without one (unless
    ``only_masked``) and a mask without an image are problems."""
    images = {p.stem: p for p in sorted(ann_dir.iterdir())
              if p.is_file() and p.suffix.lower() in DDPM_SEGMENTATION_IMAGES and not p.name.startswith(".")}
    masks = {p.stem: p for p in ann_dir.glob("*.npy")}
    problems += [f"{masks[n].name}: mask without an image {n}.png/.jpg (extra file)"
                 for n in sorted(set(masks) - set(images))]
    if not only_masked:
        problems += [f"{images[n].name}: no mask {n}.npy beside it" for n in images if n not in masks]
    if backend.num_classes:
        problems.append(f"{ann_dir.name}: ddpm-segmentation's folders hold no classes; a class-conditional "
                        f"{backend.arch} model needs a {MANIFEST_FILE} with a class column")
    return {n: (images[n], masks[n]) for n in images if n in masks}


def import_image_annotations(ann_dir: str | os.PathLike, backend: GeneratorBackend, out_h5: str | os.PathLike,
                             labels: LabelSet | str | os.PathLike | None = None,
                             expected_count: int | None = None, classes: Sequence[int] | None = None,
                             expected_per_class: int | None = None, only_masked: bool = False) -> AnnotationSet:
    """Annotated *images* (``annotation.source: images``): per manifest row (``id``, and ``class`` for a
    class-conditional generator; other columns, e.g. another generator's seeds, are not read) the
    image ``<id>.image.png`` and its mask in any of the formats, as large as the image; or a folder
    of ddpm-segmentation's datasets as it is (:func:`ddpm_segmentation_layout`: ``<name>.png`` or
    ``.jpg`` beside its label array ``<name>.npy``, in sorted order, the labels from ``labels``).

    Nothing is rendered: the images are the annotation set's (resized with their masks to the
    generator's resolution by :func:`~labelfactory.annotations.reuse.resize_annotations`), and a
    diffusion generator computes their features from them. So any annotated square images serve:
    real photos, as ddpm-segmentation trains on, or another generator's annotated samples (a GAN
    task's folder as it is). Refused in one line for a generator whose features come from latents.
    The set records ``source: images``, seeds -1 and empty latents ``[N, 0]``."""
    ann_dir = Path(ann_dir)
    if not ann_dir.is_dir():
        raise AnnotationError(ann_dir, [f"{ann_dir.name}: annotation folder not found"])
    if not hasattr(backend, "image_taps"):
        raise AnnotationError(ann_dir, [f"{ann_dir.name}: annotated images (annotation.source: images) need a "
                                        f"diffusion generator, which computes features of any image; this "
                                        f"{backend.arch} generator's come from latents"])
    if view_of(backend) != ImageView():
        raise AnnotationError(ann_dir, [f"{ann_dir.name}: annotated images are resized to the generator's "
                                        "resolution; a task image view (image.size, image.crop) is for samples"])
    problems: list[str] = []
    labelset = resolve_labels(labels, ann_dir / LABELS_FILE, problems)
    pairs = None
    if ddpm_segmentation_layout(ann_dir):
        pairs = _ddpm_segmentation_pairs(ann_dir, backend, only_masked, problems)
        rows = [_Row(name, None, UNCONDITIONAL) for name in pairs]
    else:
        rows = _read_manifest(ann_dir / MANIFEST_FILE, backend, 1.0, "const", classes, problems, samples=False)
        if only_masked:
            rows = _masked_rows(ann_dir, rows, problems)
    colours = _labelmap_colours(ann_dir, labelset, problems)
    images: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    keypoints: dict[str, np.ndarray] = {}
    for row in rows:
        if pairs is None:
            name, mask = _row_mask(ann_dir, row.id, labelset, colours, problems)
            image_path = ann_dir / f"{row.id}{IMAGE_SUFFIX}"
        else:
            image_path, mask_path = pairs[row.id]
            name, mask = mask_path.name, read_npy_mask(mask_path, problems)
        image = _read_image(image_path, problems)
        if mask is None or image is None:
            continue
        if mask.shape != image.shape[:2]:
            problems.append(f"{name}: {mask.shape[0]}x{mask.shape[1]} (HxW) but its image {image_path.name} "
                            f"is {image.shape[0]}x{image.shape[1]}")
        elif check_mask(name, mask, mask.shape, labelset, problems) and row.cls is not None:
            kp = folder_keypoints(ann_dir, [row.id], labelset, image.shape[1], image.shape[0], problems)
            if kp is not None:  # in the frame of the image resized to the generator's resolution
                keypoints[row.id] = moved_keypoints(kp, scale=backend.resolution / image.shape[1]).keypoints[0]
            image, mask = resize_annotations(image[None], mask[None].copy(), backend.resolution)
            images[row.id], masks[row.id] = image[0], mask[0]
    if pairs is None:
        problems += _extra_masks(ann_dir, {r.id for r in rows})
    problems += count_problems(MANIFEST_FILE if pairs is None else ann_dir.name, [r.cls for r in rows], classes,
                               expected_count, expected_per_class)
    if problems:
        raise AnnotationError(ann_dir, problems)
    ids = [r.id for r in rows]
    aset = AnnotationSet(
        ids=ids, seeds=np.full(len(ids), -1, dtype=np.int64),
        classes=np.array([r.cls for r in rows], dtype=np.int32), latents=np.zeros((len(ids), 0), np.float32),
        images=np.stack([images[i] for i in ids]), masks=np.stack([masks[i] for i in ids]),
        labels=labelset, generator_hash=backend.generator_hash, truncation=1.0, noise="const", source="images",
        keypoints=KeypointSet(ids, np.stack([keypoints[i] for i in ids]), labelset.keypoints) if keypoints else None,
    )
    aset.save(out_h5)
    return aset


def import_annotations(ann_dir: str | os.PathLike, backend: GeneratorBackend, out_h5: str | os.PathLike,
                       truncation: float = 1.0, noise: str = "const",
                       labels: LabelSet | str | os.PathLike | None = None,
                       expected_count: int | None = None, classes: Sequence[int] | None = None,
                       expected_per_class: int | None = None, latents: str | os.PathLike | None = None,
                       merge: str | None = None, only_masked: bool = False, masks: bool = True) -> AnnotationSet:
    """Validate an annotation folder, re-render its samples and write them to HDF5.

    ``labels`` (a :class:`LabelSet` or a ``labels.yaml`` path) replaces the
    folder's own ``labels.yaml``. Each sample is re-rendered from its stored
    latent (or its seed's) with ``truncation``/``noise``; constant noise makes the
    image exactly the one annotated, which ``<id>.image.png`` confirms. For a
    class-conditional task, ``classes`` are the task's classes (every sample must
    be of one, every one must have samples) and ``expected_per_class`` the
    fewest annotations of each. A folder in the layout of BigDatasetGAN's release
    is read by :func:`~labelfactory.annotations.bigdatasetgan_release.import_release_annotations`, one
    of DatasetGAN's (with its ``latents`` file and class ``merge``) by
    :func:`~labelfactory.annotations.datasetgan_release.import_datasetgan_annotations`. With an
    image view (:mod:`labelfactory.generators.view`), masks and images are its crop.
    With ``only_masked`` the manifest rows without a mask are left out (their
    number logged) instead of being problems; the counts are of the rows kept.
    With ``masks`` False the folder is keypoint-only: no mask is read (the set's masks are all
    ``ignore_index``) and labels.yaml must name keypoints.
    Raises one :class:`AnnotationError` listing every problem; ``out_h5`` is
    written atomically and only when there are none.
    """
    ann_dir = Path(ann_dir)
    if not ann_dir.is_dir():
        raise AnnotationError(ann_dir, [f"{ann_dir.name}: annotation folder not found"])
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
    if only_masked and masks:
        rows = _masked_rows(ann_dir, rows, problems)
    if not masks and labelset is not None and labelset.keypoints is None:
        problems.append(f"{LABELS_FILE}: a keypoint-only folder (annotation.masks: false) must name `keypoints`")
    colours = _labelmap_colours(ann_dir, labelset, problems) if masks else None

    mask_of: dict[str, np.ndarray] = {}
    latents: dict[str, np.ndarray] = {}
    for row in rows:
        if not masks:
            if labelset is not None:
                mask_of[row.id] = np.full((res, res), labelset.ignore_index, np.uint8)
        else:
            name, mask = _row_mask(ann_dir, row.id, labelset, colours, problems)
            if mask is not None and check_mask(name, mask, shape, labelset, problems):
                mask_of[row.id] = view.pad(mask, res, labelset.ignore_index)
        if row.seed is not None:
            expected = backend.draw_latents([row.seed], None if row.cls is None or not backend.num_classes
                                            else [row.cls], truncation)[0]
            lat = ann_dir / f"{row.id}{LATENT_SUFFIX}"
            z = read_latent(lat, row.seed, expected, problems) if lat.is_file() else expected
            if z is not None and row.cls is not None:
                latents[row.id] = z

    problems += _extra_masks(ann_dir, {r.id for r in rows})
    height, width = (shape, shape) if isinstance(shape, int) else shape
    keypoints = folder_keypoints(ann_dir, [r.id for r in rows], labelset, width, height, problems)

    by_id = {r.id: r for r in rows}
    rendered: dict[str, np.ndarray] = {}
    if latents:
        images = render_uint8(backend, np.stack(list(latents.values())),
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
        latents=latent_array(np.stack([latents[i] for i in ids]).reshape(len(ids), -1)),
        images=np.stack([rendered[i] for i in ids]), masks=np.stack([mask_of[i] for i in ids]),
        labels=labelset, generator_hash=backend.generator_hash, truncation=float(truncation), noise=noise,
        keypoints=None if keypoints is None else moved_keypoints(keypoints, (view.box(res)[2], view.box(res)[0])),
    )
    aset.save(out_h5)
    return aset
