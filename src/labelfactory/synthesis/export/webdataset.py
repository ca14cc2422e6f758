"""WebDataset tar shards (``webdataset.TarWriter``): per sample ``<key>.png`` (the image),
``<key>.mask.png`` (the label, 8-bit, 255 ignore) and ``<key>.json`` (seed, class, generator
hash, score, kept, shard, index); ``shards/data-000000.tar`` … hold ``piece_size`` samples each.
Members carry mtime 0, so the same samples give byte-identical tars."""

from __future__ import annotations

import json
from pathlib import Path

import webdataset as wds

from labelfactory.core.io import atomic_path, atomic_write_json
from labelfactory.synthesis.dataset import Sample, SyntheticDataset
from labelfactory.synthesis.export.base import EXPORTERS, ExportOptions, TaskInfo, pieces, png_bytes
from labelfactory.synthesis.export.journal import Journal

FOLDER = "shards"


def sample_record(sample: Sample, info: TaskInfo) -> dict:
    """The metadata of one sample as every format stores it."""
    return {"key": sample.key, "seed": sample.seed, "class": sample.cls, "generator_hash": info.generator_hash,
            "score": sample.score, "kept": sample.kept, "shard": Path(sample.shard).name, "index": sample.index}


@EXPORTERS.register("webdataset")
def export_webdataset(samples: SyntheticDataset, out: Path, info: TaskInfo, options: ExportOptions,
                      journal: Journal) -> list[Path]:
    """Write the tar shards piece by piece, then ``labels.json`` (label and class names)."""
    for number, start, stop in pieces(samples, options):
        name = f"{FOLDER}/data-{number:06d}.tar"
        if journal.done(name):
            continue
        with atomic_path(out / name) as tmp, wds.TarWriter(str(tmp), mtime=0) as sink:
            for s in samples.stream(start, stop, options.batch_size):
                sink.write({"__key__": s.key, "png": png_bytes(s.arrays["image"]),
                            "mask.png": png_bytes(s.arrays["label"]),
                            "json": json.dumps(sample_record(s, info), sort_keys=True).encode()})
        journal.record(name, [out / name])
    atomic_write_json(out / "labels.json", {"label_names": list(info.label_names),
                                            "class_names": info.to_dict()["class_names"]})
    return [out / "labels.json"]
