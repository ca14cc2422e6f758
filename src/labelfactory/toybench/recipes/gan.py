"""Train a StyleGAN2 on toy-world images of one class, without labels.

The recipe behind the shipped toy generators: non-saturating logistic loss,
lazy R1 on the discriminator, style mixing, an exponential moving average of the
generator (``g_ema``, the weights that ship). Real images are rendered on the
fly from a seed range that no test set uses. Resumable: the state is saved every
``checkpoint_every`` steps and a re-run continues from it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labelfactory.generators.base import images_to_uint8
from labelfactory.generators.ops import make_kernel, upfirdn2d
from labelfactory.generators.stylegan2 import EqualLinear, Generator, StyleGAN2Config
from labelfactory.toybench import world as toyworld
from labelfactory.toybench.recipes.state import resume_state, save_state

log = logging.getLogger(__name__)

TRAIN_SEED_OFFSET = 1_000_000_000  # toy-world seeds used for GAN training start here


@dataclass
class GANTrainConfig:
    cls: str = "car"
    size: int = 32
    style_dim: int = 128
    n_mlp: int = 2
    channels: dict[int, int] = field(default_factory=lambda: {4: 128, 8: 128, 16: 64, 32: 32})
    d_channels: dict[int, int] = field(default_factory=lambda: {4: 128, 8: 128, 16: 64, 32: 32})
    batch: int = 16
    kimg: float = 100.0
    lr: float = 0.0025
    r1_gamma: float = 0.05
    r1_every: int = 16
    mixing_prob: float = 0.5
    ema_kimg: float = 10.0
    ema_rampup: float = 0.05
    seed: int = 0
    threads: int = 2
    checkpoint_every: int = 250
    snapshot_every: int = 500

    def g_config(self) -> StyleGAN2Config:
        return StyleGAN2Config(size=self.size, style_dim=self.style_dim, n_mlp=self.n_mlp, channels=self.channels)


class EqualConv2d(nn.Module):
    def __init__(self, in_ch, out_ch, k, padding=0, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, k, k))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1 / math.sqrt(in_ch * k * k)
        self.padding = padding

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


def _lrelu(x):
    return F.leaky_relu(x, 0.2) * math.sqrt(2.0)


class DiscriminatorBlock(nn.Module):
    """Residual block: two 3×3 convs then 2× blur-downsample, with a 1×1 skip."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv0 = EqualConv2d(in_ch, in_ch, 3, padding=1)
        self.conv1 = EqualConv2d(in_ch, out_ch, 3, padding=1)
        self.skip = EqualConv2d(in_ch, out_ch, 1, bias=False)
        self.register_buffer("kernel", make_kernel((1, 3, 3, 1)))

    def down(self, x):
        return upfirdn2d(x, self.kernel, down=2, pad=(1, 1))

    def forward(self, x):
        y = self.skip(self.down(x))
        x = self.down(_lrelu(self.conv1(_lrelu(self.conv0(x)))))
        return (x + y) / math.sqrt(2.0)


