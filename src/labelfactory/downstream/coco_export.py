"""Labelled images as a COCO instance-segmentation dataset (JSON with RLE masks).

The layout any detectron2 or mmdetection setup reads: ``<dir>/<name>.json``
with the images as PNG files under ``<dir>/images/`` (``file_name`` is relative
to the JSON's folder, which is the image root) and, where given, semantic
masks as PNG files under ``<dir>/semantic/`` (``semantic_file_name``). Every
instance is a binary mask, stored as compressed RLE (``pycocotools.mask.encode``)
with its pixel ``area`` and the tight ``bbox`` ``[x, y, w, h]`` around its
pixels. Category ids are 1..K, in the order of the category names given.

Sources: the synthetic samples of a BigDatasetGAN task (one instance per
sample: its object mask, of the sample's class) and any iterable of
:class:`CocoImage` (e.g. the multi-object toy scenes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from pycocotools import mask as mask_util

from labelfactory.core.io import atomic_write_text
from labelfactory.synthesis.shards import read_samples
from labelfactory.downstream.class_aware import OBJECT, ClassAwareLabels
from labelfactory.downstream.data import Reader

IMAGE_FOLDER, SEMANTIC_FOLDER = "images", "semantic"


@dataclass(frozen=True)
class CocoImage:
    """One image and its instances: uint8 ``image`` ``[H,W,3]``, boolean ``masks``
    ``[K,H,W]`` with their 1-based ``category_ids`` ``[K]``, an optional uint8
    ``semantic`` mask ``[H,W]``; ``extra`` fields are stored in the image record
    (provenance: seed, shard, ...)."""

    image: np.ndarray
    masks: np.ndarray
    category_ids: Sequence[int]
    semantic: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def mask_annotation(mask: np.ndarray) -> dict:
    """COCO fields of one binary mask: RLE ``segmentation``, ``area``, ``bbox``, ``iscrowd``."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("an instance mask must have at least one pixel")
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    x0, y0 = int(cols[0]), int(rows[0])
    return {
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "area": int(mask.sum()),
        "bbox": [x0, y0, int(cols[-1]) - x0 + 1, int(rows[-1]) - y0 + 1],
        "iscrowd": 0,
    }


def write_coco(json_path: str | Path, categories: Sequence[str], images: Iterable[CocoImage]) -> dict:
    """Write ``images`` as PNGs under ``<json dir>/images/`` (their semantic masks
    under ``semantic/``), then the COCO JSON, atomically: an existing JSON means a
    complete dataset. Returns counts: ``images``, ``instances``, ``empty_images``."""
    json_path = Path(json_path)
    (json_path.parent / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
    num_categories = len(categories)
    records, annotations, empty = [], [], 0
    for image_id, item in enumerate(images, start=1):
        h, w = item.image.shape[:2]
        masks = np.asarray(item.masks, dtype=bool).reshape(-1, h, w)
        if len(masks) != len(item.category_ids):
            raise ValueError(f"image {image_id}: {len(masks)} masks but {len(item.category_ids)} category ids")
        record = {**item.extra, "id": image_id, "file_name": f"{IMAGE_FOLDER}/{image_id:08d}.png",
                  "height": h, "width": w}
        Image.fromarray(item.image).save(json_path.parent / record["file_name"])
        if item.semantic is not None:
            record["semantic_file_name"] = semantic = f"{SEMANTIC_FOLDER}/{image_id:08d}.png"
            (json_path.parent / SEMANTIC_FOLDER).mkdir(exist_ok=True)
            Image.fromarray(np.asarray(item.semantic, dtype=np.uint8)).save(json_path.parent / semantic)
        records.append(record)
        for mask, cat in zip(masks, item.category_ids):
            if not 1 <= int(cat) <= num_categories:
                raise ValueError(f"image {image_id}: category id {cat} outside 1..{num_categories}")
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cat),
                                **mask_annotation(mask)})
        empty += len(masks) == 0
    atomic_write_text(json_path, json.dumps({
        "images": records,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": str(n), "supercategory": "object"} for k, n in enumerate(categories)],
    }) + "\n")
    return {"images": len(records), "instances": len(annotations), "empty_images": empty}



def synthetic_images(manifest: pd.DataFrame, labels: ClassAwareLabels, kept_only: bool = True,
                     reader: Reader = read_samples) -> Iterator[CocoImage]:
    """The samples of a manifest (kept ones unless ``kept_only=False``), read one
    shard at a time, each with one instance: its object mask (label 1; ignore
    pixels are left out) of the category of its generator class. A sample with
    no object pixel comes without instance."""
    rows = manifest[manifest["kept"].astype(bool)] if kept_only else manifest
    for shard, group in rows.groupby("shard", sort=False):
        indices, classes = group["index"].to_numpy(dtype=np.int64), group["class"].to_numpy(dtype=np.int64)
        images, masks = reader(str(shard), indices)
        for image, mask, cat, index, seed, cls in zip(images, masks, labels.label_of(classes), indices,
                                                      group["seed"].to_numpy(dtype=np.int64), classes):
            obj = (mask == OBJECT)[None]
            has = bool(obj.any())
            yield CocoImage(image, obj if has else obj[:0], [int(cat)] if has else [],
                            extra={"shard": str(shard), "index": int(index), "seed": int(seed), "class": int(cls)})


def export_synthetic(manifest: pd.DataFrame, labels: ClassAwareLabels, json_path: str | Path,
                     kept_only: bool = True, reader: Reader = read_samples) -> dict:
    """A BigDatasetGAN task's synthetic set as COCO JSON + PNGs (see :func:`synthetic_images`);
    categories are the task's class names."""
    return write_coco(json_path, labels.names, synthetic_images(manifest, labels, kept_only, reader))
