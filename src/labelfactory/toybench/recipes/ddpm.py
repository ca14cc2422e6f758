"""Train a small class-conditional DDPM on toy-world images of every class, with class ids only.

The recipe behind the shipped toy diffusion model, in guided-diffusion's layout
(:class:`~labelfactory.generators.guided_unet.GuidedUNet`, so the shipped file is a
``guided-diffusion`` checkpoint with its ``create_model_and_diffusion`` flags in the
sidecar): the MSE of the predicted clean image x₀ (guided-diffusion's ``predict_xstart``;
Ho et al.'s ε with ``predict_xstart=False``) at a uniformly drawn step of the linear
1000-step schedule, zero-initialised output convolutions
(as guided-diffusion's ``zero_module``), Adam with a linear warm-up, gradient norm
clipped to 1, and an exponential moving average of the weights (the ones that
ship). x₀ rather than ε because the shipped model samples with few DDIM steps: from an ε
model trained this briefly, the first steps' x₀ = (x_t − √(1−ᾱ)·ε̂)/√ᾱ amplify ε̂'s error some
hundredfold at the noisiest steps, and the clipped estimates left samples with saturated,
noisy backgrounds; an x₀ model's first estimate is the blurred class mean. Real images come from :func:`~labelfactory.toybench.recipes.real_images.real_batch`;
no mask is ever read. Resumable: the state is saved every ``checkpoint_every`` steps.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from labelfactory.generators.base import images_to_uint8
from labelfactory.generators.guided_diffusion import GuidedDiffusionBackend, named_betas
from labelfactory.generators.guided_unet import GuidedUNet, ResBlock, normalise_flags
from labelfactory.toybench import world as toyworld
from labelfactory.toybench.recipes.real_images import real_batch
from labelfactory.toybench.recipes.state import resume_state, save_state, update_ema

log = logging.getLogger(__name__)


@dataclass
class DDPMTrainConfig:
    size: int = 32
    num_channels: int = 32
    channel_mult: str = "1,1,2"
    num_res_blocks: int = 1
    attention_resolutions: str = "8"
    num_head_channels: int = 32
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    predict_xstart: bool = True
    classes: tuple[str, ...] = toyworld.CLASSES
    batch: int = 32
    kimg: float = 256.0
    lr: float = 5e-4
    warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    snapshot_ddim_steps: int = 25
    seed: int = 0
    threads: int = 1
    checkpoint_every: int = 250
    snapshot_every: int = 1000

    def model_flags(self) -> dict:
        """guided-diffusion's ``create_model_and_diffusion`` flags of this model (the sidecar's)."""
        return normalise_flags(dict(
            image_size=self.size, num_channels=self.num_channels, channel_mult=self.channel_mult,
            num_res_blocks=self.num_res_blocks, attention_resolutions=self.attention_resolutions,
            num_head_channels=self.num_head_channels, use_scale_shift_norm=True, class_cond=True,
            learn_sigma=False, diffusion_steps=self.diffusion_steps, noise_schedule=self.noise_schedule,
            predict_xstart=self.predict_xstart))


def zero_output_convs(unet: GuidedUNet) -> None:
    """guided-diffusion's ``zero_module``: the last conv of every residual block and of the output."""
    convs = [m.out_layers[-1] for m in unet.modules() if isinstance(m, ResBlock)] + [unet.out[-1]]
    for conv in convs:
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)


