"""Readers of the real downstream datasets, each on a tiny fixture in the dataset's own layout."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from labelfactory.annotations.labels import LabelSet
from labelfactory.downstream.datasets import celebamask, chest_xray, cityscapes, voc
from labelfactory.downstream.real import REAL_DATASETS, DatasetError, RealDataSpec, real_dataset

RNG = np.random.default_rng(0)
VOC = LabelSet(voc.CLASSES)
CITY = LabelSet(cityscapes.CLASSES)
LUNG = LabelSet(chest_xray.CLASSES)
FACE = LabelSet(celebamask.CLASSES)


def rgb(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def raises_naming(path: Path, words: str, load) -> None:
    """``load()`` raises a one-line DatasetError that starts with ``path`` and contains ``words``."""
    with pytest.raises(DatasetError) as e:
        load()
    message = str(e.value)
    assert message.startswith(str(path)) and words in message and "\n" not in message, message


def read_all(dataset) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [dataset[i] for i in range(len(dataset))]


# -- PASCAL VOC -----------------------------------------------------------------
def voc_palette() -> list[int]:
    """VOC's colour map (bit-interleaved class index)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        for j in range(8):
            r |= ((i >> (3 * j)) & 1) << (7 - j)
            g |= ((i >> (3 * j + 1)) & 1) << (7 - j)
            b |= ((i >> (3 * j + 2)) & 1) << (7 - j)
        palette += [r, g, b]
    return palette


def save_palette_png(mask: np.ndarray, path: Path) -> None:
    im = Image.frombytes("P", mask.shape[::-1], mask.astype(np.uint8).tobytes())
    im.putpalette(voc_palette())
    im.save(path)


