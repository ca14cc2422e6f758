"""StyleGAN2 generator in plain PyTorch, with feature taps.

The module tree and parameter names follow rosinality's ``stylegan2-pytorch``
(``style.*``, ``input.input``, ``conv1``, ``to_rgb1``, ``convs.*``,
``to_rgbs.*``, ``noises.noise_*``), so a rosinality ``g_ema`` state dict loads
with strict key matching; NVIDIA ``stylegan2-ada-pytorch`` weights are renamed
into it by :mod:`labelfactory.generators.checkpoints`. Channel widths are given
per resolution, which covers both families and the project's small toy
generators. Optional ``conv_clamp`` reproduces NVIDIA's activation clamping.
Class-conditional generators (``c_dim > 0``, NVIDIA's conditional
``MappingNetwork``) add one layer, ``embed``, the class embedding.

Every synthesis layer's output (after noise, bias and activation) is returned by
:meth:`Generator.synthesis` under a name ``b{res}.conv{0,1}`` at its native
resolution; these are the per-pixel features the interpreters read.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from labelfactory.generators.base import GENERATORS, GeneratorBackend, Synthesis, load_strict
from labelfactory.generators.checkpoints import (
    FORMATS,
    CheckpointError,
    FormatReader,
    RawCheckpoint,
    claims,
    is_torch_file,
    torch_load,
)
from labelfactory.generators.ops import make_kernel, upfirdn2d

NOISE_MODES = ("const", "random", "none")


@dataclass
class StyleGAN2Config:
    """Architecture of a StyleGAN2 generator (everything its state dict cannot say
    by shape alone is here too)."""

    size: int
    style_dim: int = 512
    n_mlp: int = 8
    channels: dict[int, int] = field(default_factory=dict)
    z_dim: int | None = None
    lr_mlp: float = 0.01
    blur_kernel: tuple[int, ...] = (1, 3, 3, 1)
    conv_clamp: float | None = None
    c_dim: int = 0
    embed_dim: int | None = None

    def __post_init__(self):
        if self.size < 4 or self.size & (self.size - 1):
            raise ValueError(f"StyleGAN2 size must be a power of two >= 4, got {self.size}")
        self.channels = {int(k): int(v) for k, v in self.channels.items()}
        if not self.channels:
            self.channels = rosinality_channels(self.size, 2)
        missing = [r for r in self.resolutions if r not in self.channels]
        if missing:
            raise ValueError(f"StyleGAN2 config lacks channel counts for resolutions {missing}")
        if self.z_dim is None:
            self.z_dim = self.style_dim
        if self.c_dim and self.embed_dim is None:
            self.embed_dim = self.style_dim
        self.blur_kernel = tuple(int(k) for k in self.blur_kernel)

    @property
    def resolutions(self) -> list[int]:
        return [2**i for i in range(2, int(math.log2(self.size)) + 1)]

    @property
    def n_latent(self) -> int:
        return int(math.log2(self.size)) * 2 - 2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = {str(k): v for k, v in self.channels.items()}
        d["blur_kernel"] = list(self.blur_kernel)
        if not self.c_dim:  # unconditional configs (and their generator hashes) stay as they were
            del d["c_dim"], d["embed_dim"]
        return d


def rosinality_channels(size: int, channel_multiplier: int) -> dict[int, int]:
    """rosinality's channel table for a given ``channel_multiplier``."""
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    return {r: (c if r <= 32 else c * channel_multiplier) for r, c in table.items() if r <= size}


