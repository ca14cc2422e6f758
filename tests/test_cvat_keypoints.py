"""CVAT's "COCO Keypoints 1.0" export read into keypoints: files built as CVAT's exporter
(Datumaro's ``coco_person_keypoints`` writer) builds them, corner-origin coordinates shifted to
pixel centres, points matched by name, every problem at once, and the importer reading an
export unpacked in a keypoint-only folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import tiny_generator

from labelfactory.annotations.cvat_keypoints import (
    COCO_KEYPOINTS_EXPORT,
    export_image_id,
    keypoints_from_coco_export,
    read_coco_export_keypoints,
    write_coco_export_keypoints,
)
from labelfactory.annotations.handout import sample_for_annotation
from labelfactory.annotations.importing import import_annotations
from labelfactory.annotations.keypoints import load_keypoints
from labelfactory.annotations.labels import AnnotationError, KeypointSpec, LabelSet

SPEC = KeypointSpec(("front_wheel", "back_wheel", "roof", "light"), flip_pairs=(("front_wheel", "back_wheel"),))
LABELS = LabelSet(("background", "car"), keypoints=SPEC)
OUTSIDE, OCCLUDED, VISIBLE = 0, 1, 2  # Datumaro's Points.Visibility: absent, hidden, visible


def cvat_export(images: list[tuple[str, int, int]], skeletons: list[tuple[int, list[tuple[float, float, int]]]],
                points: tuple[str, ...] = ("roof", "front_wheel", "back_wheel")) -> dict:
    """A COCO keypoints file as CVAT writes it: labels "car" (a skeleton with ``points``, its
    sublabels) and "shadow" (boxes); ``images`` as (file name, width, height), ``skeletons`` as
    (image index, the points' canvas (x, y) and visibility in the skeleton's order)."""
    categories = [{"id": 1, "name": "car", "supercategory": "", "keypoints": list(points),
                   "skeleton": [[2, 1], [3, 1]]},
                  {"id": 2 + len(points), "name": "shadow", "supercategory": "", "keypoints": [], "skeleton": []}]
    annotations = []
    for n, (image, elements) in enumerate(skeletons, start=1):
        shown = [(x, y) for x, y, v in elements if v != OUTSIDE] or [(0, 0)]
        (x0, y0), (x1, y1) = np.min(shown, 0).tolist(), np.max(shown, 0).tolist()
        annotations.append({"id": n, "image_id": image + 1, "category_id": 1, "segmentation": [],
                            "area": float((x1 - x0) * (y1 - y0)), "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0,
                            "attributes": {"occluded": False, "keyframe": False},
                            "keypoints": [c for x, y, v in elements for c in (x, y, v)],
                            "num_keypoints": sum(v != OUTSIDE for _, _, v in elements)})
    return {"licenses": [{"name": "", "id": 0, "url": ""}],
            "info": {"contributor": "", "date_created": "", "description": "", "url": "", "version": "", "year": ""},
            "categories": categories,
            "images": [{"id": i + 1, "width": w, "height": h, "file_name": name, "license": 0, "flickr_url": "",
                        "coco_url": "", "date_captured": 0} for i, (name, w, h) in enumerate(images)],
            "annotations": annotations}


def write_export(folder: Path, doc: dict) -> Path:
    path = folder / COCO_KEYPOINTS_EXPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def test_corner_origin_points_become_pixel_centres_in_the_labels_order(tmp_path):
    # the canvas spans [0, 32] x [0, 24]: a click on the centre of pixel (row 20, column 3) is (3.5, 20.5)
    doc = cvat_export([("s00000001.image.png", 32, 24), ("photos/car 2.jpg", 32, 24), ("empty.image.png", 32, 24)],
                      [(0, [(16.25, 2.5, VISIBLE), (3.5, 20.5, VISIBLE), (29.0, 21.0, OCCLUDED)]),
                       (1, [(7.0, 7.0, OUTSIDE), (0.0, 0.0, VISIBLE), (31.75, 23.75, OCCLUDED)])])
    kp = keypoints_from_coco_export(write_export(tmp_path, doc), LABELS)
    assert kp.ids == ["s00000001", "car 2"]  # an image without a skeleton has no keypoints
    np.testing.assert_array_equal(kp.keypoints, [  # front_wheel, back_wheel, roof, light (not in the skeleton)
        [[3, 20, 2], [28.5, 20.5, 1], [15.75, 2, 2], [0, 0, 0]],
        [[-0.5, -0.5, 2], [31.25, 23.25, 1], [0, 0, 0], [0, 0, 0]]])  # (0, 0): the first pixel's outer corner
    assert [export_image_id(n) for n in ("a/s1.image.png", "s1.png", "s1.image.jpg")] == ["s1", "s1", "s1.image"]

    out = tmp_path / "folder"
    out.mkdir()
    assert [p.name for p in write_coco_export_keypoints(tmp_path / COCO_KEYPOINTS_EXPORT, LABELS, out)] == [
        "s00000001.keypoints.json", "car 2.keypoints.json"]
    np.testing.assert_array_equal(load_keypoints(out, kp.ids, SPEC, (32, 24)).keypoints, kp.keypoints)


def test_every_problem_of_an_export_is_one_line_naming_file_and_image(tmp_path):
    doc = cvat_export([("a.image.png", 32, 32), ("b.image.png", 32, 32), ("c.image.png", 32, 32), ("d.png", 32, 32)],
                      [(0, [(1.5, 1.5, VISIBLE), (2.5, 2.5, VISIBLE), (3.5, 3.5, VISIBLE)]),
                       (0, [(4.5, 4.5, VISIBLE), (5.5, 5.5, VISIBLE), (6.5, 6.5, VISIBLE)]),  # a second car
                       (1, [(32.5, 1.5, VISIBLE), (2.5, 2.5, VISIBLE), (3.5, 3.5, 3)]),
                       (2, [(1.5, 1.5, VISIBLE), (2.5, 2.5, VISIBLE)]),
                       (3, [(1.5, 1.5, VISIBLE), (2.5, 2.5, VISIBLE), (3.5, 3.5, VISIBLE)])])
    doc["annotations"][-1]["image_id"] = 99
    path = write_export(tmp_path, doc)
    with pytest.raises(AnnotationError) as err:
        keypoints_from_coco_export(path, LABELS)
    name = "person_keypoints_default.json"
    assert sorted(err.value.problems) == sorted([
        f"{name}: a.image.png: 2 skeletons; one object per image",
        f"{name}: b.image.png: keypoint 'roof' at (32.0, 1.0) lies outside the 32x32 image",
        f"{name}: b.image.png: keypoint 'back_wheel': visibility 3 is not one of [0, 1, 2]",
        f"{name}: c.image.png: keypoints must be 9 numbers (x, y, v of each point of its skeleton), "
        "got [1.5, 1.5, 2, 2.5, 2.5, 2]",
        f"{name}: annotation 5 is of image id 99, which 'images' does not list"]), err.value.problems
    doc = cvat_export([("a.image.png", 32, 32)], [(0, [(1.5, 1.5, VISIBLE), (2.5, 2.5, VISIBLE)])],
                      points=("roof", "sunroof"))
    with pytest.raises(AnnotationError, match=r"skeleton 'car' has points \['sunroof'\] that labels.yaml's keypoints"):
        keypoints_from_coco_export(write_export(tmp_path, doc), LABELS)
    (tmp_path / COCO_KEYPOINTS_EXPORT).write_text("{")
    with pytest.raises(AnnotationError, match=f"{name}: unreadable JSON"):
        keypoints_from_coco_export(tmp_path / COCO_KEYPOINTS_EXPORT, LABELS)


def test_the_importer_reads_an_export_unpacked_in_a_keypoint_only_folder(tmp_path):
    backend = tiny_generator(size=16)
    folder = tmp_path / "ann"
    ids = list(sample_for_annotation(backend, [5, 6], folder)["id"])
    (folder / "labels.yaml").write_text(yaml.safe_dump({"names": list(LABELS.names), "keypoints": SPEC.as_dict()}))
    images = [(f"{sid}.image.png", 16, 16) for sid in ids]
    write_export(folder, cvat_export(images, [(0, [(8.5, 1.5, VISIBLE), (2.5, 12.5, VISIBLE), (13.5, 12.5, VISIBLE)]),
                                              (1, [(8.5, 2.5, VISIBLE), (3.5, 12.5, OCCLUDED), (0, 0, OUTSIDE)])]))
    aset = import_annotations(folder, backend, tmp_path / "a.h5", masks=False)
    assert aset.ids == ids
    np.testing.assert_array_equal(aset.keypoints.keypoints, [[[2, 12, 2], [13, 12, 2], [8, 1, 2], [0, 0, 0]],
                                                             [[3, 12, 1], [0, 0, 0], [8, 2, 2], [0, 0, 0]]])

    write_export(folder, cvat_export(images[:1] + [(images[1][0], 32, 32)],
                                     [(0, [(8.5, 1.5, VISIBLE), (2.5, 12.5, VISIBLE), (13.5, 12.5, VISIBLE)]),
                                      (1, [(8.5, 2.5, VISIBLE), (3.5, 12.5, VISIBLE), (0, 0, OUTSIDE)])]))
    kp, problems = read_coco_export_keypoints(folder, ids + ["s00000007"], SPEC, (16, 16))
    assert kp is None and problems == [
        f"{COCO_KEYPOINTS_EXPORT}: {ids[1]}.image.png: 32x32 in the export, but the annotated image is 16x16",
        f"{COCO_KEYPOINTS_EXPORT}: no skeleton of image 's00000007' (the manifest lists it)"]
    (folder / f"{ids[0]}.keypoints.json").write_text(json.dumps({"keypoints": {"roof": [8, 1, 2]}}))
    with pytest.raises(AnnotationError, match=f"{ids[1]}.keypoints.json: missing"):  # own files win over the export
        import_annotations(folder, backend, tmp_path / "b.h5", masks=False)
