"""Generator features of annotated samples, stored at each layer's native resolution.

One HDF5 file per task: ``/<image_id>/<layer>`` float16 ``[C, h, w]``, chunked
per layer; root attributes name the generator hash, the layers in order, their
shapes, the output resolution and how the samples were rendered. Nothing is
upsampled here: the interpreters upsample on the fly (or apply their first
linear layer first), so storage grows with the generator's feature volume, not
with image resolution × total feature depth.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch

from labelfactory.generators.base import GeneratorBackend, images_to_uint8
from labelfactory.core.io import atomic_path

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_CHUNK_BYTES = 1 << 20


class FeatureStoreError(ValueError):
    """A feature file is missing, corrupt, or does not match what is asked of it."""


def select_layers(backend: GeneratorBackend, layers: Sequence[str] | str | None) -> list[str]:
    """Resolve ``"all"``/``None`` or a list of names against the backend's taps (kept in generator order)."""
    available = list(backend.feature_shapes())
    if layers is None or layers == "all":
        return available
    unknown = [l for l in layers if l not in available]
    if unknown:
        raise ValueError(f"unknown feature layers {unknown}; this generator taps {available}")
    if not layers:
        raise ValueError("select at least one feature layer")
    return [l for l in available if l in set(layers)]


def _chunks(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    c, h, w = shape
    return (max(1, min(c, _CHUNK_BYTES // (2 * h * w))), h, w)


def _write_store(backend: GeneratorBackend, out_path: str | Path, ids: Sequence[str], layers: list[str],
                 truncation: float, noise: str, batches) -> None:
    """Write the feature file of ``ids`` from ``batches`` (an iterable of ``{layer: [B,C,h,w]}``, in id order)."""
    shapes = backend.feature_shapes()
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({
            "format_version": FORMAT_VERSION,
            "generator_hash": backend.generator_hash,
            "layers": json.dumps(layers),
            "shapes": json.dumps({l: list(shapes[l]) for l in layers}),
            "resolution": backend.resolution,
            "truncation": float(truncation),
            "noise": noise,
            "ids": json.dumps(list(ids)),
        })
        done = 0
        for features in batches:
            n = len(features[layers[0]])
            for j, image_id in enumerate(ids[done : done + n]):
                g = f.create_group(image_id)
                for l in layers:
                    arr = features[l][j].float().cpu().numpy().astype(np.float16)
                    g.create_dataset(l, data=arr, chunks=_chunks(arr.shape))
            done += n
            log.info("features: %d/%d images", done, len(ids))


def extract_features(
    backend: GeneratorBackend,
    ids: Sequence[str],
    latents: np.ndarray,
    out_path: str | Path,
    classes: np.ndarray | None = None,
    layers: Sequence[str] | str | None = "all",
    truncation: float = 1.0,
    noise: str = "const",
    batch_size: int = 8,
    expected_images: np.ndarray | None = None,
) -> list[str]:
    """Re-render ``latents`` and store their features; returns the layers written.

    ``expected_images`` (uint8 ``[N,H,W,3]``, e.g. the annotated images) guards
    against re-rendering something other than what was annotated."""
    layers = select_layers(backend, layers)
    latents = backend.check_latents(latents)
    if len(ids) != len(latents) or len(set(ids)) != len(ids):
        raise ValueError("need one unique id per latent")
    cls = backend.check_classes(classes, len(latents))

    def batches():
        for start in range(0, len(latents), batch_size):
            z = torch.from_numpy(latents[start : start + batch_size]).to(backend.device)
            c = None if backend.num_classes == 0 else torch.from_numpy(cls[start : start + batch_size]).to(backend.device)
            with torch.no_grad():
                out = backend.synthesize(z, c, truncation, noise, features=True)
            if expected_images is not None:
                got = images_to_uint8(out.images).astype(np.int16)
                want = expected_images[start : start + batch_size].astype(np.int16)
                if np.abs(got - want).max() > 3:
                    raise FeatureStoreError(
                        "re-rendered images differ from the annotated ones: the generator, truncation or "
                        "noise mode is not the one the annotations were made with"
                    )
            yield out.features

    _write_store(backend, out_path, ids, layers, truncation, noise, batches())
    return layers


def extract_image_features(
    backend: GeneratorBackend,
    ids: Sequence[str],
    images: np.ndarray,
    out_path: str | Path,
    classes: np.ndarray | None = None,
    layers: Sequence[str] | str | None = "all",
    batch_size: int = 8,
) -> list[str]:
    """Store a diffusion generator's features of given uint8 images ``[N,H,W,3]`` (annotated
    images: ``annotation.source: images``), noised with its seeded feature noise as its own
    samples are (``image_taps``); returns the layers written. The file is laid out as
    :func:`extract_features` writes it."""
    if not hasattr(backend, "image_taps"):
        raise FeatureStoreError(f"features of given images need a diffusion generator; this {backend.arch} "
                                "generator's come from latents")
    layers = select_layers(backend, layers)
    want = (len(ids), backend.resolution, backend.resolution, 3)
    if images.dtype != np.uint8 or images.shape != want or len(set(ids)) != len(ids):
        raise ValueError(f"need uint8 images {list(want)} with one unique id each, got {images.dtype} "
                         f"{list(images.shape)}")
    cls = backend.check_classes(classes, len(images))

    def batches():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2).float() / 127.5 - 1
            c = None if backend.num_classes == 0 else torch.from_numpy(cls[start : start + batch_size])
            with torch.no_grad():
                yield backend.image_taps(x.to(backend.device), None if c is None else c.to(backend.device))

    _write_store(backend, out_path, ids, layers, 1.0, "const", batches())
    return layers


@dataclass
class FeatureStore:
    """Read access to a feature file; validates its layout on open."""

    path: Path
    generator_hash: str
    layers: list[str]
    shapes: dict[str, tuple[int, int, int]]
    resolution: int
    ids: list[str]

    @classmethod
    def open(cls, path: str | Path) -> "FeatureStore":
        path = Path(path)
        try:
            with h5py.File(path, "r") as f:
                a = dict(f.attrs)
                store = cls(
                    path=path,
                    generator_hash=str(a["generator_hash"]),
                    layers=json.loads(a["layers"]),
                    shapes={k: tuple(v) for k, v in json.loads(a["shapes"]).items()},
                    resolution=int(a["resolution"]),
                    ids=json.loads(a["ids"]),
                )
                missing = [f"{i}/{l}" for i in store.ids for l in store.layers if f"{i}/{l}" not in f]
        except (OSError, KeyError, json.JSONDecodeError) as e:
            raise FeatureStoreError(f"{path}: not a readable feature file ({type(e).__name__}: {e})") from e
        if missing:
            raise FeatureStoreError(f"{path}: feature maps missing: {missing[:5]}")
        return store

    @property
    def feature_dim(self) -> int:
        return sum(self.shapes[l][0] for l in self.layers)

    def read(self, image_id: str, layers: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """``{layer: float16 [C, h, w]}`` of one image."""
        with h5py.File(self.path, "r") as f:
            if image_id not in f:
                raise FeatureStoreError(f"{self.path}: no features for image {image_id!r}")
            return {l: f[image_id][l][()] for l in (layers or self.layers)}
