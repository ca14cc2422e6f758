"""BigGAN (Brock et al. 2019) in the layout of ajbrock/BigGAN-PyTorch, pure PyTorch.

This is the generator BigDatasetGAN's release loads (BigGAN-512 converted from
TF-Hub): a shared class embedding (``shared``), hierarchical z (split into one
chunk for the first linear layer and one per block, each concatenated with the
class embedding), GBlocks with class-conditional batch norm (``ccbn``) whose
gains and biases are spectrally normalised linear maps of that vector, one
self-attention block, and a BN-ReLU-conv output layer. Parameter and buffer
names are exactly the reference's, so its state dicts load with
``strict=True``.

Spectral norm follows the reference's ``SN.W_``: every forward pass runs one
power iteration from the stored ``u0`` (updating it only in training mode) and
divides the weight by the singular value it computes; the stored ``sv0`` is a
training-time record and is not used to normalise.

:class:`BigGANBackend` (arch ``"biggan"``) puts it behind the generator
interface; ``checkpoints.py`` reads BigGAN-PyTorch ``.pth`` state dicts into it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

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
    torch_keys,
    torch_load,
)

# Channel multipliers per resolution: (in, out) for each GBlock, from
# BigGAN-PyTorch's G_arch; 512 is the TF-Hub BigGAN-512 layout BigDatasetGAN uses.
G_ARCH: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    32: ((4, 4, 4), (4, 4, 4)),
    64: ((16, 16, 8, 4), (16, 8, 4, 2)),
    128: ((16, 16, 8, 4, 2), (16, 8, 4, 2, 1)),
    256: ((16, 16, 8, 8, 4, 2), (16, 8, 8, 4, 2, 1)),
    512: ((16, 16, 8, 8, 4, 2, 1), (16, 8, 8, 4, 2, 1, 1)),
}


@dataclass
class BigGANConfig:
    """Architecture of a BigGAN-PyTorch ``Generator``.

    Defaults: BigDatasetGAN's BigGAN-512, i.e. ``get_config(512)`` of
    BigGAN-PyTorch's ``TFHub/converter.py`` (repeated in BigDatasetGAN's
    ``models.py``): ``G_ch`` 96, ``dim_z`` 128 in 8 chunks of 16, shared
    embedding 128, attention at 64 px, BN and SN eps 1e-4, one power iteration.
    """

    resolution: int = 512
    ch: int = 96
    dim_z: int = 128
    shared_dim: int = 128
    n_classes: int = 1000
    attention: tuple[int, ...] = (64,)
    bottom_width: int = 4
    hier: bool = True
    bn_eps: float = 1e-4
    sn_eps: float = 1e-4
    output_bn_eps: float = 1e-5  # the reference's output ``bn`` keeps its own default eps
    num_sv_itrs: int = 1

    def __post_init__(self):
        self.attention = tuple(int(a) for a in self.attention)
        if self.resolution not in G_ARCH:
            raise ValueError(f"BigGAN resolution {self.resolution} not in {sorted(G_ARCH)}")
        bad = [a for a in self.attention if a not in self.block_resolutions]
        if bad:
            raise ValueError(f"attention at {bad} px, but blocks produce {self.block_resolutions}")

    @property
    def in_channels(self) -> list[int]:
        return [self.ch * m for m in G_ARCH[self.resolution][0]]

    @property
    def out_channels(self) -> list[int]:
        return [self.ch * m for m in G_ARCH[self.resolution][1]]

    @property
    def block_resolutions(self) -> list[int]:
        return [self.bottom_width * 2 ** (i + 1) for i in range(len(G_ARCH[self.resolution][0]))]

    @property
    def num_slots(self) -> int:
        return len(self.in_channels) + 1 if self.hier else 1

    @property
    def z_chunk(self) -> int:
        """Width of each z chunk (the whole z when not hierarchical)."""
        return self.dim_z // self.num_slots

    @property
    def z_dim(self) -> int:
        """The z actually consumed: the reference rounds ``dim_z`` down to whole chunks."""
        return self.z_chunk * self.num_slots

    def to_dict(self) -> dict:
        d = asdict(self)
        d["attention"] = list(self.attention)
        return d


def _power_iteration_sv(w_mat: torch.Tensor, u: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the reference's ``power_iteration`` (one singular value): returns (sv, new u)."""
    with torch.no_grad():
        v = F.normalize(u @ w_mat, eps=eps)
        u_new = F.normalize(v @ w_mat.t(), eps=eps)
    sv = torch.squeeze((v @ w_mat.t()) @ u_new.t())
    return sv, u_new


