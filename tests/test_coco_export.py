"""COCO export (RLE masks) of synthetic shards and of the multi-object toy scenes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from helpers import tiny_biggan
from labelfactory.downstream.class_aware import ClassAwareLabels
from labelfactory.downstream.coco_export import CocoImage, export_synthetic, mask_annotation, write_coco
from labelfactory.toybench.scenes import SceneSpec, render_scene, write_toy_scenes
from labelfactory.synthesis.dataset import SyntheticDataset
from labelfactory.synthesis.shards import ShardSettings, read_samples, synthesize_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _touch(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two masks are 4-neighbours somewhere (an occlusion boundary, as masks are disjoint)."""
    grown = b.copy()
    grown[1:] |= b[:-1]
    grown[:-1] |= b[1:]
    grown[:, 1:] |= b[:, :-1]
    grown[:, :-1] |= b[:, 1:]
    return bool((a & grown).any())


def _bounds(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def test_mask_annotation_round_trips_through_pycocotools():
    rng = np.random.default_rng(0)
    mask = np.zeros((20, 30), dtype=bool)
    mask[3:9, 5:17] = True
    mask[rng.random(mask.shape) < 0.1] = True
    ann = mask_annotation(mask)
    rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
    assert (mask_util.decode(rle) == mask).all()
    assert ann["area"] == mask.sum() == mask_util.area(rle)
    assert ann["bbox"] == _bounds(mask) == mask_util.toBbox(rle).tolist()
    json.dumps(ann)  # plain JSON types only
    with pytest.raises(ValueError, match="at least one pixel"):
        mask_annotation(np.zeros((4, 4), bool))


class ObjectWhereBright:
    """A interpreter whose object mask is where the generator's features are positive on average."""

    num_classes = 2

    def member_probabilities(self, features, classes=None):
        x = next(iter(features.values())).mean(1, keepdim=True)
        obj = (F.interpolate(x, size=(32, 32), mode="nearest") > 0).float()
        return torch.cat([1 - obj, obj], 1)[None].expand(2, -1, -1, -1, -1)


def test_synthetic_shard_exports_one_instance_per_kept_sample(tmp_path):
    shard = tmp_path / "00000.h5"
    classes = [0, 1, 0, 1, 0, 1]
    synthesize_shard(tiny_biggan(), ObjectWhereBright(), shard, range(50, 56), classes=classes,
                     settings=ShardSettings(batch_size=3), progress=False)
    manifest = pd.DataFrame({"shard": str(shard), "index": np.arange(6), "seed": np.arange(50, 56),
                             "class": classes, "score": 0.0, "kept": [True, True, False, True, True, True]})
    labels = ClassAwareLabels((0, 1), ("cat", "dog"))
    summary = export_synthetic(SyntheticDataset(manifest), labels, tmp_path / "coco" / "train.json")
    images, masks = read_samples(shard, [0, 1, 3, 4, 5])
    assert summary == {"images": 5, "instances": 5, "empty_images": 0}
    assert 0 < (masks == 1).mean() < 1  # the check below is not vacuous

    coco = COCO(str(tmp_path / "coco" / "train.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["cat", "dog"]
    for image_id, image, mask, k in zip(sorted(coco.getImgIds()), images, masks, [0, 1, 3, 4, 5]):
        record = coco.loadImgs(image_id)[0]
        assert (record["index"], record["seed"], record["class"]) == (k, 50 + k, classes[k])
        png = np.asarray(Image.open(tmp_path / "coco" / record["file_name"]))
        assert (png == image).all()
        (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert ann["category_id"] == classes[k] + 1
        decoded = coco.annToMask(ann)
        assert (decoded == (mask == 1)).all() and ann["area"] == decoded.sum() == (mask == 1).sum()
        assert ann["bbox"] == _bounds(mask == 1)


def test_ignore_pixels_and_empty_samples(tmp_path):
    labels = np.zeros((2, 8, 8), dtype=np.uint8)
    labels[0, 2:5, 2:6] = 1
    labels[0, 0, :] = 255  # ignore: not part of the instance
    labels[1, :, :4] = 255  # no object pixel at all

    def reader(shard, indices):
        return np.full((len(indices), 8, 8, 3), 7, np.uint8), labels[indices]

    manifest = pd.DataFrame({"shard": "s", "index": [0, 1], "seed": [0, 1], "class": [3, 3], "score": 0.0,
                             "kept": True})
    summary = export_synthetic(SyntheticDataset(manifest, reader=reader), ClassAwareLabels((3,), ("tree",)),
                               tmp_path / "a.json")
    assert summary == {"images": 2, "instances": 1, "empty_images": 1}
    coco = COCO(str(tmp_path / "a.json"))
    (ann,) = coco.loadAnns(coco.getAnnIds())
    assert ann["image_id"] == 1 and ann["area"] == 12 and ann["bbox"] == [2, 2, 4, 3]
    with pytest.raises(ValueError, match="not one of the task's classes"):
        export_synthetic(SyntheticDataset(manifest.assign(**{"class": 9}), reader=reader),
                         ClassAwareLabels((3,), ("tree",)), tmp_path / "b.json")


def test_write_coco_refuses_unknown_categories(tmp_path):
    item = CocoImage(np.zeros((4, 4, 3), np.uint8), np.ones((1, 4, 4), bool), [2])
    with pytest.raises(ValueError, match="outside 1..1"):
        write_coco(tmp_path / "x.json", ["one"], [item])
    assert not (tmp_path / "x.json").exists()


def test_toy_scenes_are_deterministic_multi_object_and_consistent():
    spec = SceneSpec(size=64)
    a, b = render_scene(7, spec), render_scene(7, spec)
    assert (a.image == b.image).all() and (a.masks == b.masks).all() and (a.classes == b.classes).all()
    assert not (render_scene(8, spec).image == a.image).all()
    counts, areas, occluded, classes = [], [], 0, set()
    for seed in range(30):
        s = render_scene(seed, spec)
        counts.append(len(s.masks))
        assert s.masks.shape == (len(s.classes), 64, 64) and s.masks.any((1, 2)).all()
        assert (s.masks.sum(0) <= 1).all()  # disjoint: occluded pixels belong to the front object
        expected = np.zeros((64, 64), np.uint8)
        for m, k in zip(s.masks, s.classes):
            expected[m] = k + 1
        assert (s.semantic == expected).all()
        areas += [int(m.sum()) for m in s.masks]
        classes |= set(s.classes.tolist())
        occluded += any(_touch(m, n) for i, m in enumerate(s.masks) for n in s.masks[i + 1:])
    assert set(counts) <= {2, 3, 4} and len(set(counts)) >= 2
    assert max(areas) > 4 * min(areas)  # scale spread
    assert classes == {0, 1, 2, 3} and occluded >= 5


def test_toy_scenes_write_coco_and_semantic_pngs(tmp_path):
    spec = SceneSpec(size=48, objects=(2, 3))
    summary = write_toy_scenes(tmp_path / "scenes" / "test.json", [3, 4, 5], spec)
    coco = COCO(str(tmp_path / "scenes" / "test.json"))
    assert summary["images"] == 3 and summary["instances"] == len(coco.getAnnIds()) >= 6
    for image_id, seed in zip(sorted(coco.getImgIds()), [3, 4, 5]):
        scene, record = render_scene(seed, spec), coco.loadImgs(image_id)[0]
        assert record["seed"] == seed
        assert (np.asarray(Image.open(tmp_path / "scenes" / record["file_name"])) == scene.image).all()
        assert (np.asarray(Image.open(tmp_path / "scenes" / record["semantic_file_name"])) == scene.semantic).all()
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert [a["category_id"] for a in anns] == (scene.classes + 1).tolist()
        for a, m in zip(anns, scene.masks):
            assert (coco.annToMask(a) == m).all() and a["bbox"] == _bounds(m)


@pytest.mark.parametrize("bad", [{"objects": (3, 2)}, {"scale": (0.5, 1.5)}, {"classes": ("dragon",)}])
def test_scene_spec_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        SceneSpec(**bad)
