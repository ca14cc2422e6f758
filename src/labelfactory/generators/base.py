"""The one interface every generator backend offers.

A backend turns seeds into latents, latents (and classes) into images, and
exposes the named feature maps it taps, each at its native resolution. Samples
are addressed by ``(generator hash, seed, class)``: the hash is a digest of the
architecture and weights, independent of the file format they came in.
"""

from __future__ import annotations

import abc
import hashlib
import json
from dataclasses import dataclass
from typing import ClassVar, Iterator, Sequence

import numpy as np
import torch

from labelfactory.core.registry import Registry

GENERATORS: Registry[type["GeneratorBackend"]] = Registry("generator backend")

UNCONDITIONAL = -1  # the class recorded for samples of unconditional generators


@dataclass
class Synthesis:
    """A batch from a generator: raw images ``[B,3,H,W]`` (range about [-1, 1])
    and ``{layer: [B,C,h,w]}`` features (empty unless asked for)."""

    images: torch.Tensor
    features: dict[str, torch.Tensor]


def content_hash(arch: str, arch_config: dict, tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over architecture, config and every tensor (sorted by name)."""
    h = hashlib.sha256()
    h.update(json.dumps({"arch": arch, "arch_config": arch_config}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too
    return h.hexdigest()


def load_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str,
                shown: int = 6) -> torch.nn.Module:
    """Load ``tensors`` into ``module``, requiring exactly its keys and shapes; one line
    names the missing, unexpected and misshapen ones (``strict=False`` would hide them)."""
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    shapes = [f"{k} {list(tensors[k].shape)} (expected {list(v.shape)})"
              for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if missing or unexpected or shapes:
        def names(keys):
            return f"{keys[:shown]}{'...' if len(keys) > shown else ''}"

        wrong = f", wrong shape {names(shapes)}" if shapes else ""
        raise ValueError(f"{what} weights do not match the architecture: missing {names(missing)}, "
                         f"unexpected {names(unexpected)}{wrong}")
    module.load_state_dict(tensors, strict=True)
    return module


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """Raw generator output ``[B,3,H,W]`` in [-1, 1] → uint8 ``[B,H,W,3]``."""
    x = (images.detach().float().clamp(-1, 1) + 1) * 127.5
    return (x + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def sample_id(seed: int, cls: int) -> str:
    """Canonical id of a sample: ``s{seed:08d}``, or ``c{cls:04d}_s{seed:08d}`` for a class."""
    return f"s{int(seed):08d}" if int(cls) == UNCONDITIONAL else f"c{int(cls):04d}_s{int(seed):08d}"


class GeneratorBackend(abc.ABC):
    """A pretrained generator with feature taps."""

    arch: ClassVar[str]

    def __init__(self, module: torch.nn.Module, arch_config: dict, generator_hash: str | None = None):
        self.module = module.eval().requires_grad_(False)
        self.arch_config = arch_config
        self.generator_hash = generator_hash or content_hash(self.arch, arch_config, self.state_tensors())

    # -- construction ------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def from_tensors(cls, arch_config: dict, tensors: dict[str, torch.Tensor],
                     generator_hash: str | None = None) -> "GeneratorBackend":
        """Build from the canonical tensors and config (strict: every key must match)."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The canonical tensors (what a converted checkpoint stores)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}

    # -- properties --------------------------------------------------------------
    @property
    def z_dim(self) -> int:
        """Width of one latent z (every backend's module keeps it in ``cfg.z_dim``)."""
        return self.module.cfg.z_dim

    @property
    @abc.abstractmethod
    def resolution(self) -> int: ...

    @property
    def num_classes(self) -> int:
        """0 for unconditional generators."""
        return 0

    def class_embedding(self) -> torch.Tensor | None:
        """The ``[num_classes, d]`` class vectors the generator conditions on (None if it has none)."""
        return None

    def feature_shapes(self) -> dict[str, tuple[int, int, int]]:
        """``{layer: (C, h, w)}`` for every tapped layer, in generator order (the module's own)."""
        return self.module.feature_shapes()

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def to(self, device) -> "GeneratorBackend":
        self.module.to(device)
        return self

    # -- sampling ----------------------------------------------------------------
    def z_from_seeds(self, seeds: Sequence[int], truncation: float = 1.0) -> np.ndarray:
        """z ``[N, z_dim]`` float32: ``RandomState(seed).randn(z_dim)`` per seed, the
        convention of NVIDIA's ``generate.py``, so seeds mean the same there.

        ``truncation`` is for backends that truncate z itself (BigGAN); this
        default ignores it, as StyleGAN2 applies ψ in w space at synthesis."""
        return np.stack([np.random.RandomState(int(s)).randn(self.z_dim) for s in seeds]).astype(np.float32)

    def draw_latents(self, seeds: Sequence[int], classes: Sequence[int] | np.ndarray | None = None,
                     truncation: float = 1.0, sampling: dict | None = None) -> np.ndarray:
        """The latents of the samples ``(seed, class)``, as :meth:`synthesize` takes them.

        Here z depends on the seed alone (:meth:`z_from_seeds`); generators that draw
        latents per class from a prior (VQGAN) override this and take ``sampling`` options."""
        if sampling:
            raise ValueError(f"{self.arch} latents come from seeds alone; sampling options {sorted(sampling)} "
                             "are for generators with a prior over latents (VQGAN)")
        return self.z_from_seeds(seeds, truncation=truncation)

    @property
    def latent_dtype(self) -> np.dtype:
        """How latents are stored (float32 z here; VQGAN: int64 code indices)."""
        return np.dtype(np.float32)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The shape of one latent: ``(z_dim,)`` here (VQGAN: its ``(h, w)`` code grid)."""
        return (self.z_dim,)

    def check_latents(self, z) -> np.ndarray:
        """Validate latents ``[N, *latent_shape]``; returns what :meth:`synthesize` takes (float32 z here)."""
        z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"latents must have shape [N, {self.z_dim}], got {list(z.shape)}")
        return z

    def check_classes(self, classes: Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
        """Validate the class of each of ``n`` samples; returns int64 ``[n]``."""
        if self.num_classes == 0:
            if classes is not None and np.any(np.asarray(classes) != UNCONDITIONAL):
                raise ValueError(f"{self.arch} generator is unconditional; classes must be {UNCONDITIONAL} or absent")
            return np.full(n, UNCONDITIONAL, dtype=np.int64)
        if classes is None:
            raise ValueError(f"{self.arch} generator is class-conditional: give a class per sample")
        c = np.asarray(classes, dtype=np.int64).reshape(-1)
        if c.shape[0] != n or c.min() < 0 or c.max() >= self.num_classes:
            raise ValueError(f"need {n} classes in [0, {self.num_classes}), got {c.tolist()[:8]}...")
        return c

    @abc.abstractmethod
    def synthesize(self, z: torch.Tensor, classes: torch.Tensor | None = None, truncation: float = 1.0,
                   noise: str = "const", features: bool = True,
                   generator: torch.Generator | None = None) -> Synthesis:
        """Render latents. ``noise='const'`` re-renders a latent exactly."""

    def _batches(self, z: np.ndarray, classes, truncation: float, noise: str, batch_size: int,
                 noise_seed: int, features: bool) -> Iterator[Synthesis]:
        """Validated latents and classes → one :class:`Synthesis` per batch (no autograd)."""
        z = self.check_latents(z)
        cls = self.check_classes(classes, z.shape[0])
        g = torch.Generator(device=self.device).manual_seed(noise_seed)
        for i in range(0, len(z), batch_size):
            zb = torch.from_numpy(z[i : i + batch_size]).to(self.device)
            cb = None if self.num_classes == 0 else torch.from_numpy(cls[i : i + batch_size]).to(self.device)
            with torch.no_grad():
                out = self.synthesize(zb, cb, truncation, noise, features=features, generator=g)
            yield out

    def render(self, z: np.ndarray, classes=None, truncation: float = 1.0, noise: str = "const",
               batch_size: int = 16, noise_seed: int = 0) -> np.ndarray:
        """Raw float32 images ``[N,3,H,W]`` for latents ``z`` (numpy in, numpy out)."""
        out = [s.images.float().cpu() for s in self._batches(z, classes, truncation, noise, batch_size,
                                                             noise_seed, features=False)]
        return torch.cat(out).numpy()

    def render_features(self, z: np.ndarray, classes=None, truncation: float = 1.0,
                        layers: Sequence[str] | None = None, noise: str = "const", batch_size: int = 16,
                        noise_seed: int = 0) -> dict[str, np.ndarray]:
        """``{layer: float32 [N,C,h,w]}`` at native resolution, in generator order (all taps if
        ``layers`` is None), for latents ``z`` rendered exactly as :meth:`render` does."""
        names = list(self.feature_shapes())
        unknown = sorted(set(layers or ()) - set(names))
        if unknown:
            raise ValueError(f"unknown feature layers {unknown}; this generator taps {names}")
        names = [n for n in names if layers is None or n in layers]
        out: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for s in self._batches(z, classes, truncation, noise, batch_size, noise_seed, features=True):
            for n in names:
                out[n].append(s.features[n].float().cpu().numpy())
        return {n: np.concatenate(v) for n, v in out.items()}
