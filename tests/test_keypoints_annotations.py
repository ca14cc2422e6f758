"""Keypoints in labels.yaml, keypoint annotation files, and keypoints in the annotation set's HDF5."""

import json

import h5py
import numpy as np
import pytest
import yaml

from labelfactory.annotations.annotation_set import AnnotationSet, load_annotation_set
from labelfactory.annotations.keypoints import (
    KeypointSet,
    keypoint_path,
    load_keypoints,
    read_keypoint_files,
    write_keypoints,
)
from labelfactory.annotations.labels import AnnotationError, KeypointSpec, LabelSet, load_labels

SPEC = KeypointSpec(("left_eye", "right_eye", "nose"), (("left_eye", "right_eye"),),
                    (("left_eye", "nose"), ("right_eye", "nose")))


def write_labels(path, doc):
    path.write_text(yaml.safe_dump(doc))
    return path


def test_labels_yaml_keypoints(tmp_path):
    doc = {"names": ["background", "face"], "keypoints": SPEC.as_dict()}
    labels = load_labels(write_labels(tmp_path / "labels.yaml", doc))
    assert labels.keypoints == SPEC and labels.names == ("background", "face")
    assert SPEC.flip_permutation() == [1, 0, 2]
    # without the section, the label set is what it always was
    plain = load_labels(write_labels(tmp_path / "labels.yaml", {"names": ["background", "face"]}))
    assert plain == LabelSet(("background", "face")) and plain.keypoints is None


def test_bad_keypoint_section_reports_every_problem_by_key(tmp_path):
    doc = {"names": ["background", "face"], "keypoints": {
        "names": ["eye", "eye", "nose", "chin"], "colour": "red",
        "flip_pairs": [["eye", "ear"], ["nose", "nose"], ["chin"], ["eye", "chin"], ["chin", "nose"]],
        "skeleton": [["nose", "tail"]]}}
    with pytest.raises(AnnotationError) as e:
        load_labels(write_labels(tmp_path / "labels.yaml", doc))
    problems = e.value.problems
    assert all(p.startswith("labels.yaml: keypoints") for p in problems), problems
    text = "\n".join(problems)
    for expected in ("unknown keys ['colour']", "keypoints.names has duplicates ['eye']",
                     "keypoints.flip_pairs[0] names unknown keypoints ['ear']",
                     "keypoints.flip_pairs[1] pairs keypoint 'nose' with itself",
                     "keypoints.flip_pairs[2] must be a pair", "keypoints.skeleton[0] names unknown keypoints ['tail']",
                     "keypoints.flip_pairs names ['chin', 'eye'] in more than one pair"):
        assert expected in text, text
    assert len(problems) == 7
    with pytest.raises(ValueError, match="pairs keypoint 'a' with itself"):
        KeypointSpec(("a", "b"), (("a", "a"),))


def test_keypoint_files_flat_and_named(tmp_path):
    (tmp_path / "a.keypoints.json").write_text(json.dumps({"keypoints": [3, 4, 2, 10.5, 4, 1, 0, 0, 0]}))
    (tmp_path / "b.keypoints.json").write_text(json.dumps({"keypoints": {"nose": [7, 9.25, 2], "left_eye": [1, 1, 2]}}))
    kps = load_keypoints(tmp_path, ["a", "b"], SPEC, 16)
    assert kps.ids == ["a", "b"] and kps.keypoints.shape == (2, 3, 3) and kps.keypoints.dtype == np.float32
    assert kps.keypoints[0].tolist() == [[3, 4, 2], [10.5, 4, 1], [0, 0, 0]]
    assert kps.keypoints[1].tolist() == [[1, 1, 2], [0, 0, 0], [7, 9.25, 2]]  # left out: not labelled
    # written back as COCO's flat lists, they read the same
    out = tmp_path / "out"
    out.mkdir()
    write_keypoints(out, kps)
    assert json.loads(keypoint_path(out, "b").read_text())["keypoints"][6:] == [7.0, 9.25, 2]
    assert np.array_equal(load_keypoints(out, ["a", "b"], SPEC, 16).keypoints, kps.keypoints)
    assert kps.subset(["b"]).keypoints.tolist() == [kps.keypoints[1].tolist()]


