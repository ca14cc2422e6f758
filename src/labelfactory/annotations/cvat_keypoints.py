"""CVAT "COCO Keypoints 1.0" exports read into keypoints.

CVAT exports skeletons through Datumaro's ``coco_person_keypoints`` writer as
``annotations/person_keypoints_default.json``: ``categories[]`` name each skeleton's points
(``keypoints``), every skeleton drawn is one ``annotations[]`` entry with COCO's flat
``keypoints`` ``[x, y, v, ...]`` in its category's order, and ``images[]`` give each image's
``file_name`` (``<id>.image.png`` for a hand-out, so the id is the name less ``.image.png``, or
its stem) and size. Points are matched to ``labels.yaml``'s keypoints by name; a keypoint the
skeleton lacks is not labelled (``v = 0``). ``v`` is COCO's: 0 outside (not labelled), 1
occluded, 2 visible.

CVAT writes its canvas coordinates, whose origin is the image's top-left corner (the image
spans ``[0, W] × [0, H]``, the centre of pixel ``(i, j)`` at ``(j + 0.5, i + 0.5)``); they are
shifted by -0.5 into the keypoint files' convention (that centre at ``(j, i)``). An image with
no skeleton has no keypoints; one with several is a problem (one object per image). Every
problem is reported at once, one line each, naming the export file and the image.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from labelfactory.annotations.handout import IMAGE_SUFFIX
from labelfactory.annotations.keypoints import KeypointSet, parse_keypoints, write_keypoints
from labelfactory.annotations.labels import AnnotationError, KeypointSpec, LabelSet

COCO_KEYPOINTS_EXPORT = "annotations/person_keypoints_default.json"  # in CVAT's export, subset "default"
CORNER_TO_CENTRE = -0.5  # CVAT's corner-origin coordinates to pixel centres at integers


@dataclass(frozen=True)
class _Object:
    """One image's skeleton: flat ``[x, y, v] * K`` in ``labels.yaml``'s order and our convention."""

    file_name: str
    keypoints: list[float]
    width: int
    height: int


def export_image_id(file_name: str) -> str:
    """The annotation folder's id of an exported image: its name less ``.image.png``, else its stem."""
    name = PurePosixPath(file_name).name
    return name.removesuffix(IMAGE_SUFFIX) if name.endswith(IMAGE_SUFFIX) else PurePosixPath(name).stem


def _read_export(path: Path, name: str, problems: list[str]) -> dict | None:
    """The export's JSON with its ``categories``, ``images`` and ``annotations`` lists, or None."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(f"{name}: unreadable JSON ({e})")
        return None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("categories", "images",
                                                                                   "annotations")):
        problems.append(f"{name}: not a COCO keypoints file (needs 'categories', 'images' and 'annotations' lists)")
        return None
    return doc


def _category_orders(doc: dict, name: str, spec: KeypointSpec, problems: list[str]) -> dict[int, list[int]]:
    """For each skeleton category, the ``labels.yaml`` index of each of its points, in its order."""
    orders = {}
    for cat in doc["categories"]:
        points = cat.get("keypoints") or []
        unknown = [p for p in points if p not in spec.names]
        if unknown:
            problems.append(f"{name}: skeleton {cat.get('name')!r} has points {unknown} that labels.yaml's keypoints "
                            f"{list(spec.names)} do not name")
        elif points:
            orders[cat.get("id")] = [spec.names.index(p) for p in points]
    return orders


def _converted(flat, order: list[int], where: str, k: int, problems: list[str]) -> list[float] | None:
    """A skeleton's flat keypoints in ``labels.yaml``'s order (``k`` keypoints), shifted to pixel centres."""
    if not isinstance(flat, list) or len(flat) != 3 * len(order):
        problems.append(f"{where}: keypoints must be {3 * len(order)} numbers (x, y, v of each point of its "
                        f"skeleton), got {flat!r:.80}")
        return None
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in flat):
        problems.append(f"{where}: keypoints must be numbers, got {flat!r:.80}")
        return None
    out = [0.0] * (3 * k)
    for index, (x, y, v) in zip(order, (flat[i : i + 3] for i in range(0, len(flat), 3))):
        out[3 * index : 3 * index + 3] = [x + CORNER_TO_CENTRE, y + CORNER_TO_CENTRE, v] if v else [0.0, 0.0, 0]
    return out


def _export_objects(path: Path, name: str, spec: KeypointSpec, problems: list[str]) -> dict[str, _Object]:
    """Every image's skeleton in the export at ``path`` (named ``name`` in problems), by image id."""
    doc = _read_export(path, name, problems)
    if doc is None:
        return {}
    orders = _category_orders(doc, name, spec, problems)
    images = {img.get("id"): img for img in doc["images"] if isinstance(img, dict)}
    found: dict[str, list[_Object]] = {}
    for ann in doc["annotations"]:
        order = orders.get(ann.get("category_id"))
        if order is None or "keypoints" not in ann:  # not a skeleton (or its category's problem is reported)
            continue
        image = images.get(ann.get("image_id"))
        if image is None:
            problems.append(f"{name}: annotation {ann.get('id')} is of image id {ann.get('image_id')!r}, "
                            "which 'images' does not list")
            continue
        file_name = str(image.get("file_name", ""))
        flat = _converted(ann["keypoints"], order, f"{name}: {file_name}", len(spec.names), problems)
        if flat is not None:
            found.setdefault(export_image_id(file_name), []).append(
                _Object(file_name, flat, int(image.get("width", 0)), int(image.get("height", 0))))
    several = {i: objs for i, objs in found.items() if len(objs) > 1}
    problems += [f"{name}: {objs[0].file_name}: {len(objs)} skeletons; one object per image" for objs in several.values()]
    return {i: objs[0] for i, objs in found.items() if i not in several}


