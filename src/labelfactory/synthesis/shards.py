"""Sharded, seeded synthesis of labelled samples (the workflow's `synthesize` rule), and reading shards back.

A shard is one HDF5 file holding N samples, each regenerable from
``(generator hash, seed, class)``:

- ``images`` uint8 ``[N,H,W,3]``, ``labels`` uint8 ``[N,H,W]``, optional
  ``uncertainty`` float16 ``[N,H,W]`` (per-pixel JS divergence, nats) and
  ``latents`` ``[N,z]`` (float32 z, or int64 VQGAN code grids flattened) and optional
  ``probabilities`` float16 ``[N,C,H,W]`` (the members' mean class probabilities, the soft
  targets of the ``synthetic_soft`` setting): chunked one sample per chunk, so reading a
  sample touches only that sample;
- ``score`` float32 ``[N]`` (per-image uncertainty), ``seed`` int64 ``[N]``,
  ``class`` int32 ``[N]`` (-1 for unconditional generators): chunked in blocks of
  up to 65536 samples, so gathering the scores of many shards costs one read per
  dataset rather than one per sample;
- every dataset carries HDF5's fletcher32 checksum per chunk, so a corrupted
  byte makes its read fail instead of returning wrong values;
- root attributes: ``format_version``, ``num_samples``, ``generator_hash``,
  ``config_hash`` (sha256 of everything that determines the contents),
  ``code_version``, ``label_rule``, ``score_rule``, ``top_fraction``,
  ``truncation``, ``noise``, plus the caller's ``attrs`` (e.g. ``labeller_hash``).

Shards are written to a temporary file beside the target and renamed at the
very end: a killed job leaves only a ``.<name>.*.tmp`` file, never a shard, and a
re-run writes the shard from scratch.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import h5py
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from labelfactory.core.io import atomic_path
from labelfactory.core.provenance import code_version
from labelfactory.generators.base import GeneratorBackend, images_to_uint8
from labelfactory.generators.view import view_of
from labelfactory.interpreters.base import Interpreter, interpreter_features
from labelfactory.synthesis.uncertainty import SCORE_RULES, image_scores, js_divergence, mean_labels, vote_labels

FORMAT_VERSION = 1
LABEL_RULES = {"vote": vote_labels, "mean": mean_labels}
MAX_LABEL_CLASSES = 255  # labels are uint8 and 255 means "ignore" in annotations

# name -> (dtype, ndim); the per-sample datasets are chunked one sample per chunk
REQUIRED_DATASETS = {"images": (np.uint8, 4), "labels": (np.uint8, 3), "score": (np.float32, 1),
                     "seed": (np.int64, 1), "class": (np.int32, 1)}
OPTIONAL_DATASETS = {"latents": ((np.float32, np.int64), 2), "uncertainty": (np.float16, 3),
                     "probabilities": (np.float16, 4)}
REQUIRED_ATTRS = ("format_version", "num_samples", "generator_hash", "config_hash", "code_version",
                  "label_rule", "score_rule", "top_fraction", "truncation", "noise")
_SCALAR_CHUNK = 1 << 16
LABELLER_DIVERGED = "labeller_diverged"  # root attribute of a shard whose interpreter diverged (its JSON record)


class ShardError(ValueError):
    """A shard is missing, truncated, corrupt or not laid out as a shard."""


@dataclass(frozen=True)
class ShardInfo:
    """A verified shard: where it is, how many samples, its root attributes."""

    path: Path
    num_samples: int
    attrs: dict[str, Any]


@dataclass(frozen=True)
class ShardSettings:
    """How :func:`synthesize_shard` renders, labels, scores and stores samples: every
    setting of a shard, as opposed to its inputs (generator, interpreter, seeds, classes).

    The defaults are the workflow config's (``workflow/schemas/config.schema.yaml``:
    a task's ``truncation`` and ``noise``, the rest its ``synthesis`` section; a test
    holds them equal). Values are checked on construction."""

    truncation: float = 1.0  # psi towards the average latent
    noise: str = "const"  # per-layer noise: const, random (seeded per batch) or none
    batch_size: int = 64  # samples rendered and labelled at once
    label_rule: str = "vote"  # members' majority vote, or "mean": argmax of their mean probability
    score_rule: str = "top10"  # per-image score: mean of the top_fraction largest pixel JS values, or "mean"
    top_fraction: float = 0.1
    store_latents: bool = False
    store_uncertainty: bool = True  # keep the per-pixel JS maps (float16)
    store_probabilities: bool = False  # keep the members' mean class probabilities (float16 [C, H, W] per sample)
    sampling: Mapping[str, Any] | None = None  # temperature, top_k, top_p of a generator with a prior (VQGAN)

    def __post_init__(self) -> None:
        if self.label_rule not in LABEL_RULES:
            raise ValueError(f"label_rule must be one of {sorted(LABEL_RULES)}, got {self.label_rule!r}")
        if self.score_rule not in SCORE_RULES:
            raise ValueError(f"score_rule must be one of {list(SCORE_RULES)}, got {self.score_rule!r}")
        if not 0 < self.top_fraction <= 1:
            raise ValueError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")


class BackgroundWriter:
    """Writes batches into pre-created datasets from one thread, in submission order
    (so the file is the same as a serial write), while the caller keeps the device
    busy. A write error is re-raised in the caller at its next submit or on exit."""

    def __init__(self, datasets: dict[str, h5py.Dataset], depth: int = 2):
        self._datasets = datasets
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)

    def __enter__(self) -> "BackgroundWriter":
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._queue.put(None)
        self._thread.join()
        if exc_type is None:
            self._check()

    def submit(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        self._check()
        self._queue.put((start, arrays))

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining so the caller never blocks
            start, arrays = item
            try:
                for name, arr in arrays.items():
                    self._datasets[name][start : start + len(arr)] = arr
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                self._error = e


@torch.no_grad()
def _label_batch(backend: GeneratorBackend, interpreter: Interpreter, z: torch.Tensor, cls: torch.Tensor | None,
                 generator: torch.Generator | None, settings: ShardSettings) -> dict[str, np.ndarray]:
    """One batch, on the backend's device until the final copy to host; images, labels and
    scores are of the crop of the backend's image view."""
    out = backend.synthesize(z, cls, settings.truncation, settings.noise, features=True, generator=generator)
    probs = interpreter.member_probabilities(interpreter_features(interpreter, out.features, out.images), classes=cls)
    b, _, h, w = out.images.shape
    if probs.ndim != 5 or tuple(probs.shape[1:]) != (b, interpreter.num_classes, h, w):
        raise ValueError(f"interpreter returned probabilities of shape {list(probs.shape)}; "
                         f"expected [members, {b}, {interpreter.num_classes}, {h}, {w}]")
    view = view_of(backend)
    probs, images = view.cut(probs, h), view.cut(out.images, h)
    js = js_divergence(probs, dim=2)
    arrays = {
        "images": images_to_uint8(images),
        "labels": LABEL_RULES[settings.label_rule](probs).to(torch.uint8).cpu().numpy(),
        "score": image_scores(js, rule=settings.score_rule, top_fraction=settings.top_fraction).float().cpu().numpy(),
    }
    if settings.store_uncertainty:
        arrays["uncertainty"] = js.half().cpu().numpy()
    if settings.store_probabilities:
        arrays["probabilities"] = probs.mean(0).half().cpu().numpy()
    return arrays


