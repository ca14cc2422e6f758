"""guided-diffusion checkpoints as a generator backend (arch ``"guided-diffusion"``).

The UNet is :mod:`.guided_unet`; this module adds the diffusion around it, as
openai/guided-diffusion's ``GaussianDiffusion`` / ``SpacedDiffusion`` compute it,
and the features as yandex-research/ddpm-segmentation's ``FeatureExtractorDDPM``
takes them. Nothing of either is imported: both are written from their papers
and source, and checked against outputs of the public code
(``tests/data/guided_diffusion/make_reference.py``).

- **Schedule**: float64 betas (``linear`` scaled by 1000/T, or ``cosine``), respaced
  to the retained steps (``timestep_respacing``: section counts such as ``"250"``
  or ``"ddimK"``) by recomputing betas from the cumulative products; the model
  sees the original step (times 1000/T with ``rescale_timesteps``).
- **Sampling**: ``ddpm`` is ancestral sampling (fixed-large variance, or the learned
  range with ``learn_sigma``; ``predict_xstart`` models predict x0), ``ddim`` is
  DDIM with ``eta``; x0 is clipped to [-1, 1] at every step (guided-diffusion's
  ``clip_denoised``, its sampling script's default). A sample's latent is its
  initial noise x_T ``[3, H, W]``, drawn from ``torch.Generator().manual_seed(seed)``;
  stochastic steps draw their noise from a generator of the sample's own (seeded
  by a digest of its x_T, or by the run's seed with ``noise='random'``), so a
  sample does not depend on its batch.
- **Features**: exactly ddpm-segmentation's extractor: the image is noised to x_t
  with one noise for every step (its ``share_noise``: a ``[1, 3, H, W]`` draw seeded
  by ``feature_noise_seed`` for generated samples; given per image by
  ``labelfactory features``), the UNet runs once per step, and the outputs of the
  chosen ``output_blocks`` are the taps ``t{step}.output_blocks.{i}``, for each step,
  for each block in block order (its order), each at its native resolution. As
  there, x_t uses the flags' diffusion (respaced if ``timestep_respacing`` is set)
  and the model is given the step index itself (``SpacedDiffusion._scale_timesteps``
  is the identity): with its configs (T = 1000, no respacing) that is the step the
  model was trained with.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from labelfactory.generators.base import GENERATORS, load_strict
from labelfactory.generators.checkpoints import (
    FORMATS,
    CheckpointError,
    FormatReader,
    RawCheckpoint,
    torch_keys,
    torch_load,
)
from labelfactory.generators.diffusion import PAPER_STEP_FRACTIONS, DiffusionBackend
from labelfactory.generators.guided_unet import GuidedUNet, normalise_flags

ARCH = "guided-diffusion"
SAMPLERS = ("ddpm", "ddim")


# --- schedule ------------------------------------------------------------------------
def named_betas(name: str, steps: int) -> np.ndarray:
    """guided-diffusion's named beta schedules (float64)."""
    if name == "linear":
        scale = 1000 / steps
        return np.linspace(scale * 0.0001, scale * 0.02, steps, dtype=np.float64)

    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)])


def space_timesteps(steps: int, spacing: str) -> list[int]:
    """The retained steps: ``"ddimK"`` is the integer stride that gives exactly K steps;
    else comma-separated counts taken evenly from equal sections of the T steps."""
    if spacing.startswith("ddim"):
        k = int(spacing[4:])
        for stride in range(1, steps):
            if len(range(0, steps, stride)) == k:
                return list(range(0, steps, stride))
        raise ValueError(f"no integer stride gives exactly {k} of {steps} steps ({spacing})")
    counts = [int(c) for c in spacing.split(",")]
    size_per, extra = divmod(steps, len(counts))
    start, taken = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot take {count} steps from a section of {size} (timestep_respacing {spacing!r})")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        taken += [start + round(j * stride) for j in range(count)]
        start += size
    return sorted(set(taken))