def _row(obj: _Object, name: str, spec: KeypointSpec, problems: list[str]) -> np.ndarray | None:
    """The validated ``[K, 3]`` keypoints of one skeleton (outside its image: a problem)."""
    row, found = parse_keypoints(f"{name}: {obj.file_name}", {"keypoints": obj.keypoints}, spec,
                                 obj.width, obj.height)
    problems += found
    return row


def keypoints_from_coco_export(json_path: str | os.PathLike, labels: LabelSet) -> KeypointSet:
    """The keypoints of every image with a skeleton in a CVAT "COCO Keypoints 1.0" export file, by
    image id in the export's order; raises :class:`AnnotationError` naming every problem."""
    path = Path(json_path)
    if labels.keypoints is None:
        raise AnnotationError(path, ["labels.yaml names no keypoints to match the skeleton's points to"])
    problems: list[str] = []
    objects = _export_objects(path, path.name, labels.keypoints, problems)
    rows = {image_id: _row(obj, path.name, labels.keypoints, problems) for image_id, obj in objects.items()}
    if problems:
        raise AnnotationError(path, problems)
    k = len(labels.keypoints.names)
    return KeypointSet(list(rows), np.stack(list(rows.values())) if rows else np.zeros((0, k, 3)), labels.keypoints)


def write_coco_export_keypoints(json_path: str | os.PathLike, labels: LabelSet,
                                folder: str | os.PathLike) -> list[Path]:
    """Write a CVAT "COCO Keypoints 1.0" export's keypoints as ``<id>.keypoints.json`` into an
    annotation folder; returns the paths."""
    return write_keypoints(folder, keypoints_from_coco_export(json_path, labels))


def read_coco_export_keypoints(folder: str | os.PathLike, ids: Sequence[str], spec: KeypointSpec,
                               size: tuple[int, int]) -> tuple[KeypointSet | None, list[str]]:
    """As :func:`~labelfactory.annotations.keypoints.read_keypoint_files`, from the CVAT export
    unpacked in ``folder`` (``annotations/person_keypoints_default.json``): the keypoints of images
    ``ids`` of ``size`` ``(width, height)`` and every problem (an image without a skeleton or of
    another size included); the set is None if there is any."""
    problems: list[str] = []
    objects = _export_objects(Path(folder) / COCO_KEYPOINTS_EXPORT, COCO_KEYPOINTS_EXPORT, spec, problems)
    rows = []
    for image_id in ids:
        obj = objects.get(image_id)
        if obj is None:
            problems.append(f"{COCO_KEYPOINTS_EXPORT}: no skeleton of image {image_id!r} (the manifest lists it)")
        elif (obj.width, obj.height) != tuple(size):
            problems.append(f"{COCO_KEYPOINTS_EXPORT}: {obj.file_name}: {obj.width}x{obj.height} in the export, "
                            f"but the annotated image is {size[0]}x{size[1]}")
        else:
            rows.append(_row(obj, COCO_KEYPOINTS_EXPORT, spec, problems))
    if problems:
        return None, problems
    return KeypointSet(list(ids), np.stack(rows) if rows else np.zeros((0, len(spec.names), 3)), spec), []
