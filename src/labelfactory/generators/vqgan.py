"""VQGAN of taming-transformers (``taming.models.vqgan.VQModel``), optionally with its
transformer prior (``Net2NetTransformer``, :mod:`.taming_prior`), pure PyTorch.

The module tree and parameter names are taming's (``encoder.*``, ``decoder.*``,
``quantize.embedding.weight``, ``quant_conv.*``, ``post_quant_conv.*``; the prior's
``transformer.*``), so a release's ``state_dict`` loads strictly. The forward computes
what ``taming/modules/diffusionmodules/model.py``'s ``Encoder``/``Decoder`` compute
(swish ``x * sigmoid(x)``, GroupNorm(32, eps 1e-6), no timestep embedding, dropout
off) and quantizes as ``VectorQuantizer2`` does: the code of a vector ``z`` is
``argmin_j ||z||² + ||e_j||² − 2 z·e_j`` (ties: the first index, as ``torch.argmin``).

A VQGAN sample's latent is its grid of int64 code indices ``[h, w]``
(:attr:`VQGANBackend.latent_shape`); rendering decodes it. Features are decoder
maps in forward order: ``mid`` (after the middle block) and ``up{i}`` for
``i = L-1 .. 0``, the output of taming's ``decoder.up[i]`` (its blocks and
attentions, before its upsampling), at ``resolution / 2**i``.

Checkpoints: the release layout (a folder with ``checkpoints/last.ckpt``, a
pytorch-lightning 1.x checkpoint, and ``configs/model.yaml`` or one
``configs/*-project.yaml``), or the ``.ckpt`` itself; with no config beside a
VQModel ``.ckpt`` the architecture is inferred from the tensor shapes.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labelfactory.generators.base import (
    GENERATORS,
    UNCONDITIONAL,
    GeneratorBackend,
    Synthesis,
    images_to_uint8,
    load_strict,
)
from labelfactory.generators.checkpoints import (
    FORMATS,
    CheckpointError,
    FormatReader,
    RawCheckpoint,
    file_head,
    is_torch_file,
    torch_load,
)
from labelfactory.generators.taming_prior import GPT, PriorConfig, check_sampling, sample

VQMODEL_TARGET = "taming.models.vqgan.VQModel"
NET2NET_TARGET = "taming.models.cond_transformer.Net2NetTransformer"
CKPT = Path("checkpoints") / "last.ckpt"
# the release's sample_fast.py defaults
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 250, "top_p": 1.0}
# a code grid of 16x16 is what every released VectorQuantizer2 VQGAN has (f16 at 256 px)
INFERRED_GRID = 16


@dataclass
class DDConfig:
    """taming's ``ddconfig`` (the arguments of ``Encoder``/``Decoder``)."""

    ch: int
    out_ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    in_channels: int
    resolution: int
    z_channels: int
    double_z: bool = True
    dropout: float = 0.0
    resamp_with_conv: bool = True

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        bad = sorted({self.ch * m for m in (1, *self.ch_mult) if (self.ch * m) % 32})
        if bad:
            raise ValueError(f"ddconfig channels {bad} are not multiples of 32 (taming's GroupNorm has 32 groups)")
        if self.resolution % 2 ** (len(self.ch_mult) - 1):
            raise ValueError(f"ddconfig resolution {self.resolution} is not divisible by 2**{len(self.ch_mult) - 1}")

    @classmethod
    def from_dict(cls, d: dict) -> "DDConfig":
        d = dict(d)
        if d.pop("give_pre_end", False):
            raise ValueError("ddconfig give_pre_end (a decoder without its output layer) is not supported")
        names = {f.name for f in fields(cls)}
        missing = sorted(f.name for f in fields(cls) if f.name not in d and f.default is MISSING)
        unknown = sorted(set(d) - names)
        if missing or unknown:
            raise ValueError(f"ddconfig: missing {missing}, unknown {unknown}")
        return cls(**d)

    def level_resolutions(self) -> list[int]:
        return [self.resolution // 2**i for i in range(len(self.ch_mult))]


@dataclass
class VQGANConfig:
    embed_dim: int
    n_embed: int
    ddconfig: DDConfig
    prior: PriorConfig | None = None

    def __post_init__(self):
        if self.prior is not None and self.prior.vocab_size != self.n_embed:
            raise ValueError(f"the prior's vocab_size {self.prior.vocab_size} is not the codebook size "
                             f"n_embed {self.n_embed}")
        if self.prior is not None and self.prior.block_size < self.grid**2:
            raise ValueError(f"the prior's block_size {self.prior.block_size} is shorter than the "
                             f"{self.grid}x{self.grid} code grid")

    @property
    def grid(self) -> int:
        return self.ddconfig.resolution // 2 ** (len(self.ddconfig.ch_mult) - 1)

    @classmethod
    def from_dict(cls, d: dict) -> "VQGANConfig":
        names = {f.name for f in fields(cls)}
        missing, unknown = sorted(names - {"prior"} - set(d)), sorted(set(d) - names)
        if missing or unknown:
            raise ValueError(f"VQGAN config: missing {missing}, unknown {unknown}")
        prior = d.get("prior")
        return cls(int(d["embed_dim"]), int(d["n_embed"]), DDConfig.from_dict(d["ddconfig"]),
                   None if prior is None else PriorConfig.from_dict(prior))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ddconfig"] = {**d["ddconfig"], "ch_mult": list(self.ddconfig.ch_mult),
                         "attn_resolutions": list(self.ddconfig.attn_resolutions)}
        return d


