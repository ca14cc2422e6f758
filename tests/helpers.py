"""Helpers shared by the tests (importable as ``helpers``; see pytest ``pythonpath``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def tiny_generator(seed: int = 0, size: int = 16, noise_weight: float = 0.3):
    """A small random StyleGAN2 backend (non-zero noise so noise modes matter)."""
    from labelfactory.generators.stylegan2 import Generator, StyleGAN2Backend, StyleGAN2Config

    torch.manual_seed(seed)
    chans = {4: 16, 8: 12, 16: 8, 32: 8, 64: 8}
    g = Generator(StyleGAN2Config(size=size, style_dim=16, n_mlp=2,
                                  channels={r: c for r, c in chans.items() if r <= size}))
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(noise_weight)
        g.latent_avg.normal_()
    return StyleGAN2Backend(g, g.cfg.to_dict())


def load_script(path: Path):
    """Import a script file (e.g. a test-data recipe) as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
