"""Keypoint scores: PCK and COCO keypoint AP (pycocotools' OKS), for interpreters, downstream
detectors and the toy bench alike.

Keypoints are float ``[N, K, 3]`` arrays (``x, y, v`` per keypoint, COCO's visibility: 0 not
labelled, 1 occluded, 2 visible); only labelled truth (``v > 0``) is scored.
"""

from __future__ import annotations

import contextlib
import io
from typing import Sequence

import numpy as np

# COCO's per-keypoint OKS sigmas (pycocotools' COCOeval defaults), by COCO's keypoint names
COCO_SIGMAS: dict[str, float] = dict(zip(
    ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
     "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
     "right_ankle"),
    (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087,
     0.089, 0.089)))
UNIFORM_SIGMA = 0.05  # OKS sigma of keypoints COCO has no sigma for


def keypoint_sigmas(names: Sequence[str], uniform: float = UNIFORM_SIGMA) -> np.ndarray:
    """OKS sigmas ``[K]``: COCO's where every name is one of COCO's keypoints, else ``uniform`` for all."""
    if all(n in COCO_SIGMAS for n in names):
        return np.array([COCO_SIGMAS[n] for n in names])
    return np.full(len(names), float(uniform))


def object_scale(keypoints: np.ndarray) -> np.ndarray:
    """``[N]`` the larger side of each object's box around its labelled keypoints (PCK's default size)."""
    kp = np.asarray(keypoints, dtype=np.float64)
    out = np.zeros(len(kp))
    for n, row in enumerate(kp):
        pts = row[row[:, 2] > 0, :2]
        if len(pts):
            out[n] = float((pts.max(0) - pts.min(0)).max())
    return out


def pck(pred: np.ndarray, truth: np.ndarray, scale: np.ndarray | float | None = None, alpha: float = 0.1
        ) -> dict:
    """Percentage of correct keypoints: the share of labelled truth keypoints whose prediction lies
    within ``alpha · scale`` pixels. ``pred`` ``[N, K, 2+]`` (x, y first), ``truth`` ``[N, K, 3]``,
    ``scale`` per object ``[N]`` or one number (None: :func:`object_scale` of the truth, the box
    side of the labelled keypoints). Returns ``pck`` (over all labelled keypoints, None without
    any) and ``per_keypoint`` ``[K]`` (None for a keypoint never labelled)."""
    pred, truth = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if pred.shape[:2] != truth.shape[:2] or truth.shape[2] != 3 or pred.shape[2] < 2:
        raise ValueError(f"need predictions [N, K, 2+] and truth [N, K, 3], got {list(pred.shape)} "
                         f"and {list(truth.shape)}")
    scale = object_scale(truth) if scale is None else np.broadcast_to(np.asarray(scale, np.float64), len(truth))
    dist = np.linalg.norm(pred[..., :2] - truth[..., :2], axis=-1)
    labelled = truth[..., 2] > 0
    correct = (dist <= alpha * scale[:, None]) & labelled
    counts = labelled.sum(0)
    return {"pck": float(correct.sum() / labelled.sum()) if labelled.any() else None,
            "per_keypoint": [float(c / n) if n else None for c, n in zip(correct.sum(0), counts)],
            "alpha": alpha}


def _coco_keypoints(row: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(row, dtype=np.float64)[:, :3].reshape(-1)]


def coco_keypoint_ap(pred: np.ndarray, scores: np.ndarray, truth: np.ndarray, areas: np.ndarray,
                     names: Sequence[str], sigmas: np.ndarray | None = None) -> dict:
    """COCO keypoint AP of one object per image: ``COCOeval(..., "keypoints")`` on truth
    ``[N, K, 3]`` with object ``areas`` ``[N]`` (pixels; OKS's scale) against predictions
    ``[N, K, 2+]`` with scores ``[N]``. ``sigmas`` per keypoint default to
    :func:`keypoint_sigmas` of ``names``. Returns ``ap``, ``ap50``, ``ap75`` and the ``oks`` ``[N]``
    of each prediction with its truth."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    pred, truth = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    sigmas = keypoint_sigmas(names) if sigmas is None else np.asarray(sigmas, np.float64)
    if len(sigmas) != len(names) or truth.shape[1] != len(names) or pred.shape[:2] != truth.shape[:2]:
        raise ValueError(f"need {len(names)} keypoints and sigmas, got truth {list(truth.shape)}, predictions "
                         f"{list(pred.shape)} and {len(sigmas)} sigmas")
    annotations, detections = [], []
    for n, (t, p, area) in enumerate(zip(truth, pred, areas)):
        pts = t[t[:, 2] > 0, :2]
        lo, hi = (pts.min(0), pts.max(0)) if len(pts) else (np.zeros(2), np.zeros(2))
        annotations.append({"id": n + 1, "image_id": n + 1, "category_id": 1, "iscrowd": 0, "area": float(area),
                            "bbox": [*map(float, lo), *map(float, hi - lo)], "keypoints": _coco_keypoints(t),
                            "num_keypoints": int((t[:, 2] > 0).sum())})
        visible = np.concatenate([p[:, :2], np.ones((len(p), 1))], 1)
        detections.append({"image_id": n + 1, "category_id": 1, "keypoints": _coco_keypoints(visible),
                           "score": float(scores[n])})
    gt = COCO()
    gt.dataset = {"images": [{"id": n + 1} for n in range(len(truth))], "annotations": annotations,
                  "categories": [{"id": 1, "name": "object", "keypoints": list(names), "skeleton": []}]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt.createIndex()
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, "keypoints")
        ev.params.kpt_oks_sigmas = sigmas
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    oks = [float(ev.ious[(n + 1, 1)][0, 0]) if len(ev.ious[(n + 1, 1)]) else 0.0 for n in range(len(truth))]
    return {"ap": float(ev.stats[0]), "ap50": float(ev.stats[1]), "ap75": float(ev.stats[2]), "oks": oks}