# --- taming's Encoder / Decoder ----------------------------------------------------
def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6)


def _swish(x):
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv2(_swish(self.norm2(self.conv1(_swish(self.norm1(x))))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels, 1x1 ``q``, ``k``, ``v``, ``proj_out``."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = _norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        h = self.norm(x)
        b, c, hh, ww = x.shape
        q = self.q(h).reshape(b, c, hh * ww).permute(0, 2, 1)
        w = F.softmax(torch.bmm(q, self.k(h).reshape(b, c, hh * ww)) * int(c) ** -0.5, dim=2)
        out = torch.bmm(self.v(h).reshape(b, c, hh * ww), w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Resample(nn.Module):
    """``Downsample`` (pad right/bottom, stride-2 conv; or average pooling) or
    ``Upsample`` (nearest 2x, then an optional conv)."""

    def __init__(self, c: int, with_conv: bool, up: bool):
        super().__init__()
        self.up = up
        self.conv = nn.Conv2d(c, c, 3, stride=1 if up else 2, padding=1 if up else 0) if with_conv else None

    def forward(self, x):
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            return x if self.conv is None else self.conv(x)
        if self.conv is None:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Level(nn.Module):
    """One resolution: ``block`` (ResnetBlocks), ``attn`` (one per block, or none)."""

    def __init__(self, cin: int, cout: int, n_blocks: int, attention: bool):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout) for j in range(n_blocks))
        self.attn = nn.ModuleList(AttnBlock(cout) for _ in range(n_blocks if attention else 0))

    def forward(self, h):
        for j, block in enumerate(self.block):
            h = block(h)
            if self.attn:
                h = self.attn[j](h)
        return h


class Mid(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)

    def forward(self, h):
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, cfg: DDConfig):
        super().__init__()
        mult, res = (1, *cfg.ch_mult), cfg.level_resolutions()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        for i in range(len(cfg.ch_mult)):
            level = Level(cfg.ch * mult[i], cfg.ch * mult[i + 1], cfg.num_res_blocks, res[i] in cfg.attn_resolutions)
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Resample(cfg.ch * mult[i + 1], cfg.resamp_with_conv, up=False)
            self.down.append(level)
        c = cfg.ch * cfg.ch_mult[-1]
        self.mid, self.norm_out = Mid(c), _norm(c)
        self.conv_out = nn.Conv2d(c, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(_swish(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: DDConfig):
        super().__init__()
        n, res = len(cfg.ch_mult), cfg.level_resolutions()
        c = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, c, 3, padding=1)
        self.mid = Mid(c)
        self.up = nn.ModuleList()
        for i in range(n):
            cin = cfg.ch * cfg.ch_mult[min(i + 1, n - 1)]
            level = Level(cin, cfg.ch * cfg.ch_mult[i], cfg.num_res_blocks + 1, res[i] in cfg.attn_resolutions)
            if i != 0:
                level.upsample = Resample(cfg.ch * cfg.ch_mult[i], cfg.resamp_with_conv, up=True)
            self.up.append(level)
        self.norm_out = _norm(cfg.ch * cfg.ch_mult[0])
        self.conv_out = nn.Conv2d(cfg.ch * cfg.ch_mult[0], cfg.out_ch, 3, padding=1)

    def forward(self, z, taps: bool = False):
        feats: dict[str, torch.Tensor] = {}
        h = self.mid(self.conv_in(z))
        if taps:
            feats["mid"] = h
        for i in reversed(range(len(self.up))):
            h = self.up[i](h)
            if taps:
                feats[f"up{i}"] = h
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(_swish(self.norm_out(h))), feats


class VectorQuantizer(nn.Module):
    """``VectorQuantizer2``'s codebook ``embedding`` and its nearest-code choice."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` → int64 ``[B, h, w]``."""
        b, c, h, w = z.shape
        zf = z.permute(0, 2, 3, 1).reshape(-1, c)
        e = self.embedding.weight
        d = torch.sum(zf**2, dim=1, keepdim=True) + torch.sum(e**2, dim=1) - 2 * zf @ e.t()
        return torch.argmin(d, dim=1).view(b, h, w)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """int64 ``[B, h, w]`` → ``[B, C, h, w]``."""
        return self.embedding(codes).permute(0, 3, 1, 2).contiguous()


class VQGAN(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.cfg = cfg
        dd = cfg.ddconfig
        self.encoder, self.decoder = Encoder(dd), Decoder(dd)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(2 * dd.z_channels if dd.double_z else dd.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, dd.z_channels, 1)
        self.transformer = None if cfg.prior is None else GPT(cfg.prior)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize.codes(self.quant_conv(self.encoder(x)))

    def decode(self, codes: torch.Tensor, taps: bool = False):
        return self.decoder(self.post_quant_conv(self.quantize.lookup(codes)), taps)

    def feature_shapes(self) -> dict[str, tuple[int, int, int]]:
        dd = self.cfg.ddconfig
        res = dd.level_resolutions()
        shapes = {"mid": (dd.ch * dd.ch_mult[-1], res[-1], res[-1])}
        for i in reversed(range(len(dd.ch_mult))):
            shapes[f"up{i}"] = (dd.ch * dd.ch_mult[i], res[i], res[i])
        return shapes


@GENERATORS.register("vqgan")
class VQGANBackend(GeneratorBackend):
    """VQGAN: latents are code grids (int64 ``[N, h, w]`` or flat ``[N, h*w]``, :meth:`check_latents`),
    :meth:`encode` turns images into them, and with a prior :meth:`sample_codes`
    draws new ones per (seed, class). Decoding does not read classes: they may be
    left out of :meth:`render` (a given class is still checked). No noise, no truncation."""

    arch = "vqgan"

    @classmethod
    def from_tensors(cls, arch_config, tensors, generator_hash=None):
        module = VQGAN(VQGANConfig.from_dict(arch_config))
        load_strict(module, tensors, "VQGAN")
        return cls(module, module.cfg.to_dict(), generator_hash)

    @property
    def prior(self) -> PriorConfig | None:
        return self.module.cfg.prior

    @property
    def latent_shape(self) -> tuple[int, int]:
        return (self.module.cfg.grid, self.module.cfg.grid)

    @property
    def z_dim(self) -> int:
        """The number of code positions, ``h * w``."""
        return self.module.cfg.grid**2

    @property
    def resolution(self) -> int:
        return self.module.cfg.ddconfig.resolution

    @property
    def num_classes(self) -> int:
        return 0 if self.prior is None else self.prior.n_classes

    def check_latents(self, z) -> np.ndarray:
        """Code grids int ``[N, h, w]``, or flattened ``[N, h*w]`` (as annotation sets store them)."""
        z = np.asarray(z)
        h, w = self.latent_shape
        if z.dtype.kind not in "iu":
            raise ValueError(f"VQGAN latents are integer code indices [N, {h}, {w}], got {z.dtype}")
        if z.ndim == 2 and z.shape[1] == h * w:
            z = z.reshape(len(z), h, w)
        if z.ndim != 3 or z.shape[1:] != (h, w):
            raise ValueError(f"VQGAN code grids must have shape [N, {h}, {w}], got {list(z.shape)}")
        n = self.module.cfg.n_embed
        if z.size and (z.min() < 0 or z.max() >= n):
            raise ValueError(f"code indices must be in [0, {n}) (the codebook size), got [{z.min()}, {z.max()}]")
        return z.astype(np.int64)

    def check_classes(self, classes, n):
        if classes is None:
            return np.full(n, UNCONDITIONAL, dtype=np.int64)
        return super().check_classes(classes, n)

    def synthesize(self, z, classes=None, truncation=1.0, noise="const", features=True, generator=None):
        if truncation != 1.0:
            raise ValueError("VQGAN has no truncation; sample codes with temperature, top_k and top_p instead")
        if z.dtype != torch.int64:
            raise ValueError(f"VQGAN latents are int64 code indices, got {z.dtype}")
        img, feats = self.module.decode(z, taps=features)
        return Synthesis(img, feats)

    def encode(self, images, batch_size: int = 16) -> np.ndarray:
        """Images float ``[N, C, H, W]`` in [-1, 1] at the model's resolution → int64 codes ``[N, h, w]``."""
        x = np.asarray(images)
        dd = self.module.cfg.ddconfig
        want = (dd.in_channels, dd.resolution, dd.resolution)
        if x.dtype.kind != "f" or x.ndim != 4 or x.shape[1:] != want:
            raise ValueError(f"images must be float [N, {', '.join(map(str, want))}], got {x.dtype} {list(x.shape)}")
        if x.size and not (np.isfinite(x).all() and x.min() >= -1 and x.max() <= 1):
            raise ValueError(f"images must be in [-1, 1], got [{np.nanmin(x):.4g}, {np.nanmax(x):.4g}] "
                             "(or non-finite values)")
        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)).to(self.device)
                out.append(self.module.encode(xb).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, *self.latent_shape), dtype=np.int64)

    def sample_codes(self, seeds, classes=None, temperature: float = SAMPLING_DEFAULTS["temperature"],
                     top_k: int | None = SAMPLING_DEFAULTS["top_k"], top_p: float = SAMPLING_DEFAULTS["top_p"],
                     batch_size: int = 16) -> np.ndarray:
        """Codes int64 ``[N, h, w]`` drawn by the prior, one ``torch.Generator(seed)`` per sample
        (defaults: the release's ``sample_fast.py``); each is regenerable from
        (generator hash, seed, class) and independent of ``batch_size``."""
        if self.prior is None:
            raise ValueError("this VQGAN has no transformer prior: sampling codes needs a Net2NetTransformer "
                             "checkpoint")
        check_sampling(temperature, top_k, top_p)
        seeds = [int(s) for s in seeds]
        if self.num_classes and (classes is None or np.any(np.asarray(classes) == UNCONDITIONAL)):
            raise ValueError(f"this VQGAN's prior is class-conditional ({self.num_classes} classes): "
                             "give the class of every sample")
        cls = super().check_classes(classes, len(seeds))
        cond = cls if self.num_classes else np.full(len(seeds), self.prior.sos_token, dtype=np.int64)
        h, w = self.latent_shape
        out = []
        for i in range(0, len(seeds), batch_size):
            gens = [torch.Generator().manual_seed(s) for s in seeds[i : i + batch_size]]
            c = torch.from_numpy(cond[i : i + batch_size]).to(self.device)
            out.append(sample(self.module.transformer, c, h * w, gens, temperature, top_k, top_p).cpu())
        return torch.cat(out).reshape(-1, h, w).numpy() if out else np.zeros((0, h, w), dtype=np.int64)

    def draw_latents(self, seeds, classes=None, truncation: float = 1.0, sampling: dict | None = None):
        """:meth:`sample_codes` of (seed, class) with the ``sampling`` options (temperature, top_k,
        top_p; the release's defaults where absent)."""
        if truncation != 1.0:
            raise ValueError("VQGAN has no truncation; sample codes with temperature, top_k and top_p instead")
        unknown = sorted(set(sampling or {}) - set(SAMPLING_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown VQGAN sampling options {unknown} (known: {sorted(SAMPLING_DEFAULTS)})")
        return self.sample_codes(seeds, classes, **(sampling or {}))

    @property
    def latent_dtype(self) -> np.dtype:
        return np.dtype(np.int64)


# --- the checkpoint format: taming's release folder / pytorch-lightning .ckpt ---------------
class LightningClass:
    """Inert stand-in for the Lightning classes a checkpoint pickles by name (the keys of
    ``callbacks``); nothing from Lightning is imported or run."""


_LIGHTNING_GLOBALS = [(LightningClass, f"pytorch_lightning.callbacks.{name}")
                      for name in ("model_checkpoint.ModelCheckpoint", "early_stopping.EarlyStopping")]


def load_lightning_checkpoint(path: Path) -> dict:
    """A Lightning ``.ckpt`` as plain data (weights-only unpickling, callback classes allowed by name)."""
    try:
        with torch.serialization.safe_globals(_LIGHTNING_GLOBALS):
            ckpt = torch_load(path, mmap=file_head(path, 4) == b"PK\x03\x04")
    except CheckpointError as e:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if refused:
            raise CheckpointError(f"{path}: refusing to load {refused.group(1)} from a Lightning checkpoint "
                                  "(only tensors, containers and Lightning callback names are allowed)") from None
        raise CheckpointError(str(e).splitlines()[0]) from None
    sd = ckpt.get("state_dict")
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: not a Lightning checkpoint with a state_dict of tensors "
                              f"(keys: {sorted(map(str, ckpt))[:8]})")
    return sd


def _find_config(configs: Path) -> Path | None:
    if not configs.is_dir():
        return None
    if (configs / "model.yaml").is_file():
        return configs / "model.yaml"
    found = sorted(configs.glob("*.yaml"))
    if len(found) > 1:
        found = [p for p in found if p.name.endswith("-project.yaml")]
    if len(found) != 1:
        raise CheckpointError(f"{configs}: expected model.yaml or one *-project.yaml, found "
                              f"{sorted(p.name for p in configs.glob('*.yaml'))}")
    return found[0]


def _release_paths(path: Path) -> tuple[Path, Path | None]:
    """The checkpoint and its config (None for a bare ``.ckpt``)."""
    if path.is_dir():
        config = _find_config(path / "configs")
        if not (path / CKPT).is_file():
            raise CheckpointError(f"{path}: taming release folder without {CKPT}")
        if config is None:
            raise CheckpointError(f"{path}: taming release folder without its config (configs/model.yaml)")
        return path / CKPT, config
    return path, _find_config(path.parent.parent / "configs") if path.parent.name == "checkpoints" else None


def vqgan_config_from_taming(config: dict) -> VQGANConfig:
    """A taming YAML config (``model.target`` VQModel or Net2NetTransformer) → :class:`VQGANConfig`."""
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict):
        raise ValueError("config has no 'model' section")
    target, params = model.get("target"), model.get("params") or {}
    prior = None
    if target == NET2NET_TARGET:
        prior = PriorConfig.from_taming(params)
        first = params.get("first_stage_config") or {}
        if first.get("target") != VQMODEL_TARGET:
            raise ValueError(f"first stage {first.get('target')!r} is not supported (only {VQMODEL_TARGET})")
        target, params = first["target"], first.get("params") or {}
    if target != VQMODEL_TARGET:
        raise ValueError(f"model target {target!r} is not supported (only {VQMODEL_TARGET} and {NET2NET_TARGET})")
    if params.get("remap") is not None:
        raise ValueError("VQModel remap (a remapped codebook) is not supported")
    try:
        return VQGANConfig(int(params["embed_dim"]), int(params["n_embed"]), DDConfig.from_dict(params["ddconfig"]),
                           prior)
    except KeyError as e:
        raise ValueError(f"VQModel params lack {e}") from None


