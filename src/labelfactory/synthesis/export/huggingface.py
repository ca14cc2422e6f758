"""A Hugging Face ``datasets`` dataset: Parquet files with ``Image`` features and the features in
their schema (``datasets.load_dataset("parquet", data_files=...)`` or ``load_dataset(<folder>)``
restores them), ``id2label.json`` and a dataset card (``README.md``) that records where the
samples came from.

Columns: ``image`` and ``mask`` (PNG; the mask's pixel values are label ids, 255 ignore),
``key``, ``seed``, ``class`` (a ``ClassLabel`` of the generator classes for a class-conditional
task, else -1), ``generator_class`` (the generator's own class id), ``score``, ``kept``, ``shard``,
``index``. One split, ``train``, in ``data/train-<i>-of-<n>.parquet`` of ``piece_size`` rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from labelfactory import __version__
from labelfactory.core.io import atomic_path, atomic_write_json, atomic_write_text
from labelfactory.synthesis.dataset import Sample, SyntheticDataset
from labelfactory.synthesis.export.base import EXPORTERS, ExportOptions, TaskInfo, pieces, png_bytes
from labelfactory.synthesis.export.journal import Journal

DATA = "data"


def features(info: TaskInfo) -> datasets.Features:
    """The dataset's features (``class`` a ClassLabel only for a class-conditional task)."""
    cls = datasets.ClassLabel(names=[info.class_names[c] for c in sorted(info.class_names)]) if info.class_names \
        else datasets.Value("int32")
    return datasets.Features({
        "key": datasets.Value("string"), "image": datasets.Image(), "mask": datasets.Image(),
        "seed": datasets.Value("int64"), "class": cls, "generator_class": datasets.Value("int32"),
        "score": datasets.Value("float32"), "kept": datasets.Value("bool"), "shard": datasets.Value("string"),
        "index": datasets.Value("int64")})


def _row(s: Sample, class_index: dict[int, int]) -> dict:
    return {"key": s.key, "image": {"bytes": png_bytes(s.arrays["image"]), "path": None},
            "mask": {"bytes": png_bytes(s.arrays["label"]), "path": None},
            "seed": s.seed, "class": class_index.get(s.cls, -1), "generator_class": s.cls, "score": s.score,
            "kept": s.kept, "shard": Path(s.shard).name, "index": s.index}


@EXPORTERS.register("hf")
def export_huggingface(samples: SyntheticDataset, out: Path, info: TaskInfo, options: ExportOptions,
                       journal: Journal) -> list[Path]:
    """Write the Parquet files piece by piece (a row group per read batch), then the card and id2label."""
    feats = features(info)
    schema = feats.arrow_schema
    class_index = {c: k for k, c in enumerate(sorted(info.class_names))}
    all_pieces = list(pieces(samples, options))
    for number, start, stop in all_pieces:
        name = f"{DATA}/train-{number:05d}-of-{len(all_pieces):05d}.parquet"
        if journal.done(name):
            continue
        with atomic_path(out / name) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            rows = []
            for s in samples.stream(start, stop, options.batch_size):
                rows.append(_row(s, class_index))
                if len(rows) == options.batch_size:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                    rows = []
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        journal.record(name, [out / name])
    atomic_write_json(out / "id2label.json", {str(k): n for k, n in enumerate(info.label_names)})
    atomic_write_text(out / "README.md", dataset_card(info, options, len(samples)))
    return [out / "id2label.json", out / "README.md"]


def dataset_card(info: TaskInfo, options: ExportOptions, num_rows: int) -> str:
    """The dataset card: YAML metadata (the data files of the ``train`` split) and a summary of
    provenance (generator, interpreter, annotations, filter ratio, versions) and labels."""
    meta = {"pretty_name": f"labelfactory synthetic set {info.name}", "task_categories": ["image-segmentation"],
            "tags": ["synthetic", "labelfactory"],
            "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": f"{DATA}/train-*.parquet"}]}]}
    which = "kept and dropped samples (column `kept`)" if options.include_dropped else "the kept samples"
    rows = [("task", info.name), ("rows", f"{num_rows} ({which})"), ("generator hash", info.generator_hash),
            ("interpreter", f"{info.interpreter}, sha256 {info.labeller_hash}"),
            ("annotations sha256", info.annotations_sha256 or "not in the task folder"),
            ("samples synthesised", info.num_samples), ("kept by the filter", info.num_kept),
            ("filter ratio (dropped share)", info.filter_ratio),
            ("uncertain pixels labelled 255", f"{options.ignore_uncertain:g} of each image"),
            ("shards written by", f"labelfactory {info.code_version}"), ("exported by", f"labelfactory {__version__}")]
    labels = "\n".join(f"| {k} | {n} |" for k, n in enumerate(info.label_names))
    return "\n".join([
        "---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
        f"# {info.name}: synthetic images with pixel labels", "",
        "Generated by labelfactory (DatasetGAN / BigDatasetGAN): images of a generator, "
        "labelled by an interpreter trained on a few annotated samples, filtered by the ensemble's uncertainty. "
        "Every sample is regenerable from (generator hash, seed, class).", "",
        "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "",
        "## Labels", "", "`mask` pixel values (255: ignore); also in `id2label.json`.", "",
        "| id | label |", "|---|---|", labels, "",
        "## Load", "", "```python", "import datasets",
        'ds = datasets.load_dataset("parquet", data_files="data/train-*.parquet", split="train")',
        "```", "", f"Settings: `{json.dumps(options.to_dict(), sort_keys=True)}`", ""])
