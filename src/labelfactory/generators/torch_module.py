"""Bring your own generator: any ``torch.nn.Module`` class as a backend (arch ``"torch-module"``).

DatasetGAN needs three things from a GAN: latents from seeds, images from
latents, and intermediate feature maps. A lab's own generator (a DCGAN variant,
a StyleGAN fork) offers them without a backend written for it: the checkpoint
entry names the class by import path (``package.module:Class``), its
constructor arguments, the weights (a state dict: ``.safetensors``, or
``.pt``/``.pth`` read weights-only, never a pickled module), the latent, the
class input, the output range and which modules to tap with forward hooks
(:class:`TorchModuleConfig`). The spec travels in the canonical sidecar's
``arch_config``, so every later stage rebuilds the module from safetensors +
sidecar; the class must be importable wherever the workflow runs (installed,
or on ``PYTHONPATH``).

The module runs in eval mode without autograd, and each sample must depend on
its latent (and class) alone: the workflow renders in batches of any size and
re-renders samples one by one. Construction renders two samples together and
the first again alone, and refuses a generator whose outputs differ (batch
statistics, e.g. a BatchNorm forced into training mode or a minibatch-stddev
layer, or random noise drawn in ``forward``). BatchNorm layers in eval mode use
their running statistics and are fine.

The generator hash covers the import path, the installed version of the
class's distribution (``importlib.metadata``; none for a module that is not an
installed package), the constructor arguments, everything that changes the
images (latent, class input, output range) and the weights; taps and the class
embedding do not change images and are not hashed. A checkpoint converted under
another version of the package gets a new hash on load (with a warning), so
annotations and samples of the old code are reported as another generator's.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labelfactory.core.typed import strict_from_dict
from labelfactory.generators.base import GENERATORS, GeneratorBackend, Synthesis, content_hash, load_strict
from labelfactory.generators.biggan import truncated_normal
from labelfactory.generators.checkpoints import (
    CheckpointError,
    RawCheckpoint,
    is_safetensors,
    is_torch_file,
    torch_load,
)

log = logging.getLogger(__name__)

ARCH = "torch-module"
DISTRIBUTIONS = ("normal", "truncated-normal")
CLASS_INPUTS = ("index", "onehot")
UNHASHED = ("taps", "tap_types", "class_embedding")  # they change what is read, not the images
BATCH_TOLERANCE = 1e-4  # max |alone - in batch|, relative to the output's scale


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _few(items: Sequence, shown: int = 8) -> str:
    items = list(items)
    return f"{items[:shown]}{'...' if len(items) > shown else ''}"


@dataclass
class TorchModuleConfig:
    """A user generator: ``class_path`` (``package.module:Class``) built with ``kwargs``;
    ``forward(z)`` or ``forward(z, c)`` returns images ``[B, 3, H, H]`` in ``output_range``.

    z has ``latent_shape`` per sample (e.g. ``[512]``, DCGAN's ``[100, 1, 1]``), drawn
    as ``RandomState(seed).randn`` (``normal``) or ψ · truncnorm(−``truncation_bound``,
    bound) (``truncated-normal``, ψ the task's truncation, as BigGAN). With
    ``num_classes`` > 0, c is the class index (int64 ``[B]``) or its one-hot vector
    (float ``[B, num_classes]``) per ``class_input``. ``taps`` name modules
    (``named_modules()``) whose outputs are feature maps; ``tap_types`` add every
    module whose class or a base class has one of these names (``ConvTranspose2d``,
    ``_BatchNorm``). ``class_embedding`` names the ``[num_classes, d]`` tensor of the
    state dict that the conv interpreter conditions on (default: the one-hot
    vectors). ``package_version`` is recorded at load, not configured."""

    class_path: str
    latent_shape: tuple[int, ...]
    kwargs: dict = field(default_factory=dict)
    latent_distribution: str = "normal"
    truncation_bound: float = 2.0
    num_classes: int = 0
    class_input: str = "index"
    output_range: tuple[float, float] = (-1.0, 1.0)
    taps: tuple[str, ...] = ()
    tap_types: tuple[str, ...] = ()
    class_embedding: str | None = None
    package_version: str | None = None

    def __post_init__(self):
        self.latent_shape = tuple(int(s) for s in self.latent_shape)
        self.output_range = tuple(float(v) for v in self.output_range)
        self.taps, self.tap_types = tuple(self.taps), tuple(self.tap_types)
        bad = []
        module, sep, qualname = str(self.class_path).partition(":")
        if not (sep and module and qualname):
            bad.append(f"class_path {self.class_path!r} (need 'package.module:Class')")
        if not self.latent_shape or any(s < 1 for s in self.latent_shape):
            bad.append(f"latent_shape {list(self.latent_shape)} (need positive sizes)")
        if self.latent_distribution not in DISTRIBUTIONS:
            bad.append(f"latent_distribution {self.latent_distribution!r} (one of {list(DISTRIBUTIONS)})")
        if self.class_input not in CLASS_INPUTS:
            bad.append(f"class_input {self.class_input!r} (one of {list(CLASS_INPUTS)})")
        if self.num_classes < 0:
            bad.append(f"num_classes {self.num_classes} (0 for unconditional)")
        if len(self.output_range) != 2 or not self.output_range[0] < self.output_range[1]:
            bad.append(f"output_range {list(self.output_range)} (need [low, high])")
        if not (self.taps or self.tap_types):
            bad.append("taps: give module names (taps) or types (tap_types) to read features from")
        if bad:
            raise ValueError("invalid generator spec: " + "; ".join(bad))

    @classmethod
    def from_dict(cls, d: dict) -> "TorchModuleConfig":
        return strict_from_dict(cls, d)

    @property
    def z_dim(self) -> int:
        return math.prod(self.latent_shape)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("latent_shape", "output_range", "taps", "tap_types"):
            d[k] = list(d[k])
        return d

    def hashed(self) -> dict:
        """The part of the spec the generator hash covers (what changes the images)."""
        return {k: v for k, v in self.to_dict().items() if k not in UNHASHED}


def import_class(class_path: str) -> type[nn.Module]:
    """The ``nn.Module`` subclass at ``package.module:Class`` (one-line ValueError otherwise)."""
    module_name, _, qualname = class_path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:  # a user module may fail to import with any error
        raise ValueError(f"cannot import {module_name!r} of class_path {class_path!r} ({_one_line(e)}); "
                         "is it installed or on PYTHONPATH?") from None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ValueError(f"module {module_name!r} has no {qualname!r} (class_path {class_path!r})")
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ValueError(f"class_path {class_path!r} is not a torch.nn.Module class")
    return obj


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    """Top-level package → distributions (scanning them takes ~0.5 s: once per process)."""
    return importlib.metadata.packages_distributions()


def package_version(cls: type) -> str | None:
    """``dist==version`` of the installed distribution that provides ``cls``'s top-level package."""
    top = cls.__module__.split(".")[0]
    for dist in _distributions().get(top, []):
        try:
            return f"{dist}=={importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def resolve_taps(module: nn.Module, cfg: TorchModuleConfig) -> list[str]:
    """Module names to hook: ``taps`` plus every module matched by ``tap_types`` (unordered)."""
    mods = dict(module.named_modules())
    unknown = [t for t in cfg.taps if not t or t not in mods]
    if unknown:
        raise ValueError(f"unknown tap modules {unknown} in {cfg.class_path}; its modules: "
                         f"{_few([n for n in mods if n], 12)}")
    types = {n: {c.__name__ for c in type(m).__mro__} for n, m in mods.items() if n}
    unmatched = [t for t in cfg.tap_types if not any(t in ts for ts in types.values())]
    if unmatched:
        raise ValueError(f"tap_types {unmatched} match no module of {cfg.class_path}; its module types: "
                         f"{_few(sorted({type(m).__name__ for m in mods.values()}), 12)}")
    return list(dict.fromkeys([*cfg.taps, *(n for n, ts in types.items() if ts & set(cfg.tap_types))]))


@GENERATORS.register(ARCH)
class TorchModuleBackend(GeneratorBackend):
    """A user's ``nn.Module`` generator behind the interface; taps by forward hooks, in forward order."""

    arch = ARCH

    def __init__(self, module: nn.Module, arch_config: dict, generator_hash: str | None = None):
        self.cfg = TorchModuleConfig.from_dict(arch_config)
        self.module = module.eval().requires_grad_(False)
        self._shapes, self._resolution = self._probe(resolve_taps(module, self.cfg))
        self._embedding = self._class_embedding(module)
        generator_hash = generator_hash or content_hash(self.arch, self.cfg.hashed(), module.state_dict())
        super().__init__(module, self.cfg.to_dict(), generator_hash)

    @classmethod
    def from_tensors(cls, arch_config, tensors, generator_hash=None):
        """Import and build the class, load ``tensors`` strictly; a package version other
        than the recorded one drops the stored hash (the code may render differently)."""
        cfg = TorchModuleConfig.from_dict(arch_config)
        klass = import_class(cfg.class_path)
        version = package_version(klass)
        if version != cfg.package_version:
            if generator_hash is not None:
                log.warning("%s: installed %s, converted with %s; the generator hash is recomputed, so "
                            "samples and annotations of the other version will not match", cfg.class_path,
                            version, cfg.package_version)
            generator_hash, cfg = None, dataclasses.replace(cfg, package_version=version)
        try:
            module = klass(**cfg.kwargs)
        except Exception as e:  # the user's constructor may raise anything
            raise ValueError(f"{cfg.class_path}(**{cfg.kwargs}) failed ({_one_line(e)})") from None
        return cls(load_strict(module, tensors, cfg.class_path), cfg.to_dict(), generator_hash)

    # -- properties --------------------------------------------------------------
    @property
    def z_dim(self) -> int:
        """Width of the flat latent the workflow stores (``prod(latent_shape)``)."""
        return self.cfg.z_dim

    @property
    def resolution(self) -> int:
        return self._resolution

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def class_embedding(self) -> torch.Tensor | None:
        """The named ``[num_classes, d]`` tensor, else the one-hot vectors (None if unconditional)."""
        return self._embedding

    def feature_shapes(self) -> dict[str, tuple[int, int, int]]:
        """``{module name: (C, h, w)}`` of every tap, in the order the forward pass runs them."""
        return dict(self._shapes)

    # -- sampling ----------------------------------------------------------------
    def z_from_seeds(self, seeds: Sequence[int], truncation: float = 1.0) -> np.ndarray:
        """Flat z ``[N, prod(latent_shape)]``: ``RandomState(seed).randn`` (``normal``, no
        truncation) or :func:`~.biggan.truncated_normal` (``truncated-normal``)."""
        if self.cfg.latent_distribution == "truncated-normal":
            return truncated_normal(seeds, self.z_dim, truncation, self.cfg.truncation_bound)
        if truncation != 1.0:
            raise ValueError(f"truncation {truncation} needs latent_distribution 'truncated-normal'; "
                             f"{self.cfg.class_path} draws z from a plain normal")
        return super().z_from_seeds(seeds)

    def check_latents(self, z) -> np.ndarray:
        """Latents ``[N, *latent_shape]`` or flat ``[N, z_dim]`` → flat float32."""
        z = np.asarray(z, dtype=np.float32)
        if z.ndim == 1 + len(self.cfg.latent_shape) and z.shape[1:] == self.cfg.latent_shape:
            z = z.reshape(len(z), -1)
        return super().check_latents(z)

    def synthesize(self, z, classes=None, truncation=1.0, noise="const", features=True, generator=None):
        """Render flat ``z`` as given (truncation acts at sampling; no noise inputs)."""
        c = self.check_classes(None if classes is None else classes.cpu().numpy(), z.shape[0])
        out, feats = self._forward(self.module, z, torch.from_numpy(c).to(z.device),
                                   list(self._shapes) if features else [])
        lo, hi = self.cfg.output_range
        return Synthesis((out.float() - lo) * (2.0 / (hi - lo)) - 1.0,
                         {n: feats[n][0] for n in self._shapes} if features else {})

    # -- internals ---------------------------------------------------------------
    def _forward(self, module: nn.Module, z: torch.Tensor, c: torch.Tensor, taps: Sequence[str]):
        """``module(z)`` or ``module(z, c)`` with forward hooks; returns the output and
        ``{tap: [outputs, one per call]}`` in the order the taps first ran. Outputs are
        copied: an in-place activation after a tapped layer (DCGAN's ``ReLU(True)``)
        would otherwise rewrite them."""
        x = z.reshape(len(z), *self.cfg.latent_shape)
        if self.num_classes:
            args = (x, F.one_hot(c, self.num_classes).to(x.dtype) if self.cfg.class_input == "onehot" else c)
        else:
            args = (x,)
        feats: dict[str, list] = {}

        def keep(name: str, output) -> None:
            feats.setdefault(name, []).append(output.clone() if isinstance(output, torch.Tensor) else output)

        hooks = [module.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: keep(n, o)) for n in taps]
        try:
            out = module(*args)
        finally:
            for h in hooks:
                h.remove()
        return out, feats

    @torch.no_grad()
    def _probe(self, taps: list[str]) -> tuple[dict[str, tuple[int, int, int]], int]:
        """Render two samples, then the first alone: checks the latent and class input fit,
        the output is square RGB, each tap runs once and gives a ``[B, C, h, w]`` map, and
        samples do not depend on the batch. Returns the taps' shapes in forward order and
        the resolution."""
        cfg, module = self.cfg, self.module
        device = next(iter(module.state_dict().values()), torch.zeros(())).device
        z = torch.from_numpy(self.draw_latents([0, 1]))
        c = torch.tensor([0, min(1, cfg.num_classes - 1)] if cfg.num_classes else [-1, -1])
        classes = f" and classes as {cfg.class_input} of {cfg.num_classes}" if cfg.num_classes else ""
        runs = []
        for zb, cb in ((z, c), (z[:1], c[:1])):
            try:
                out, feats = self._forward(module, zb.to(device), cb.to(device), taps)
            except Exception as e:  # a misfitting latent fails inside the user's forward
                raise ValueError(f"{cfg.class_path} does not take latents of shape {[len(zb), *cfg.latent_shape]}"
                                 f"{classes} ({_one_line(e)})") from None
            runs.append((out, feats))
        out, feats = runs[0]
        if not (isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[1] == 3 and out.shape[2] == out.shape[3]):
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"{cfg.class_path} forward returned {got}; expected images [B, 3, H, H]")
        problems = [f"{n} did not run" for n in taps if n not in feats]
        problems += [f"{n} ran {len(v)} times" for n, v in feats.items() if len(v) != 1]
        problems += [f"{n} gave {list(v[0].shape) if isinstance(v[0], torch.Tensor) else type(v[0]).__name__}"
                     for n, v in feats.items() if len(v) == 1
                     and not (isinstance(v[0], torch.Tensor) and v[0].ndim == 4 and len(v[0]) == 2)]
        if problems:
            raise ValueError(f"taps of {cfg.class_path} must each run once per forward and give a feature map "
                             f"[B, C, h, w]: {_few(problems, 6)}")
        alone, alone_feats = runs[1]
        pairs = [("the image", out[:1], alone)] + [(n, feats[n][0][:1], alone_feats[n][0]) for n in feats]
        for what, batched, single in pairs:
            diff = (batched.float() - single.float()).abs().max().item()
            if diff > BATCH_TOLERANCE * max(1.0, batched.float().abs().max().item()):
                raise ValueError(f"{cfg.class_path}: {what} of a sample differs by {diff:.3g} between a batch of 2 and "
                                 "alone; samples must depend on their latent only (batch statistics such as "
                                 "BatchNorm in train mode, or random noise in forward, are not supported)")
        return {n: tuple(int(s) for s in v[0].shape[1:]) for n, v in feats.items()}, int(out.shape[-1])

    def _class_embedding(self, module: nn.Module) -> torch.Tensor | None:
        cfg = self.cfg
        if not cfg.num_classes:
            return None
        if cfg.class_embedding is None:
            return torch.eye(cfg.num_classes)
        t = module.state_dict().get(cfg.class_embedding)
        if t is None or t.ndim != 2 or t.shape[0] != cfg.num_classes:
            got = "no such tensor" if t is None else f"shape {list(t.shape)}"
            raise ValueError(f"class_embedding {cfg.class_embedding!r} of {cfg.class_path}: {got}, expected "
                             f"[{cfg.num_classes}, d]")
        return t.detach()