class Schedule:
    """The (respaced) diffusion's float64 coefficients, read per step as float32 ``[N,1,1,1]``."""

    def __init__(self, base_betas: np.ndarray, keep: Sequence[int]):
        base_ac = np.cumprod(1.0 - base_betas)
        keep, self.timestep_map, betas, last = set(keep), [], [], 1.0
        for i, ac in enumerate(base_ac):
            if i in keep:
                betas.append(1 - ac / last)
                last = ac
                self.timestep_map.append(i)
        self.betas = b = np.array(betas, dtype=np.float64)
        self.num_steps = len(b)
        ac = np.cumprod(1.0 - b)
        ac_prev = np.append(1.0, ac[:-1])
        self.alphas_cumprod, self.alphas_cumprod_prev = ac, ac_prev
        self.sqrt_ac, self.sqrt_1m_ac = np.sqrt(ac), np.sqrt(1.0 - ac)
        self.sqrt_recip_ac, self.sqrt_recipm1_ac = np.sqrt(1.0 / ac), np.sqrt(1.0 / ac - 1)
        post_var = b * (1.0 - ac_prev) / (1.0 - ac)
        self.post_log_var = np.log(np.append(post_var[1], post_var[1:]))
        self.fixed_large = np.append(post_var[1], b[1:])
        self.coef1 = b * np.sqrt(ac_prev) / (1.0 - ac)
        self.coef2 = (1.0 - ac_prev) * np.sqrt(1.0 - b) / (1.0 - ac)

    @staticmethod
    def at(arr: np.ndarray, t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(arr).to(t.device)[t].float()[:, None, None, None]


def tap_name(step: int, block: int) -> str:
    return f"t{int(step)}.output_blocks.{int(block)}"


# --- backend -----------------------------------------------------------------------
@GENERATORS.register(ARCH)
class GuidedDiffusionBackend(DiffusionBackend):
    """A guided-diffusion UNet with its diffusion: samples from x_T, ddpm-segmentation's taps."""

    arch = ARCH

    def __init__(self, module: GuidedUNet, arch_config: dict, generator_hash: str | None = None):
        super().__init__(module, arch_config, generator_hash)
        self.flags = arch_config
        self.base_betas = named_betas(arch_config["noise_schedule"], arch_config["diffusion_steps"])
        spacing = arch_config["timestep_respacing"] or str(arch_config["diffusion_steps"])
        self.flag_schedule = Schedule(self.base_betas, space_timesteps(len(self.base_betas), spacing))
        steps = self.flag_schedule.num_steps
        self.feature_steps = [min(steps - 1, round(f * steps)) for f in PAPER_STEP_FRACTIONS]
        self.feature_noise_seed = 0
        self.blocks = list(range(len(module.output_blocks)))
        self.set_sampling("ddim" if spacing.startswith("ddim") else "ddpm", spacing)

    @classmethod
    def from_tensors(cls, arch_config, tensors, generator_hash=None):
        flags = normalise_flags(arch_config)
        module = load_strict(GuidedUNet(flags), tensors, "guided-diffusion")
        return cls(module, flags, generator_hash)

    # -- properties -------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return self.flags["image_size"]

    @property
    def num_classes(self) -> int:
        return self.module.num_classes

    def class_embedding(self) -> torch.Tensor | None:
        """``label_emb``'s ``[1000, 4·num_channels]`` class vectors (class-conditional models), which the
        conv interpreter conditions on as it does on a BigGAN's shared embedding."""
        return self.module.label_emb.weight if self.num_classes else None

    @property
    def num_timesteps(self) -> int:
        return self.flags["diffusion_steps"]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (3, self.resolution, self.resolution)

    def feature_shapes(self) -> dict[str, tuple[int, int, int]]:
        shapes = self.module.output_shapes
        return {tap_name(t, i): shapes[i] for t in self.feature_steps for i in range(len(shapes))}

    # -- settings -----------------------------------------------------------------------
    def check_steps(self, steps: Sequence[int]) -> list[int]:
        n = self.flag_schedule.num_steps
        bad = [int(t) for t in steps if not 0 <= int(t) < n]
        if bad or not steps:
            raise ValueError(f"diffusion steps {bad or 'none'} are outside the schedule [0, {n})")
        return [int(t) for t in steps]

    def check_blocks(self, blocks: Sequence) -> list[int]:
        n = len(self.module.output_blocks)
        names = {str(i): i for i in range(n)} | {f"output_blocks.{i}": i for i in range(n)}
        bad = [b for b in blocks if str(b) not in names]
        if bad or not blocks:
            raise ValueError(f"unknown UNet blocks {bad or 'none'}; this model has output blocks 0..{n - 1}")
        return sorted({names[str(b)] for b in blocks})

    def set_sampling(self, sampler: str, spacing: str | int, eta: float = 0.0) -> None:
        """Sampler (``ddpm`` or ``ddim``), the retained steps and DDIM's ``eta``. ``spacing`` is a
        ``timestep_respacing`` string as guided-diffusion reads it (``"250"``, ``"10,20"``,
        ``"ddim25"``), or a count K: for DDIM the ``ddimK`` stride where one gives exactly K
        (guided-diffusion's DDIM usage), else K steps evenly spaced."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r} (one of {', '.join(SAMPLERS)})")
        if eta < 0 or (sampler == "ddpm" and eta):
            raise ValueError(f"eta must be >= 0 and only for ddim, got {eta} with {sampler}")
        if isinstance(spacing, int) and sampler == "ddim":
            try:
                keep = space_timesteps(self.num_timesteps, f"ddim{spacing}")
            except ValueError:
                keep = space_timesteps(self.num_timesteps, str(spacing))
        else:
            keep = space_timesteps(self.num_timesteps, str(spacing))
        self.sampler, self.sampling_steps, self.eta = sampler, spacing, float(eta)
        self.schedule = Schedule(self.base_betas, keep)

    # -- the model ------------------------------------------------------------------------
    def model_time(self, t_original: torch.Tensor) -> torch.Tensor:
        """The step as the sampler gives it to the model (``SpacedDiffusion``'s wrapped model)."""
        if self.flags["rescale_timesteps"]:
            return t_original.float() * (1000.0 / self.num_timesteps)
        return t_original

    def predict(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, schedule: Schedule) -> dict:
        """guided-diffusion's ``p_mean_variance`` (x0 clipped): mean, log variance, x0, at spaced step ``t``."""
        t_orig = torch.tensor(schedule.timestep_map, device=t.device)[t]
        out, _ = self.module(x, self.model_time(t_orig), y)
        if self.flags["learn_sigma"]:
            out, v = out.split(x.shape[1], dim=1)
            frac = (v + 1) / 2
            log_var = frac * schedule.at(np.log(schedule.betas), t) + (1 - frac) * schedule.at(schedule.post_log_var, t)
        else:
            log_var = schedule.at(np.log(schedule.fixed_large), t).expand_as(x)
        if self.flags["predict_xstart"]:
            x0 = out
        else:
            x0 = schedule.at(schedule.sqrt_recip_ac, t) * x - schedule.at(schedule.sqrt_recipm1_ac, t) * out
        x0 = x0.clamp(-1, 1)
        mean = schedule.at(schedule.coef1, t) * x0 + schedule.at(schedule.coef2, t) * x
        return {"mean": mean, "log_variance": log_var, "pred_xstart": x0}

    def step(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
        """One reverse step from spaced step ``t`` with the sampler set, given the step's noise."""
        s = self.schedule
        p = self.predict(x, t, y, s)
        last = (t != 0).float()[:, None, None, None]
        if self.sampler == "ddpm":
            return p["mean"] + last * torch.exp(0.5 * p["log_variance"]) * noise
        eps = (s.at(s.sqrt_recip_ac, t) * x - p["pred_xstart"]) / s.at(s.sqrt_recipm1_ac, t)
        ab, ab_prev = s.at(s.alphas_cumprod, t), s.at(s.alphas_cumprod_prev, t)
        sigma = self.eta * torch.sqrt((1 - ab_prev) / (1 - ab)) * torch.sqrt(1 - ab / ab_prev)
        mean = p["pred_xstart"] * torch.sqrt(ab_prev) + torch.sqrt(1 - ab_prev - sigma ** 2) * eps
        return mean + last * sigma * noise

    def sample(self, x_t: torch.Tensor, y: torch.Tensor | None, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """The sample reached from x_T through every retained step; step noise from one generator per sample."""
        x = x_t
        for i in reversed(range(self.schedule.num_steps)):
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            noise = torch.cat([torch.randn((1, *x.shape[1:]), generator=g).to(x.device) for g in generators])
            x = self.step(x, t, y, noise)
        return x

    def image_features(self, images: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None,
                       steps: Sequence[int], blocks: Sequence) -> dict[str, torch.Tensor]:
        """ddpm-segmentation's taps of given images ``[N,3,H,W]`` in [-1, 1]: x_t from ``noise``
        (``[N or 1, 3, H, W]``, the same at every step), for each step, for each block."""
        steps, blocks = self.check_steps(steps), self.check_blocks(blocks)
        if tuple(images.shape[1:]) != self.latent_shape or noise.shape[1:] != images.shape[1:] \
                or noise.shape[0] not in (1, images.shape[0]):
            raise ValueError(f"images must be [N, {', '.join(map(str, self.latent_shape))}] and noise [N or 1, "
                             f"...] of the same size, got {list(images.shape)} and {list(noise.shape)}")
        out = {}
        for step in steps:
            t = torch.full((images.shape[0],), step, dtype=torch.long, device=images.device)
            s = self.flag_schedule
            x_t = s.at(s.sqrt_ac, t) * images + s.at(s.sqrt_1m_ac, t) * noise
            _, taps = self.module(x_t, t, y, taps=tuple(blocks))
            out.update({tap_name(step, b): taps[b] for b in blocks})
        return out


# --- the checkpoint format: guided-diffusion's plain state dict + the user's flags ------------
_GD_KEYS = {"time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight"}


def is_guided_diffusion(path: Path) -> bool:
    return _GD_KEYS <= torch_keys(path)


def _needs_flags(path: Path) -> RawCheckpoint:
    raise CheckpointError(f"{path}: a guided-diffusion state dict holds no architecture: give its model flags "
                          "(labelfactory --model-flags FLAGS.json, or the checkpoint's model_flags in a config)")


def read_guided_diffusion(path: str | Path, flags: dict) -> RawCheckpoint:
    """A guided-diffusion ``.pt`` state dict with the ``create_model_and_diffusion`` flags it was trained with."""
    tensors = torch_load(Path(path))
    if not _GD_KEYS <= set(tensors):
        raise CheckpointError(f"{path}: not a guided-diffusion UNet state dict (no {sorted(_GD_KEYS)})")
    try:
        full = normalise_flags(flags)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
    return RawCheckpoint(ARCH, full, {k: v.float() for k, v in tensors.items()}, "guided-diffusion",
                         {"model_flags": dict(flags)})


FORMATS.register("guided-diffusion")(FormatReader(is_guided_diffusion, _needs_flags))

__all__ = ["GuidedDiffusionBackend", "Schedule", "named_betas", "read_guided_diffusion", "space_timesteps",
           "tap_name"]