class PixelNorm(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate; optional scaled leaky ReLU."""

    def __init__(self, in_dim, out_dim, bias_init=0.0, lr_mul=1.0, activation=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x):
        out = F.linear(x, self.weight * self.scale)
        out = out + self.bias * self.lr_mul
        if self.activation:
            out = F.leaky_relu(out, 0.2) * math.sqrt(2.0)
        return out


class Blur(nn.Module):
    def __init__(self, kernel, pad, upsample_factor=1):
        super().__init__()
        self.register_buffer("kernel", make_kernel(kernel) * upsample_factor**2)
        self.pad = pad

    def forward(self, x):
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    def __init__(self, kernel, factor=2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * factor**2)
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution with optional demodulation and 2× upsampling.

    ``fused=False`` scales activations before and after a shared convolution
    (fast on CPU and for training); ``fused=True`` builds per-sample weights and
    runs one grouped convolution, as the original StyleGAN2. Both are the same
    function.
    """

    def __init__(self, in_ch, out_ch, kernel_size, style_dim, demodulate=True, upsample=False,
                 blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.in_ch, self.out_ch, self.kernel_size = in_ch, out_ch, kernel_size
        self.upsample, self.demodulate = upsample, demodulate
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)

    def forward(self, x, w, fused: bool = False):
        b = x.shape[0]
        style = self.modulation(w)
        weight = self.scale * self.weight[0]
        if fused:
            return self._fused(x, weight, style)
        x = x * style[:, :, None, None]
        if self.upsample:
            out = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2))
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # sum_{i,k} (w_oik s_i)^2 = sum_i s_i^2 sum_k w_oik^2, without the [B,O,I,k,k] tensor
            out = out * torch.rsqrt(style.square() @ weight.square().sum((2, 3)).t() + 1e-8)[:, :, None, None]
        return out

    def _fused(self, x, weight, style):
        b, c, h, w_ = x.shape
        wm = weight[None] * style[:, None, :, None, None]
        if self.demodulate:
            wm = wm * torch.rsqrt(wm.square().sum((2, 3, 4)) + 1e-8)[:, :, None, None, None]
        k = self.kernel_size
        x = x.reshape(1, b * c, h, w_)
        if self.upsample:
            wt = wm.transpose(1, 2).reshape(b * c, self.out_ch, k, k)
            out = F.conv_transpose2d(x, wt, stride=2, groups=b)
            out = self.blur(out.reshape(b, self.out_ch, *out.shape[2:]))
        else:
            out = F.conv2d(x, wm.reshape(b * self.out_ch, c, k, k), padding=self.padding, groups=b)
            out = out.reshape(b, self.out_ch, *out.shape[2:])
        return out


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x, noise):
        return x if noise is None else x + self.weight * noise


class FusedLeakyReLU(nn.Module):
    """Bias, leaky ReLU (0.2) and gain √2, optionally clamped (NVIDIA ``conv_clamp``)."""

    def __init__(self, channels, clamp=None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.clamp = clamp

    def forward(self, x):
        out = F.leaky_relu(x + self.bias[None, :, None, None], 0.2) * math.sqrt(2.0)
        return out.clamp(-self.clamp, self.clamp) if self.clamp is not None else out


class ConstantInput(nn.Module):
    def __init__(self, channels, size=4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch):
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    def __init__(self, in_ch, out_ch, style_dim, upsample=False, blur_kernel=(1, 3, 3, 1), clamp=None):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch, clamp)

    def forward(self, x, w, noise=None, fused=False):
        return self.activate(self.noise(self.conv(x, w, fused), noise))


class ToRGB(nn.Module):
    def __init__(self, in_ch, style_dim, upsample=True, blur_kernel=(1, 3, 3, 1), clamp=None):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.clamp = clamp

    def forward(self, x, w, skip=None, fused=False):
        out = self.conv(x, w, fused) + self.bias
        if self.clamp is not None:
            out = out.clamp(-self.clamp, self.clamp)
        return out if skip is None else out + self.upsample(skip)