def vqgan_config_from_state(sd: dict[str, torch.Tensor]) -> VQGANConfig:
    """Infer a VQModel's config from its state dict. Shapes fix everything but the
    resolution; it is set so that the code grid is ``INFERRED_GRID`` (16, as every
    released VectorQuantizer2 model), placing attention at the levels that have it."""
    try:
        ch, in_channels = sd["encoder.conv_in.weight"].shape[:2]
        n = len({k.split(".")[2] for k in sd if re.match(r"encoder\.down\.\d+\.block\.0\.conv1\.weight$", k)})
        ch_mult = [sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(n)]
        blocks = len({k.split(".")[4] for k in sd if re.match(r"encoder\.down\.0\.block\.\d+\.conv1\.weight$", k)})
        z_channels = sd["decoder.conv_in.weight"].shape[1]
        n_embed, embed_dim = sd["quantize.embedding.weight"].shape
        resolution = INFERRED_GRID * 2 ** (n - 1)
        attn = [resolution // 2**i for i in range(n) if f"encoder.down.{i}.attn.0.q.weight" in sd]
        dd = DDConfig(ch=int(ch), out_ch=int(sd["decoder.conv_out.weight"].shape[0]), ch_mult=ch_mult,
                      num_res_blocks=blocks, in_channels=int(in_channels), resolution=resolution,
                      z_channels=int(z_channels),
                      attn_resolutions=attn,
                      double_z=bool(sd["encoder.conv_out.weight"].shape[0] == 2 * z_channels),
                      resamp_with_conv=n == 1 or "encoder.down.0.downsample.conv.weight" in sd)
    except (KeyError, ZeroDivisionError) as e:
        raise ValueError(f"not a taming VQModel state dict: missing {e}") from None
    return VQGANConfig(int(embed_dim), int(n_embed), dd)


def _is_taming(path: Path) -> bool:
    if path.is_dir():
        return (path / "checkpoints").is_dir() or (path / "configs").is_dir()
    return path.suffix == ".ckpt" and is_torch_file(path)


def read_taming(path: Path) -> RawCheckpoint:
    """A taming release folder or ``.ckpt`` → canonical tensors: VQModel keys (a
    Net2NetTransformer's ``first_stage_model.`` prefix removed) and ``transformer.*``;
    only the training loss (``loss.*``: discriminator, LPIPS) is dropped, by name."""
    import yaml

    ckpt, config_path = _release_paths(path)
    sd = load_lightning_checkpoint(ckpt)
    net2net = any(k.startswith("first_stage_model.") for k in sd)
    try:
        if config_path is not None:
            try:
                cfg = vqgan_config_from_taming(yaml.safe_load(config_path.read_text()))
            except yaml.YAMLError as e:
                raise ValueError(f"corrupt YAML ({str(e).splitlines()[0]})") from None
        elif net2net:
            raise ValueError("a Net2NetTransformer checkpoint needs its config (configs/*.yaml beside "
                             "checkpoints/): n_head and the conditioning are not in the weights")
        else:
            cfg = vqgan_config_from_state(sd)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{config_path or ckpt}: {e}") from None
    first = "first_stage_model." if cfg.prior is not None else ""
    tensors = {k[len(first):] if k.startswith(first) else k: v for k, v in sd.items()
               if not k.startswith(first + "loss.")}
    notes = {"config": "inferred from shapes"} if config_path is None else {"config": config_path.name}
    return RawCheckpoint("vqgan", cfg.to_dict(), tensors, "lightning-taming", notes)


# sorted before "rosinality", whose reader claims every torch file no other reader does
FORMATS.register("lightning-taming")(FormatReader(_is_taming, read_taming))

__all__ = ["VQGAN", "VQGANBackend", "VQGANConfig", "DDConfig", "VectorQuantizer", "read_taming",
           "load_lightning_checkpoint", "vqgan_config_from_taming", "vqgan_config_from_state"]


def reconstruct(backend: GeneratorBackend, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``[N,H,W,3]`` → their VQGAN codes and the decoded codes as uint8 images."""
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
    codes = backend.encode(x, batch_size=batch_size)
    return codes, images_to_uint8(torch.from_numpy(backend.render(codes, batch_size=batch_size)))
