"""Keypoint shards: seeded samples labelled with keypoints by a keypoint head (DatasetGAN's
keypoint experiment; the workflow's `synthesize_keypoints` rule), and reading them back.

A keypoint shard follows :mod:`labelfactory.synthesis.shards`' conventions (one sample per
chunk, fletcher32 checksums, written to a temporary file and renamed at the end, every sample
regenerable from ``(generator hash, seed, class)``) with keypoints in place of masks:

- ``images`` uint8 ``[N,H,W,3]`` (the task's image view);
- ``keypoints`` float32 ``[N,K,3]``: ``x, y`` in pixels of the image, then the confidence
  (the members' mean heatmap at its peak), in the order of the ``keypoint_names`` attribute;
- ``spread`` float32 ``[N,K]``: the members' disagreement in pixels (the uncertainty);
- ``score`` float32 ``[N]``: the mean spread over the keypoints, what the filter ranks;
- ``seed`` int64 ``[N]``, ``class`` int32 ``[N]`` (-1 unconditional);
- optional ``heatmaps`` float16 ``[N,K,R,R]``: the members' mean heatmaps at the head's resolution;
- root attributes ``format_version``, ``kind`` (``"keypoints"``), ``num_samples``,
  ``generator_hash``, ``labeller_hash`` (the head file's sha256), ``keypoint_names`` (JSON),
  ``config_hash`` (sha256 of everything that determines the contents), ``code_version``,
  ``truncation``, ``noise``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from labelfactory.core.io import atomic_path, sha256_file
from labelfactory.core.provenance import code_version
from labelfactory.generators.base import GeneratorBackend, images_to_uint8
from labelfactory.generators.view import view_of
from labelfactory.interpreters.keypoints import KeypointHead, decode_heatmaps
from labelfactory.synthesis.filtering import SCORE_COLUMNS
from labelfactory.synthesis.shards import BackgroundWriter, ShardError, seeds_and_classes

FORMAT_VERSION = 1
KIND = "keypoints"
_SCALAR_CHUNK = 1 << 16


@torch.no_grad()
def _label_batch(backend: GeneratorBackend, head: KeypointHead, z: torch.Tensor, cls: torch.Tensor | None,
                 truncation: float, noise: str, store_heatmaps: bool) -> dict[str, np.ndarray]:
    """One batch: images of the view's box, keypoints moved into the box's frame."""
    out = backend.synthesize(z, cls, truncation, noise, features=True)
    heat = head.member_heatmaps(out.features)
    decoded = decode_heatmaps(heat)
    view = view_of(backend)
    top, _, left, _ = view.box(backend.resolution)
    keypoints = torch.cat([decoded.positions - torch.tensor([left, top], dtype=torch.float32,
                                                            device=decoded.positions.device),
                           decoded.confidence[..., None]], -1)
    arrays = {"images": images_to_uint8(view.cut(out.images, out.images.shape[-1])),
              "keypoints": keypoints.float().cpu().numpy(), "spread": decoded.spread.float().cpu().numpy(),
              "score": decoded.spread.mean(-1).float().cpu().numpy()}
    if store_heatmaps:
        arrays["heatmaps"] = heat.mean(0).half().cpu().numpy()
    return arrays


def synthesize_keypoint_shard(backend: GeneratorBackend, head_path: str | os.PathLike, out_path: str | os.PathLike,
                              seeds: Sequence[int] | np.ndarray, classes: int | Sequence[int] | None = None, *,
                              truncation: float = 1.0, noise: str = "const", batch_size: int = 16,
                              store_heatmaps: bool = False, progress: bool = False) -> int:
    """Render one sample per seed, label it with the keypoint head at ``head_path`` and write the
    shard; returns its sample count. Same seeds and options (the batch size included: batched
    matmuls round differently) give the same shard on the same device."""
    head = KeypointHead.load(head_path, backend.device)
    if head.generator_hash != backend.generator_hash:
        raise ValueError(f"{head_path}: the keypoint head was trained on features of generator "
                         f"{head.generator_hash[:16]}, not of this generator {backend.generator_hash[:16]}")
    if head.resolution != backend.resolution:
        raise ValueError(f"{head_path}: the head labels {head.resolution} px grids; the generator renders "
                         f"{backend.resolution} px")
    seeds, cls_all = seeds_and_classes(backend, seeds, classes)
    n, k = len(seeds), len(head.keypoint_names)
    labeller = sha256_file(head_path)
    config = {"format_version": FORMAT_VERSION, "generator_hash": backend.generator_hash, "labeller_hash": labeller,
              "seeds": seeds.tolist(), "classes": cls_all.tolist(), "truncation": float(truncation), "noise": noise,
              "view": list(view_of(backend).box(backend.resolution)), "store_heatmaps": bool(store_heatmaps),
              "batch_size": int(batch_size)}  # sub-pixel positions move by float noise with the batch
    h, w = view_of(backend).shape(backend.resolution)
    per_sample = {"images": ((n, h, w, 3), np.uint8), "keypoints": ((n, k, 3), np.float32),
                  "spread": ((n, k), np.float32)}
    if store_heatmaps:
        per_sample["heatmaps"] = ((n, k, head.resolution, head.resolution), np.float16)
    conditional = backend.num_classes > 0
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"format_version": FORMAT_VERSION, "kind": KIND, "num_samples": n,
                        "generator_hash": backend.generator_hash, "labeller_hash": labeller,
                        "keypoint_names": json.dumps(head.keypoint_names), "code_version": code_version(),
                        "config_hash": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
                        "truncation": float(truncation), "noise": noise})
        datasets = {name: f.create_dataset(name, shape=shape, dtype=dtype, chunks=(1, *shape[1:]), fletcher32=True)
                    for name, (shape, dtype) in per_sample.items()}
        scalar = (min(n, _SCALAR_CHUNK),)
        datasets["score"] = f.create_dataset("score", shape=(n,), dtype=np.float32, chunks=scalar, fletcher32=True)
        f.create_dataset("seed", data=seeds, chunks=scalar, fletcher32=True)
        f.create_dataset("class", data=cls_all.astype(np.int32), chunks=scalar, fletcher32=True)
        with BackgroundWriter(datasets) as writer, \
                tqdm(total=n, desc=Path(out_path).name, unit="img", disable=not progress) as bar:
            for start in range(0, n, batch_size):
                batch_seeds, cls_np = seeds[start:start + batch_size], cls_all[start:start + batch_size]
                z = backend.draw_latents(batch_seeds, cls_np if conditional else None, truncation)
                cls = torch.from_numpy(cls_np).to(backend.device) if conditional else None
                writer.submit(start, _label_batch(backend, head, torch.from_numpy(z).to(backend.device), cls,
                                                  truncation, noise, store_heatmaps))
                bar.update(len(batch_seeds))
    return n


def _open_checked(path: str | os.PathLike) -> h5py.File:
    """The shard open for reading, refused in one line where it is not a keypoint shard."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ShardError(f"{path}: not a readable HDF5 file ({e})") from None
    missing = [d for d in ("images", "keypoints", "spread", "score", "seed", "class") if d not in f]
    kind = f.attrs.get("kind")
    if kind != KIND or missing:
        f.close()
        raise ShardError(f"{path}: not a keypoint shard (kind {kind!r}, missing {missing})")
    return f


