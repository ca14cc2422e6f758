"""The downstream keypoint detector of DatasetGAN's keypoint experiment: heatmap regression.

SimpleBaseline's approach, which fits one object per image: a network of
:data:`~labelfactory.downstream.models.SEGMENTATION_MODELS` with one output channel per
keypoint regresses Gaussian heatmaps (:func:`~labelfactory.interpreters.keypoints.gaussian_heatmaps`)
with a per-pixel mean squared error, keypoints of visibility 0 left out of the loss; each
keypoint is read back at its heatmap's sub-pixel peak
(:func:`~labelfactory.interpreters.keypoints.decode_heatmaps`), its confidence the peak value.
Training shares the segmentation network's schedule and config (:class:`SegTrainConfig`), so
a keypoint run differs from a segmentation run in its targets only. Scores are PCK and COCO
keypoint AP (:func:`keypoint_scores`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from labelfactory.core.io import atomic_write_json
from labelfactory.core.keypoint_metrics import coco_keypoint_ap, pck
from labelfactory.downstream.data import to_tensors
from labelfactory.downstream.models import SegmentationNet, build_segmentation_model
from labelfactory.downstream.segmentation import SegTrainConfig, load_model, optimise, save_model, torch_threads
from labelfactory.interpreters.keypoints import decode_heatmaps, gaussian_heatmaps

log = logging.getLogger(__name__)

DETECTOR_KEY = "keypoint_detector"  # the sidecar entry that makes a saved model a keypoint detector


def _normalised(images: np.ndarray) -> torch.Tensor:
    """uint8 images ``[N, H, W, 3]`` → the downstream networks' input ``[N, 3, H, W]``."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    blank = np.zeros(images.shape[1:3], np.int64)
    return torch.stack([to_tensors(image, blank)[0] for image in images]) if len(images) else \
        torch.zeros(0, 3, *images.shape[1:3])


def flip_keypoints(keypoints: np.ndarray, width: int, flip_order: Sequence[int] | None = None) -> np.ndarray:
    """Keypoints ``[..., K, 3]`` of the horizontally flipped image ``width`` pixels wide:
    ``x → width - 1 - x``, keypoint ``k`` taken from ``flip_order[k]``
    (:meth:`~labelfactory.annotations.labels.KeypointSpec.flip_permutation`; None keeps the order)."""
    out = np.array(keypoints, dtype=np.float32)
    out[..., 0] = width - 1 - out[..., 0]
    return out if flip_order is None else out[..., list(flip_order), :]


def heatmap_loss(heatmaps: torch.Tensor, keypoints: np.ndarray, sigma: float) -> torch.Tensor:
    """Mean squared error of ``heatmaps`` ``[B, K, H, W]`` to the Gaussian targets of
    ``keypoints`` ``[B, K, 3]``, over the maps of labelled keypoints only (0 if there are none)."""
    target = gaussian_heatmaps(keypoints, tuple(heatmaps.shape[-2:]), sigma).to(heatmaps.device)
    labelled = torch.as_tensor(keypoints[..., 2] > 0, device=heatmaps.device).float()
    squared = (heatmaps - target).square().mean((-2, -1))
    return (squared * labelled).sum() / labelled.sum().clamp(min=1.0)