def seeds_and_classes(backend: GeneratorBackend, seeds: Sequence[int] | np.ndarray,
                       classes: int | Sequence[int] | np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The seeds as int64 and one class per seed (checked by the backend); refuses no seeds."""
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
    if len(seeds) == 0:
        raise ValueError("a shard needs at least one seed")
    if classes is not None and np.ndim(classes) == 0:
        classes = np.full(len(seeds), int(classes))
    return seeds, backend.check_classes(classes, len(seeds))


def _root_attrs(backend: GeneratorBackend, s: ShardSettings, seeds: np.ndarray, cls_all: np.ndarray,
                attrs: Mapping[str, Any] | None, num_samples: int | None = None) -> dict[str, Any]:
    """A shard's root attributes: the caller's ``attrs`` and the shard's own, with ``config_hash``
    over everything that determines the contents; ``num_samples`` defaults to one per seed."""
    attrs = dict(attrs or {})
    reserved = sorted(set(attrs) & set(REQUIRED_ATTRS))
    if reserved:
        raise ValueError(f"attrs may not set the shard's own attributes {reserved}")

    config = {
        "format_version": FORMAT_VERSION, "generator_hash": backend.generator_hash,
        "seeds": seeds.tolist(), "classes": cls_all.tolist(), "truncation": float(s.truncation), "noise": s.noise,
        "label_rule": s.label_rule, "score_rule": s.score_rule, "top_fraction": float(s.top_fraction),
        "store_latents": bool(s.store_latents), "store_uncertainty": bool(s.store_uncertainty), "attrs": attrs,
    }
    view = view_of(backend)
    if view.size is not None or view.crop is not None:  # the view changes every image
        config["image"] = [backend.resolution, *view.box(backend.resolution)]
    if s.noise == "random":
        config["batch_size"] = int(s.batch_size)
    if s.sampling:
        config["sampling"] = dict(s.sampling)
    if s.store_probabilities:  # only when on: shards written before the option existed keep their hash
        config["store_probabilities"] = True
    return {
        **attrs, "format_version": FORMAT_VERSION, "generator_hash": backend.generator_hash,
        "num_samples": len(seeds) if num_samples is None else num_samples,
        "config_hash": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest(),
        "code_version": code_version(), "label_rule": s.label_rule, "score_rule": s.score_rule,
        "top_fraction": float(s.top_fraction), "truncation": float(s.truncation), "noise": s.noise,
    }


def synthesize_shard(
    backend: GeneratorBackend,
    interpreter: Interpreter,
    out_path: str | os.PathLike,
    seeds: Sequence[int] | np.ndarray,
    classes: int | Sequence[int] | np.ndarray | None = None,
    settings: ShardSettings = ShardSettings(),
    *,
    attrs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> ShardInfo:
    """Render, label and score one sample per seed and write them as one shard.

    ``classes``: one per seed, a single class for all, or None (unconditional).
    ``settings`` (:class:`ShardSettings`): labels are the members' majority vote
    (``"vote"``) or the argmax of their mean (``"mean"``); the score is the mean of
    the top ``top_fraction`` of the per-pixel JS divergences (``"top10"``, as
    released) or their mean. ``sampling`` (temperature, top_k, top_p) is for
    generators that draw latents from a prior (VQGAN;
    :meth:`~labelfactory.generators.base.GeneratorBackend.draw_latents`). Same seeds
    and settings give byte-identical datasets. With ``noise="random"`` the noise of
    each batch is seeded from the batch's seeds, so the batch size then enters the
    config hash (and a sample is regenerable only with its batch). ``attrs`` are
    extra root attributes (e.g. ``labeller_hash``), also hashed."""
    if not isinstance(settings, ShardSettings):
        raise TypeError(f"settings must be a ShardSettings, got {type(settings).__name__}")
    s = settings
    seeds, cls_all = seeds_and_classes(backend, seeds, classes)
    n = len(seeds)
    labeller_generator = getattr(interpreter, "generator_hash", None)
    if labeller_generator is not None and labeller_generator != backend.generator_hash:
        raise ValueError(f"the interpreter was trained on features of generator {labeller_generator[:16]}, "
                         f"not of this generator {backend.generator_hash[:16]}")
    if not 1 <= interpreter.num_classes <= MAX_LABEL_CLASSES:
        raise ValueError(f"labels are uint8: need 1..{MAX_LABEL_CLASSES} classes, got {interpreter.num_classes}")
    root_attrs = _root_attrs(backend, s, seeds, cls_all, attrs)
    view = view_of(backend)
    h, w = view.shape(backend.resolution)
    per_sample = {"images": ((n, h, w, 3), np.uint8), "labels": ((n, h, w), np.uint8)}
    if s.store_uncertainty:
        per_sample["uncertainty"] = ((n, h, w), np.float16)
    if s.store_probabilities:
        per_sample["probabilities"] = ((n, interpreter.num_classes, h, w), np.float16)
    if s.store_latents:
        per_sample["latents"] = ((n, backend.z_dim), backend.latent_dtype)
    device = backend.device
    conditional = backend.num_classes > 0

    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(root_attrs)
        datasets = {name: f.create_dataset(name, shape=shape, dtype=dtype, chunks=(1, *shape[1:]), fletcher32=True)
                    for name, (shape, dtype) in per_sample.items()}
        scalar_chunks = (min(n, _SCALAR_CHUNK),)
        datasets["score"] = f.create_dataset("score", shape=(n,), dtype=np.float32, chunks=scalar_chunks,
                                             fletcher32=True)
        f.create_dataset("seed", data=seeds, chunks=scalar_chunks, fletcher32=True)
        f.create_dataset("class", data=cls_all.astype(np.int32), chunks=scalar_chunks, fletcher32=True)

        with BackgroundWriter(datasets) as writer, \
                tqdm(total=n, desc=Path(out_path).name, unit="img", disable=not progress) as bar:
            for start in range(0, n, s.batch_size):
                batch_seeds = seeds[start : start + s.batch_size]
                cls_np = cls_all[start : start + s.batch_size]
                z_np = backend.draw_latents(batch_seeds, cls_np if conditional else None, s.truncation,
                                            dict(s.sampling) if s.sampling else None)
                cls = torch.from_numpy(cls_np).to(device) if conditional else None
                generator = None
                if s.noise == "random":
                    noise_seed = int(np.random.SeedSequence(batch_seeds.tolist()).generate_state(1)[0])
                    generator = torch.Generator(device=device).manual_seed(noise_seed)
                arrays = _label_batch(backend, interpreter, torch.from_numpy(z_np).to(device), cls, generator, s)
                if s.store_latents:
                    arrays["latents"] = z_np.reshape(len(z_np), -1)
                writer.submit(start, arrays)
                bar.update(len(batch_seeds))
    return verify_shard(out_path)


def write_diverged_shard(backend: GeneratorBackend, out_path: str | os.PathLike, seeds: Sequence[int] | np.ndarray,
                         classes: int | Sequence[int] | np.ndarray | None, settings: ShardSettings,
                         diverged: Mapping[str, Any], *, attrs: Mapping[str, Any] | None = None) -> ShardInfo:
    """The shard of ``seeds`` when every member of their interpreter diverged in training
    (``on_divergence: record``): no samples, and the interpreter's divergence record (JSON) in
    the root attribute ``labeller_diverged``. The filter carries it into the manifest, and the
    downstream runs on it are recorded as diverged (:func:`read_shard_scores`) instead of the
    DAG stopping at synthesis."""
    seeds, cls_all = seeds_and_classes(backend, seeds, classes)
    record = json.dumps(dict(diverged), sort_keys=True)
    root_attrs = _root_attrs(backend, settings, seeds, cls_all, {**(attrs or {}), LABELLER_DIVERGED: record},
                             num_samples=0)
    h, w = view_of(backend).shape(backend.resolution)
    shapes = {"images": (0, h, w, 3), "labels": (0, h, w)}
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(root_attrs)
        for name, (dtype, _) in REQUIRED_DATASETS.items():
            shape = shapes.get(name, (0,))
            f.create_dataset(name, shape=shape, dtype=dtype, chunks=(1, *shape[1:]), maxshape=(None, *shape[1:]),
                             fletcher32=True)
    return verify_shard(out_path)


def _layout_problems(f: h5py.File) -> list[str]:
    """Everything wrong with the structure of an open shard (reads no data)."""
    missing = [k for k in REQUIRED_DATASETS if k not in f]
    if missing:
        return [f"missing datasets {missing}"]
    present = {k: v for k, v in {**REQUIRED_DATASETS, **OPTIONAL_DATASETS}.items() if k in f}
    problems = []
    for name, (dtype, ndim) in present.items():
        d, dtypes = f[name], dtype if isinstance(dtype, tuple) else (dtype,)
        if not isinstance(d, h5py.Dataset) or d.dtype not in dtypes or d.ndim != ndim:
            problems.append(f"{name} should be {' or '.join(np.dtype(t).name for t in dtypes)} with {ndim} dims, "
                            f"is {getattr(d, 'dtype', 'a group')} {list(getattr(d, 'shape', ()))}")
        elif not d.fletcher32:
            problems.append(f"{name} has no fletcher32 checksum")
    if problems:
        return problems
    n, h, w, c = f["images"].shape
    problems += [f"{name} has {f[name].shape[0]} samples, images has {n}"
                 for name in present if f[name].shape[0] != n]
    if c != 3:
        problems.append(f"images should have 3 channels, has {c}")
    problems += [f"{name} is {list(f[name].shape[1:])} per sample, images are {[h, w]}"
                 for name in ("labels", "uncertainty") if name in present and f[name].shape[1:] != (h, w)]
    if "probabilities" in present and f["probabilities"].shape[2:] != (h, w):
        problems.append(f"probabilities are {list(f['probabilities'].shape[1:])} per sample, images are {[h, w]}")
    missing_attrs = [a for a in REQUIRED_ATTRS if a not in f.attrs]
    if missing_attrs:
        problems.append(f"missing attributes {missing_attrs}")
    elif f.attrs["format_version"] != FORMAT_VERSION:
        problems.append(f"format_version {f.attrs['format_version']}, this code reads {FORMAT_VERSION}")
    elif f.attrs["num_samples"] != n:
        problems.append(f"num_samples attribute {f.attrs['num_samples']} but {n} samples stored")
    return problems


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _read_verified(path: str | os.PathLike, full: bool = False) -> tuple[ShardInfo, dict[str, np.ndarray]]:
    """Open, check layout, read ``score``/``seed``/``class`` (and with ``full``
    every chunk of every dataset, one at a time) through their checksums."""
    try:
        with h5py.File(path, "r") as f:
            problems = _layout_problems(f)
            if problems:
                raise ShardError(f"{path}: not a valid shard: " + "; ".join(problems))
            small = {k: f[k][()] for k in ("score", "seed", "class")}
            if full:
                for name in (n for n in f if f[n].size):  # a diverged labeller's shard has no chunk to read
                    for chunk in f[name].iter_chunks():
                        f[name][chunk]
            info = ShardInfo(Path(path), int(f["images"].shape[0]), {k: _plain(v) for k, v in f.attrs.items()})
    except ShardError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise ShardError(f"{path}: unreadable shard ({type(e).__name__}: {e})") from e
    return info, small


def verify_shard(path: str | os.PathLike, full: bool = False) -> ShardInfo:
    """Check that ``path`` opens (truncated files fail here), is laid out as a shard
    and that ``score``, ``seed`` and ``class`` read through their checksums; with
    ``full``, every dataset. Raises :class:`ShardError` naming the file."""
    return _read_verified(path, full)[0]


def read_shard_scores(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Columns ``shard`` (the path as given), ``index``, ``seed``, ``class``, ``score``
    for every sample of every shard, reading only those small datasets. Every shard
    is verified first; if any is bad, one :class:`ShardError` names each bad one. Shards
    whose interpreter diverged (:func:`write_diverged_shard`) add no rows; the frame's
    ``attrs["labeller_diverged"]`` is then that interpreter's divergence record."""
    frames, errors, diverged = [], [], None
    for p in paths:
        try:
            info, small = _read_verified(p)
        except ShardError as e:
            errors.append(str(e))
            continue
        if LABELLER_DIVERGED in info.attrs:
            diverged = json.loads(info.attrs[LABELLER_DIVERGED])
        frames.append(pd.DataFrame({
            "shard": os.fspath(p), "index": np.arange(info.num_samples, dtype=np.int64),
            "seed": small["seed"], "class": small["class"], "score": small["score"],
        }))
    if errors:
        raise ShardError(f"{len(errors)} bad shard(s):\n" + "\n".join(errors))
    if not frames:
        scores = pd.DataFrame({"shard": pd.Series(dtype=str), "index": pd.Series(dtype=np.int64),
                               "seed": pd.Series(dtype=np.int64), "class": pd.Series(dtype=np.int32),
                               "score": pd.Series(dtype=np.float32)})
    else:
        scores = pd.concat(frames, ignore_index=True)
    if diverged is not None:
        scores.attrs[LABELLER_DIVERGED] = diverged
    return scores


def read_samples(path: str | os.PathLike, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 ``[K,H,W,3]`` and labels uint8 ``[K,H,W]`` of the samples at
    ``indices`` (any order, repeats allowed), read through their checksums."""
    images, labels = read_per_sample(path, indices, ("images", "labels"))
    return images, labels


def read_samples_with_uncertainty(path: str | os.PathLike, indices: Sequence[int] | np.ndarray
                                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`read_samples` and the per-pixel uncertainty float16 ``[K,H,W]`` (JS divergence) of
    the samples; a shard written without it (``synthesis.store_uncertainty: false``) is a ShardError."""
    images, labels, uncertainty = read_per_sample(path, indices, ("images", "labels", "uncertainty"))
    return images, labels, uncertainty


def read_samples_with_probabilities(path: str | os.PathLike, indices: Sequence[int] | np.ndarray
                                    ) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 ``[K,H,W,3]`` and the members' mean class probabilities float16 ``[K,C,H,W]``
    of the samples; a shard written without them (``synthesis.store_probabilities: false``) is a ShardError."""
    images, probabilities = read_per_sample(path, indices, ("images", "probabilities"))
    return images, probabilities


def read_samples_with_probabilities_and_uncertainty(path: str | os.PathLike, indices: Sequence[int] | np.ndarray
                                                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`read_samples_with_probabilities` and the per-pixel uncertainty float16 ``[K,H,W]``."""
    images, probabilities, uncertainty = read_per_sample(path, indices, ("images", "probabilities", "uncertainty"))
    return images, probabilities, uncertainty


def _no_probabilities(path: str | os.PathLike) -> str:
    return (f"{path}: no class probabilities stored (the shard was written with "
            "synthesis.store_probabilities: false; set it true and synthesise again)")


def _no_uncertainty(path: str | os.PathLike) -> str:
    return (f"{path}: no per-pixel uncertainty stored (the shard was written with "
            "synthesis.store_uncertainty: false; set it true and synthesise again)")


def require_uncertainty(paths: Sequence[str | os.PathLike]) -> None:
    """A ShardError naming the first of ``paths`` that holds no per-pixel ``uncertainty``."""
    _require(paths, "uncertainty", _no_uncertainty)


def require_probabilities(paths: Sequence[str | os.PathLike]) -> None:
    """A ShardError naming the first of ``paths`` that holds no class ``probabilities``."""
    _require(paths, "probabilities", _no_probabilities)


def _require(paths: Sequence[str | os.PathLike], name: str, missing: Callable[[str | os.PathLike], str]) -> None:
    for path in paths:
        try:
            with h5py.File(path, "r") as f:
                stored = isinstance(f.get(name), h5py.Dataset)
        except OSError as e:
            raise ShardError(f"{path}: unreadable shard ({type(e).__name__}: {e})") from e
        if not stored:
            raise ShardError(missing(path))


def read_per_sample(path: str | os.PathLike, indices: Sequence[int] | np.ndarray,
                    names: Sequence[str]) -> tuple[np.ndarray, ...]:
    """The per-sample datasets ``names`` (e.g. ``("images", "labels")``) at ``indices`` (any order,
    repeats allowed), read through their checksums; an absent optional dataset is a ShardError."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    try:
        with h5py.File(path, "r") as f:
            problems = _layout_problems(f)
            if problems:
                raise ShardError(f"{path}: not a valid shard: " + "; ".join(problems))
            if "uncertainty" in names and "uncertainty" not in f:
                raise ShardError(_no_uncertainty(path))
            if "probabilities" in names and "probabilities" not in f:
                raise ShardError(_no_probabilities(path))
            n = f["images"].shape[0]
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise IndexError(f"{path}: sample indices must be in [0, {n}), got {idx.min()}..{idx.max()}")
            uniq, inverse = np.unique(idx, return_inverse=True)
            arrays = [f[name][uniq] for name in names]
    except (ShardError, IndexError):
        raise
    except (OSError, KeyError, ValueError) as e:
        raise ShardError(f"{path}: unreadable shard ({type(e).__name__}: {e})") from e
    return tuple(a[inverse] for a in arrays)
