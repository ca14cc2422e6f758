"""COCO-keypoints datasets (what CVAT, Label Studio and most keypoint benchmarks export) as the
keypoint experiment's real images: ``spec.path`` holds ``annotations/keypoints_<split>.json``
and the images in ``<split>/`` (default split names ``train`` and ``test``).

One object per image, as DatasetGAN's car and face keypoint sets: each image's largest
annotation with labelled keypoints (images without one are left out, their count logged). The
category's ``keypoints`` names are matched to the task's by name, so the file's order does not
matter; a name it lacks is an error. Coordinates are the files' (the centre of pixel ``(i, j)``
at ``(j, i)``, as annotation folders read them); with ``spec.resize`` every image is resized
(bilinear) to that square and its keypoints and area scaled with it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from labelfactory.downstream.datasets.base import dataset_root, read_image, require, split_name
from labelfactory.downstream.real import DatasetError, RealDataSpec
from labelfactory.downstream.real_keypoints import REAL_KEYPOINT_DATASETS, KeypointImages

log = logging.getLogger(__name__)

SPLITS = {"train": "train", "test": "test"}


def _objects(doc: dict, path: Path, names: Sequence[str]) -> list[tuple[dict, np.ndarray, float]]:
    """Per image with a labelled object: the image entry, its largest object's keypoints ``[K, 3]``
    in the order of ``names``, and that object's area."""
    cats = {c["id"]: c for c in doc.get("categories", [])}
    problems = []
    order = {}
    for cid, cat in cats.items():
        file_names = list(cat.get("keypoints") or [])
        missing = [n for n in names if n not in file_names]
        if missing:
            problems.append(f"category {cat.get('name', cid)!r} lacks keypoints {missing} (it has {file_names})")
        else:
            order[cid] = [file_names.index(n) for n in names]
    if not cats:
        problems.append("no categories")
    if problems:
        raise DatasetError(f"{path}: " + "; ".join(problems))
    images = {im["id"]: im for im in doc.get("images", [])}
    best: dict[int, tuple[float, dict]] = {}
    for ann in doc.get("annotations", []):
        if ann.get("image_id") not in images or ann.get("category_id") not in order:
            raise DatasetError(f"{path}: annotation {ann.get('id')} names an unknown image or category")
        if ann.get("num_keypoints", 1) and float(ann.get("area", 0.0)) >= best.get(ann["image_id"], (-1.0, None))[0]:
            best[ann["image_id"]] = (float(ann.get("area", 0.0)), ann)
    out = []
    for image_id, (area, ann) in sorted(best.items()):
        flat = np.asarray(ann["keypoints"], dtype=np.float32).reshape(-1, 3)
        keypoints = flat[order[ann["category_id"]]]
        if (keypoints[:, 2] > 0).any():
            out.append((images[image_id], keypoints, area))
    if len(out) < len(images):
        log.info("%s: %d of %d images have a labelled object", path, len(out), len(images))
    return out


@REAL_KEYPOINT_DATASETS.register("coco_keypoints")
def coco_keypoint_split(spec: RealDataSpec, split: str, names: Sequence[str]) -> KeypointImages:
    """The ``split`` of a COCO-keypoints dataset, one object per image (see the module)."""
    root = dataset_root(spec)
    name = split_name(spec, split, SPLITS)
    path = require(root / "annotations" / f"keypoints_{name}.json", "COCO keypoints annotations")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: unreadable JSON ({e})") from None
    objects = _objects(doc, path, names)
    if not objects:
        raise DatasetError(f"{path}: no image has an object with labelled keypoints")
    images, keypoints, areas = [], [], []
    for entry, kp, area in objects:
        image = read_image(require(root / name / entry["file_name"], f"image {entry['id']}"))
        kp = kp.copy()
        if spec.resize is not None:
            h, w = spec.resize
            sy, sx = h / image.shape[0], w / image.shape[1]
            on = kp[:, 2] > 0  # unlabelled keypoints keep their (ignored) zeros
            kp[on, 0], kp[on, 1] = (kp[on, 0] + 0.5) * sx - 0.5, (kp[on, 1] + 0.5) * sy - 0.5
            area *= sx * sy
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        images.append(image)
        keypoints.append(kp)
        areas.append(area)
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DatasetError(f"{path}: images of several sizes {sorted(shapes)[:3]}; set downstream.real.resize")
    return KeypointImages(np.stack(images), np.stack(keypoints), np.asarray(areas))