def noised(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``q(x_t | x_0)``: ``sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε``."""
    ab = alphas_cumprod[t][:, None, None, None]
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def lr_at(cfg: DDPMTrainConfig, step: int) -> float:
    return cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))


def train(cfg: DDPMTrainConfig, out_dir: Path, progress: bool = True) -> Path:
    """Train and return the path of the final state (``state.pt`` under ``out_dir``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    flags = cfg.model_flags()
    unet = GuidedUNet(flags)
    zero_output_convs(unet)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.Adam(unet.parameters(), lr=cfg.lr)
    alphas_cumprod = torch.from_numpy(np.cumprod(1.0 - named_betas(cfg.noise_schedule, cfg.diffusion_steps))).float()

    total_steps = int(math.ceil(cfg.kimg * 1000 / cfg.batch))
    state_path, history_path = out_dir / "state.pt", out_dir / "history.jsonl"
    nets, optimizers = {"unet": unet, "ema": ema}, {"opt": opt}
    step, elapsed = resume_state(state_path, nets, optimizers)
    t0, seen0, losses = time.time(), step, []
    unet.train()
    while step < total_steps:
        x0, y = real_batch(cfg, step)
        t = torch.randint(0, cfg.diffusion_steps, (cfg.batch,))
        noise = torch.randn_like(x0)
        pred, _ = unet(noised(x0, t, noise, alphas_cumprod), t, y)
        loss = F.mse_loss(pred, x0 if cfg.predict_xstart else noise)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        update_ema(ema, unet, min(cfg.ema_decay, (1 + step) / (10 + step)))
        losses.append(loss.item())

        if step % 50 == 0 or step == total_steps:
            rate = (step - seen0) * cfg.batch / (time.time() - t0)
            rec = {"step": step, "kimg": step * cfg.batch / 1000, "loss": float(np.mean(losses)),
                   "real_img_per_s": rate, "elapsed_s": elapsed + time.time() - t0}
            losses = []
            with open(history_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if progress:
                log.info("step %d/%d kimg %.1f loss %.4f  %.0f img/s", step, total_steps, rec["kimg"], rec["loss"],
                         rate)
        if step % cfg.snapshot_every == 0 or step == total_steps:
            save_grid(backend_of(ema, cfg), len(cfg.classes), out_dir / f"snapshot_{step:06d}.png",
                      cfg.snapshot_ddim_steps)
        if step % cfg.checkpoint_every == 0 or step == total_steps:
            save_state(state_path, nets, optimizers, step, elapsed + time.time() - t0, cfg)
    return state_path


def backend_of(unet: GuidedUNet, cfg: DDPMTrainConfig) -> GuidedDiffusionBackend:
    """The trained UNet as the guided-diffusion backend that loads the shipped file (a copy, eval mode)."""
    module = copy.deepcopy(unet).eval().requires_grad_(False)
    return GuidedDiffusionBackend(module, cfg.model_flags())


@torch.no_grad()
def save_grid(backend: GuidedDiffusionBackend, n_classes: int, path: Path, ddim_steps: int, per_class: int = 12,
              seed: int = 123) -> None:
    """A PNG grid, one row per class, of fixed seeds sampled with DDIM (``ddim_steps``) to watch training."""
    from PIL import Image

    backend.set_sampling("ddim", ddim_steps)
    seeds = range(seed, seed + per_class)
    z = torch.from_numpy(np.concatenate([backend.draw_latents(seeds)] * n_classes))
    y = torch.arange(n_classes).repeat_interleave(per_class)
    imgs = images_to_uint8(backend.synthesize(z, y, features=False).images)
    rows = [np.concatenate(list(imgs[r * per_class : (r + 1) * per_class]), 1) for r in range(n_classes)]
    Image.fromarray(np.concatenate(rows, 0)).save(path)


def finalize(cfg: DDPMTrainConfig, state_path: Path, weights: str = "ema") -> GuidedDiffusionBackend:
    """The model to ship from a finished training state: ``weights`` ``ema`` (the moving average)
    or ``unet`` (the last iterate). Also writes ``final_<weights>.png`` beside the state."""
    if weights not in ("unet", "ema"):
        raise ValueError(f"weights must be 'unet' or 'ema', got {weights!r}")
    st = torch.load(state_path, map_location="cpu", weights_only=True)
    unet = GuidedUNet(cfg.model_flags())
    unet.load_state_dict(st[weights])
    save_grid(backend_of(unet, cfg), len(cfg.classes), Path(state_path).parent / f"final_{weights}.png",
              cfg.snapshot_ddim_steps)
    return backend_of(unet, cfg)


__all__ = ["DDPMTrainConfig", "backend_of", "finalize", "lr_at", "noised", "save_grid", "train",
           "zero_output_convs"]
