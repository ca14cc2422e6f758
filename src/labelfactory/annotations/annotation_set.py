"""A validated annotation set: re-rendered images, masks, latents and seeds in one HDF5 file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import h5py
import numpy as np

from labelfactory.annotations.keypoints import KeypointSet
from labelfactory.annotations.labels import AnnotationError, KeypointSpec, LabelSet
from labelfactory.core.io import atomic_path

H5_DATASETS = ("images", "masks", "latents", "seeds", "classes", "ids")
H5_ATTRS = ("generator_hash", "labels", "ignore_index", "truncation", "noise", "resolution")
SOURCES = ("samples", "images")  # the optional attribute `source`; files without it hold samples

@dataclass
class AnnotationSet:
    """Validated annotations with the generator's re-rendered images.

    ``images`` uint8 ``[N,H,W,3]``, ``masks`` uint8 ``[N,H,W]``, ``latents``
    float32 ``[N,z_dim]`` (VQGAN: int64 code grids flattened to ``[N, h*w]``, see
    :mod:`labelfactory.annotations.reuse`), ``seeds`` int64 ``[N]``, ``classes`` int32 ``[N]``.
    ``source`` ``"samples"``: generated samples, whose features are re-rendered from their
    latents; ``"images"``: given images (latents ``[N, 0]``, seeds -1), whose features a
    diffusion generator computes from the images themselves. ``keypoints`` (optional): the
    images' :class:`~labelfactory.annotations.keypoints.KeypointSet`, in the order of ``ids``,
    stored as the dataset ``keypoints`` ``[N, K, 3]`` and its spec as the attribute ``keypoints``
    (files without them load as before, with ``keypoints`` None).
    """

    ids: list[str]
    seeds: np.ndarray
    classes: np.ndarray
    latents: np.ndarray
    images: np.ndarray
    masks: np.ndarray
    labels: LabelSet
    generator_hash: str
    truncation: float
    noise: str
    source: str = "samples"
    keypoints: KeypointSet | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])

    def save(self, path: str | os.PathLike) -> None:
        """Write to HDF5 atomically (temporary file beside ``path``, renamed at the end)."""
        if self.keypoints is not None and self.keypoints.ids != list(self.ids):
            raise ValueError("the keypoints' ids differ from the annotation set's")
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("images", data=self.images.astype(np.uint8))
            f.create_dataset("masks", data=self.masks.astype(np.uint8))
            f.create_dataset("latents", data=latent_array(self.latents))
            f.create_dataset("seeds", data=self.seeds.astype(np.int64))
            f.create_dataset("classes", data=self.classes.astype(np.int32))
            f.create_dataset("ids", data=list(self.ids), dtype=h5py.string_dtype("utf-8"))
            f.attrs.update(generator_hash=self.generator_hash, labels=json.dumps(list(self.labels.names)),
                           ignore_index=self.labels.ignore_index, truncation=float(self.truncation),
                           noise=self.noise, resolution=self.resolution, source=self.source)
            if self.keypoints is not None:
                f.create_dataset("keypoints", data=self.keypoints.keypoints.astype(np.float32))
                f.attrs["keypoints"] = json.dumps(self.keypoints.spec.as_dict())


def latent_array(latents: np.ndarray) -> np.ndarray:
    """Latents as stored: int64 code indices stay integers, every other latent is float32."""
    latents = np.asarray(latents)
    return latents.astype(np.int64 if latents.dtype.kind in "iu" else np.float32)


def load_annotation_set(path: str | os.PathLike) -> AnnotationSet:
    """Read an HDF5 annotation set, checking it is complete and consistent."""
    try:
        with h5py.File(path, "r") as f:
            problems = [f"missing dataset '{k}'" for k in H5_DATASETS if k not in f]
            problems += [f"missing attribute '{k}'" for k in H5_ATTRS if k not in f.attrs]
            if problems:
                raise AnnotationError(path, problems)
            data = {k: f[k].asstr()[()] if k == "ids" else f[k][()] for k in H5_DATASETS}
            attrs = {k: f.attrs[k] for k in H5_ATTRS}
            source = str(f.attrs.get("source", "samples"))
            keypoints = f["keypoints"][()] if "keypoints" in f else None
            keypoint_spec = f.attrs.get("keypoints")
    except (OSError, TypeError) as e:
        raise AnnotationError(path, [f"unreadable HDF5 file ({e})"]) from e
    problems = []
    lengths = {k: len(v) for k, v in data.items()}
    if len(set(lengths.values())) > 1:
        problems.append(f"datasets differ in length: {lengths}")
    images, masks, latents = data["images"], data["masks"], data["latents"]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        problems.append(f"images must be uint8 [N,H,W,3], got {images.dtype} {list(images.shape)}")
    elif images.shape[1:3] != (int(attrs["resolution"]),) * 2:
        problems.append(f"images are {images.shape[1]}x{images.shape[2]} but resolution says {attrs['resolution']}")
    if masks.ndim != 3 or masks.shape[1:] != images.shape[1:3] or masks.dtype != np.uint8:
        problems.append(f"masks must be uint8 [N,H,W] matching the images, got {masks.dtype} {list(masks.shape)}")
    if latents.ndim != 2:
        problems.append(f"latents must be [N, z_dim], got {list(latents.shape)}")
    if source not in SOURCES:
        problems.append(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    spec = None
    if (keypoints is None) != (keypoint_spec is None):
        problems.append("the keypoints dataset and the keypoints attribute come together; one is missing")
    elif keypoint_spec is not None:
        try:
            spec = KeypointSpec.from_dict(json.loads(keypoint_spec))
        except (ValueError, TypeError, KeyError) as e:
            problems.append(f"bad keypoints attribute ({e})")
        if spec is not None and keypoints.shape != (len(images), len(spec.names), 3):
            problems.append(f"keypoints must be [N, K, 3] = {[len(images), len(spec.names), 3]}, "
                            f"got {list(keypoints.shape)}")
    try:
        labels = LabelSet(tuple(json.loads(attrs["labels"])), int(attrs["ignore_index"]), spec)
    except (ValueError, TypeError) as e:
        problems.append(f"bad label attributes ({e})")
    if problems:
        raise AnnotationError(path, problems)
    ids = [str(i) for i in data["ids"]]
    return AnnotationSet(
        ids=ids, seeds=data["seeds"].astype(np.int64),
        classes=data["classes"].astype(np.int32), latents=latent_array(latents), images=images,
        masks=masks, labels=labels, generator_hash=str(attrs["generator_hash"]),
        truncation=float(attrs["truncation"]), noise=str(attrs["noise"]), source=source,
        keypoints=None if spec is None else KeypointSet(ids, keypoints, spec),
    )
