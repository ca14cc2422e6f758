"""Train a class-conditional BigGAN on toy-world images of every class, with class ids only.

The recipe behind the shipped toy BigGAN (the BigGAN-PyTorch architecture, so
the shipped file is in that layout): hinge loss, a projection discriminator
with spectral norm, Adam (β₁ = 0, β₂ = 0.999), orthogonal init, several D steps
per G step, an exponential moving average of G (``G_ema``, with buffers, as the
reference's ``ema``), and at the end "standing statistics": the batch-norm
statistics of ``G_ema`` re-estimated over many batches of its own samples.
Real images are rendered on the fly from a seed range no test set uses; no mask
is ever read. Resumable: the state is saved every ``checkpoint_every`` steps.
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
from labelfactory.generators.biggan import BN, CCBN, BigGANConfig, BigGANGenerator, SNConv2d, SNLinear
from labelfactory.toybench import world as toyworld
from labelfactory.toybench.recipes.real_images import real_batch
from labelfactory.toybench.recipes.state import resume_state, save_state, update_ema

log = logging.getLogger(__name__)


@dataclass
class BigGANTrainConfig:
    size: int = 32
    ch: int = 16
    d_ch: int = 16
    dim_z: int = 64
    shared_dim: int = 32
    attention: tuple[int, ...] = (16,)
    classes: tuple[str, ...] = toyworld.CLASSES
    batch: int = 32
    kimg: float = 130.0
    g_lr: float = 2e-4
    d_lr: float = 2e-4
    d_steps: int = 2
    ema_decay: float = 0.998
    ema_start: int = 300
    standing_batches: int = 64
    seed: int = 0
    threads: int = 1
    checkpoint_every: int = 250
    snapshot_every: int = 500

    def g_config(self) -> BigGANConfig:
        return BigGANConfig(resolution=self.size, ch=self.ch, dim_z=self.dim_z, shared_dim=self.shared_dim,
                            n_classes=len(self.classes), attention=tuple(self.attention))


class DBlock(nn.Module):
    """BigGAN-PyTorch ``DBlock``: two SN convs, 2×2 average pooling, 1×1 shortcut."""

    def __init__(self, in_ch: int, out_ch: int, preactivation: bool, downsample: bool):
        super().__init__()
        self.conv1 = SNConv2d(in_ch, out_ch)
        self.conv2 = SNConv2d(out_ch, out_ch)
        self.conv_sc = SNConv2d(in_ch, out_ch, kernel_size=1, padding=0) if in_ch != out_ch or downsample else None
        self.preactivation, self.downsample = preactivation, downsample

    def _down(self, x):
        return F.avg_pool2d(x, 2) if self.downsample else x

    def forward(self, x):
        h = F.relu(x) if self.preactivation else x
        h = self._down(self.conv2(F.relu(self.conv1(h))))
        sc = x
        if self.preactivation:
            sc = self._down(self.conv_sc(sc) if self.conv_sc is not None else sc)
        else:
            sc = self._down(sc)
            sc = self.conv_sc(sc) if self.conv_sc is not None else sc
        return h + sc


class ProjectionDiscriminator(nn.Module):
    """BigGAN-PyTorch's 32-px D: four DBlocks (two downsampling), sum pooling, projection head."""

    def __init__(self, ch: int, n_classes: int):
        super().__init__()
        w = 4 * ch
        self.blocks = nn.ModuleList([DBlock(3, w, False, True), DBlock(w, w, True, True),
                                     DBlock(w, w, True, False), DBlock(w, w, True, False)])
        self.linear = SNLinear(w, 1)
        self.embed = nn.Embedding(n_classes, w)
        with torch.no_grad():  # the reference's SNEmbedding, approximated by a fixed-norm init
            self.embed.weight.mul_(1.0 / math.sqrt(w))

    def forward(self, x, y):
        h = x
        for b in self.blocks:
            h = b(h)
        h = F.relu(h).sum((2, 3))
        return self.linear(h)[:, 0] + (self.embed(y) * h).sum(1)


