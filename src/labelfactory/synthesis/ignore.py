"""Labels with each image's most uncertain pixels set to ignore: the one mechanism behind the
downstream option ``uncertain_pixels`` and the export option ``ignore_uncertain``."""

from __future__ import annotations

import numpy as np

from labelfactory.core.metrics import IGNORE_INDEX


def ignore_uncertain(labels: np.ndarray, uncertainty: np.ndarray, fraction: float,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """``labels`` ``[N,H,W]`` with the ``round(fraction·H·W)`` most uncertain pixels of each image
    (by ``uncertainty`` ``[N,H,W]``, e.g. the per-pixel JS divergence; ties go to the first
    pixel in row-major order) set to ``ignore_index``, as Dataset Diffusion does; a copy."""
    if not 0 <= fraction < 1:
        raise ValueError(f"the fraction of uncertain pixels to ignore must lie in [0, 1), got {fraction}")
    if uncertainty.shape != labels.shape:
        raise ValueError(f"uncertainty {uncertainty.shape} does not match labels {labels.shape}")
    out = np.array(labels, copy=True)
    n = out.shape[0]
    k = round(fraction * out[0].size) if n else 0
    if k:
        flat = -np.asarray(uncertainty, dtype=np.float32).reshape(n, -1)
        top = np.argsort(flat, axis=1, kind="stable")[:, :k]
        out.reshape(n, -1)[np.arange(n)[:, None], top] = ignore_index
    return out