def read_torch_module(path: Path, generator: dict) -> RawCheckpoint:
    """A user's state dict (``.safetensors`` or a weights-only ``.pt``/``.pth``) with the
    ``generator`` spec of its checkpoint entry. ``key`` picks the state dict inside the
    file: an entry of the saved dict (``netG_state_dict``) or a name prefix (``module.``)."""
    spec = dict(generator)
    key = spec.pop("key", None)
    if is_safetensors(path):
        from safetensors.torch import load_file

        try:
            obj, source = load_file(str(path)), "safetensors-state-dict"
        except Exception as e:
            raise CheckpointError(f"{path}: corrupt safetensors file ({_one_line(e)})") from None
    elif is_torch_file(path):
        try:
            obj, source = torch_load(path), "torch-state-dict"
        except CheckpointError as e:
            raise CheckpointError(f"{str(e).splitlines()[0]} (save the generator's state_dict(), not the "
                                  "module: files are read weights-only)") from None
    else:
        raise CheckpointError(f"{path}: neither safetensors nor a torch file (generator weights must be a state dict)")
    if key is not None:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
        else:
            obj = {k[len(key) + 1:]: v for k, v in obj.items() if isinstance(k, str) and k.startswith(f"{key}.")}
            if not obj:
                raise CheckpointError(f"{path}: no key {key!r} (neither an entry nor a name prefix)")
    loose = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if loose:
        raise CheckpointError(f"{path}: entries {_few(loose)} are not tensors; set `key` to the state dict "
                              f"inside the file (keys: {_few(sorted(map(str, obj)))})")
    return RawCheckpoint(ARCH, spec, obj, source, {"key": key} if key is not None else {})


__all__ = ["TorchModuleBackend", "TorchModuleConfig", "import_class", "package_version", "read_torch_module",
           "resolve_taps"]