def test_bad_keypoint_files_report_every_problem_by_file(tmp_path):
    files = {
        "unknown": {"keypoints": {"nose": [1, 1, 2], "tail": [1, 1, 2]}},
        "count": {"keypoints": [1, 1, 2, 3, 3, 2]},
        "outside": {"keypoints": [1, 1, 2, 16, 3, 2, 0, -0.5, 1]},
        "visibility": {"keypoints": [1, 1, 3, 2, 2, 2, 1, 1, 2]},
        "shape": {"points": []},
        "notanumber": {"keypoints": [1, "a", 2, 2, 2, 2, 1, 1, 2]},
    }
    for name, doc in files.items():
        (tmp_path / f"{name}.keypoints.json").write_text(json.dumps(doc))
    (tmp_path / "broken.keypoints.json").write_text("{")
    ids = [*files, "broken", "absent"]
    keypoints, problems = read_keypoint_files(tmp_path, ids, SPEC, 16)
    assert keypoints is None
    by_file = {p.split(": ")[0] for p in problems}
    assert by_file == {f"{i}.keypoints.json" for i in ids}, problems
    text = "\n".join(problems)
    for expected in ("unknown.keypoints.json: unknown keypoints ['tail']",
                     "count.keypoints.json: keypoints has 6 values; 3 keypoints need 9",
                     "outside.keypoints.json: keypoint 'right_eye' at (16, 3) lies outside the 16x16 image",
                     "visibility.keypoints.json: keypoint 'left_eye': visibility 3 is not one of [0, 1, 2]",
                     "shape.keypoints.json: must be a JSON object with a 'keypoints' entry",
                     "notanumber.keypoints.json: keypoint 'left_eye': x, y, v must be finite numbers",
                     "broken.keypoints.json: unreadable JSON",
                     "absent.keypoints.json: missing (the manifest lists 'absent')"):
        assert expected in text, text
    assert "nose" not in text.split("outside.keypoints.json")[1].split("\n")[0]  # (0, -0.5) is inside
    with pytest.raises(AnnotationError, match="8 problems"):
        load_keypoints(tmp_path, ids, SPEC, 16)


def make_set(n=3, size=8, keypoints=None):
    rng = np.random.default_rng(0)
    return AnnotationSet(
        ids=[f"s{i}" for i in range(n)], seeds=np.arange(n), classes=np.zeros(n, np.int32),
        latents=rng.standard_normal((n, 4)).astype(np.float32),
        images=rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
        masks=rng.integers(0, 2, (n, size, size), dtype=np.uint8),
        labels=LabelSet(("background", "face"), keypoints=None if keypoints is None else keypoints.spec),
        generator_hash="g", truncation=1.0, noise="const", keypoints=keypoints)


def test_annotation_set_keeps_keypoints(tmp_path):
    kp = np.random.default_rng(1).uniform(0, 7, (3, 3, 3)).astype(np.float32)
    kp[..., 2] = 2
    aset = make_set(keypoints=KeypointSet(["s0", "s1", "s2"], kp, SPEC))
    aset.save(tmp_path / "a.h5")
    loaded = load_annotation_set(tmp_path / "a.h5")
    assert np.array_equal(loaded.keypoints.keypoints, kp) and loaded.keypoints.ids == aset.ids
    assert loaded.keypoints.spec == SPEC and loaded.labels.keypoints == SPEC
    # a set without keypoints is written and read as before
    make_set().save(tmp_path / "b.h5")
    with h5py.File(tmp_path / "b.h5") as f:
        assert "keypoints" not in f and "keypoints" not in f.attrs
    plain = load_annotation_set(tmp_path / "b.h5")
    assert plain.keypoints is None and plain.labels.keypoints is None
    # keypoints of other images, or a file with half of them, are refused
    with pytest.raises(ValueError, match="ids differ"):
        make_set(keypoints=KeypointSet(["s0", "s2", "s1"], kp, SPEC)).save(tmp_path / "c.h5")
    with h5py.File(tmp_path / "a.h5", "a") as f:
        del f.attrs["keypoints"]
    with pytest.raises(AnnotationError, match="one is missing"):
        load_annotation_set(tmp_path / "a.h5")