class Discriminator(nn.Module):
    """ResNet discriminator with a minibatch standard-deviation feature."""

    def __init__(self, size: int, channels: dict[int, int]):
        super().__init__()
        self.from_rgb = EqualConv2d(3, channels[size], 1)
        res = [2**i for i in range(int(math.log2(size)), 2, -1)]
        self.blocks = nn.ModuleList(DiscriminatorBlock(channels[r], channels[r // 2]) for r in res)
        self.final_conv = EqualConv2d(channels[4] + 1, channels[4], 3, padding=1)
        self.fc = EqualLinear(channels[4] * 16, channels[4], activation=True)
        self.out = EqualLinear(channels[4], 1)

    def forward(self, x):
        x = _lrelu(self.from_rgb(x))
        for b in self.blocks:
            x = b(x)
        n = x.shape[0]
        g = min(4, n)
        std = x.reshape(g, -1, *x.shape[1:]).std(0, unbiased=False).add(1e-8).mean((1, 2, 3))
        x = torch.cat([x, std.repeat(g)[:, None, None, None].expand(n, 1, *x.shape[2:])], 1)
        x = _lrelu(self.final_conv(x))
        return self.out(self.fc(x.flatten(1)))


def real_images(cls: str, size: int, batch: int, step: int) -> torch.Tensor:
    """Toy-world images of one class for training ``step`` (seeds from :data:`TRAIN_SEED_OFFSET`
    on, ``batch`` per step), as floats in [-1, 1]."""
    start = TRAIN_SEED_OFFSET + step * batch
    imgs, _, _ = toyworld.render_batch(range(start, start + batch), cls, size)
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _ema(g_ema: nn.Module, g: nn.Module, beta: float) -> None:
    with torch.no_grad():
        for pe, p in zip(g_ema.parameters(), g.parameters()):
            pe.lerp_(p, 1.0 - beta)
        for be, b in zip(g_ema.buffers(), g.buffers()):
            be.copy_(b)


def train(cfg: GANTrainConfig, out_dir: Path, progress: bool = True) -> Path:
    """Train and return the path of the final state (``state.pt`` under ``out_dir``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    import random

    random.seed(cfg.seed)

    g = Generator(cfg.g_config())
    d = Discriminator(cfg.size, cfg.d_channels)
    g_ema = Generator(cfg.g_config()).requires_grad_(False)
    g_ema.load_state_dict(g.state_dict())
    c = cfg.r1_every / (cfg.r1_every + 1)
    g_opt = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(0.0, 0.99))
    d_opt = torch.optim.Adam(d.parameters(), lr=cfg.lr * c, betas=(0.0, 0.99**c))

    total_steps = int(math.ceil(cfg.kimg * 1000 / cfg.batch))
    state_path = out_dir / "state.pt"
    nets, optimizers = {"g": g, "d": d, "g_ema": g_ema}, {"g_opt": g_opt, "d_opt": d_opt}
    step, elapsed = resume_state(state_path, nets, optimizers)

    history_path = out_dir / "history.jsonl"
    t0, seen0 = time.time(), step
    r1 = torch.zeros(())  # last R1 penalty (computed every r1_every steps)
    while step < total_steps:
        real = real_images(cfg.cls, cfg.size, cfg.batch, step)
        z = torch.randn(cfg.batch, cfg.style_dim)

        # discriminator
        with torch.no_grad():
            fake = g(z, noise_mode="random", mixing_prob=cfg.mixing_prob)
        d_loss = F.softplus(d(fake)).mean() + F.softplus(-d(real)).mean()
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        if step % cfg.r1_every == 0:
            real.requires_grad_(True)
            (grad,) = torch.autograd.grad(d(real).sum(), real, create_graph=True)
            r1 = grad.square().sum((1, 2, 3)).mean()
            d_opt.zero_grad(set_to_none=True)
            (cfg.r1_gamma / 2 * r1 * cfg.r1_every).backward()
            d_opt.step()

        # generator
        z = torch.randn(cfg.batch, cfg.style_dim)
        fake = g(z, noise_mode="random", mixing_prob=cfg.mixing_prob)
        g_loss = F.softplus(-d(fake)).mean()
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()

        nimg = (step + 1) * cfg.batch
        ema_nimg = min(cfg.ema_kimg * 1000, nimg * cfg.ema_rampup)
        _ema(g_ema, g, 0.5 ** (cfg.batch / max(ema_nimg, 1e-8)))
        step += 1

        if step % 50 == 0 or step == total_steps:
            rate = (step - seen0) * cfg.batch / (time.time() - t0)
            rec = {"step": step, "kimg": nimg / 1000, "d_loss": d_loss.item(), "g_loss": g_loss.item(),
                   "r1": r1.item(), "img_per_s": rate, "elapsed_s": elapsed + time.time() - t0}
            with open(history_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if progress:
                log.info("step %d/%d kimg %.1f d %.3f g %.3f r1 %.3f  %.0f img/s", step, total_steps,
                         rec["kimg"], rec["d_loss"], rec["g_loss"], rec["r1"], rate)
        if step % cfg.snapshot_every == 0 or step == total_steps:
            save_grid(g_ema, out_dir / f"snapshot_{step:06d}.png")
        if step % cfg.checkpoint_every == 0 or step == total_steps:
            save_state(state_path, nets, optimizers, step, elapsed + time.time() - t0, cfg)
    return state_path


@torch.no_grad()
def save_grid(g: Generator, path: Path, n: int = 64, seed: int = 123) -> None:
    """A PNG grid of ``n`` samples of fixed seeds (constant noise) to watch training."""
    from PIL import Image

    z = torch.randn(n, g.cfg.z_dim, generator=torch.Generator().manual_seed(seed))
    imgs = images_to_uint8(g(z))
    rows = int(math.sqrt(n))
    grid = np.concatenate([np.concatenate(list(imgs[r * rows : (r + 1) * rows]), 1) for r in range(n // rows)], 0)
    Image.fromarray(grid).save(path)


def finalize(cfg: GANTrainConfig, state_path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Load ``g_ema`` from a training state and set its ``latent_avg`` (mean w of 4096 z)."""
    st = torch.load(state_path, map_location="cpu", weights_only=True)
    g = Generator(cfg.g_config())
    g.load_state_dict(st["g_ema"])
    g.latent_avg.copy_(g.mean_latent(4096))
    return g.cfg.to_dict(), {k: v.contiguous() for k, v in g.state_dict().items()}
