"""Label colouring and overlays for sample sheets and figures."""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255


def palette(n: int = 256) -> np.ndarray:
    """A fixed ``[n, 3]`` uint8 palette: black background, distinct colours, white for ignore."""
    rng = np.random.default_rng(0)
    pal = np.zeros((256, 3), dtype=np.uint8)
    base = np.array(
        [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
         [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
         [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0],
         [170, 255, 195], [128, 128, 0], [255, 215, 180], [0, 0, 128], [128, 128, 128]],
        dtype=np.uint8,
    )
    pal[1 : 1 + len(base)] = base
    pal[1 + len(base) :] = rng.integers(0, 256, size=(256 - 1 - len(base), 3), dtype=np.uint8)
    pal[IGNORE_INDEX] = 255
    return pal[:n]


def colorize_labels(labels: np.ndarray) -> np.ndarray:
    """Map a uint8 label map ``[H,W]`` to an RGB image ``[H,W,3]``."""
    return palette()[labels]


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the label colours over an RGB image; background pixels stay as they are."""
    col = colorize_labels(labels).astype(np.float32)
    out = image.astype(np.float32)
    m = (labels > 0)[..., None]
    out = np.where(m, (1 - alpha) * out + alpha * col, out)
    return out.clip(0, 255).astype(np.uint8)
