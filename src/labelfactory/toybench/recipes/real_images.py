"""Real training images for the class-conditional toy recipes (BigGAN, DDPM): toy-world renders of
random classes, drawn per step from a seed range that no test set uses; no mask is ever read."""

from __future__ import annotations

import numpy as np
import torch

from labelfactory.toybench import world as toyworld
from labelfactory.toybench.recipes.gan import TRAIN_SEED_OFFSET


def real_batch(cfg, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Toy-world images of random classes for ``step`` (floats in [-1, 1]) and their class ids;
    ``cfg`` gives ``seed``, ``batch``, ``size`` and ``classes`` (toy class names, id = position)."""
    rng = np.random.default_rng([cfg.seed, step])
    classes = rng.integers(0, len(cfg.classes), cfg.batch)
    start = TRAIN_SEED_OFFSET + step * cfg.batch
    imgs = np.empty((cfg.batch, cfg.size, cfg.size, 3), dtype=np.uint8)
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        imgs[idx] = toyworld.render_batch([start + int(i) for i in idx], cfg.classes[c], cfg.size)[0]
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    return x, torch.from_numpy(classes)


__all__ = ["real_batch"]
