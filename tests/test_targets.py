"""The transfer experiment's targets: VOC, Cityscapes and chest X-ray splits converted to COCO JSON
(RLE instances, semantic mask PNGs), read back by the semantic finetuning, and the pretraining target
run end to end on a toy stand-in of every target kind (format-true fixtures of tests/test_datasets.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pycocotools import mask as mask_util

from labelfactory.annotations.labels import LabelSet
from labelfactory.downstream.datasets import cityscapes, voc
from labelfactory.downstream.pretrain import subset_coco
from labelfactory.downstream.real import DatasetError, RealDataSpec, real_dataset
from labelfactory.downstream.targets import SEMANTIC_LABELS, target_semantic, write_target

from helpers import REPO, make_tiny_project, snakemake, update_config
from test_datasets import write_coco, write_cityscapes, write_montgomery, write_voc

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _converted(json_path):
    coco = json.loads(json_path.read_text())
    masks = {a["id"]: mask_util.decode(a["segmentation"]).astype(bool) for a in coco["annotations"]}
    return coco, masks


def test_voc_split_becomes_coco_with_its_objects_and_semantic_masks(tmp_path):
    root, masks = write_voc(tmp_path, objects=True)
    counts = write_target("voc", {"path": str(root)}, "train", True, tmp_path / "out" / "train.json")
    coco, decoded = _converted(tmp_path / "out" / "train.json")
    assert counts == {"images": 2, "instances": 2, "empty_images": 0}
    assert coco[SEMANTIC_LABELS] == list(voc.CLASSES) and [c["name"] for c in coco["categories"]] == list(voc.CLASSES[1:])
    for record, ann, stem in zip(coco["images"], coco["annotations"], ("2007_000032", "2007_000033")):
        truth = masks[stem]
        assert record["source"].endswith(f"{stem}.jpg") and ann["image_id"] == record["id"]
        assert ann["category_id"] == int(truth.max(initial=0, where=truth != 255))  # person 15, car 7
        assert np.array_equal(decoded[ann["id"]], (truth > 0) & (truth != 255))  # the void boundary is no object
        stored = np.asarray(Image.open(tmp_path / "out" / record["semantic_file_name"]))
        assert np.array_equal(stored, truth)  # class ids with 255 void, as VOC's reader gives them
    # semantic only: no instance masks needed, none written
    assert write_target("voc", {"path": str(root)}, "test", False, tmp_path / "sem" / "test.json")["instances"] == 0
    plain, _ = write_voc(tmp_path / "plain")
    with pytest.raises(DatasetError, match="no instance masks for the instance task of this voc target"):
        write_target("voc", {"path": str(plain)}, "train", True, tmp_path / "x" / "train.json")


def test_cityscapes_instances_are_the_thing_classes_of_instance_ids(tmp_path):
    root, _ = write_cityscapes(tmp_path, instances=True)
    write_target("cityscapes", {"path": str(root)}, "test", True, tmp_path / "out" / "test.json")
    coco, decoded = _converted(tmp_path / "out" / "test.json")
    assert coco[SEMANTIC_LABELS] == list(cityscapes.CLASSES)
    assert [c["name"] for c in coco["categories"]] == list(cityscapes.THING_CLASSES)
    first = [a for a in coco["annotations"] if a["image_id"] == coco["images"][0]["id"]]
    # columns 6, 7, 9, 10 hold person (24), car (26), train (31), bicycle (33); caravan (29) has no train id
    names = [cityscapes.THING_CLASSES[a["category_id"] - 1] for a in first]
    assert names == ["person", "car", "train", "bicycle"]
    for ann, column in zip(first, (6, 7, 9, 10)):
        expected = np.zeros((8, 16), bool)
        expected[:, column] = True
        assert np.array_equal(decoded[ann["id"]], expected) and ann["bbox"] == [column, 0, 1, 8]


def test_converted_semantic_masks_read_back_as_the_reader_gives_them(tmp_path):
    root, _ = write_cityscapes(tmp_path, instances=True)
    write_target("cityscapes", {"path": str(root)}, "test", False, tmp_path / "out" / "test.json")
    subset_coco(tmp_path / "out" / "test.json", None, 1.0, 0, tmp_path / "elsewhere" / "test-1.json")
    dataset, names = target_semantic(tmp_path / "elsewhere" / "test-1.json")  # absolute paths in the subset
    reader = real_dataset(RealDataSpec(type="cityscapes", path=str(root)), "test", LabelSet(cityscapes.CLASSES))
    assert names == cityscapes.CLASSES and len(dataset) == len(reader) == 2
    for (image, label), (want_image, want_label) in zip(dataset, reader):
        assert torch.equal(image, want_image) and torch.equal(label, want_label)
    resized, _ = target_semantic(tmp_path / "elsewhere" / "test-1.json", size=(16, 32))
    assert resized[0][1].shape == (16, 32)

    montgomery = write_montgomery(tmp_path, n=10)
    write_target("chest_xray", {"path": str(montgomery)}, "test", False, tmp_path / "lungs" / "test.json")
    lungs, names = target_semantic(tmp_path / "lungs" / "test.json")
    assert names == ("background", "lung") and len(lungs) == 3  # MCUCXR_0001, 0004, 0008: CRC32 % 5 == 0
    assert set(torch.unique(lungs[0][1]).tolist()) == {0, 1}


@pytest.mark.slow
def test_the_pretraining_target_runs_on_every_target_kind(tmp_path):
    """One random init finetuned on a toy stand-in of each kind of target, through the workflow: the
    toy scenes, COCO (its reader's layout), VOC with object masks, Cityscapes with instance ids (all four
    instance and semantic) and the Montgomery chest X-rays (semantic); the table has a block per target
    with that target's metrics, every one a number."""
    toy = yaml.safe_load((REPO / "config" / "pretraining-toy.yaml").read_text())["pretraining"]
    data = tmp_path / "data"
    voc_root, _ = write_voc(data, objects=True)
    for split in ("train", "val"):
        city_root, _ = write_cityscapes(data, split=split, instances=True)
    both = ["instance", "semantic"]
    targets = {
        "toy": {"type": "toy_scenes", "tasks": both, "train_images": 4, "test_images": 2, "size": 64},
        "coco": {"type": "coco", "tasks": both, "path": str(write_coco(data)), "resize": [32, 32],
                 "splits": {"train": "val2017", "test": "val2017"}},
        "voc": {"type": "voc", "tasks": both, "path": str(voc_root), "resize": [32, 32]},
        "cityscapes": {"type": "cityscapes", "tasks": both, "path": str(city_root), "resize": [32, 64]},
        "lungs": {"type": "chest_xray", "tasks": ["semantic"], "path": str(write_montgomery(data, n=10)),
                  "resize": [32, 32]},
    }
    make_tiny_project(tmp_path)  # a valid config's task; the pretraining target builds none of its jobs
    update_config(tmp_path, {"pretraining": {
        "arch": "resnet18", "threads": 1, "seeds": 1, "fractions": [1.0],
        "inits": {"random": {"method": "random"}}, "targets": targets,
        "detection": {**toy["detection"], "steps": 2, "batch_size": 2, "lr_steps": [1], "warmup_steps": 1},
        "semantic": {"model_options": {"output_stride": 8, "atrous_rates": [1], "head_channels": 8}, "steps": 2,
                     "batch_size": 2, "optimizer": "adamw", "lr": 1e-3}}})
    snakemake(tmp_path, "pretraining", timeout=1500)
    transfer = tmp_path / "results" / "pretraining"
    blocks = (transfer / "report" / "pretraining_table.md").read_text().split("**")[1:]
    tables = dict(zip(blocks[::2], blocks[1::2]))
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())["pretraining"]["targets"]  # keys sorted
    assert list(tables) == list(written) and set(tables) == set(targets)  # in the config's order
    for name, block in tables.items():
        header, _, row = (line for line in block.strip().splitlines()[:3])
        columns = [c.strip() for c in header.strip("|").split("|")]
        cells = dict(zip(columns, (c.strip() for c in row.strip("|").split("|"))))
        metrics = ["mIoU"] if name == "lungs" else ["box AP", "box AP50", "mask AP", "mask AP50", "mIoU"]
        assert columns == ["init", "fraction", "runs", "train images", *metrics], name
        assert cells["runs"] == "1" and all(math.isfinite(float(cells[m].split(" ± ")[0])) for m in metrics), cells
    semantic = json.loads((transfer / "semantic/cityscapes/random/1/seed0/results.json").read_text())
    assert set(semantic["iou_by_class"]) <= set(cityscapes.CLASSES) and semantic["num_train_images"] == 2
    detection = json.loads((transfer / "detection/voc/random/1/seed0/results.json").read_text())
    assert detection["status"] == "ok" and detection["num_train_images"] == 2 and "AP" in detection["segm"]
    assert not (transfer / "detection" / "lungs").exists() and not (transfer / "converted" / "coco").exists()
