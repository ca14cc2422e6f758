"""Labelled images as a COCO instance-segmentation dataset (JSON with RLE masks).

The layout any detectron2 or mmdetection setup reads: ``<dir>/<name>.json``
with the images as PNG files under ``<dir>/images/`` (``file_name`` is relative
to the JSON's folder, which is the image root) and, where given, semantic
masks as PNG files under ``<dir>/semantic/`` (``semantic_file_name``). Every
instance is a binary mask, stored as compressed RLE (``pycocotools.mask.encode``)
with its pixel ``area`` and the tight ``bbox`` ``[x, y, w, h]`` around its
pixels. Category ids are 1..K, in the order of the category names given.

Sources: the synthetic samples of a BigDatasetGAN task (one instance per
sample: its object mask, of the sample's class; the export format ``coco`` of
:mod:`labelfactory.synthesis.export`, registered here) and any iterable of
:class:`CocoImage` (e.g. the multi-object toy scenes). Written as a stream: memory
holds one image, however many there are.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from pycocotools import mask as mask_util

from labelfactory.core.io import atomic_path
from labelfactory.downstream.class_aware import OBJECT, ClassAwareLabels
from labelfactory.synthesis.dataset import Sample, SyntheticDataset
from labelfactory.synthesis.export.base import EXPORTERS, ExportOptions, TaskInfo, pieces, png_bytes, write_file
from labelfactory.synthesis.export.journal import Journal

IMAGE_FOLDER, SEMANTIC_FOLDER, COCO_JSON = "images", "semantic", "annotations.json"


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


class CocoWriter:
    """Streams a COCO dataset to ``json_path``: each added image's PNG (and semantic mask) under the
    JSON's folder, its record into the JSON and its instances into a spool file, so memory holds one
    image; :meth:`close` appends the instances and renames the JSON into place (an existing JSON
    means a complete dataset). The JSON is the one ``json.dumps`` writes of all records at once."""

    def __init__(self, json_path: str | Path, categories: Sequence[str]):
        self.json_path, self.root, self.categories = Path(json_path), Path(json_path).parent, list(categories)
        (self.root / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
        self._atomic = atomic_path(self.json_path)
        tmp = self._atomic.__enter__()
        self._json = open(tmp, "w")
        self._spool = tempfile.TemporaryFile("w+", dir=self.root)
        self._json.write('{"images": [')
        self.counts = {"images": 0, "instances": 0, "empty_images": 0}

    def add(self, item: CocoImage, write_files: bool = True) -> list[Path]:
        """Add ``item`` as the next image (id 1, 2, ...); returns its files, written unless
        ``write_files`` is False (a resumed export whose files are already in place)."""
        image_id = self.counts["images"] + 1
        h, w = item.image.shape[:2]
        masks = np.asarray(item.masks, dtype=bool).reshape(-1, h, w)
        if len(masks) != len(item.category_ids):
            raise ValueError(f"image {image_id}: {len(masks)} masks but {len(item.category_ids)} category ids")
        record = {**item.extra, "id": image_id, "file_name": f"{IMAGE_FOLDER}/{image_id:08d}.png",
                  "height": h, "width": w}
        files = {self.root / record["file_name"]: item.image}
        if item.semantic is not None:
            record["semantic_file_name"] = semantic = f"{SEMANTIC_FOLDER}/{image_id:08d}.png"
            files[self.root / semantic] = np.asarray(item.semantic, dtype=np.uint8)
        for mask, cat in zip(masks, item.category_ids):
            if not 1 <= int(cat) <= len(self.categories):
                raise ValueError(f"image {image_id}: category id {cat} outside 1..{len(self.categories)}")
            self.counts["instances"] += 1
            self._spool.write((", " if self.counts["instances"] > 1 else "") + json.dumps(
                {"id": self.counts["instances"], "image_id": image_id, "category_id": int(cat),
                 **mask_annotation(mask)}))
        if write_files:
            for path, array in files.items():
                path.parent.mkdir(exist_ok=True)
                write_file(path, png_bytes(array))
        self._json.write((", " if image_id > 1 else "") + json.dumps(record))
        self.counts["images"] = image_id
        self.counts["empty_images"] += len(masks) == 0
        return list(files)

    def close(self) -> dict:
        """Finish the JSON and rename it into place; returns the counts: ``images``, ``instances``,
        ``empty_images``."""
        self._json.write('], "annotations": [')
        self._spool.seek(0)
        shutil.copyfileobj(self._spool, self._json)
        self._json.write('], "categories": ' + json.dumps(
            [{"id": k + 1, "name": str(n), "supercategory": "object"} for k, n in enumerate(self.categories)]) + "}\n")
        self._json.close()
        self._spool.close()
        self._atomic.__exit__(None, None, None)
        return dict(self.counts)

    def abort(self) -> None:
        """Drop the unfinished JSON (the image files written so far stay)."""
        self._json.close()
        self._spool.close()
        self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)  # removes the temporary JSON


def write_coco(json_path: str | Path, categories: Sequence[str], images: Iterable[CocoImage]) -> dict:
    """Write ``images`` as PNGs under ``<json dir>/images/`` (their semantic masks under
    ``semantic/``) and the COCO JSON (:class:`CocoWriter`). Returns counts: ``images``,
    ``instances``, ``empty_images``."""
    writer = CocoWriter(json_path, categories)
    try:
        for item in images:
            writer.add(item)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def synthetic_images(samples: Iterable[Sample], labels: ClassAwareLabels) -> Iterator[CocoImage]:
    """Each sample of a class-conditional task with one instance: its object mask (label 1; ignore
    pixels are left out) of the category of its generator class. A sample with no object pixel
    comes without instance."""
    for s in samples:
        (cat,) = labels.label_of([s.cls])
        obj = (s.arrays["label"] == OBJECT)[None]
        has = bool(obj.any())
        yield CocoImage(s.arrays["image"], obj if has else obj[:0], [int(cat)] if has else [],
                        extra={"key": s.key, "shard": Path(s.shard).name, "index": s.index, "seed": s.seed,
                               "class": s.cls, "score": s.score, "kept": s.kept})


def export_synthetic(samples: SyntheticDataset, labels: ClassAwareLabels, json_path: str | Path) -> dict:
    """A BigDatasetGAN task's synthetic set as COCO JSON + PNGs (see :func:`synthetic_images`);
    categories are the task's class names."""
    return write_coco(json_path, labels.names, synthetic_images(samples.stream(), labels))


@EXPORTERS.register("coco")
def export_coco(samples: SyntheticDataset, out: Path, info: TaskInfo, options: ExportOptions,
                journal: Journal) -> list[Path]:
    """The export format ``coco`` (class-conditional tasks): ``annotations.json`` and
    ``images/``, piece by piece; a resumed export re-reads the finished pieces' samples for their
    records but keeps their verified image files."""
    if not info.class_names:
        raise ValueError(f"COCO export is for class-conditional tasks (one instance per sample of its class); "
                         f"{info.name} has no generator classes: export hf, voc or webdataset")
    classes = sorted(info.class_names)
    labels = ClassAwareLabels(tuple(classes), tuple(info.class_names[c] for c in classes))
    writer = CocoWriter(out / COCO_JSON, labels.names)
    try:
        for number, start, stop in pieces(samples, options):
            piece, done = f"piece-{number:06d}", journal.done(f"piece-{number:06d}")
            files = [f for item in synthetic_images(samples.stream(start, stop, options.batch_size), labels)
                     for f in writer.add(item, write_files=not done)]
            if not done:
                journal.record(piece, files)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return [out / COCO_JSON]
