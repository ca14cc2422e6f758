"""Label the samples a user chooses: given seeds (and classes) of a task, the interpreter's
labels and per-pixel uncertainty, through the same path as the ``synthesize`` rule.

The result is an ordinary shard (:func:`~labelfactory.synthesis.shards.synthesize_shard`)
with its per-pixel uncertainty kept, and, on request, a folder of PNGs per sample:
``<id>.image.png``, ``<id>.png`` (label ids, the annotation folders' mask format, so a
user can correct a label and import it) and ``<id>.uncertainty.png`` (the Jensen–Shannon
divergence scaled to 0..255 by ``log(members)``, its upper bound).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
from PIL import Image

from labelfactory.generators.base import GeneratorBackend, sample_id
from labelfactory.interpreters.base import Interpreter
from labelfactory.synthesis.shards import ShardInfo, ShardSettings, synthesize_shard


def label_seeds(backend: GeneratorBackend, interpreter: Interpreter, seeds: Sequence[int],
                classes: int | Sequence[int] | None, settings: ShardSettings, out_h5: str | os.PathLike,
                png_dir: str | os.PathLike | None = None) -> ShardInfo:
    """Render, label and score ``seeds`` (with ``classes``: one per seed or one for all) into
    the shard ``out_h5``, keeping the per-pixel uncertainty; with ``png_dir``, also the PNGs."""
    settings = dataclasses.replace(settings, store_uncertainty=True)
    info = synthesize_shard(backend, interpreter, out_h5, seeds, classes, settings, progress=False)
    if png_dir is not None:
        write_pngs(out_h5, png_dir, members=len(getattr(interpreter, "members", [])) or 2)
    return info


def write_pngs(shard: str | os.PathLike, out_dir: str | os.PathLike, members: int) -> list[str]:
    """One image, label mask and uncertainty map PNG per sample of ``shard``; returns the ids
    (``s<seed>`` or ``c<class>_s<seed>``: :func:`~labelfactory.generators.base.sample_id`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scale = 255.0 / math.log(max(members, 2))
    with h5py.File(shard, "r") as f:
        seeds, classes = f["seed"][()], f["class"][()]
        ids = [sample_id(int(s), int(c)) for s, c in zip(seeds, classes)]
        for i, sid in enumerate(ids):
            Image.fromarray(f["images"][i]).save(out / f"{sid}.image.png")
            Image.fromarray(f["labels"][i]).save(out / f"{sid}.png")
            js = np.clip(f["uncertainty"][i].astype(np.float32) * scale, 0, 255).round().astype(np.uint8)
            Image.fromarray(js).save(out / f"{sid}.uncertainty.png")
    return ids
