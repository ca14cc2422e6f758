"""DatasetGAN's keypoint experiment downstream: what a keypoint-labelled synthetic set is worth.

One keypoint detector (:mod:`labelfactory.downstream.keypoint_detector`) is trained per setting
and seed and scored on real test images with exact keypoints (PCK, COCO keypoint AP):

- ``few_shot``: the annotated generated images and their keypoints (the human's);
- ``synthetic``: every sample of the keypoint shards with the head's keypoints;
- ``synthetic_filtered``: the samples the filter kept (the least member disagreement);
- ``fully_supervised``: real images with their keypoints (the upper bound).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from labelfactory.annotations.annotation_set import load_annotation_set
from labelfactory.annotations.importing import moved_keypoints
from labelfactory.core.io import atomic_write_json
from labelfactory.core.registry import Registry
from labelfactory.downstream.keypoint_detector import (
    keypoint_scores,
    load_keypoint_detector,
    predict_keypoints,
    save_keypoint_detector,
    train_keypoint_detector,
)
from labelfactory.downstream import datasets  # noqa: F401  (registers the coco_keypoints reader)
from labelfactory.downstream.real import RealDataSpec
from labelfactory.downstream.real_keypoints import real_keypoint_images
from labelfactory.downstream.segmentation import SegTrainConfig, run_record
from labelfactory.generators.view import ImageView
from labelfactory.synthesis.filtering import read_manifest
from labelfactory.synthesis.keypoint_shards import read_keypoint_samples

log = logging.getLogger(__name__)

# where a setting's training images and keypoints come from, in table order
KEYPOINT_SETTINGS: Registry[Callable[[KeypointInputs], tuple[np.ndarray, np.ndarray]]] = Registry("keypoint setting")


@dataclass(frozen=True)
class KeypointInputs:
    """What the settings read: the annotation set (its images in the task's ``view``), the keypoint
    filter's ``manifest`` and the ``real`` images' spec."""

    annotations: str | Path
    manifest: str | Path | None = None
    real: RealDataSpec | None = None
    view: ImageView = ImageView()


def _labelled(keypoints: np.ndarray) -> np.ndarray:
    """Synthetic keypoints ``[N, K, 3]`` (x, y, confidence) as labels: every keypoint visible (v = 2)."""
    out = np.array(keypoints, dtype=np.float32, copy=True)
    out[..., 2] = 2.0
    return out


def _shard_samples(manifest: str | Path, kept_only: bool) -> tuple[np.ndarray, np.ndarray]:
    rows = read_manifest(manifest)
    if kept_only:
        rows = rows[rows["kept"]]
    images, keypoints = [], []
    for shard, group in rows.groupby("shard", sort=True):
        img, kp, _ = read_keypoint_samples(shard, group["index"].to_numpy())
        images.append(img)
        keypoints.append(_labelled(kp))
    if not images:
        raise ValueError(f"{manifest}: no samples to train on")
    return np.concatenate(images), np.concatenate(keypoints)


@KEYPOINT_SETTINGS.register("few_shot")
def few_shot(inputs: KeypointInputs) -> tuple[np.ndarray, np.ndarray]:
    aset = load_annotation_set(inputs.annotations)
    if aset.keypoints is None:
        raise ValueError(f"{inputs.annotations}: the annotation set has no keypoints")
    top, bottom, left, right = inputs.view.box(aset.images.shape[1])
    return aset.images[:, top:bottom, left:right], moved_keypoints(aset.keypoints, (-left, -top)).keypoints


@KEYPOINT_SETTINGS.register("synthetic")
def synthetic(inputs: KeypointInputs) -> tuple[np.ndarray, np.ndarray]:
    return _shard_samples(inputs.manifest, kept_only=False)


@KEYPOINT_SETTINGS.register("synthetic_filtered")
def synthetic_filtered(inputs: KeypointInputs) -> tuple[np.ndarray, np.ndarray]:
    return _shard_samples(inputs.manifest, kept_only=True)


@KEYPOINT_SETTINGS.register("fully_supervised")
def fully_supervised(inputs: KeypointInputs) -> tuple[np.ndarray, np.ndarray]:
    aset = load_annotation_set(inputs.annotations)
    real = real_keypoint_images(inputs.real, "train", aset.keypoints.spec.names)
    return real.images, real.keypoints


def train_keypoint_run(setting: str, inputs: KeypointInputs, cfg: SegTrainConfig, sigma: float, out: str | Path,
                       device: str = "cpu") -> dict:
    """Train one detector of ``setting`` and save it (``out`` ``.safetensors`` and its sidecar, which
    records the setting, seed, training-set size and device)."""
    spec = load_annotation_set(inputs.annotations).keypoints.spec
    images, keypoints = KEYPOINT_SETTINGS.get(setting)(inputs)
    log.info("%s: %d training images, seed %d", setting, len(images), cfg.seed)
    model, history = train_keypoint_detector(images, keypoints, cfg, sigma=sigma, flip_order=spec.flip_permutation(),
                                             device=device)
    info = run_record(setting, cfg.seed, len(images), history, device)
    save_keypoint_detector(model, out, cfg, spec.names, sigma, metrics=info)
    return info


def evaluate_keypoint_run(model_path: str | Path, names: Sequence[str], real: RealDataSpec, out_json: str | Path,
                          device: str = "cpu") -> dict:
    """Score a saved detector on the real test split (PCK@0.05, PCK@0.1, AP); writes and returns the
    scores with the run's setting, seed, training-set size and the device it trained on."""
    model, meta = load_keypoint_detector(model_path, device)
    test = real_keypoint_images(real, "test", names)
    pred = predict_keypoints(model, test.images, device=device)
    run = meta["metrics"]
    result = {**keypoint_scores(pred, test.keypoints, test.areas, names), "keypoint_names": list(names),
              **{k: run[k] for k in ("setting", "seed", "num_train_images", "device")}}
    atomic_write_json(out_json, result)
    log.info("%s seed %s: PCK@0.1 %.3f, AP %.3f on %d real test images", result["setting"], result["seed"],
             result["pck@0.1"], result["ap"], len(test.images))
    return result