def voc_mask(h: int, w: int, cls: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[2:h - 2, 3:w - 3] = cls
    mask[2, 3:w - 3] = 255  # the void boundary
    return mask


def write_voc(tmp_path: Path, splits=None, size=(12, 16), objects=False) -> tuple[Path, dict[str, np.ndarray]]:
    """VOC 2012's segmentation layout; with ``objects`` also ``SegmentationObject/`` (the one object of
    each image numbered 1, its void boundary 255, as VOC's object masks)."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation") + (("SegmentationObject",) if objects
                                                                                  else ()):
        (root / sub).mkdir(parents=True)
    splits = splits or {"train": ["2007_000032", "2007_000033"], "val": ["2007_000039"]}
    masks = {}
    for split, ids in splits.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for k, i in enumerate(ids):
            Image.fromarray(rgb(*size)).save(root / "JPEGImages" / f"{i}.jpg", quality=95)
            masks[i] = voc_mask(*size, cls=15 if k % 2 == 0 else 7)  # person, car
            save_palette_png(masks[i], root / "SegmentationClass" / f"{i}.png")
            if objects:
                save_palette_png(np.where(masks[i] == 255, 255, masks[i] > 0), root / "SegmentationObject" / f"{i}.png")
    return root, masks


def test_voc_reads_palette_indices_and_the_split_lists(tmp_path):
    root, masks = write_voc(tmp_path)
    spec = RealDataSpec(type="voc", path=str(root))
    train, test = real_dataset(spec, "train", VOC), real_dataset(spec, "test", VOC)
    assert len(train) == 2 and len(test) == 1 and test.files[0].name == "2007_000039.jpg"
    image, label = train[0]
    assert image.shape == (3, 12, 16) and label.dtype == torch.int64
    assert torch.equal(label, torch.from_numpy(masks["2007_000032"].astype(np.int64)))  # indices, not colours
    assert set(torch.unique(train[1][1]).tolist()) == {0, 7, 255}


def test_voc_void_becomes_the_tasks_ignore_index(tmp_path):
    root, masks = write_voc(tmp_path)
    _, label = real_dataset(RealDataSpec(type="voc", path=str(root)), "train", LabelSet(voc.CLASSES, 254))[0]
    assert (label[2, 3:13] == 254).all() and (label == 255).sum() == 0


@pytest.mark.parametrize("damage, culprit, words", [
    (lambda r: (r / "ImageSets/Segmentation/train.txt").unlink(), "ImageSets/Segmentation/train.txt", "missing"),
    (lambda r: (r / "SegmentationClass/2007_000033.png").unlink(), "SegmentationClass/2007_000033.png", "missing"),
    (lambda r: save_palette_png(np.full((12, 16), 22), r / "SegmentationClass/2007_000033.png"),
     "SegmentationClass/2007_000033.png", "values [22]"),
    (lambda r: save_palette_png(np.zeros((6, 16)), r / "SegmentationClass/2007_000033.png"),
     "SegmentationClass/2007_000033.png", "mask 6x16 but image"),
    (lambda r: (r / "JPEGImages/2007_000033.jpg").write_bytes(b"not a jpeg"), "JPEGImages/2007_000033.jpg",
     "unreadable image"),
])
def test_voc_errors_name_the_file(tmp_path, damage, culprit, words):
    root, _ = write_voc(tmp_path)
    damage(root)
    raises_naming(root / culprit, words,
                  lambda: read_all(real_dataset(RealDataSpec(type="voc", path=str(root)), "train", VOC)))


def test_voc_refuses_other_label_names(tmp_path):
    root, _ = write_voc(tmp_path)
    with pytest.raises(DatasetError, match="not the PASCAL VOC classes"):
        real_dataset(RealDataSpec(type="voc", path=str(root)), "train", LabelSet(("background", "person")))


def test_mixed_sizes_are_refused_or_resized(tmp_path):
    root, masks = write_voc(tmp_path)
    odd = "2007_000033"
    Image.fromarray(rgb(10, 14)).save(root / "JPEGImages" / f"{odd}.jpg")
    save_palette_png(voc_mask(10, 14, 7), root / "SegmentationClass" / f"{odd}.png")
    native = real_dataset(RealDataSpec(type="voc", path=str(root)), "train", VOC)
    raises_naming(root / "JPEGImages" / f"{odd}.jpg", "set downstream.real.resize", lambda: native[1])
    spec = RealDataSpec.from_dict({"type": "voc", "path": str(root), "resize": [6, 8]})
    resized = read_all(real_dataset(spec, "train", VOC))
    assert [tuple(im.shape) for im, _ in resized] == [(3, 6, 8)] * 2
    assert set(torch.unique(resized[1][1]).tolist()) <= {0, 7, 255}  # nearest: no blended label ids
    assert RealDataSpec.from_dict({"type": "voc", "resize": 64}).resize == (64, 64)


# -- MS-COCO --------------------------------------------------------------------
def coco_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def write_coco(tmp_path: Path, h=12, w=16) -> Path:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    person, car = np.zeros((h, w), bool), np.zeros((h, w), bool)
    person[1:6, 1:6] = True
    car[4:9, 4:12] = True  # overlaps the person at rows 4..5, columns 4..5
    doc = {
        "images": [{"id": 139, "file_name": "000000000139.jpg", "height": h, "width": w},
                   {"id": 285, "file_name": "000000000285.jpg", "height": h, "width": w}],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 3, "name": "car", "supercategory": "vehicle"}],
        "annotations": [
            {"id": 1, "image_id": 139, "category_id": 1, "iscrowd": 1, "segmentation": coco_rle(person),
             "bbox": [1, 1, 5, 5], "area": 25},
            {"id": 2, "image_id": 139, "category_id": 3, "iscrowd": 1, "segmentation": coco_rle(car),
             "bbox": [4, 4, 8, 5], "area": 40},
            {"id": 3, "image_id": 139, "category_id": 1, "iscrowd": 0,
             "segmentation": [[12.0, 9.0, 15.0, 9.0, 15.0, 12.0, 12.0, 12.0]], "bbox": [12, 9, 3, 3], "area": 9},
        ],
    }
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))
    for im in doc["images"]:
        Image.fromarray(rgb(h, w)).save(root / "val2017" / im["file_name"])
    return root


COCO_LABELS = LabelSet(("background", "person", "car"))


def test_coco_semantic_masks(tmp_path):
    pytest.importorskip("pycocotools")
    root = write_coco(tmp_path)
    test = real_dataset(RealDataSpec(type="coco", path=str(root)), "test", COCO_LABELS)
    assert [f.name for f in test.files] == ["000000000139.jpg", "000000000285.jpg"]
    label = test[0][1]
    assert label[2, 2] == 1 and label[7, 10] == 2  # category ids 1, 3 -> contiguous labels 1, 2
    assert (label[4:6, 4:6] == 255).all()  # overlapping instances are ignored
    assert label[10, 13] == 1 and label[0, 15] == 0  # a polygon; background
    assert (test[1][1] == 0).all()  # an image without instances
    assert torch.equal(pickle.loads(pickle.dumps(test))[0][1], label)  # DataLoader workers get a copy


@pytest.mark.parametrize("damage, culprit, words", [
    (lambda r, d: d["annotations"][0].update(category_id=7), "annotations/instances_val2017.json",
     "category id 7"),
    (lambda r, d: d["annotations"][0].update(image_id=5), "annotations/instances_val2017.json", "image 5"),
    (lambda r, d: (r / "val2017/000000000285.jpg").unlink(), "val2017/000000000285.jpg", "missing"),
    (lambda r, d: d["images"][0].update(height=11), "val2017/000000000139.jpg", "says 11x16"),
])
def test_coco_errors_name_the_file(tmp_path, damage, culprit, words):
    pytest.importorskip("pycocotools")
    root = write_coco(tmp_path)
    path = root / "annotations" / "instances_val2017.json"
    doc = json.loads(path.read_text())
    damage(root, doc)
    path.write_text(json.dumps(doc))
    raises_naming(root / culprit, words,
                  lambda: read_all(real_dataset(RealDataSpec(type="coco", path=str(root)), "test", COCO_LABELS)))


def test_coco_split_names_and_labels_are_checked(tmp_path):
    pytest.importorskip("pycocotools")
    root = write_coco(tmp_path)
    raises_naming(root / "annotations" / "instances_train2017.json", "missing",
                  lambda: real_dataset(RealDataSpec(type="coco", path=str(root)), "train", COCO_LABELS))
    spec = RealDataSpec(type="coco", path=str(root), splits={"train": "val2017", "test": "val2017"})
    assert len(real_dataset(spec, "train", COCO_LABELS)) == 2
    with pytest.raises(DatasetError, match=r"classes \['background', 'person', 'car'\]"):
        real_dataset(spec, "train", LabelSet(("background", "car", "person")))


# -- Cityscapes -----------------------------------------------------------------
def write_cityscapes(tmp_path: Path, split="val", city="frankfurt", n=2,
                     instances=False) -> tuple[Path, list[np.ndarray]]:
    """Cityscapes' fine layout; with ``instances`` also ``*_gtFine_instanceIds.png`` (16-bit: label id x 1000 +
    instance number on the columns of a class with instances, the bare label id elsewhere)."""
    root = tmp_path / "cityscapes"
    (root / "leftImg8bit" / split / city).mkdir(parents=True)
    (root / "gtFine" / split / city).mkdir(parents=True)
    ids = []
    for k in range(n):
        stem = f"{city}_000000_{k:06d}"
        Image.fromarray(rgb(8, 16)).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
        label_ids = np.array([0, 7, 8, 9, 11, 23, 24, 26, 29, 31, 33, 1, 4, 5, 6, 3], np.uint8)[None].repeat(8, 0)
        Image.fromarray(label_ids).save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
        if instances:
            numbered = np.where(label_ids >= 24, label_ids.astype(np.uint16) * 1000 + np.arange(16, dtype=np.uint16),
                                label_ids).astype(np.uint16)
            Image.fromarray(numbered).save(root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png")
        ids.append(label_ids)
    return root, ids


def test_cityscapes_label_ids_become_train_ids(tmp_path):
    root, _ = write_cityscapes(tmp_path)
    test = real_dataset(RealDataSpec(type="cityscapes", path=str(root)), "test", CITY)
    assert len(test) == 2
    image, label = test[1]
    assert image.shape == (3, 8, 16)
    assert label[0].tolist() == [255, 0, 1, 255, 2, 10, 11, 13, 255, 16, 18, 255, 255, 255, 255, 255]


def test_cityscapes_table_has_the_19_train_classes():
    train_ids = sorted(t for _, _, t in cityscapes.LABELS if t != 255)
    assert train_ids == list(range(19)) and [i for _, i, _ in cityscapes.LABELS] == list(range(34))
    assert cityscapes.CLASSES[:3] == ("road", "sidewalk", "building") and cityscapes.CLASSES[-1] == "bicycle"
    assert cityscapes.THING_CLASSES == ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")


def test_cityscapes_errors_name_the_file(tmp_path):
    root, ids = write_cityscapes(tmp_path)
    gt = root / "gtFine/val/frankfurt/frankfurt_000000_000001_gtFine_labelIds.png"
    Image.fromarray(np.full((8, 16), 34, np.uint8)).save(gt)
    spec = RealDataSpec(type="cityscapes", path=str(root))
    raises_naming(gt, "values [34]", lambda: read_all(real_dataset(spec, "test", CITY)))
    gt.unlink()
    raises_naming(gt, "missing", lambda: real_dataset(spec, "test", CITY))
    raises_naming(root / "leftImg8bit" / "train", "missing", lambda: real_dataset(spec, "train", CITY))


# -- chest X-rays ---------------------------------------------------------------
def lungs(h=10, w=8) -> tuple[np.ndarray, np.ndarray]:
    left, right = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    left[2:8, 1:3] = 255
    right[2:8, 5:7] = 255
    return left, right


def write_montgomery(tmp_path: Path, n=5) -> Path:
    root = tmp_path / "MontgomerySet"
    for sub in ("CXR_png", "ManualMask/leftMask", "ManualMask/rightMask"):
        (root / sub).mkdir(parents=True)
    left, right = lungs()
    for k in range(n):
        name = f"MCUCXR_{k:04d}_0.png"
        Image.fromarray(RNG.integers(0, 4096, (10, 8)).astype(np.uint16)).save(root / "CXR_png" / name)  # 12-bit
        Image.fromarray(left).save(root / "ManualMask/leftMask" / name)
        Image.fromarray(right).save(root / "ManualMask/rightMask" / name)
    return root


def test_montgomery_merges_both_lungs_and_splits_by_crc32(tmp_path):
    root = write_montgomery(tmp_path)
    spec = RealDataSpec(type="chest_xray", path=str(root))
    train, test = real_dataset(spec, "train", LUNG), real_dataset(spec, "test", LUNG)
    stems = {f"MCUCXR_{k:04d}_0" for k in range(5)}
    assert {p.stem for p in test.files} == {s for s in stems if zlib.crc32(s.encode()) % 5 == 0}
    assert {p.stem for p in test.files} | {p.stem for p in train.files} == stems and len(test) + len(train) == 5
    image, label = train[0]
    left, right = lungs()
    assert torch.equal(label, torch.from_numpy(((left | right) > 0).astype(np.int64)))
    assert image.shape == (3, 10, 8) and image.std() > 0.5  # 16-bit grey scaled, not clipped to white


def test_montgomery_needs_both_masks(tmp_path):
    root = write_montgomery(tmp_path)
    missing = root / "ManualMask/rightMask/MCUCXR_0002_0.png"
    missing.unlink()
    raises_naming(missing, "missing",
                  lambda: real_dataset(RealDataSpec(type="chest_xray", path=str(root)), "train", LUNG))


def write_shenzhen(tmp_path: Path, n=5, unmasked=(3,)) -> Path:
    root = tmp_path / "ChinaSet_AllFiles"
    (root / "CXR_png").mkdir(parents=True)
    (root / "mask").mkdir()
    left, right = lungs()
    for k in range(n):
        stem = f"CHNCXR_{k:04d}_0"
        Image.fromarray(rgb(10, 8)).save(root / "CXR_png" / f"{stem}.png")
        if k not in unmasked:
            Image.fromarray(left | right).save(root / "mask" / f"{stem}_mask.png")
    return root


def test_shenzhen_leaves_out_images_without_masks(tmp_path):
    root = write_shenzhen(tmp_path)
    spec = RealDataSpec(type="chest_xray", path=str(root))
    train, test = real_dataset(spec, "train", LUNG), real_dataset(spec, "test", LUNG)
    assert [p.stem for p in test.files] == ["CHNCXR_0002_0"]
    assert [p.stem for p in train.files] == ["CHNCXR_0000_0", "CHNCXR_0001_0", "CHNCXR_0004_0"]
    assert set(torch.unique(train[0][1]).tolist()) == {0, 1}


def test_shenzhen_errors_name_the_file(tmp_path):
    root = write_shenzhen(tmp_path)
    spec = RealDataSpec(type="chest_xray", path=str(root))
    bad = root / "mask/CHNCXR_0001_0_mask.png"
    Image.fromarray(np.full((10, 8), 7, np.uint8)).save(bad)
    raises_naming(bad, "values [7]", lambda: read_all(real_dataset(spec, "train", LUNG)))
    orphan = root / "mask/CHNCXR_0099_0_mask.png"
    Image.fromarray(np.zeros((10, 8), np.uint8)).save(orphan)
    raises_naming(orphan, "mask without an image", lambda: real_dataset(spec, "train", LUNG))


# -- CelebAMask-HQ --------------------------------------------------------------
def write_celebamask(tmp_path: Path, indices=(0, 1, 2, 2002)) -> Path:
    root = tmp_path / "CelebAMask-HQ"
    (root / "CelebA-HQ-img").mkdir(parents=True)
    for i in indices:
        Image.fromarray(rgb(16, 16)).save(root / "CelebA-HQ-img" / f"{i}.jpg")  # stands in for 1024 px
        folder = root / "CelebAMask-HQ-mask-anno" / str(i // 2000)
        folder.mkdir(parents=True, exist_ok=True)
        for part, (rows, cols) in {"skin": (slice(1, 7), slice(1, 7)), "nose": (slice(3, 5), slice(3, 5)),
                                   "hair": (slice(0, 2), slice(0, 8)), "hat": (slice(0, 1), slice(0, 8))}.items():
            mask = np.zeros((8, 8, 3), np.uint8)  # stands in for 512 px; 3 channels as cv2 writes them
            mask[rows, cols] = 255
            Image.fromarray(mask).save(folder / f"{i:05d}_{part}.png")
    return root


def test_celebamask_parts_overwrite_in_the_release_order(tmp_path):
    root = write_celebamask(tmp_path)
    train = real_dataset(RealDataSpec(type="celebamask_hq", path=str(root)), "train", FACE)
    image, label = train[0]
    assert image.shape == (3, 8, 8)  # the image is resized to its masks
    k = {p: celebamask.PARTS.index(p) + 1 for p in celebamask.PARTS}
    assert label[4, 4] == k["nose"] and label[2, 2] == k["skin"]  # nose after skin (not alphabetical)
    assert (label[0] == k["hat"]).all() and label[1, 0] == k["hair"] and label[7, 7] == 0
    assert len(celebamask.CLASSES) == 19 and celebamask.CLASSES[13] == "hair"


def test_celebamask_split_by_index_rule_or_official_partition(tmp_path):
    root = write_celebamask(tmp_path)
    spec = RealDataSpec(type="celebamask_hq", path=str(root))
    assert [p.stem for p in real_dataset(spec, "test", FACE).files] == ["2002"]  # crc32("2002") % 5 == 0
    assert [p.stem for p in real_dataset(spec, "train", FACE).files] == ["0", "1", "2"]
    (root / celebamask.MAPPING_FILE).write_text(
        "idx         orig_idx  orig_file\n0 119613 119614.jpg\n1 99 000100.jpg\n2 5 000006.jpg\n2002 7 000008.jpg\n")
    partition = tmp_path / "list_eval_partition.txt"
    partition.write_text("000006.jpg 1\n000008.jpg 0\n000100.jpg 2\n119614.jpg 0\n")
    spec = RealDataSpec(type="celebamask_hq", path=str(root), partition=str(partition))
    assert [p.stem for p in real_dataset(spec, "train", FACE).files] == ["0", "2002"]
    assert [p.stem for p in real_dataset(spec, "test", FACE).files] == ["1"]
    val = RealDataSpec(type="celebamask_hq", path=str(root), partition=str(partition), splits={"test": "val"})
    assert [p.stem for p in real_dataset(val, "test", FACE).files] == ["2"]
    partition.write_text("000006.jpg 1\n000100.jpg 2\n119614.jpg 0\n")
    raises_naming(partition, "000008.jpg", lambda: real_dataset(spec, "train", FACE))


@pytest.mark.parametrize("damage, culprit, words", [
    (lambda r: (r / "CelebAMask-HQ-mask-anno/0/00001_beard.png").write_bytes(b""),
     "CelebAMask-HQ-mask-anno/0/00001_beard.png", "not <index:05d>_<part>.png"),
    (lambda r: Image.fromarray(np.zeros((16, 16), np.uint8)).save(r / "CelebA-HQ-img/3.jpg"),
     "CelebA-HQ-img/3.jpg", "no part masks"),
    (lambda r: (r / "CelebAMask-HQ-mask-anno/1/02002_skin.png").rename(r / "CelebAMask-HQ-mask-anno/0/02002_skin.png"),
     "CelebAMask-HQ-mask-anno/0/02002_skin.png", "belongs in folder 1/"),
    (lambda r: Image.fromarray(np.zeros((4, 4), np.uint8)).save(r / "CelebAMask-HQ-mask-anno/0/00001_nose.png"),
     "CelebAMask-HQ-mask-anno/0/00001_nose.png", "4x4 but"),
])
def test_celebamask_errors_name_the_file(tmp_path, damage, culprit, words):
    root = write_celebamask(tmp_path)
    damage(root)
    raises_naming(root / culprit, words, lambda: read_all(
        real_dataset(RealDataSpec(type="celebamask_hq", path=str(root)), "train", FACE)))


# -- registration and detection -------------------------------------------------
@pytest.mark.parametrize("first", ["labelfactory.downstream.datasets", "labelfactory.downstream.experiment"])
def test_readers_register_whichever_module_is_imported_first(first):
    code = (f"import {first}\nfrom labelfactory.downstream.real import REAL_DATASETS\n"
            "print(sorted(REAL_DATASETS))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == str(sorted(REAL_DATASETS))
    assert {"voc", "coco", "cityscapes", "chest_xray", "celebamask_hq"} <= set(REAL_DATASETS)


def voc_xml(name: str, box: tuple[int, int, int, int]) -> str:
    return (f"<annotation><size><width>16</width><height>12</height><depth>3</depth></size><object><name>{name}"
            "</name><difficult>0</difficult><bndbox>" + "".join(
                f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box)) +
            "</bndbox></object></annotation>")


def test_voc_detection_dicts_through_detectron2(tmp_path):
    pytest.importorskip("detectron2")
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    root, _ = write_voc(tmp_path)
    (root / "ImageSets" / "Main").mkdir()
    # two ids: detectron2's np.loadtxt reads a one-line list as a 0-d array and fails
    (root / "ImageSets" / "Main" / "val.txt").write_text("2007_000032\n2007_000039\n")
    (root / "Annotations").mkdir()
    (root / "Annotations" / "2007_000032.xml").write_text(voc_xml("car", (1, 1, 16, 12)))
    spec = RealDataSpec(type="voc", path=str(root))
    from labelfactory.downstream.datasets import register_detection

    name = f"lf_voc_{tmp_path.name}"
    raises_naming(root / "Annotations" / "2007_000039.xml", "missing", lambda: register_detection(name, spec, "test"))
    (root / "Annotations" / "2007_000039.xml").write_text(voc_xml("person", (2, 3, 10, 9)))
    register_detection(name, spec, "test")
    whole, d = DatasetCatalog.get(name)
    assert whole["annotations"][0]["bbox"] == [0.0, 0.0, 16.0, 12.0]  # 1-based inclusive pixels -> box corners
    assert d["file_name"].endswith("2007_000039.jpg") and (d["height"], d["width"]) == (12, 16)
    (a,) = d["annotations"]
    assert a["category_id"] == voc.CLASSES.index("person") - 1 and a["bbox_mode"] == BoxMode.XYXY_ABS
    assert a["bbox"] == [1.0, 2.0, 10.0, 9.0]
    assert MetadataCatalog.get(name).thing_classes == list(voc.CLASSES[1:])


def test_coco_detection_dicts_through_detectron2(tmp_path):
    pytest.importorskip("detectron2")
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    from labelfactory.downstream.datasets import register_detection

    root = write_coco(tmp_path)
    name = f"lf_coco_{tmp_path.name}"
    register_detection(name, RealDataSpec(type="coco", path=str(root)), "test")
    dicts = DatasetCatalog.get(name)
    assert [d["image_id"] for d in dicts] == [139, 285] and dicts[1]["annotations"] == []
    anns = dicts[0]["annotations"]
    assert [a["category_id"] for a in anns] == [0, 1, 0]  # COCO ids 1, 3 -> contiguous 0, 1
    assert all(a["bbox_mode"] == BoxMode.XYWH_ABS and "segmentation" in a for a in anns)
    assert MetadataCatalog.get(name).thing_classes == ["person", "car"]


def test_cityscapes_detection_dicts_through_detectron2(tmp_path):
    for module in ("detectron2", "cityscapesscripts", "shapely"):
        pytest.importorskip(module)
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from labelfactory.downstream.datasets import register_detection

    root, _ = write_cityscapes(tmp_path, n=1)
    gt = root / "gtFine/val/frankfurt/frankfurt_000000_000000"
    Image.fromarray(np.zeros((8, 16), np.uint16)).save(f"{gt}_gtFine_instanceIds.png")  # 16-bit, as released
    gt.with_name(gt.name + "_gtFine_polygons.json").write_text(json.dumps({"imgHeight": 8, "imgWidth": 16, "objects": [
        {"label": "road", "polygon": [[0, 4], [15, 4], [15, 7], [0, 7]]},
        {"label": "car", "polygon": [[2, 1], [9, 1], [9, 5], [2, 5]]}]}))
    name = f"lf_cityscapes_{tmp_path.name}"
    register_detection(name, RealDataSpec(type="cityscapes", path=str(root)), "test")
    (d,) = DatasetCatalog.get(name)
    (a,) = d["annotations"]  # road has no instances
    assert a["category_id"] == cityscapes.THING_CLASSES.index("car") and (d["height"], d["width"]) == (8, 16)
    assert a["bbox"][0] < 2.5 < 9.5 < a["bbox"][2] and a["segmentation"]
    assert MetadataCatalog.get(name).thing_classes == list(cityscapes.THING_CLASSES)
