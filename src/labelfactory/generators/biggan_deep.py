"""BigGAN-deep in the layout of ``pytorch-pretrained-biggan`` (config.json + pytorch_model.bin), pure PyTorch.

That package (huggingface/pytorch-pretrained-BigGAN 0.1.1) ships DeepMind's
TF-Hub BigGAN-deep 128/256/512 converted to a PyTorch state dict. The module
tree and parameter names here are exactly its ``BigGAN``'s, so its
``pytorch_model.bin`` loads with ``strict=True``, and the forward computes what
its ``BigGAN(z, one_hot, truncation)`` computes in eval mode:

- class embedding: a bias-free ``Linear(num_classes, z_dim)`` applied to a one-hot
  vector; the condition of every layer is ``cat(z, embedding)``;
- spectral norm as ``nn.utils.spectral_norm`` evaluates it in eval mode: the
  weight is ``weight_orig / (u · W v)`` with the stored ``weight_u`` and
  ``weight_v``, no power iteration (in training mode the package would iterate
  and mutate them on every call);
- batch norms use stored statistics for ``n_stats`` truncation values on a
  grid of step ``1 / (n_stats - 1)``; between grid points they are mixed as the
  package mixes them, ``coef * stats[i] + (1 - coef) * stats[i + 1]`` with
  ``coef, i = modf(truncation / step)`` — the weight sits on the *lower* grid
  point, the reverse of linear interpolation, and it is reproduced as is;
- ``gen_z`` emits ``16 * channel_width`` channels in TF's HWC order, the
  output layer has ``channel_width`` channels of which the first 3 are the image.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from labelfactory.generators.base import GENERATORS, GeneratorBackend, Synthesis, load_strict
from labelfactory.generators.biggan import truncated_normal
from labelfactory.generators.checkpoints import FORMATS, CheckpointError, FormatReader, RawCheckpoint, torch_load

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "pytorch_model.bin"


@dataclass
class BigGANDeepConfig:
    """The fields of the package's ``BigGANConfig``, as its config.json stores them.

    ``layers`` holds ``(upsample, in, out)`` channel multipliers of
    ``channel_width`` per block; the attention block sits before block
    ``attention_layer_position``. ``class_embed_dim`` is carried but unused:
    the package embeds classes into ``z_dim``."""

    output_dim: int
    z_dim: int
    class_embed_dim: int
    channel_width: int
    num_classes: int
    layers: tuple[tuple[bool, int, int], ...]
    attention_layer_position: int
    eps: float
    n_stats: int

    def __post_init__(self):
        self.layers = tuple((bool(up), int(cin), int(cout)) for up, cin, cout in self.layers)
        if not self.layers or self.layers[0][1] != 16 or self.layers[-1][2] != 1:
            raise ValueError("BigGAN-deep layers must start at 16 and end at 1 channel_width "
                             f"(gen_z and the output layer fix them), got {list(self.layers)}")
        for i, (_, cin, cout) in enumerate(self.layers):
            if i and cin != self.layers[i - 1][2]:
                raise ValueError(f"layer {i} takes {cin} but layer {i - 1} gives {self.layers[i - 1][2]}")
            if cout not in (cin, cin / 2):
                raise ValueError(f"layer {i} maps {cin} to {cout}: the shortcut only keeps or halves channels")
        if self.output_dim != self.block_resolutions[-1]:
            raise ValueError(f"output_dim {self.output_dim} but the layers upsample to {self.block_resolutions[-1]}")
        if not 1 <= self.attention_layer_position or self.n_stats < 2:
            raise ValueError("need attention_layer_position >= 1 and n_stats >= 2")

    @classmethod
    def from_dict(cls, d: dict) -> "BigGANDeepConfig":
        names = {f.name for f in fields(cls)}
        missing, unknown = sorted(names - set(d)), sorted(set(d) - names)
        if missing or unknown:
            raise ValueError(f"BigGAN-deep config: missing {missing}, unknown {unknown}")
        return cls(**d)

    @property
    def block_resolutions(self) -> list[int]:
        res, out = 4, []
        for up, _, _ in self.layers:
            res *= 2 if up else 1
            out.append(res)
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = [list(layer) for layer in self.layers]
        return d


class _SpectralNorm(nn.Module):
    """``weight_orig``, ``bias`` and the power-iteration vectors ``weight_u``/``weight_v``
    of ``nn.utils.spectral_norm``; the weight is ``weight_orig / (u · W v)``."""

    def __init__(self, shape: tuple[int, ...], bias: bool):
        super().__init__()
        self.weight_orig = nn.Parameter(torch.zeros(shape))
        self.bias = nn.Parameter(torch.zeros(shape[0])) if bias else None
        self.register_buffer("weight_u", torch.zeros(shape[0]))
        self.register_buffer("weight_v", torch.zeros(math.prod(shape[1:])))

    def weight(self) -> torch.Tensor:
        w = self.weight_orig
        sigma = torch.dot(self.weight_u, torch.mv(w.reshape(w.shape[0], -1), self.weight_v))
        return w / sigma


class SNLinear(_SpectralNorm):
    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__((out_features, in_features), bias)

    def forward(self, x):
        return F.linear(x, self.weight(), self.bias)


class SNConv2d(_SpectralNorm):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, bias: bool = True):
        super().__init__((out_ch, in_ch, kernel_size, kernel_size), bias)
        self.padding = kernel_size // 2

    def forward(self, x):
        return F.conv2d(x, self.weight(), self.bias, padding=self.padding)


class BigGANBatchNorm(nn.Module):
    """Batch norm on stored per-truncation statistics (``running_means``/``running_vars``
    ``[n_stats, C]``); class-conditional gain ``1 + scale(c)`` and bias ``offset(c)``,
    or plain ``weight``/``bias`` when unconditional."""

    def __init__(self, num_features: int, n_stats: int, eps: float, condition_dim: int | None = None):
        super().__init__()
        self.eps, self.step_size = eps, 1.0 / (n_stats - 1)
        self.register_buffer("running_means", torch.zeros(n_stats, num_features))
        self.register_buffer("running_vars", torch.ones(n_stats, num_features))
        self.conditional = condition_dim is not None
        if self.conditional:
            self.scale = SNLinear(condition_dim, num_features, bias=False)
            self.offset = SNLinear(condition_dim, num_features, bias=False)
        else:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))

    def stats(self, truncation: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The statistics the package uses at ``truncation`` (see the module docstring)."""
        coef, start = math.modf(truncation / self.step_size)
        start = int(start)
        if coef == 0.0:
            return self.running_means[start], self.running_vars[start]
        return (self.running_means[start] * coef + self.running_means[start + 1] * (1 - coef),
                self.running_vars[start] * coef + self.running_vars[start + 1] * (1 - coef))

    def forward(self, x, truncation: float, condition: torch.Tensor | None = None):
        mean, var = self.stats(truncation)
        if not self.conditional:
            return F.batch_norm(x, mean, var, self.weight, self.bias, training=False, momentum=0.0, eps=self.eps)
        weight = 1 + self.scale(condition)[:, :, None, None]
        bias = self.offset(condition)[:, :, None, None]
        return (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps) * weight + bias