class Generator(nn.Module):
    """StyleGAN2 generator: mapping network ``style`` and the synthesis network."""

    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        self.cfg = cfg
        ch, sd, bk, clamp = cfg.channels, cfg.style_dim, cfg.blur_kernel, cfg.conv_clamp
        if cfg.c_dim:
            self.embed = EqualLinear(cfg.c_dim, cfg.embed_dim)
        layers: list[nn.Module] = [PixelNorm()]
        in_dim = cfg.z_dim + (cfg.embed_dim if cfg.c_dim else 0)
        for i in range(cfg.n_mlp):
            layers.append(EqualLinear(in_dim if i == 0 else sd, sd, lr_mul=cfg.lr_mlp, activation=True))
        self.style = nn.Sequential(*layers)

        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], sd, blur_kernel=bk, clamp=clamp)
        self.to_rgb1 = ToRGB(ch[4], sd, upsample=False, clamp=clamp)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        self.num_layers = (int(math.log2(cfg.size)) - 2) * 2 + 1
        self.layer_names = ["b4.conv1"]
        for i in range(self.num_layers):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))
        in_ch = ch[4]
        for res in cfg.resolutions[1:]:
            out_ch = ch[res]
            self.convs.append(StyledConv(in_ch, out_ch, sd, upsample=True, blur_kernel=bk, clamp=clamp))
            self.convs.append(StyledConv(out_ch, out_ch, sd, blur_kernel=bk, clamp=clamp))
            self.to_rgbs.append(ToRGB(out_ch, sd, blur_kernel=bk, clamp=clamp))
            self.layer_names += [f"b{res}.conv0", f"b{res}.conv1"]
            in_ch = out_ch
        self.n_latent = cfg.n_latent
        self.register_buffer("latent_avg", torch.zeros(sd))

    # -- mapping ---------------------------------------------------------------
    def mapping(self, z: torch.Tensor, truncation: float = 1.0, classes: torch.Tensor | None = None) -> torch.Tensor:
        """z ``[B, z_dim]`` (and, if conditional, class ids ``[B]``) → w ``[B, style_dim]``,
        truncated towards ``latent_avg``.

        A class enters as NVIDIA's: its one-hot vector is embedded, and z and the
        embedding are normalised separately and concatenated (``style``'s own
        normalisation then leaves the concatenation as it is)."""
        if self.cfg.c_dim:
            y = self.embed(F.one_hot(classes.long(), self.cfg.c_dim).to(z.dtype))
            z = torch.cat([self.style[0](z), self.style[0](y)], 1)
        w = self.style(z)
        if truncation != 1.0:
            w = self.latent_avg + truncation * (w - self.latent_avg)
        return w

    def feature_shapes(self) -> dict[str, tuple[int, int, int]]:
        """``{layer: (C, h, w)}`` of every tapped synthesis layer, in order."""
        shapes = {"b4.conv1": (self.cfg.channels[4], 4, 4)}
        for res in self.cfg.resolutions[1:]:
            shapes[f"b{res}.conv0"] = shapes[f"b{res}.conv1"] = (self.cfg.channels[res], res, res)
        return shapes

    # -- synthesis -------------------------------------------------------------
    def _noise(self, mode: str, batch: int, generator: torch.Generator | None):
        if mode == "none":
            return [None] * self.num_layers
        bufs = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        if mode == "const":
            return bufs
        if mode == "random":
            return [
                torch.randn((batch, 1) + tuple(b.shape[2:]), generator=generator, device=b.device, dtype=b.dtype)
                for b in bufs
            ]
        raise ValueError(f"noise mode must be one of {NOISE_MODES}, got {mode!r}")

    def synthesis(
        self,
        w: torch.Tensor,
        noise_mode: str = "const",
        return_features: bool = False,
        fused: bool = False,
        generator: torch.Generator | None = None,
    ):
        """w ``[B, style_dim]`` or per-layer ``[B, n_latent, style_dim]`` → image
        ``[B, 3, H, W]`` (range about [-1, 1]) and, if asked, ``{layer: features}``."""
        if w.ndim == 2:
            w = w[:, None, :].expand(-1, self.n_latent, -1)
        if w.shape[1] != self.n_latent:
            raise ValueError(f"expected {self.n_latent} per-layer latents, got {w.shape[1]}")
        noise = self._noise(noise_mode, w.shape[0], generator)
        feats: dict[str, torch.Tensor] = {}
        out = self.conv1(self.input(w.shape[0]), w[:, 0], noise[0], fused)
        feats["b4.conv1"] = out
        skip = self.to_rgb1(out, w[:, 1], fused=fused)
        i = 1
        for k, to_rgb in enumerate(self.to_rgbs):
            res = self.cfg.resolutions[k + 1]
            out = self.convs[2 * k](out, w[:, i], noise[2 * k + 1], fused)
            feats[f"b{res}.conv0"] = out
            out = self.convs[2 * k + 1](out, w[:, i + 1], noise[2 * k + 2], fused)
            feats[f"b{res}.conv1"] = out
            skip = to_rgb(out, w[:, i + 2], skip, fused)
            i += 2
        return (skip, feats) if return_features else skip

    def forward(self, z: torch.Tensor, truncation: float = 1.0, noise_mode: str = "const",
                mixing_prob: float = 0.0, return_features: bool = False, fused: bool = False,
                generator: torch.Generator | None = None, classes: torch.Tensor | None = None):
        """z (and class ids) → image (and features). ``mixing_prob`` enables style mixing (training)."""
        w = self.mapping(z, truncation, classes)
        if mixing_prob > 0 and random.random() < mixing_prob:
            w2 = self.mapping(torch.randn_like(z), truncation, classes)
            cut = random.randint(1, self.n_latent - 1)
            w = torch.cat([w[:, None].expand(-1, cut, -1), w2[:, None].expand(-1, self.n_latent - cut, -1)], 1)
        return self.synthesis(w, noise_mode, return_features, fused, generator)

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, seed: int = 0) -> torch.Tensor:
        """Average w over ``n`` seeded z (for checkpoints that carry none)."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.cfg.z_dim, generator=g).to(self.input.input.device)
        return self.style(z).mean(0)


@GENERATORS.register("stylegan2")
class StyleGAN2Backend(GeneratorBackend):
    """StyleGAN2, unconditional or class-conditional; taps every synthesis layer
    (``b{res}.conv{0,1}``)."""

    arch = "stylegan2"

    @classmethod
    def from_tensors(cls, arch_config, tensors, generator_hash=None):
        module = load_strict(Generator(StyleGAN2Config(**arch_config)), tensors, "StyleGAN2")
        return cls(module, module.cfg.to_dict(), generator_hash)

    @property
    def resolution(self) -> int:
        return self.module.cfg.size

    @property
    def num_classes(self) -> int:
        return self.module.cfg.c_dim

    def synthesize(self, z, classes=None, truncation=1.0, noise="const", features=True, generator=None):
        c = self.check_classes(None if classes is None else classes.cpu().numpy(), z.shape[0])
        c = torch.from_numpy(c).to(z.device) if self.num_classes else None
        img, feats = self.module(z, truncation=truncation, noise_mode=noise, return_features=True,
                                 generator=generator, classes=c)
        return Synthesis(img, feats if features else {})


# --- rosinality stylegan2-pytorch checkpoints -----------------------------------------
def stylegan2_config_from_rosinality(sd: dict[str, torch.Tensor]) -> StyleGAN2Config:
    """Infer size, style/z dims, mapping depth and per-resolution channels from a
    rosinality ``g_ema`` state dict."""
    try:
        n_mlp = len({k.split(".")[1] for k in sd if re.match(r"style\.\d+\.weight$", k)})
        style_dim, z_dim = sd["style.1.weight"].shape[0], sd["style.1.weight"].shape[1]
        channels = {4: sd["conv1.conv.weight"].shape[1]}
        n_up = len({k.split(".")[1] for k in sd if re.match(r"to_rgbs\.\d+\.conv\.weight$", k)})
        for i in range(n_up):
            channels[2 ** (i + 3)] = sd[f"convs.{2 * i}.conv.weight"].shape[1]
        blur = sd.get("convs.0.conv.blur.kernel")
    except KeyError as e:
        raise CheckpointError(f"not a rosinality StyleGAN2 state dict: missing {e}") from e
    size = 2 ** (n_up + 2)
    cfg = StyleGAN2Config(size=size, style_dim=style_dim, n_mlp=n_mlp, channels=channels, z_dim=z_dim)
    if blur is not None and not torch.allclose(blur, make_kernel(cfg.blur_kernel) * 4, atol=1e-6):
        raise CheckpointError("rosinality checkpoint uses a blur kernel other than [1,3,3,1]; not supported")
    return cfg


def _channel_multiplier(cfg: StyleGAN2Config) -> int | None:
    for cm in (1, 2, 4):
        if rosinality_channels(cfg.size, cm) == cfg.channels:
            return cm
    return None


def _read_rosinality(path: Path) -> RawCheckpoint:
    ckpt = torch_load(path)
    if "g_ema" in ckpt:
        sd, latent_avg = ckpt["g_ema"], ckpt.get("latent_avg")
    elif "style.1.weight" in ckpt:
        sd, latent_avg = ckpt, None
    else:
        raise CheckpointError(f"{path}: torch checkpoint has neither 'g_ema' nor a StyleGAN2 state dict "
                              f"(keys: {sorted(ckpt)[:8]})")
    cfg = stylegan2_config_from_rosinality(sd)
    tensors = {k: v for k, v in sd.items()}
    notes = {"channel_multiplier": _channel_multiplier(cfg)}
    if latent_avg is None:
        g = Generator(cfg)
        g.load_state_dict({**tensors, "latent_avg": g.latent_avg}, strict=True)
        latent_avg = g.mean_latent(4096)
        notes["latent_avg"] = "mean w of 4096 z (seed 0): the checkpoint has none"
    tensors["latent_avg"] = latent_avg.reshape(-1).float()
    return RawCheckpoint("stylegan2", cfg.to_dict(), tensors, "rosinality", notes)


def _is_rosinality(path: Path) -> bool:
    """Every torch file that no other reader claims, so an unknown dict gets this reader's error."""
    return is_torch_file(path) and not any(claims(FORMATS.get(n), path) for n in FORMATS if n != "rosinality")


FORMATS.register("rosinality")(FormatReader(_is_rosinality, _read_rosinality))
