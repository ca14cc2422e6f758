"""The synthetic dataset as a ``torch.utils.data.Dataset``: a task's HDF5 shards, as listed by its
manifest, the public way to read what the workflow made (the downstream training reads it too).

>>> ds = SyntheticDataset.from_task("results/toy-car")            # the kept samples
>>> item = ds[0]        # {"image": uint8 [3,H,W], "label": int64 [H,W], "seed", "class", "score", "kept", "key"}
>>> all_ = SyntheticDataset.from_task("results/toy-car", kept_only=False, fields=("image", "label", "uncertainty"))

Items come in manifest order (shard, then index). Random access (``ds[i]``) caches the wanted
samples of up to ``window`` shards, each read in one call; :meth:`SyntheticDataset.stream` reads
``batch_size`` rows at a time for one pass in order, so memory stays at one batch.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from labelfactory.synthesis.filtering import read_manifest
from labelfactory.synthesis.ignore import ignore_uncertain
from labelfactory.synthesis.shards import read_per_sample, require_uncertainty

# item field -> shard dataset
FIELDS = {"image": "images", "label": "labels", "uncertainty": "uncertainty", "probabilities": "probabilities"}
MANIFEST_NAME, SHARD_FOLDER = "manifest.parquet", "shards"

Reader = Callable[[str, np.ndarray], tuple[np.ndarray, ...]]


def sample_key(seed: int, cls: int) -> str:
    """A sample's name in exports, from its address (seed, class): ``s00000042`` or ``c00003_s00000042``."""
    return f"s{seed:08d}" if cls < 0 else f"c{cls:05d}_s{seed:08d}"


@dataclass(frozen=True)
class Sample:
    """One sample as numpy arrays (``image`` uint8 ``[H,W,3]``, ``label`` uint8 ``[H,W]``, ...,
    as the dataset's ``fields`` ask) with its manifest row."""

    key: str
    shard: str
    index: int
    seed: int
    cls: int
    score: float
    kept: bool
    arrays: dict[str, np.ndarray]