def ortho_init(module: nn.Module) -> None:
    """BigGAN's ``G_init='ortho'`` for every conv, linear and embedding weight."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
            nn.init.orthogonal_(m.weight)


@torch.no_grad()
def standing_stats(g: BigGANGenerator, n_classes: int, batches: int, batch: int = 64, seed: int = 0) -> None:
    """Re-estimate every batch norm's stored mean and variance over ``batches`` batches of G's
    own samples (BigGAN-PyTorch's standing statistics), layer by layer, so each layer is
    measured on inputs produced with the statistics already fixed before it."""
    bns = [m for m in g.modules() if isinstance(m, (CCBN, BN))]
    for k, target in enumerate(bns):
        mean = torch.zeros_like(target.stored_mean)
        var = torch.zeros_like(target.stored_var)
        captured = {}

        def hook(mod, inp, out):
            captured["x"] = inp[0]

        h = target.register_forward_hook(hook)
        gen = torch.Generator().manual_seed(seed)
        g.eval()
        for _ in range(batches):
            z = torch.randn(batch, g.cfg.z_dim, generator=gen)
            y = torch.randint(0, n_classes, (batch,), generator=gen)
            g.generate(z, y)
            x = captured["x"]
            mean += x.mean((0, 2, 3)) / batches
            var += x.var((0, 2, 3), unbiased=True) / batches
        h.remove()
        target.stored_mean.copy_(mean)
        target.stored_var.copy_(var)


def train(cfg: BigGANTrainConfig, out_dir: Path, progress: bool = True) -> Path:
    """Train and return the path of the final state (``state.pt`` under ``out_dir``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    n_cls = len(cfg.classes)
    g = BigGANGenerator(cfg.g_config())
    d = ProjectionDiscriminator(cfg.d_ch, n_cls)
    ortho_init(g)
    ortho_init(d)
    g_ema = BigGANGenerator(cfg.g_config()).requires_grad_(False)
    g_ema.load_state_dict(g.state_dict())
    g_opt = torch.optim.Adam(g.parameters(), lr=cfg.g_lr, betas=(0.0, 0.999), eps=1e-6)
    d_opt = torch.optim.Adam(d.parameters(), lr=cfg.d_lr, betas=(0.0, 0.999), eps=1e-6)

    total_steps = int(math.ceil(cfg.kimg * 1000 / (cfg.batch * cfg.d_steps)))
    state_path = out_dir / "state.pt"
    nets, optimizers = {"g": g, "d": d, "g_ema": g_ema}, {"g_opt": g_opt, "d_opt": d_opt}
    step, elapsed = resume_state(state_path, nets, optimizers)

    history_path = out_dir / "history.jsonl"
    t0, seen0 = time.time(), step
    g.train()
    d.train()
    while step < total_steps:
        for k in range(cfg.d_steps):
            real, y_real = real_batch(cfg, step * cfg.d_steps + k)
            z = torch.randn(cfg.batch, g.cfg.z_dim)
            y = torch.randint(0, n_cls, (cfg.batch,))
            with torch.no_grad():
                fake = g.generate(z, y)
            d_real, d_fake = d(real, y_real), d(fake, y)
            d_loss = F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()

        z = torch.randn(cfg.batch, g.cfg.z_dim)
        y = torch.randint(0, n_cls, (cfg.batch,))
        g_loss = -d(g.generate(z, y), y).mean()
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()
        step += 1
        update_ema(g_ema, g, 0.0 if step < cfg.ema_start else cfg.ema_decay)

        if step % 50 == 0 or step == total_steps:
            rate = (step - seen0) * cfg.batch * cfg.d_steps / (time.time() - t0)
            rec = {"step": step, "kimg": step * cfg.batch * cfg.d_steps / 1000, "d_loss": d_loss.item(),
                   "g_loss": g_loss.item(), "real_img_per_s": rate, "elapsed_s": elapsed + time.time() - t0}
            with open(history_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if progress:
                log.info("step %d/%d kimg %.1f d %.3f g %.3f  %.0f real img/s", step, total_steps,
                         rec["kimg"], rec["d_loss"], rec["g_loss"], rate)
        if step % cfg.snapshot_every == 0 or step == total_steps:
            save_grid(g_ema, n_cls, out_dir / f"snapshot_{step:06d}.png")
        if step % cfg.checkpoint_every == 0 or step == total_steps:
            save_state(state_path, nets, optimizers, step, elapsed + time.time() - t0, cfg)
    return state_path


@torch.no_grad()
def save_grid(g: BigGANGenerator, n_classes: int, path: Path, per_class: int = 12, seed: int = 123) -> None:
    """A PNG grid, one row per class, of fixed seeds (eval mode) to watch training."""
    from PIL import Image

    was = g.training
    g.eval()
    z = torch.randn(per_class * n_classes, g.cfg.z_dim, generator=torch.Generator().manual_seed(seed))
    y = torch.arange(n_classes).repeat_interleave(per_class)
    imgs = images_to_uint8(g.generate(z, y))
    g.train(was)
    rows = [np.concatenate(list(imgs[r * per_class : (r + 1) * per_class]), 1) for r in range(n_classes)]
    Image.fromarray(np.concatenate(rows, 0)).save(path)


def finalize(cfg: BigGANTrainConfig, state_path: Path, weights: str = "g_ema") -> BigGANGenerator:
    """The generator to ship from a finished training state: ``weights`` ``g_ema`` (the
    moving average) or ``g`` (the last iterate), with its standing statistics, in eval mode.
    Also writes ``final_<weights>.png`` beside the state."""
    if weights not in ("g", "g_ema"):
        raise ValueError(f"weights must be 'g' or 'g_ema', got {weights!r}")
    st = torch.load(state_path, map_location="cpu", weights_only=True)
    g = BigGANGenerator(cfg.g_config())
    g.load_state_dict(st[weights])
    g.eval()
    standing_stats(g, len(cfg.classes), cfg.standing_batches, 64, cfg.seed)
    save_grid(g, len(cfg.classes), Path(state_path).parent / f"final_{weights}.png")
    return g