class _SN:
    """Mixin: spectral normalisation with buffers ``u0`` and ``sv0`` as in BigGAN-PyTorch."""

    def _init_sn(self, num_outputs: int, num_itrs: int, eps: float) -> None:
        self.num_itrs, self.sn_eps = num_itrs, eps
        self.register_buffer("u0", torch.randn(1, num_outputs))
        self.register_buffer("sv0", torch.ones(1))

    def W_(self) -> torch.Tensor:
        w_mat = self.weight.view(self.weight.size(0), -1)
        sv = None
        for _ in range(self.num_itrs):
            sv, u_new = _power_iteration_sv(w_mat, self.u0, self.sn_eps)
            if self.training:
                self.u0.copy_(u_new)
        if self.training:
            with torch.no_grad():
                self.sv0[:] = sv
        return self.weight / sv


class SNLinear(nn.Linear, _SN):
    def __init__(self, in_features, out_features, bias=True, num_itrs=1, eps=1e-12):
        nn.Linear.__init__(self, in_features, out_features, bias)
        self._init_sn(out_features, num_itrs, eps)

    def forward(self, x):
        return F.linear(x, self.W_(), self.bias)


class SNConv2d(nn.Conv2d, _SN):
    def __init__(self, in_ch, out_ch, kernel_size=3, padding=1, bias=True, num_itrs=1, eps=1e-12):
        nn.Conv2d.__init__(self, in_ch, out_ch, kernel_size, padding=padding, bias=bias)
        self._init_sn(out_ch, num_itrs, eps)

    def forward(self, x):
        return F.conv2d(x, self.W_(), self.bias, self.stride, self.padding)


class CCBN(nn.Module):
    """Class-conditional batch norm: ``BN(x) * (1 + gain(y)) + bias(y)`` (reference ``ccbn``)."""

    def __init__(self, output_size: int, input_size: int, cfg: BigGANConfig):
        super().__init__()
        self.gain = SNLinear(input_size, output_size, bias=False, num_itrs=cfg.num_sv_itrs, eps=cfg.sn_eps)
        self.bias = SNLinear(input_size, output_size, bias=False, num_itrs=cfg.num_sv_itrs, eps=cfg.sn_eps)
        self.eps = cfg.bn_eps
        self.register_buffer("stored_mean", torch.zeros(output_size))
        self.register_buffer("stored_var", torch.ones(output_size))
        self.momentum: float | None = 0.1

    def forward(self, x, y):
        gain = (1 + self.gain(y)).view(y.size(0), -1, 1, 1)
        bias = self.bias(y).view(y.size(0), -1, 1, 1)
        out = F.batch_norm(x, self.stored_mean, self.stored_var, None, None, self.training, self.momentum, self.eps)
        return out * gain + bias


class BN(nn.Module):
    """Unconditional batch norm of the output layer (reference ``bn``: ``gain``, ``bias``)."""

    def __init__(self, output_size: int, eps: float):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(output_size))
        self.bias = nn.Parameter(torch.zeros(output_size))
        self.eps = eps
        self.register_buffer("stored_mean", torch.zeros(output_size))
        self.register_buffer("stored_var", torch.ones(output_size))
        self.momentum: float | None = 0.1

    def forward(self, x):
        return F.batch_norm(x, self.stored_mean, self.stored_var, self.gain, self.bias, self.training,
                            self.momentum, self.eps)


