"""StyleGAN1 in the layout of DatasetGAN's release (``karras2019stylegan-*.for_g_all.pt``), pure PyTorch.

The release ships NVIDIA's TF StyleGAN converted to the ``state_dict()`` of
``Sequential(g_mapping, truncation, g_synthesis)`` (its ``models/stylegan1.py``),
saved as a legacy torch pickle. The module tree here has the same parameter
names, so such a file loads with strict key matching; z and w widths, mapping
depth, resolution and per-block channels are read from the tensor shapes.
What the release's modules compute, and this one too:

- mapping: pixel norm, then dense layers (equalised learning rate, lr
  multiplier 0.01, leaky ReLU 0.2); the one w feeds every layer;
- truncation (its ``Truncation``): ``lerp(average, w, psi)`` on the layers below
  a cut-off, per layer of a ``[18, w_dim]`` average. The release sets the cut-off
  by domain: 8 for car (512 px) and face (1024), 7 for cat and bedroom (256), and
  its ``Truncation`` class defaults to 8; here the config's ``truncation_cutoff``
  defaults to 8 from 512 px up, else 7, and
  :meth:`StyleGAN1Backend.set_truncation_cutoff` (a task's ``truncation_cutoff``,
  the command line's ``--truncation-cutoff``) sets another for rendering. The files
  hold no average latent: the release reads ``avg_latent_stylegan1.npy`` (the mean
  w of 8000 z); give it with :meth:`StyleGAN1Backend.set_average_latent`. Neither
  is part of the generator hash: both are rendering inputs;
- synthesis: a learned constant plus bias at 4x4; per further block a 2x nearest
  upsample and 3x3 conv (from 128 px output up, TF's fused transposed conv with
  the 4x4-summed kernel instead), the ``[1, 2, 1]`` blur and the bias; every conv
  is followed by an epilogue (per-channel-scaled noise, leaky ReLU 0.2, instance
  norm, style modulation ``x * (1 + s) + b``); a 1x1 ``torgb`` ends;
- noise: the files store none and the release redraws it every pass, so
  ``noise='none'`` renders without (deterministic: a latent re-renders its image
  exactly), ``'random'`` draws it from the seeded generator, ``'const'`` is refused.

Feature taps: the release's ``G_synthesis`` returns, per block, the block's output
(``epi2``) and its last conv's output before that epilogue, in that order; they are
named after those modules, ``{R}x{R}.epi2`` and ``{R}x{R}.conv`` (4x4) or
``{R}x{R}.conv1``. At the release's widths they sum to 4992 channels (256 px),
5056 (512) and 5088 (1024), the feature ``dim`` of its experiment configs.
Images and taps come at native resolution; the release then resizes per domain
(bilinear, ``align_corners=False``): car renders 512x512 and keeps rows 64:448
(384x512), face's 1024 px image and taps go down to 512, cat and bedroom stay 256.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labelfactory.generators.base import GENERATORS, GeneratorBackend, Synthesis, load_strict
from labelfactory.generators.checkpoints import (
    FORMATS,
    CheckpointError,
    FormatReader,
    RawCheckpoint,
    torch_load,
    torch_keys,
)
from labelfactory.generators.stylegan2 import PixelNorm

NOISE_MODES = ("none", "random")
FUSED_UP_MIN = 128  # output resolution from which an upsampling conv is TF's fused transposed conv
LRELU = 0.2
RELEASE_LAYERS = 18  # rows of the release's average latent (G_mapping broadcasts w to 18 layers)


@dataclass
class StyleGAN1Config:
    """Architecture of a DatasetGAN-release StyleGAN1 generator."""

    resolution: int
    channels: dict[int, int]
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    truncation_cutoff: int | None = None

    def __post_init__(self):
        if self.resolution < 4 or self.resolution & (self.resolution - 1):
            raise ValueError(f"StyleGAN1 resolution must be a power of two >= 4, got {self.resolution}")
        self.channels = {int(k): int(v) for k, v in self.channels.items()}
        if sorted(self.channels) != self.resolutions:
            raise ValueError(f"StyleGAN1 channels must be given for resolutions {self.resolutions}, "
                             f"got {sorted(self.channels)}")
        if self.truncation_cutoff is None:
            self.truncation_cutoff = 8 if self.resolution >= 512 else 7

    @property
    def resolutions(self) -> list[int]:
        return [2**i for i in range(2, int(math.log2(self.resolution)) + 1)]

    @property
    def num_layers(self) -> int:
        """Per-layer latents (two per block)."""
        return 2 * len(self.resolutions)

    def to_dict(self) -> dict:
        return {**asdict(self), "channels": {str(k): v for k, v in self.channels.items()}}


def release_channels(resolution: int) -> dict[int, int]:
    """The release's widths (``fmap_base`` 8192, ``fmap_max`` 512): ``min(16384 / R, 512)``."""
    return {2**i: min(16384 // 2**i, 512) for i in range(2, int(math.log2(resolution)) + 1)}


class Linear(nn.Module):
    """Dense layer with equalised learning rate: weight × gain/√in × lr_mul, bias × lr_mul."""

    def __init__(self, in_dim: int, out_dim: int, gain: float, lr_mul: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.w_mul, self.b_mul = gain * lr_mul / math.sqrt(in_dim), lr_mul

    def forward(self, x):
        return F.linear(x, self.weight * self.w_mul, self.bias * self.b_mul)


class Blur(nn.Module):
    """Depthwise 3x3 low-pass (the ``kernel`` buffer the files carry: ``[1, 2, 1]`` outer product / 16)."""

    def __init__(self):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (k[:, None] * k[None, :] / 16)[None, None])

    def forward(self, x):
        return F.conv2d(x, self.kernel.expand(x.shape[1], -1, -1, -1), padding=1, groups=x.shape[1])


class Conv2d(nn.Module):
    """k×k conv with equalised learning rate (He gain √2 unless told); ``up``: 2x upsampling
    before it (fused from ``FUSED_UP_MIN`` px output up), then the blur, then the bias."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, gain: float = math.sqrt(2), up: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.w_mul = gain / math.sqrt(in_ch * kernel_size**2)
        self.up = up
        if up:
            self.intermediate = Blur()

    def forward(self, x):
        w = self.weight * self.w_mul
        pad = w.shape[-1] // 2
        if not self.up:
            return F.conv2d(x, w, self.bias, padding=pad)
        if 2 * min(x.shape[2:]) >= FUSED_UP_MIN:
            w = F.pad(w.transpose(0, 1), (1, 1, 1, 1))
            w = w[..., 1:, 1:] + w[..., :-1, 1:] + w[..., 1:, :-1] + w[..., :-1, :-1]
            x = F.conv_transpose2d(x, w, stride=2, padding=(w.shape[-1] - 1) // 2)
        else:
            x = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, padding=pad)
        return self.intermediate(x) + self.bias[:, None, None]


class NoiseStrength(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels))

    def forward(self, x, noise):
        return x if noise is None else x + self.weight[:, None, None] * noise


class Epilogue(nn.Module):
    """Noise, leaky ReLU, instance norm, then style modulation from w."""

    def __init__(self, channels: int, w_dim: int):
        super().__init__()
        self.top_epi = nn.ModuleDict({"noise": NoiseStrength(channels)})
        self.style_mod = nn.ModuleDict({"lin": Linear(w_dim, 2 * channels, gain=1.0)})

    def forward(self, x, w, noise):
        x = F.instance_norm(F.leaky_relu(self.top_epi.noise(x, noise), LRELU), eps=1e-5)
        style = self.style_mod.lin(w).view(-1, 2, x.shape[1], 1, 1)
        return x * (style[:, 0] + 1) + style[:, 1]


class Block(nn.Module):
    """One resolution: the 4x4 input block (``const``, ``bias``, ``conv``) or an upsampling
    block (``conv0_up``, ``conv1``), each conv followed by an epilogue."""

    def __init__(self, in_ch: int | None, out_ch: int, w_dim: int):
        super().__init__()
        self.first = in_ch is None
        if self.first:
            self.const = nn.Parameter(torch.ones(1, out_ch, 4, 4))
            self.bias = nn.Parameter(torch.ones(out_ch))
            self.conv = Conv2d(out_ch, out_ch, 3)
        else:
            self.conv0_up = Conv2d(in_ch, out_ch, 3, up=True)
            self.conv1 = Conv2d(out_ch, out_ch, 3)
        self.epi1 = Epilogue(out_ch, w_dim)
        self.epi2 = Epilogue(out_ch, w_dim)

    @property
    def last_conv(self) -> str:
        return "conv" if self.first else "conv1"

    def forward(self, x, w, noise):
        """x (ignored by the input block), w ``[B, 2, w_dim]``, two noise maps → (output, last conv's output)."""
        if self.first:
            x = (self.const + self.bias[:, None, None]).expand(w.shape[0], -1, -1, -1)
        else:
            x = self.conv0_up(x)
        x = getattr(self, self.last_conv)(self.epi1(x, w[:, 0], noise[0]))
        return self.epi2(x, w[:, 1], noise[1]), x


class StyleGAN1Generator(nn.Module):
    """``g_mapping`` + ``g_synthesis`` with the release's parameter names."""

    def __init__(self, cfg: StyleGAN1Config):
        super().__init__()
        self.cfg = cfg
        self.g_mapping = nn.ModuleDict({
            f"dense{i}": Linear(cfg.z_dim if i == 0 else cfg.w_dim, cfg.w_dim, gain=math.sqrt(2), lr_mul=0.01)
            for i in range(cfg.mapping_layers)})
        self.g_synthesis = nn.Module()
        blocks, prev = {}, None
        for r in cfg.resolutions:
            blocks[f"{r}x{r}"] = Block(prev, cfg.channels[r], cfg.w_dim)
            prev = cfg.channels[r]
        self.g_synthesis.blocks = nn.ModuleDict(blocks)
        self.g_synthesis.torgb = Conv2d(prev, 3, 1, gain=1.0)
        self.pixel_norm = PixelNorm()

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z ``[B, z_dim]`` → w ``[B, num_layers, w_dim]`` (one w broadcast to every layer)."""
        x = self.pixel_norm(z)
        for dense in self.g_mapping.values():
            x = F.leaky_relu(dense(x), LRELU)
        return x[:, None].expand(-1, self.cfg.num_layers, -1)

    def truncate(self, w: torch.Tensor, psi: float, average: torch.Tensor, cutoff: int | None = None) -> torch.Tensor:
        """The release's truncation: ``lerp(average, w, psi)`` on layers below the cut-off
        (``cutoff``, default the config's); ``average`` is ``[1 or num_layers, w_dim]``."""
        cutoff = self.cfg.truncation_cutoff if cutoff is None else cutoff
        layers = torch.arange(w.shape[1], device=w.device)[None, :, None]
        return torch.where(layers < cutoff, torch.lerp(average.to(w), w, psi), w)

    def feature_shapes(self) -> dict[str, tuple[int, int, int]]:
        """``{tap: (C, h, w)}``, two per block (output, then last conv), in the release's order."""
        return {f"{name}.{tap}": (self.cfg.channels[r], r, r)
                for r, (name, block) in zip(self.cfg.resolutions, self.g_synthesis.blocks.items())
                for tap in ("epi2", block.last_conv)}

    def noise(self, mode: str, batch: int, generator: torch.Generator | None = None,
              device: torch.device | None = None) -> list[torch.Tensor | None]:
        """One noise map per layer (``[B, 1, R, R]`` or None), block by block, ``epi1`` then ``epi2``."""
        if mode == "none":
            return [None] * self.cfg.num_layers
        if mode == "random":
            return [torch.randn(batch, 1, r, r, generator=generator, device=device)
                    for r in self.cfg.resolutions for _ in range(2)]
        if mode == "const":
            raise ValueError("StyleGAN1 checkpoints in DatasetGAN's layout store no noise, so noise 'const' "
                             "is not available: use 'none' (no noise, deterministic) or 'random' (seeded)")
        raise ValueError(f"noise mode must be one of {NOISE_MODES}, got {mode!r}")

    def synthesis(self, w: torch.Tensor, noise: list[torch.Tensor | None]):
        """w ``[B, num_layers, w_dim]`` and one noise map per layer → image ``[B, 3, R, R]``
        and ``{tap: features}``."""
        if w.ndim != 3 or w.shape[1] != self.cfg.num_layers or len(noise) != self.cfg.num_layers:
            raise ValueError(f"need w [B, {self.cfg.num_layers}, {self.cfg.w_dim}] and {self.cfg.num_layers} "
                             f"noise maps, got {list(w.shape)} and {len(noise)}")
        feats, x = {}, None
        for i, (name, block) in enumerate(self.g_synthesis.blocks.items()):
            x, conv = block(x, w[:, 2 * i : 2 * i + 2], noise[2 * i : 2 * i + 2])
            feats[f"{name}.epi2"], feats[f"{name}.{block.last_conv}"] = x, conv
        return self.g_synthesis.torgb(x), feats


@GENERATORS.register("stylegan1")
class StyleGAN1Backend(GeneratorBackend):
    """DatasetGAN-release StyleGAN1; taps the release's two maps per block. The average
    latent for ``truncation < 1`` is not part of the checkpoint (nor of the generator
    hash): set it with :meth:`set_average_latent`; the truncation cut-off is the
    config's (8 from 512 px up, else 7) unless :meth:`set_truncation_cutoff` sets another."""

    arch = "stylegan1"

    def __init__(self, module: StyleGAN1Generator, arch_config: dict, generator_hash: str | None = None):
        super().__init__(module, arch_config, generator_hash)
        self.average_latent: torch.Tensor | None = None
        self._cutoff: int | None = None

    @classmethod
    def from_tensors(cls, arch_config, tensors, generator_hash=None):
        module = load_strict(StyleGAN1Generator(StyleGAN1Config(**arch_config)), tensors, "StyleGAN1")
        return cls(module, module.cfg.to_dict(), generator_hash)

    def set_average_latent(self, average) -> "StyleGAN1Backend":
        """The truncation centre: the release's ``avg_latent_stylegan1.npy`` (``[18, w_dim]``),
        or any ``[w_dim]``, ``[L, w_dim]`` or ``[1, L, w_dim]`` with L = 1 or L >= num_layers."""
        a = torch.as_tensor(np.asarray(average, dtype=np.float32))
        cfg = self.module.cfg
        a = a[0] if a.ndim == 3 and a.shape[0] == 1 else a
        a = a[None] if a.ndim == 1 else a
        if a.ndim != 2 or a.shape[1] != cfg.w_dim or not (a.shape[0] == 1 or a.shape[0] >= cfg.num_layers):
            raise ValueError(f"average latent must be [{RELEASE_LAYERS}, {cfg.w_dim}] (or [{cfg.w_dim}], "
                             f"[L >= {cfg.num_layers}, {cfg.w_dim}]), got {list(np.shape(average))}")
        self.average_latent = a[: cfg.num_layers].to(self.device)
        return self

    def set_truncation_cutoff(self, cutoff: int | None) -> "StyleGAN1Backend":
        """Truncate the layers below ``cutoff`` (1 ... num_layers; the release: 8 for car and
        face, 7 for cat and bedroom); None restores the config's cut-off."""
        layers = self.module.cfg.num_layers
        if cutoff is not None and (isinstance(cutoff, bool) or int(cutoff) != cutoff or not 1 <= cutoff <= layers):
            raise ValueError(f"truncation cut-off must be a layer count from 1 to {layers} (this {self.resolution} px "
                             f"StyleGAN1 has {layers} layers), got {cutoff!r}")
        self._cutoff = None if cutoff is None else int(cutoff)
        return self

    @property
    def truncation_cutoff(self) -> int:
        """The layers below this one are truncated: the one set, else the config's."""
        return self.module.cfg.truncation_cutoff if self._cutoff is None else self._cutoff

    @property
    def resolution(self) -> int:
        return self.module.cfg.resolution

    def to(self, device) -> "StyleGAN1Backend":
        super().to(device)
        if self.average_latent is not None:
            self.average_latent = self.average_latent.to(device)
        return self

    def synthesize(self, z, classes=None, truncation=1.0, noise="const", features=True, generator=None):
        self.check_classes(None if classes is None else classes.cpu().numpy(), z.shape[0])
        w = self.module.mapping(z)
        if truncation != 1.0:
            if self.average_latent is None:
                raise ValueError(f"truncation {truncation:g} needs the average latent, which StyleGAN1 checkpoints "
                                 "in DatasetGAN's layout do not hold: give the release's avg_latent_stylegan1.npy "
                                 "(--average-latent FILE)")
            w = self.module.truncate(w, truncation, self.average_latent, self.truncation_cutoff)
        img, feats = self.module.synthesis(w, self.module.noise(noise, z.shape[0], generator, z.device))
        return Synthesis(img, feats if features else {})


# --- the checkpoint format: the release's flat g_all state dict ----------------------
_BLOCK = re.compile(r"g_synthesis\.blocks\.(\d+)x\1\.")


def _is_g_all(path: Path) -> bool:
    """A torch file whose dict has ``g_mapping.*`` and ``g_synthesis.*`` keys (whatever its suffix)."""
    keys = torch_keys(path)
    return any(k.startswith("g_mapping.") for k in keys) and any(k.startswith("g_synthesis.") for k in keys)


def stylegan1_config_from_g_all(sd: dict[str, torch.Tensor]) -> StyleGAN1Config:
    """Resolution from the blocks, channels from ``const`` and each ``conv1``, z and w from the
    mapping's first and last dense layers."""
    res = sorted({int(m.group(1)) for k in sd if (m := _BLOCK.match(k))})
    dense = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"g_mapping\.dense(\d+)\.weight", k)))
    if not res or not dense:
        raise CheckpointError("g_all state dict without g_synthesis blocks or g_mapping dense layers")
    try:
        channels = {4: sd["g_synthesis.blocks.4x4.const"].shape[1]}
        channels.update({r: sd[f"g_synthesis.blocks.{r}x{r}.conv1.weight"].shape[0] for r in res[1:]})
        z_dim, w_dim = sd["g_mapping.dense0.weight"].shape[1], sd[f"g_mapping.dense{dense[-1]}.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"not a StyleGAN1 g_all state dict: missing {e}") from e
    try:
        return StyleGAN1Config(resolution=res[-1], channels=channels, z_dim=int(z_dim), w_dim=int(w_dim),
                               mapping_layers=len(dense))
    except ValueError as e:
        raise CheckpointError(f"g_all state dict: {e}") from e


def read_g_all(path: Path) -> RawCheckpoint:
    """A ``*.for_g_all.pt`` of DatasetGAN's release → canonical tensors (its own keys)."""
    sd = torch_load(path)
    bad = sorted(k for k, v in sd.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{path}: not a state dict (non-tensor entries {bad[:6]})")
    cfg = stylegan1_config_from_g_all(sd)
    return RawCheckpoint("stylegan1", cfg.to_dict(), dict(sd), "datasetgan-stylegan1")


FORMATS.register("datasetgan-stylegan1")(FormatReader(_is_g_all, read_g_all))

__all__ = ["StyleGAN1Config", "StyleGAN1Generator", "StyleGAN1Backend", "release_channels", "read_g_all",
           "stylegan1_config_from_g_all"]
