"""Train a plain DCGAN on toy-world images of one class, without labels: the weak generator.

The small-parts toy domain (``portrait``) needs a generator weaker than the toy
StyleGAN2, brought in the way a lab brings its own: a ``torch.nn.Module`` class
loaded through the ``torch-module`` backend by import path
(``labelfactory.toybench.recipes.dcgan:DCGAN``). The recipe is Radford et al.'s
(transposed convolutions with BatchNorm and ReLU; a strided-conv discriminator
with LeakyReLU; BCE loss; Adam 2e-4, β₁ 0.5; N(0, 0.02) initialisation), with no
EMA, no regulariser and no mapping network. Real images are rendered on the fly
from a seed range that no test set uses. Resumable like the other toy recipes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labelfactory.generators.base import images_to_uint8
from labelfactory.toybench.recipes.gan import real_images
from labelfactory.toybench.recipes.state import resume_state, save_state

log = logging.getLogger(__name__)

CLASS_PATH = "labelfactory.toybench.recipes.dcgan:DCGAN"


def _up(cin: int, cout: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]


class DCGAN(nn.Module):
    """DCGAN generator: z ``[B, nz, 1, 1]`` → tanh image ``[B, 3, size, size]``; channels
    halve from ``ngf · 2^(k-1)`` at 4×4 to ``ngf`` at ``size / 2`` (size = 4 · 2^k)."""

    def __init__(self, nz: int = 64, ngf: int = 32, size: int = 32):
        super().__init__()
        n_up = (size // 4).bit_length() - 1
        chans = [ngf * 2 ** (n_up - 1 - i) for i in range(n_up)]
        layers = [nn.ConvTranspose2d(nz, chans[0], 4, 1, 0, bias=False), nn.BatchNorm2d(chans[0]), nn.ReLU(True)]
        for cin, cout in zip(chans, chans[1:]):
            layers += _up(cin, cout)
        layers += [nn.ConvTranspose2d(chans[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class Discriminator(nn.Module):
    """DCGAN discriminator: strided 4×4 convs (BatchNorm after the first) down to 4×4, then
    one 4×4 conv to a logit."""

    def __init__(self, ndf: int = 32, size: int = 32):
        super().__init__()
        n_down = (size // 4).bit_length() - 1
        chans = [ndf * 2**i for i in range(n_down)]
        layers: list[nn.Module] = [nn.Conv2d(3, chans[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for cin, cout in zip(chans, chans[1:]):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(chans[-1], 1, 4, 1, 0, bias=False)]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).flatten()


def dcgan_init(m: nn.Module) -> None:
    """Radford et al.'s initialisation: conv weights N(0, 0.02), BatchNorm scale N(1, 0.02)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


@dataclass
class DCGANTrainConfig:
    cls: str = "portrait"
    size: int = 32
    nz: int = 64
    ngf: int = 32
    ndf: int = 32
    batch: int = 64
    kimg: float = 200.0
    lr: float = 2e-4
    beta1: float = 0.5
    seed: int = 0
    threads: int = 1
    checkpoint_every: int = 250
    snapshot_every: int = 500

    def generator_spec(self) -> dict:
        """The ``torch-module`` checkpoint spec of the trained generator (its sidecar's
        ``arch_config``): import path, constructor arguments, latent and taps (the three
        BatchNorm outputs, 4×4 to 16×16)."""
        return {"class_path": CLASS_PATH, "kwargs": {"nz": self.nz, "ngf": self.ngf, "size": self.size},
                "latent_shape": [self.nz, 1, 1], "output_range": [-1.0, 1.0], "tap_types": ["BatchNorm2d"]}


def train(cfg: DCGANTrainConfig, out_dir: Path, progress: bool = True) -> Path:
    """Train and return the path of the final state (``state.pt`` under ``out_dir``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    g, d = DCGAN(cfg.nz, cfg.ngf, cfg.size), Discriminator(cfg.ndf, cfg.size)
    g.apply(dcgan_init)
    d.apply(dcgan_init)
    g_opt = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    d_opt = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    total_steps = int(math.ceil(cfg.kimg * 1000 / cfg.batch))
    state_path = out_dir / "state.pt"
    nets, optimizers = {"g": g, "d": d}, {"g_opt": g_opt, "d_opt": d_opt}
    step, elapsed = resume_state(state_path, nets, optimizers)
    ones, zeros = torch.ones(cfg.batch), torch.zeros(cfg.batch)
    t0, seen0 = time.time(), step
    while step < total_steps:
        real = real_images(cfg.cls, cfg.size, cfg.batch, step)
        fake = g(torch.randn(cfg.batch, cfg.nz, 1, 1))
        d_loss = (F.binary_cross_entropy_with_logits(d(real), ones)
                  + F.binary_cross_entropy_with_logits(d(fake.detach()), zeros))
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        g_loss = F.binary_cross_entropy_with_logits(d(fake), ones)
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()
        step += 1
        if step % 50 == 0 or step == total_steps:
            rate = (step - seen0) * cfg.batch / (time.time() - t0)
            rec = {"step": step, "kimg": step * cfg.batch / 1000, "d_loss": d_loss.item(), "g_loss": g_loss.item(),
                   "img_per_s": rate, "elapsed_s": elapsed + time.time() - t0}
            with open(out_dir / "history.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            if progress:
                log.info("step %d/%d kimg %.1f d %.3f g %.3f  %.0f img/s", step, total_steps, rec["kimg"],
                         rec["d_loss"], rec["g_loss"], rate)
        if step % cfg.snapshot_every == 0 or step == total_steps:
            save_grid(g, cfg.nz, out_dir / f"snapshot_{step:06d}.png")
        if step % cfg.checkpoint_every == 0 or step == total_steps:
            save_state(state_path, nets, optimizers, step, elapsed + time.time() - t0, cfg)
    return state_path


@torch.no_grad()
def save_grid(g: DCGAN, nz: int, path: Path, n: int = 64, seed: int = 123) -> None:
    """A PNG grid of ``n`` samples of fixed latents (eval mode) to watch training."""
    from PIL import Image

    g.eval()
    z = torch.randn(n, nz, 1, 1, generator=torch.Generator().manual_seed(seed))
    imgs = images_to_uint8(g(z))
    g.train()
    rows = int(math.sqrt(n))
    grid = np.concatenate([np.concatenate(list(imgs[r * rows: (r + 1) * rows]), 1) for r in range(n // rows)], 0)
    Image.fromarray(grid).save(path)


@torch.no_grad()
def finalize(cfg: DCGANTrainConfig, state_path: Path, batches: int = 64) -> tuple[dict, dict[str, torch.Tensor]]:
    """The generator spec and the trained generator's state dict. The backend runs the
    module in eval mode, so the BatchNorm running statistics (a momentum average over the
    last training steps' weights) are recomputed as exact averages over ``batches`` batches
    of the final weights' samples."""
    st = torch.load(state_path, map_location="cpu", weights_only=True)
    g = DCGAN(cfg.nz, cfg.ngf, cfg.size)
    g.load_state_dict(st["g"])
    gen = torch.Generator().manual_seed(cfg.seed)
    for m in g.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    g.train()
    for _ in range(batches):
        g(torch.randn(cfg.batch, cfg.nz, 1, 1, generator=gen))
    return cfg.generator_spec(), {k: v.contiguous() for k, v in g.state_dict().items()}


__all__ = ["CLASS_PATH", "DCGAN", "DCGANTrainConfig", "Discriminator", "dcgan_init", "finalize", "train"]