class SelfAttn(nn.Module):
    """SAGAN self-attention, ``x + gamma * o(g · softmax(θᵀφ))`` with 2× max-pooled φ and g."""

    def __init__(self, ch: int):
        super().__init__()
        self.snconv1x1_theta = SNConv2d(ch, ch // 8, 1, bias=False)
        self.snconv1x1_phi = SNConv2d(ch, ch // 8, 1, bias=False)
        self.snconv1x1_g = SNConv2d(ch, ch // 2, 1, bias=False)
        self.snconv1x1_o_conv = SNConv2d(ch // 2, ch, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        _, ch, h, w = x.shape
        theta = self.snconv1x1_theta(x).view(-1, ch // 8, h * w)
        phi = F.max_pool2d(self.snconv1x1_phi(x), 2, 2).view(-1, ch // 8, h * w // 4)
        attn = F.softmax(torch.bmm(theta.permute(0, 2, 1), phi), dim=-1)
        g = F.max_pool2d(self.snconv1x1_g(x), 2, 2).view(-1, ch // 2, h * w // 4)
        attn_g = torch.bmm(g, attn.permute(0, 2, 1)).view(-1, ch // 2, h, w)
        return x + self.gamma * self.snconv1x1_o_conv(attn_g)


class GenBlock(nn.Module):
    """Bottleneck residual block: 4× (BN, ReLU, conv) 1×1 → 3×3 (after the optional
    nearest 2× upsampling) → 3×3 → 1×1; the shortcut keeps the first half of the
    channels when the block halves them."""

    def __init__(self, in_size: int, out_size: int, condition_dim: int, up_sample: bool, n_stats: int, eps: float):
        super().__init__()
        mid = in_size // 4
        self.up_sample, self.drop_channels = up_sample, in_size != out_size
        for i, (cin, cout) in enumerate([(in_size, mid), (mid, mid), (mid, mid), (mid, out_size)]):
            self.add_module(f"bn_{i}", BigGANBatchNorm(cin, n_stats, eps, condition_dim))
            self.add_module(f"conv_{i}", SNConv2d(cin, cout, 1 if i in (0, 3) else 3))

    def forward(self, x, condition, truncation: float):
        x0 = x
        for i in range(4):
            x = F.relu(getattr(self, f"bn_{i}")(x, truncation, condition))
            if i == 1 and self.up_sample:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = getattr(self, f"conv_{i}")(x)
        if self.drop_channels:
            x0 = x0[:, : x0.shape[1] // 2]
        if self.up_sample:
            x0 = F.interpolate(x0, scale_factor=2, mode="nearest")
        return x + x0


class Generator(nn.Module):
    """The package's ``Generator``: ``gen_z``, ``layers`` (GenBlocks with the
    attention inserted at its position), output ``bn`` and ``conv_to_rgb``."""

    def __init__(self, cfg: BigGANDeepConfig):
        super().__init__()
        ch, cond = cfg.channel_width, 2 * cfg.z_dim
        self.gen_z_channels = 16 * ch
        self.gen_z = SNLinear(cond, 4 * 4 * self.gen_z_channels)
        layers, self.tap_names = [], []
        for i, (up, cin, cout) in enumerate(cfg.layers):
            if i == cfg.attention_layer_position:
                layers.append(SelfAttn(ch * cin))
                self.tap_names.append(f"block{i - 1}.attention")
            layers.append(GenBlock(ch * cin, ch * cout, cond, up, cfg.n_stats, cfg.eps))
            self.tap_names.append(f"block{i}")
        self.layers = nn.ModuleList(layers)
        self.bn = BigGANBatchNorm(ch, cfg.n_stats, cfg.eps)
        self.conv_to_rgb = SNConv2d(ch, ch, 3)

    def forward(self, condition, truncation: float, taps: bool = False):
        h = self.gen_z(condition).view(-1, 4, 4, self.gen_z_channels)
        h = h.permute(0, 3, 1, 2).contiguous()
        feats: dict[str, torch.Tensor] = {}
        for name, layer in zip(self.tap_names, self.layers):
            h = layer(h, condition, truncation) if isinstance(layer, GenBlock) else layer(h)
            if taps:
                feats[name] = h
        img = torch.tanh(self.conv_to_rgb(F.relu(self.bn(h, truncation)))[:, :3])
        return img, feats


class BigGANDeep(nn.Module):
    """The package's ``BigGAN``: ``forward(z, class_vector, truncation)`` with a
    (one-hot) class vector ``[B, num_classes]``; returns the image and, with
    ``taps``, ``{layer: [B,C,h,w]}`` of every block and the attention in order."""

    def __init__(self, cfg: BigGANDeepConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = nn.Linear(cfg.num_classes, cfg.z_dim, bias=False)
        self.generator = Generator(cfg)

    def feature_shapes(self) -> dict[str, tuple[int, int, int]]:
        cfg, shapes = self.cfg, {}
        for i, ((_, _, cout), res) in enumerate(zip(cfg.layers, cfg.block_resolutions)):
            if i == cfg.attention_layer_position:
                shapes[f"block{i - 1}.attention"] = shapes[f"block{i - 1}"]
            shapes[f"block{i}"] = (cfg.channel_width * cout, res, res)
        return shapes

    def forward(self, z: torch.Tensor, class_vector: torch.Tensor, truncation: float, taps: bool = False):
        if not 0 < truncation <= 1:
            raise ValueError(f"BigGAN-deep truncation must be in (0, 1] (its batch-norm statistics), got {truncation}")
        condition = torch.cat((z, self.embeddings(class_vector)), dim=1)
        return self.generator(condition, truncation, taps)


@GENERATORS.register("biggan-deep")
class BigGANDeepBackend(GeneratorBackend):
    """Class-conditional BigGAN-deep; taps every GenBlock (``block{i}``) and the
    attention (``block{i}.attention``, after block ``i``). Truncation ψ acts twice,
    as in the package's sampling: z is ``ψ · truncnorm(-2, 2)`` (:meth:`z_from_seeds`)
    and ψ picks the batch-norm statistics (:meth:`synthesize`). No noise inputs."""

    arch = "biggan-deep"

    @classmethod
    def from_tensors(cls, arch_config, tensors, generator_hash=None):
        module = load_strict(BigGANDeep(BigGANDeepConfig.from_dict(arch_config)), tensors, "BigGAN-deep")
        return cls(module, module.cfg.to_dict(), generator_hash)

    @property
    def resolution(self) -> int:
        return self.module.cfg.output_dim

    @property
    def num_classes(self) -> int:
        return self.module.cfg.num_classes

    def class_embedding(self) -> torch.Tensor:
        """The class vectors ``embeddings.weight.T`` ``[num_classes, z_dim]`` (one-hot × embedding)."""
        return self.module.embeddings.weight.detach().t()

    def z_from_seeds(self, seeds, truncation: float = 1.0):
        """``truncated_noise_sample(1, z_dim, ψ, seed)`` of the package, per seed."""
        return truncated_normal(seeds, self.z_dim, truncation)

    def synthesize(self, z, classes=None, truncation=1.0, noise="const", features=True, generator=None):
        cls = self.check_classes(None if classes is None else classes.cpu().numpy(), z.shape[0])
        one_hot = F.one_hot(torch.from_numpy(cls).to(z.device), self.num_classes).to(z.dtype)
        img, feats = self.module(z, one_hot, truncation, taps=features)
        return Synthesis(img, feats)


# --- the checkpoint format: a folder with config.json + pytorch_model.bin -----------
def _is_pretrained_biggan(path: Path) -> bool:
    if path.is_dir():
        return (path / CONFIG_NAME).is_file()
    return path.suffix == ".bin" and (path.parent / CONFIG_NAME).is_file()


def read_pretrained_biggan(path: Path) -> RawCheckpoint:
    """A package folder (or its ``.bin`` with config.json beside it) → canonical tensors."""
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    config = weights.parent / CONFIG_NAME
    try:
        cfg = BigGANDeepConfig.from_dict(json.loads(config.read_text()))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: no {CONFIG_NAME}") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config}: corrupt JSON ({e})") from e
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{config}: {e}") from e
    if not weights.is_file():
        raise CheckpointError(f"{path}: no {weights.name} beside {CONFIG_NAME}")
    sd = torch_load(weights)
    bad = sorted(k for k, v in sd.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{weights}: not a state dict (non-tensor entries {bad[:6]})")
    return RawCheckpoint("biggan-deep", cfg.to_dict(), dict(sd), "pytorch-pretrained-biggan")


FORMATS.register("pytorch-pretrained-biggan")(FormatReader(_is_pretrained_biggan, read_pretrained_biggan))

__all__ = ["BigGANDeepConfig", "BigGANDeep", "BigGANDeepBackend", "BigGANBatchNorm", "GenBlock", "SelfAttn",
           "read_pretrained_biggan"]
