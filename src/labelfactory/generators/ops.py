"""Resampling ops of StyleGAN2 in plain PyTorch (no compiled extensions).

``upfirdn2d`` is the upsample → FIR filter → downsample primitive that both
rosinality's and NVIDIA's StyleGAN2 build on; this is its reference path, which
runs on any device.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def make_kernel(k: Sequence[float]) -> torch.Tensor:
    """Separable FIR kernel from a 1-D tap list, normalised to sum 1."""
    t = torch.tensor(list(k), dtype=torch.float32)
    if t.ndim == 1:
        t = t[None, :] * t[:, None]
    return t / t.sum()


def upfirdn2d(
    x: torch.Tensor,
    kernel: torch.Tensor,
    up: int = 1,
    down: int = 1,
    pad: tuple[int, int] = (0, 0),
) -> torch.Tensor:
    """Zero-insert upsample by ``up``, pad by ``pad`` (before, after; both axes),
    convolve with ``kernel`` (true convolution), keep every ``down``-th pixel."""
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(b, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    if p0 < 0 or p1 < 0:
        x = x[:, :, max(-p0, 0) : x.shape[2] - max(-p1, 0), max(-p0, 0) : x.shape[3] - max(-p1, 0)]
    k = torch.flip(kernel, [0, 1]).to(x.dtype)
    k = k[None, None].expand(c, 1, *k.shape)
    x = F.conv2d(x, k, groups=c)
    return x[:, :, ::down, ::down] if down > 1 else x