class SyntheticDataset(Dataset):
    """Samples of shards listed by a manifest (columns ``shard``, ``index``, ``seed``, ``class``,
    ``score``, ``kept``), in manifest order; only the kept rows unless ``kept_only=False``.

    ``fields``: which per-sample arrays to read (:data:`FIELDS`). ``ignore_uncertain``: the
    fraction of each sample's pixels, the most uncertain by the stored per-pixel JS divergence,
    whose label becomes 255 (:func:`~labelfactory.synthesis.ignore.ignore_uncertain`; 0 none).
    ``reader(shard, indices)`` replaces the shard reader: it returns one array per field for
    ``indices`` (e.g. soft targets, or test data without files)."""

    def __init__(self, manifest: pd.DataFrame, *, kept_only: bool = True, fields: Sequence[str] = ("image", "label"),
                 ignore_uncertain: float = 0.0, window: int = 8, reader: Reader | None = None):
        unknown = [f for f in fields if f not in FIELDS]
        if unknown or len(set(fields)) != len(fields):
            raise ValueError(f"fields must be distinct names of {list(FIELDS)}, got {list(fields)}")
        if not 0 <= ignore_uncertain < 1:
            raise ValueError(f"ignore_uncertain must lie in [0, 1), got {ignore_uncertain}")
        if ignore_uncertain and "label" not in fields:
            raise ValueError("ignore_uncertain changes labels: fields must hold 'label'")
        if ignore_uncertain and reader is not None:
            raise ValueError("ignore_uncertain needs the shards' own reader")
        rows = manifest[manifest["kept"].astype(bool)] if kept_only else manifest
        self.rows = rows.reset_index(drop=True)
        self.shards = self.rows["shard"].astype(str).to_numpy()
        self.indices = self.rows["index"].to_numpy(dtype=np.int64)
        self.fields, self.ignore, self.window = tuple(fields), float(ignore_uncertain), window
        self.reader = reader or partial(_read_fields, fields=self.fields, ignore=self.ignore)
        if self.ignore:  # fail now, not after hours of reading
            require_uncertainty(list(dict.fromkeys(self.shards)))
        self._cache: OrderedDict[str, tuple[dict[int, int], tuple[np.ndarray, ...]]] = OrderedDict()

    @classmethod
    def from_task(cls, task_dir: str | os.PathLike, **kwargs) -> "SyntheticDataset":
        """The samples of a task's results folder (``manifest.parquet`` and ``shards/``), wherever
        it lies now: shard paths are taken as ``<task_dir>/shards/<shard file name>``."""
        task_dir = Path(task_dir)
        manifest = read_manifest(task_dir / MANIFEST_NAME)
        where = {s: str(task_dir / SHARD_FOLDER / Path(s).name) for s in manifest["shard"].unique()}
        return cls(manifest.assign(shard=manifest["shard"].map(where)), **kwargs)  # one string per shard

    def __len__(self) -> int:
        return len(self.indices)

    def arrays(self, i: int) -> tuple[np.ndarray, ...]:
        """The arrays of item ``i``, one per field, from the cache of ``window`` shards."""
        shard = self.shards[i]
        if shard not in self._cache:
            self._load(shard)
        self._cache.move_to_end(shard)
        rows, arrays = self._cache[shard]
        r = rows[int(self.indices[i])]
        return tuple(a[r] for a in arrays)

    def _load(self, shard: str) -> None:
        wanted = np.unique(self.indices[self.shards == shard])
        self._cache[shard] = ({int(k): r for r, k in enumerate(wanted)}, self._read(shard, wanted))
        while len(self._cache) > self.window:
            self._cache.popitem(last=False)

    def _read(self, shard: str, indices: np.ndarray) -> tuple[np.ndarray, ...]:
        arrays = tuple(self.reader(shard, indices))
        if len(arrays) != len(self.fields) or any(len(a) != len(indices) for a in arrays):
            raise ValueError(f"reader returned {[len(a) for a in arrays]} items of {len(arrays)} fields "
                             f"for {len(indices)} indices of {shard} and fields {list(self.fields)}")
        return arrays

    def sample(self, i: int) -> Sample:
        """Item ``i`` as a :class:`Sample` (numpy arrays and the manifest row)."""
        return self._sample(i, self.arrays(i))

    def _sample(self, i: int, arrays: Sequence[np.ndarray]) -> Sample:
        row = self.rows.iloc[i]
        seed, cls = int(row["seed"]), int(row["class"])
        return Sample(sample_key(seed, cls), str(row["shard"]), int(row["index"]), seed, cls, float(row["score"]),
                      bool(row["kept"]), dict(zip(self.fields, arrays)))

    def __getitem__(self, i: int) -> dict:
        """``image`` uint8 ``[3,H,W]``, ``label`` int64 ``[H,W]`` (255: ignore), ``uncertainty`` float32
        ``[H,W]``, ``probabilities`` float32 ``[C,H,W]`` (as ``fields`` ask), and ``key``, ``seed``,
        ``class``, ``score``, ``kept``: what the default ``collate_fn`` batches."""
        s = self.sample(i)
        item = {name: _tensor(name, a) for name, a in s.arrays.items()}
        return {**item, "key": s.key, "seed": s.seed, "class": s.cls, "score": s.score, "kept": s.kept}

    def stream(self, start: int = 0, stop: int | None = None, batch_size: int = 64) -> Iterator[Sample]:
        """Items ``start..stop`` in order, read ``batch_size`` rows at a time (one read per shard
        of each batch), bypassing the cache: memory stays at one batch however many are read."""
        stop = len(self) if stop is None else min(stop, len(self))
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            shards, indices = self.shards[lo:hi], self.indices[lo:hi]
            arrays: list[tuple[np.ndarray, ...] | None] = [None] * (hi - lo)
            for shard in dict.fromkeys(shards):
                at = np.flatnonzero(shards == shard)
                for r, a in zip(at, zip(*self._read(shard, indices[at]))):
                    arrays[r] = a
            for r, a in enumerate(arrays):
                yield self._sample(lo + r, a)


def _read_fields(shard: str, indices: np.ndarray, fields: tuple[str, ...], ignore: float) -> tuple[np.ndarray, ...]:
    """The shard's arrays of ``fields`` at ``indices``; with ``ignore``, the labels' most uncertain
    pixels set to 255 (the uncertainty is read for that, returned only if asked for)."""
    names = [FIELDS[f] for f in fields]
    if ignore and "uncertainty" not in names:
        names.append("uncertainty")
    arrays = dict(zip(names, read_per_sample(shard, indices, names)))
    if ignore:
        arrays["labels"] = ignore_uncertain(arrays["labels"], arrays["uncertainty"], ignore)
    return tuple(arrays[FIELDS[f]] for f in fields)


def _tensor(name: str, array: np.ndarray) -> torch.Tensor:
    if name == "image":
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    if name == "label":
        return torch.from_numpy(np.asarray(array, dtype=np.int64))
    return torch.from_numpy(np.asarray(array, dtype=np.float32))