def train_keypoint_detector(images: np.ndarray, keypoints: np.ndarray, cfg: SegTrainConfig, sigma: float = 1.5,
                            flip_order: Sequence[int] | None = None, device: str | torch.device = "cpu"
                            ) -> tuple[SegmentationNet, dict]:
    """Train ``cfg.model`` with one output per keypoint on ``images`` uint8 ``[N, H, W, 3]`` and
    their ``keypoints`` ``[N, K, 3]`` (pixels, x, y, v): ``cfg.steps`` batches of
    ``cfg.batch_size`` images drawn with replacement by a generator seeded with ``cfg.seed``,
    ``cfg``'s optimizer, learning rate schedule and threads. ``cfg.augment.hflip`` flips half of
    the images with their keypoints (:func:`flip_keypoints` with ``flip_order``); its ``scale``
    is ignored (the detector learns the object scales its training images show). Returns the
    model in eval mode and the history of :func:`~labelfactory.downstream.segmentation.optimise`."""
    keypoints = np.asarray(keypoints, dtype=np.float32)
    x = _normalised(images)
    n, width = len(x), x.shape[-1]
    if keypoints.ndim != 3 or keypoints.shape[0] != n or keypoints.shape[2] != 3 or keypoints.shape[1] < 1:
        raise ValueError(f"keypoints must be [N, K, 3] with N = {n} images, got {list(keypoints.shape)}")
    if not (keypoints[..., 2] > 0).any():
        raise ValueError("no labelled keypoint (visibility > 0) to train on")
    device = torch.device(device)
    with torch_threads(cfg.threads):
        torch.manual_seed(cfg.seed)
        model = build_segmentation_model(cfg.model, keypoints.shape[1], **cfg.model_options).to(device)
        generator = torch.Generator().manual_seed(cfg.seed)

        def batch_loss(step: int) -> torch.Tensor:
            pick = torch.randint(n, (cfg.batch_size,), generator=generator)
            flip = (torch.rand(cfg.batch_size, generator=generator) < 0.5) & cfg.augment.hflip
            batch, kp = x[pick], keypoints[pick.numpy()]
            batch[flip] = batch[flip].flip(-1)
            kp[flip.numpy()] = flip_keypoints(kp[flip.numpy()], width, flip_order)
            return heatmap_loss(model(batch.to(device)), kp, sigma)

        history = optimise(model, cfg, batch_loss, what="heatmap loss")
    return model.eval(), history


@torch.no_grad()
def predict_keypoints(model: SegmentationNet, images: np.ndarray, batch_size: int = 64,
                      device: str | torch.device = "cpu") -> np.ndarray:
    """Float32 ``[N, K, 3]``: (x, y, confidence) of each keypoint in ``images`` uint8
    ``[N, H, W, 3]``, decoded from the model's heatmaps (one member, so no spread)."""
    model.eval().to(device)
    x = _normalised(images)
    out = [decode_heatmaps(model(batch.to(device))[None].float().cpu()).as_coco() for batch in x.split(batch_size)]
    return np.concatenate(out).astype(np.float32)


def keypoint_scores(pred: np.ndarray, truth: np.ndarray, areas: np.ndarray, names: Sequence[str]) -> dict:
    """Scores of predictions ``[N, K, 3]`` (x, y, confidence) against ``truth`` ``[N, K, 3]``
    with object ``areas`` ``[N]``: ``pck@0.05`` and ``pck@0.1`` (of the box side around the
    labelled keypoints), ``per_keypoint`` PCK@0.1 by name, COCO keypoint ``ap``, ``ap50`` and
    ``ap75`` (each image scored by its keypoints' mean confidence) and ``num_images``."""
    coarse = pck(pred, truth, alpha=0.1)
    ap = coco_keypoint_ap(pred, np.asarray(pred)[..., 2].mean(1), truth, areas, names)
    return {"pck@0.05": pck(pred, truth, alpha=0.05)["pck"], "pck@0.1": coarse["pck"],
            "per_keypoint": dict(zip(names, coarse["per_keypoint"])),
            "ap": ap["ap"], "ap50": ap["ap50"], "ap75": ap["ap75"], "num_images": len(truth)}


def save_keypoint_detector(model: SegmentationNet, path: str | Path, cfg: SegTrainConfig,
                           keypoint_names: Sequence[str], sigma: float, metrics: dict | None = None) -> None:
    """:func:`~labelfactory.downstream.segmentation.save_model` with the keypoint names as class
    names, and the sidecar's ``keypoint_detector`` entry recording the heatmaps' ``sigma``."""
    save_model(model, path, cfg, len(keypoint_names), metrics, keypoint_names)
    sidecar = Path(path).with_suffix(".json")
    atomic_write_json(sidecar, {**json.loads(sidecar.read_text()), DETECTOR_KEY: {"sigma": float(sigma)}})


def load_keypoint_detector(path: str | Path, device: str | torch.device = "cpu") -> tuple[SegmentationNet, dict]:
    """A detector saved by :func:`save_keypoint_detector`, in eval mode, and its sidecar."""
    model, meta = load_model(path, device)
    if not isinstance(meta.get(DETECTOR_KEY), dict):
        raise ValueError(f"{Path(path).with_suffix('.json')}: not a keypoint detector (no '{DETECTOR_KEY}' entry)")
    return model, meta