class GBlock(nn.Module):
    """Pre-activation residual block with nearest 2× upsampling and a 1×1 learnable shortcut."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, cfg: BigGANConfig):
        super().__init__()
        sn = dict(num_itrs=cfg.num_sv_itrs, eps=cfg.sn_eps)
        self.conv1 = SNConv2d(in_ch, out_ch, **sn)
        self.conv2 = SNConv2d(out_ch, out_ch, **sn)
        self.conv_sc = SNConv2d(in_ch, out_ch, kernel_size=1, padding=0, **sn)
        self.bn1 = CCBN(in_ch, cond_dim, cfg)
        self.bn2 = CCBN(out_ch, cond_dim, cfg)

    def forward(self, x, y):
        h = F.relu(self.bn1(x, y))
        h = F.interpolate(h, scale_factor=2)
        x = F.interpolate(x, scale_factor=2)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + self.conv_sc(x)


class Attention(nn.Module):
    """SAGAN self-attention (reference ``layers.Attention``), output ``gamma * o + x``."""

    def __init__(self, ch: int, cfg: BigGANConfig):
        super().__init__()
        sn = dict(kernel_size=1, padding=0, bias=False, num_itrs=cfg.num_sv_itrs, eps=cfg.sn_eps)
        self.ch = ch
        self.theta = SNConv2d(ch, ch // 8, **sn)
        self.phi = SNConv2d(ch, ch // 8, **sn)
        self.g = SNConv2d(ch, ch // 2, **sn)
        self.o = SNConv2d(ch // 2, ch, **sn)
        self.gamma = nn.Parameter(torch.tensor(0.0))

    def forward(self, x, y=None):
        b, _, h, w = x.shape
        theta = self.theta(x).view(b, self.ch // 8, h * w)
        phi = F.max_pool2d(self.phi(x), [2, 2]).view(b, self.ch // 8, h * w // 4)
        g = F.max_pool2d(self.g(x), [2, 2]).view(b, self.ch // 2, h * w // 4)
        beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
        o = self.o(torch.bmm(g, beta.transpose(1, 2)).view(b, self.ch // 2, h, w))
        return self.gamma * o + x


class BigGANGenerator(nn.Module):
    """BigGAN-PyTorch ``Generator`` with ``G_shared`` and hierarchical z.

    ``forward(z, y_embedded)`` takes the class embedding ``shared(y)`` as the
    reference does; :meth:`generate` takes class ids. With ``taps`` it also
    returns the output of every block (and of the attention module) at native
    resolution, named ``block{i}`` / ``block{i}.attention``, in forward order.
    """

    def __init__(self, cfg: BigGANConfig):
        super().__init__()
        self.cfg = cfg
        sn = dict(num_itrs=cfg.num_sv_itrs, eps=cfg.sn_eps)
        cond_dim = cfg.shared_dim + (cfg.z_chunk if cfg.hier else 0)
        self.shared = nn.Embedding(cfg.n_classes, cfg.shared_dim)
        self.linear = SNLinear(cfg.z_chunk if cfg.hier else cfg.z_dim,
                               cfg.in_channels[0] * cfg.bottom_width**2, **sn)
        blocks = []
        for i, (cin, cout, res) in enumerate(zip(cfg.in_channels, cfg.out_channels, cfg.block_resolutions)):
            block = [GBlock(cin, cout, cond_dim, cfg)]
            if res in cfg.attention:
                block.append(Attention(cout, cfg))
            blocks.append(nn.ModuleList(block))
        self.blocks = nn.ModuleList(blocks)
        self.output_layer = nn.Sequential(BN(cfg.out_channels[-1], cfg.output_bn_eps), nn.ReLU(),
                                          SNConv2d(cfg.out_channels[-1], 3, **sn))

    def layer_names(self) -> list[str]:
        names = []
        for i, blocklist in enumerate(self.blocks):
            names.append(f"block{i}")
            if len(blocklist) > 1:
                names.append(f"block{i}.attention")
        return names

    def feature_shapes(self) -> dict[str, tuple[int, int, int]]:
        shapes = {}
        for i, (cout, res) in enumerate(zip(self.cfg.out_channels, self.cfg.block_resolutions)):
            shapes[f"block{i}"] = (cout, res, res)
            if len(self.blocks[i]) > 1:
                shapes[f"block{i}.attention"] = (cout, res, res)
        return shapes

    def forward(self, z: torch.Tensor, y: torch.Tensor, taps: Sequence[str] | None = None):
        cfg = self.cfg
        if cfg.hier:
            zs = torch.split(z, cfg.z_chunk, 1)
            z0, ys = zs[0], [torch.cat([y, item], 1) for item in zs[1:]]
        else:
            z0, ys = z, [y] * len(self.blocks)
        h = self.linear(z0).view(z.size(0), -1, cfg.bottom_width, cfg.bottom_width)
        feats: dict[str, torch.Tensor] = {}
        want = set(taps or ())
        for i, blocklist in enumerate(self.blocks):
            for j, block in enumerate(blocklist):
                h = block(h, ys[i])
                name = f"block{i}" if j == 0 else f"block{i}.attention"
                if name in want:
                    feats[name] = h
        img = torch.tanh(self.output_layer(h))
        return (img, feats) if taps is not None else img

    def generate(self, z: torch.Tensor, classes: torch.Tensor, taps: Sequence[str] | None = None):
        return self.forward(z, self.shared(classes), taps)


def truncated_normal(seeds: Sequence[int], dim: int, truncation: float = 1.0, bound: float = 2.0) -> np.ndarray:
    """``truncation * truncnorm(-bound, bound)`` z ``[N, dim]`` float32, one row per seed.

    BigGAN's truncation trick as the TF-Hub BigGAN colab and
    pytorch-pretrained-biggan's ``truncated_noise_sample`` draw it:
    ``truncation * scipy.stats.truncnorm.rvs(-2, 2, size=(1, dim),
    random_state=RandomState(seed))``. scipy computes that as the inverse CDF of
    ``RandomState(seed).uniform(size=(1, dim))``; the same uniforms go through
    ``torch.special.ndtri`` here, so scipy is not a dependency.

    BigGAN-PyTorch and BigDatasetGAN's release sample otherwise: ``utils.prepare_z_y``
    and BigDatasetGAN's ``sample_dataset.py`` draw a plain normal with std
    ``z_var`` (0.9 in BigDatasetGAN's README), which BigGAN-PyTorch's ``sample.py``
    calls "not exactly identical to using tf.truncated_normal, but should have
    approximately the same effect". Latents given explicitly (such as the
    release's ``latents.zip``) are rendered as they are; only seeds come here.
    """
    out = np.empty((len(seeds), dim), dtype=np.float64)
    lo, hi = _ndtr(-bound), _ndtr(bound)
    for i, s in enumerate(seeds):
        u = np.random.RandomState(int(s)).uniform(size=(1, dim))
        out[i] = _ndtri(lo + u[0] * (hi - lo))
    return (truncation * out).astype(np.float32)


def _ndtr(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _ndtri(p: np.ndarray) -> np.ndarray:
    return torch.special.ndtri(torch.from_numpy(np.asarray(p, dtype=np.float64))).numpy()


@GENERATORS.register("biggan")
class BigGANBackend(GeneratorBackend):
    """Class-conditional BigGAN (BigGAN-PyTorch layout); taps every block and attention output.

    ``class_names`` (one per class, e.g. the toy world's) travel in ``arch_config``;
    they are None when unknown (checkpoints carry only class indices).
    """

    arch = "biggan"

    def __init__(self, module: BigGANGenerator, arch_config: dict, generator_hash: str | None = None,
                 class_names: Sequence[str] | None = None):
        names = class_names if class_names is not None else arch_config.get("class_names")
        if names is not None:
            names = [str(n) for n in names]
            if len(names) != module.cfg.n_classes:
                raise ValueError(f"{len(names)} class names for {module.cfg.n_classes} classes")
            arch_config = {**arch_config, "class_names": names}
        self.class_names: list[str] | None = names
        super().__init__(module, arch_config, generator_hash)

    @classmethod
    def from_tensors(cls, arch_config, tensors, generator_hash=None):
        cfg = BigGANConfig(**{k: v for k, v in arch_config.items() if k != "class_names"})
        module = load_strict(BigGANGenerator(cfg), tensors, "BigGAN")
        return cls(module, cfg.to_dict(), generator_hash, arch_config.get("class_names"))

    @property
    def resolution(self) -> int:
        return self.module.cfg.resolution

    @property
    def num_classes(self) -> int:
        return self.module.cfg.n_classes

    def class_embedding(self) -> torch.Tensor:
        """The shared embedding table ``shared.weight`` ``[n_classes, shared_dim]``."""
        return self.module.shared.weight.detach()

    def z_from_seeds(self, seeds: Sequence[int], truncation: float = 1.0) -> np.ndarray:
        """z from :func:`truncated_normal` (``truncation * truncnorm(-2, 2)`` per seed)."""
        return truncated_normal(seeds, self.z_dim, truncation)

    def synthesize(self, z, classes=None, truncation=1.0, noise="const", features=True, generator=None):
        """Render ``z`` as given: BigGAN's truncation acts on z when it is sampled
        (:meth:`z_from_seeds`), and the generator has no noise inputs, so
        ``truncation``, ``noise`` and ``generator`` do not change the output."""
        c = self.check_classes(None if classes is None else classes.cpu().numpy(), z.shape[0])
        y = torch.from_numpy(c).to(z.device)
        img, feats = self.module.generate(z, y, taps=self.module.layer_names() if features else ())
        return Synthesis(img, feats)


__all__ = ["BigGANBackend", "BigGANConfig", "BigGANGenerator", "G_ARCH", "SNLinear", "SNConv2d", "CCBN", "BN", "GBlock",
           "Attention", "truncated_normal"]


# --- ajbrock BigGAN-PyTorch checkpoints ------------------------------------------------
_BIGGAN_SIGNATURE = frozenset({"shared.weight", "linear.weight", "linear.u0", "blocks.0.0.conv1.weight"})

# Keys that a state dict written by BigGAN-PyTorch's ``TFHub/converter.py`` lacks:
# ``convert_from_v1`` maps only weights, biases, ``u0`` (TF's ``u0`` via ``weight_u``), BN statistics,
# ``gamma`` and ``shared``, never the ``sv0`` singular-value records, and loads with
# ``strict=False  # Ignore missing sv0 entries`` (so does BigDatasetGAN's release).
# ``layers.SN`` keeps ``sv0`` "just for logging", unused by the forward pass; they
# are filled with the constructor's value, ones.
_BIGGAN_CONVERTER_MISSING = re.compile(r".*\.sv0$")


def _is_biggan_pytorch(path: Path) -> bool:
    """A torch file whose dict has BigGAN-PyTorch ``Generator`` keys."""
    return _BIGGAN_SIGNATURE <= torch_keys(path)


def biggan_config_from_pytorch(sd: dict[str, torch.Tensor]) -> BigGANConfig:
    """Infer a BigGAN-PyTorch ``Generator``'s config (``G_shared``, one SV) from its state dict.

    Resolution from the number of blocks, ``ch`` from the first block's input
    channels, ``hier`` and the z chunk from the ccbn input width (shared dim + chunk)
    and the first linear layer, attention from which blocks carry one. What shapes
    cannot tell is set as in ``TFHub/converter.py:get_config``: BN and SN eps 1e-4
    and one power iteration (models trained with other eps need them edited in
    the sidecar after conversion)."""
    try:
        n_classes, shared_dim = sd["shared.weight"].shape
        n_blocks = len({k.split(".")[1] for k in sd if re.match(r"blocks\.\d+\.0\.conv1\.weight$", k)})
        in0 = sd["blocks.0.0.conv1.weight"].shape[1]
        lin_out, lin_in = sd["linear.weight"].shape
        cond = sd["blocks.0.0.bn1.gain.weight"].shape[1]
    except KeyError as e:
        raise CheckpointError(f"not a BigGAN-PyTorch generator state dict with G_shared: missing {e}") from e
    resolution = next((r for r, (cin, _) in G_ARCH.items() if len(cin) == n_blocks), None)
    if resolution is None:
        raise CheckpointError(f"BigGAN-PyTorch generator with {n_blocks} blocks: no known resolution")
    ch, bottom_width = in0 // G_ARCH[resolution][0][0], math.isqrt(lin_out // in0)
    hier = cond > shared_dim
    if hier and cond - shared_dim != lin_in:
        raise CheckpointError(f"ccbn input {cond} is not shared_dim {shared_dim} + z chunk {lin_in}")
    cfg = BigGANConfig(resolution=resolution, ch=int(ch), dim_z=int(lin_in * (n_blocks + 1) if hier else lin_in),
                       shared_dim=int(shared_dim), n_classes=int(n_classes), attention=(),
                       bottom_width=int(bottom_width), hier=bool(hier))
    attention = tuple(r for i, r in enumerate(cfg.block_resolutions) if any(k.startswith(f"blocks.{i}.1.") for k in sd))
    return dataclasses.replace(cfg, attention=attention)


def _read_biggan_pytorch(path: Path) -> RawCheckpoint:
    """A ``torch.save(G.state_dict())`` of BigGAN-PyTorch's ``Generator`` (e.g. ``biggan-512.pth``
    from its TF-Hub converter), loaded strictly except for the converter's missing keys."""
    sd = torch_load(path)
    cfg = biggan_config_from_pytorch(sd)
    with torch.device("meta"):
        expected = set(BigGANGenerator(cfg).state_dict())
    filled = sorted(k for k in expected - set(sd) if _BIGGAN_CONVERTER_MISSING.fullmatch(k))
    missing, unexpected = sorted(expected - set(sd) - set(filled)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{path}: BigGAN-PyTorch state dict does not fit {cfg}: "
                              f"missing {missing}, unexpected {unexpected}")
    tensors = {**sd, **{k: torch.ones(1) for k in filled}}
    notes = {"filled_with_ones": filled} if filled else {}
    return RawCheckpoint("biggan", cfg.to_dict(), tensors, "biggan-pytorch", notes)


FORMATS.register("biggan-pytorch")(FormatReader(_is_biggan_pytorch, _read_biggan_pytorch))
