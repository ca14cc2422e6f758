"""The provenance of a task's synthetic set, read from its results folder (no config needed):
the interpreter's sidecar (label names, type), a shard's attributes (generator, labeller, code
version), the manifest (counts, the filter's ratio) and the annotations file's checksum."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from labelfactory.core.io import sha256_file
from labelfactory.synthesis.dataset import MANIFEST_NAME, SHARD_FOLDER
from labelfactory.synthesis.export.base import TaskInfo
from labelfactory.synthesis.filtering import read_manifest

INTERPRETER_SIDECAR, ANNOTATIONS = "interpreter.json", "annotations.h5"


def task_info(task_dir: str | os.PathLike, class_names: dict[int, str] | None = None) -> TaskInfo:
    """:class:`TaskInfo` of ``results/<task>``; ``class_names`` name the generator classes of a
    class-conditional task (default ``class<id>`` for each class in the manifest)."""
    task_dir = Path(task_dir)
    manifest = read_manifest(task_dir / MANIFEST_NAME)
    if manifest.empty:
        raise ValueError(f"{task_dir / MANIFEST_NAME} lists no sample")
    sidecar = json.loads((task_dir / INTERPRETER_SIDECAR).read_text())
    with h5py.File(task_dir / SHARD_FOLDER / Path(manifest["shard"].iloc[0]).name, "r") as f:
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    classes = sorted(int(c) for c in manifest["class"].unique() if c >= 0)
    names = {c: f"class{c}" for c in classes} if class_names is None else {int(k): str(v) for k, v in class_names.items()}
    missing = sorted(set(classes) - set(names))
    if missing:
        raise ValueError(f"no name for the generator classes {missing[:8]} of {task_dir}")
    label_names = sidecar.get("label_names") or [f"label{k}" for k in range(sidecar["num_classes"])]
    annotations = task_dir / ANNOTATIONS
    return TaskInfo(
        name=task_dir.name, label_names=tuple(label_names), class_names=names,
        generator_hash=str(attrs["generator_hash"]), interpreter=str(sidecar["interpreter"]),
        labeller_hash=str(attrs.get("labeller_hash", "")),
        annotations_sha256=sha256_file(annotations) if annotations.exists() else None,
        manifest_sha256=sha256_file(task_dir / MANIFEST_NAME), num_samples=len(manifest),
        num_kept=int(manifest["kept"].sum()), filter_ratio=round(1 - manifest["kept"].mean(), 6),
        code_version=str(attrs["code_version"]))