def keypoint_names_of(path: str | os.PathLike) -> list[str]:
    """The keypoint names of a keypoint shard, in the order of its ``keypoints``."""
    with _open_checked(path) as f:
        return json.loads(f.attrs["keypoint_names"])


def read_keypoint_scores(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """The filter's input (:data:`~labelfactory.synthesis.filtering.SCORE_COLUMNS`) of every sample of
    every keypoint shard; every bad shard is named at once."""
    frames, errors = [], []
    for p in paths:
        try:
            with _open_checked(p) as f:
                frames.append(pd.DataFrame({"shard": os.fspath(p), "index": np.arange(len(f["seed"]), dtype=np.int64),
                                            "seed": f["seed"][()], "class": f["class"][()], "score": f["score"][()]}))
        except ShardError as e:
            errors.append(str(e))
    if errors:
        raise ShardError(f"{len(errors)} bad keypoint shard(s):\n" + "\n".join(errors))
    return pd.concat(frames, ignore_index=True)[SCORE_COLUMNS]


def read_keypoint_samples(path: str | os.PathLike, indices: Sequence[int] | np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images ``[n,H,W,3]``, keypoints ``[n,K,3]`` (x, y, confidence) and spreads ``[n,K]`` of the
    samples ``indices`` of one keypoint shard."""
    indices = np.asarray(indices, dtype=np.int64)
    order = np.argsort(indices, kind="stable")
    with _open_checked(path) as f:
        arrays = [f[name][indices[order]] if len(indices) else f[name][:0] for name in ("images", "keypoints", "spread")]
    back = np.argsort(order, kind="stable")
    return tuple(a[back] for a in arrays)
