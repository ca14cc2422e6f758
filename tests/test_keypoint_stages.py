"""The keypoint stages as a library: keypoint-only folders, keypoint shards, the COCO-keypoints
reader, and the config's keypoint checks."""

import json

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image

from labelfactory.annotations.importing import import_annotations
from labelfactory.annotations.keypoints import KeypointSet, write_keypoints
from labelfactory.annotations.labels import AnnotationError, KeypointSpec
from labelfactory.config import ConfigError, validate_config
from labelfactory.downstream.datasets.coco_keypoints import coco_keypoint_split
from labelfactory.downstream.real import DatasetError, RealDataSpec
from labelfactory.features import extract_features
from labelfactory.interpreters import TrainingData
from labelfactory.interpreters.keypoints import KeypointHeadConfig, train_keypoint_head
from labelfactory.synthesis.filtering import filter_manifest
from labelfactory.synthesis.keypoint_shards import (
    keypoint_names_of,
    read_keypoint_samples,
    read_keypoint_scores,
    synthesize_keypoint_shard,
)
from labelfactory.synthesis.shards import ShardError

from helpers import make_tiny_project, tiny_generator

NAMES = ["left", "right", "top"]


@pytest.fixture(scope="module")
def keypoint_folder(tmp_path_factory):
    """A keypoint-only folder of four tiny-generator samples: no masks, one keypoints file each."""
    root = tmp_path_factory.mktemp("kpf")
    make_tiny_project(root, n_annotations=4, size=16)
    ann = root / "ann"
    ids = sorted(p.name.removesuffix(".image.png") for p in ann.glob("*.image.png"))
    for i in ids:
        (ann / f"{i}.png").unlink()
    kp = np.array([[[3 + n, 8, 2], [12 - n, 8, 2], [8, 2 + n, 1]] for n in range(4)], dtype=np.float32)
    write_keypoints(ann, KeypointSet(ids, kp, KeypointSpec(NAMES, (("left", "right"),), ())))
    (ann / "labels.yaml").write_text(yaml.safe_dump(
        {"names": ["background", "a", "b"], "keypoints": {"names": NAMES, "flip_pairs": [["left", "right"]]}}))
    return ann, ids, kp


@pytest.fixture(scope="module")
def backend():
    return tiny_generator(size=16)


def test_keypoint_only_folder_imports_without_masks(keypoint_folder, backend, tmp_path):
    ann, ids, kp = keypoint_folder
    aset = import_annotations(ann, backend, tmp_path / "a.h5", masks=False)
    assert aset.ids == ids and (aset.masks == 255).all() and aset.masks.shape == (4, 16, 16)
    assert np.array_equal(aset.keypoints.keypoints, kp) and aset.keypoints.spec.flip_pairs == (("left", "right"),)
    with pytest.raises(AnnotationError) as info:  # as a masks folder, every row lacks its mask
        import_annotations(ann, backend, tmp_path / "b.h5")
    assert str(info.value).count("missing mask") == 4 and not (tmp_path / "b.h5").exists()


def test_a_keypoint_only_folder_reports_every_problem_at_once(keypoint_folder, backend, tmp_path):
    ann, ids, _ = keypoint_folder
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ann.iterdir():
        bad.joinpath(f.name).write_bytes(f.read_bytes())
    (bad / f"{ids[0]}.keypoints.json").unlink()
    (bad / f"{ids[1]}.keypoints.json").write_text(json.dumps({"keypoints": {"left": [40, 3, 2], "nose": [1, 1, 2]}}))
    (bad / f"{ids[2]}.keypoints.json").write_text(json.dumps({"keypoints": {"top": [3, 3, 7]}}))
    with pytest.raises(AnnotationError) as info:
        import_annotations(bad, backend, tmp_path / "c.h5", masks=False)
    lines = str(info.value).splitlines()
    for needle in (f"{ids[0]}.keypoints.json: missing", f"{ids[1]}.keypoints.json", "nose",
                   f"{ids[2]}.keypoints.json"):
        assert any(needle in line for line in lines), (needle, lines)
    (bad / "labels.yaml").write_text(yaml.safe_dump({"names": ["background", "a", "b"]}))
    with pytest.raises(AnnotationError, match="labels.yaml: a keypoint-only folder .* must name `keypoints`"):
        import_annotations(bad, backend, tmp_path / "c.h5", masks=False)


@pytest.fixture(scope="module")
def head(keypoint_folder, backend, tmp_path_factory):
    ann, ids, _ = keypoint_folder
    root = tmp_path_factory.mktemp("head")
    aset = import_annotations(ann, backend, root / "a.h5", masks=False)
    extract_features(backend, aset.ids, aset.latents, root / "f.h5", expected_images=aset.images)
    from labelfactory.features import FeatureStore

    data = TrainingData.from_annotations(FeatureStore.open(root / "f.h5"), aset)
    model = train_keypoint_head(data, aset.keypoints.keypoints, NAMES,
                                KeypointHeadConfig(num_members=3, steps=40, batch_size=32))
    model.save(root / "head.safetensors")
    return root / "head.safetensors"


def test_keypoint_shards_are_reproducible_and_filterable(head, backend, tmp_path):
    a, b, c = tmp_path / "00000.h5", tmp_path / "again.h5", tmp_path / "batch3.h5"
    assert synthesize_keypoint_shard(backend, head, a, range(100, 110), batch_size=4) == 10
    synthesize_keypoint_shard(backend, head, b, range(100, 110), batch_size=4)
    synthesize_keypoint_shard(backend, head, c, range(100, 110), batch_size=3)
    with h5py.File(a) as fa, h5py.File(b) as fb, h5py.File(c) as fc:
        for name in ("images", "keypoints", "spread", "score", "seed"):
            assert np.array_equal(fa[name][()], fb[name][()]), name
            assert np.allclose(fa[name][()], fc[name][()], atol=1e-3), name  # float noise of another batching
        assert fa.attrs["config_hash"] == fb.attrs["config_hash"] != fc.attrs["config_hash"]
        kp, spread = fa["keypoints"][()], fa["spread"][()]
    assert kp.shape == (10, 3, 3) and ((kp[..., :2] >= -0.5) & (kp[..., :2] <= 15.5)).all()
    assert (spread >= 0).all() and keypoint_names_of(a) == NAMES
    manifest = filter_manifest(read_keypoint_scores([a]), 0.3)
    assert int(manifest["kept"].sum()) == 7
    images, got, _ = read_keypoint_samples(a, [7, 2, 5])
    assert np.array_equal(got, kp[[7, 2, 5]]) and images.shape == (3, 16, 16, 3)


def test_a_file_that_is_not_a_keypoint_shard_is_named(head, tmp_path):
    other = tmp_path / "seg.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("images", data=np.zeros((1, 2, 2, 3), np.uint8))
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ShardError) as info:
        read_keypoint_scores([other, tmp_path / "junk.h5"])
    assert "2 bad keypoint shard(s)" in str(info.value)
    assert "seg.h5: not a keypoint shard" in str(info.value) and "junk.h5: not a readable HDF5 file" in str(info.value)


def write_coco_keypoints(root, names, split="train"):
    """A COCO-keypoints dataset of three images (the second with two objects, the third with none labelled)."""
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, anns = [], []
    for i in range(3):
        Image.fromarray(np.full((20, 40, 3), 50 * i, np.uint8)).save(root / split / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 40, "height": 20})
    anns.append({"id": 1, "image_id": 1, "category_id": 7, "area": 100.0, "num_keypoints": 2,
                 "keypoints": [10, 5, 2, 30, 15, 1, 0, 0, 0], "bbox": [10, 5, 20, 10], "iscrowd": 0})
    anns.append({"id": 2, "image_id": 2, "category_id": 7, "area": 50.0, "num_keypoints": 1,
                 "keypoints": [1, 1, 2, 0, 0, 0, 0, 0, 0], "bbox": [1, 1, 1, 1], "iscrowd": 0})
    anns.append({"id": 3, "image_id": 2, "category_id": 7, "area": 300.0, "num_keypoints": 3,
                 "keypoints": [5, 5, 2, 6, 6, 2, 7, 7, 2], "bbox": [5, 5, 2, 2], "iscrowd": 0})
    anns.append({"id": 4, "image_id": 3, "category_id": 7, "area": 10.0, "num_keypoints": 0,
                 "keypoints": [0] * 9, "bbox": [0, 0, 1, 1], "iscrowd": 0})
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": 7, "name": "car", "keypoints": names, "skeleton": []}]}
    (root / "annotations" / f"keypoints_{split}.json").write_text(json.dumps(doc))


def test_coco_keypoints_reader_takes_the_largest_object_in_the_tasks_order(tmp_path):
    write_coco_keypoints(tmp_path, ["b", "a", "c"])
    from pycocotools.coco import COCO  # the file is COCO's own format: its API reads it

    assert len(COCO(str(tmp_path / "annotations/keypoints_train.json")).getAnnIds()) == 4
    spec = RealDataSpec(type="coco_keypoints", path=str(tmp_path), resize=(10, 10))
    split = coco_keypoint_split(spec, "train", ["a", "b", "c"])
    assert split.images.shape == (2, 10, 10, 3)  # the third image has no labelled object
    assert split.keypoints[0].tolist() == [[(30.5 * 0.25) - 0.5, (15.5 * 0.5) - 0.5, 1],
                                           [(10.5 * 0.25) - 0.5, (5.5 * 0.5) - 0.5, 2], [0, 0, 0]]
    assert split.areas.tolist() == [100 * 0.125, 300 * 0.125]  # image 2: its larger object
    with pytest.raises(DatasetError, match="lacks keypoints \\['d'\\]"):
        coco_keypoint_split(spec, "train", ["a", "d"])
    with pytest.raises(DatasetError, match="keypoints_test.json: missing"):
        coco_keypoint_split(spec, "test", ["a"])


def test_config_keypoint_checks(tmp_path):
    base = {"device": "cpu", "checkpoints": {"g": {"url": "g.pt"}},
            "tasks": {"t": {"checkpoint": "g", "annotations": "ann", "annotation": {"masks": False}}}}
    with pytest.raises(ConfigError, match="annotation.masks: false .* needs the `keypoints` section"):
        validate_config(base, check_files=False)
    base["tasks"]["t"].update(keypoints={"enabled": True}, classes=[0, 1])
    with pytest.raises(ConfigError, match="keypoint tasks are of one class"):
        validate_config(base, check_files=False)
