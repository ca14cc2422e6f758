"""BigDatasetGAN's feature interpreter: a small conv net fusing generator features coarse to fine.

As released (nv-tlabs/bigdatasetgan_code, ``models.py``: ``BigdatasetGANModel``,
``SegBlock``; ``train.py``): the taps are grouped by resolution (BigGAN-512:
8–32 px resized to 32, 64–128 px to 128, 256–512 px at 512), each group is
reduced by a bias-free 1×1 conv (128 / 64 / 32 channels), and the groups are
fused coarse to fine: bilinear upsampling, concatenation with the next group
and a residual block (BN-ReLU-conv3×3-BN-ReLU-conv3×3 plus the identity) whose
batch norms take their gain and bias from the class embedding (BigGAN's
``ccbn``, eps 1e-4); a BN-ReLU-conv3×3 head gives the logits (one channel,
``BCEWithLogitsLoss``). Its 3×3 convs and ccbn linears are BigGAN's
spectrally normalised layers (SN eps 1e-4); training is Adam 1e-3, batch 4,
5000 iterations, generator frozen.

Generalised here to any generator's taps: the distinct tap resolutions are
split into contiguous groups, one per entry of ``channels`` (as evenly as
possible, coarse groups first, which reproduces the release's split of
BigGAN-512; or at ``group_bounds``); unconditional generators get plain batch
norms; label sets of more than two classes get softmax logits; an ensemble of
members gives the probabilities the JS-divergence scoring needs. Each group's
1×1 reduction runs at every tap's native resolution before the upsampling:
both are linear, so this equals the release's upsample-then-reduce, and the
wide full-resolution feature volume is never built. With ``normalize`` every tap
channel is first standardised by its mean and standard deviation over the
annotated images' native maps (as for the MLP ensemble), in training and inference.
With ``extra_inputs`` the image's own RGB and/or its pixel coordinates (in [-1, 1], not
standardised) join the finest group's 1×1 reduction at the labels' resolution, which
that group then works at (so coarse taps still see every pixel of the image).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from labelfactory.core.divergence import divergence, run_status
from labelfactory.core.metrics import class_weights
from labelfactory.features import FeatureStore
from labelfactory.interpreters.base import (
    EXTRA_INPUTS,
    IMAGE,
    INTERPRETERS,
    Interpreter,
    Progress,
    TrainingData,
    channel_statistics,
    check_extra_inputs,
    check_tap_statistics,
    extra_input_maps,
    keep_finite_members,
    read_interpreter,
    run_record,
    standardise_maps,
    training_inputs,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_CURVE_POINTS = 50  # windows the per-member training curves are averaged over
_CCBN_EPS = 1e-4  # the release's ccbn eps; its head's BigGAN ``bn`` keeps the default 1e-5
_SN_EPS = 1e-4


@dataclass
class ConvInterpreterConfig:
    """Architecture and training of the conv interpreter ensemble.

    ``channels``: width of each resolution group's 1×1 reduction, coarse to
    fine (release: 128, 64, 32); ``group_bounds``: the largest resolution of
    every group but the last (release: 32, 128), or None to split the taps'
    resolutions evenly. Native-resolution features of up to ``cache_mb`` are
    held in memory, the rest read from the feature store per batch. ``amp``:
    training under autocast (float16) on CUDA; CPUs always train in float32.
    Inference runs in the ensemble's ``compute_dtype`` (``synthesis.precision``).
    ``normalize``: standardise every tap channel by its mean and standard deviation
    over the annotated images (the release feeds the taps raw). ``extra_inputs``:
    per-pixel inputs beside the taps, ``rgb`` and/or ``coords`` (release: none).
    """

    num_members: int = 3
    iterations: int = 5000
    batch_size: int = 4
    lr: float = 1e-3
    channels: tuple[int, ...] = (128, 64, 32)
    group_bounds: tuple[int, ...] | None = None
    spectral_norm: bool = True
    amp: bool = True
    cache_mb: float = 2048
    seed: int = 0
    class_balance: float = 0.0  # loss weight frequency**-class_balance per class (core.metrics.class_weights)
    normalize: bool = False
    extra_inputs: tuple[str, ...] = ()

    def __post_init__(self):
        self.extra_inputs = check_extra_inputs(self.extra_inputs)
        self.channels = tuple(self.channels)
        self.group_bounds = None if self.group_bounds is None else tuple(self.group_bounds)
        bad = [f"{k}={getattr(self, k)}" for k in ("num_members", "iterations", "batch_size")
               if getattr(self, k) < 1]
        if not 0 <= self.class_balance <= 1:
            bad.append(f"class_balance={self.class_balance} (0..1)")
        if not self.lr > 0:
            bad.append(f"lr={self.lr}")
        if not self.channels or any(c < 1 for c in self.channels):
            bad.append(f"channels={list(self.channels)} (need one or more positive widths)")
        b = self.group_bounds
        if b is not None and (len(b) != len(self.channels) - 1 or any(x < 1 for x in b)
                              or any(x >= y for x, y in zip(b, b[1:]))):
            bad.append(f"group_bounds={list(b)} (need {len(self.channels) - 1} increasing positive resolutions, "
                       f"one fewer than channels)")
        if self.cache_mb < 0:
            bad.append(f"cache_mb={self.cache_mb}")
        if bad:
            raise ValueError("invalid conv interpreter config: " + ", ".join(bad))


@dataclass
class ConvMemberHistory:
    """How one member was trained: its seed, the iterations it ran and its training loss and
    pixel accuracy, averaged over consecutive windows of ``window`` iterations (``diverged``: the
    :func:`~labelfactory.core.divergence.divergence` record of a loss that turned non-finite,
    else None)."""

    seed: int
    iterations: int = 0
    window: int = 1
    loss_curve: list[float] = field(default_factory=list)
    accuracy_curve: list[float] = field(default_factory=list)
    diverged: dict | None = None


# -- architecture ------------------------------------------------------------------
def resolution_groups(sizes: Sequence[tuple[int, int]], num_groups: int,
                      bounds: Sequence[int] | None = None) -> list[list[int]]:
    """Tap indices of each resolution group, coarse to fine: ``num_groups`` lists, some
    empty when the taps have fewer distinct resolutions (or none between two bounds).

    Without ``bounds`` the distinct sizes are split as evenly as possible, coarser
    groups taking the remainder (BigGAN-512's 7 sizes: 3 / 2 / 2, as released);
    with them, a tap of resolution ``max(h, w)`` joins the first group whose bound
    it does not exceed, the last group taking the rest."""
    distinct = sorted(set(sizes), key=lambda s: (s[0] * s[1], s))
    if bounds is None:
        chunks = np.array_split(np.arange(len(distinct)), num_groups)
        group_of = {distinct[i]: g for g, c in enumerate(chunks) for i in c}
    else:
        group_of = {s: sum(max(s) > b for b in bounds) for s in distinct}
    return [[i for i, s in enumerate(sizes) if group_of[s] == g] for g in range(num_groups)]


class _SpectralNorm(nn.Module):
    """Parametrization ``W / σ(W)``, σ from one power iteration per training forward
    (BigGAN's SN layers), computed in float32 even under autocast."""

    def __init__(self, weight: torch.Tensor, eps: float = _SN_EPS):
        super().__init__()
        self.eps = eps
        m = weight.detach().flatten(1)
        u = F.normalize(torch.randn(m.shape[0]), dim=0, eps=eps)
        self.register_buffer("u", u)
        self.register_buffer("v", F.normalize(m.T @ u, dim=0, eps=eps))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(weight.device.type, enabled=False):
            m = weight.float().flatten(1)
            if self.training:
                with torch.no_grad():
                    self.v.copy_(F.normalize(m.T @ self.u, dim=0, eps=self.eps))
                    self.u.copy_(F.normalize(m @ self.v, dim=0, eps=self.eps))
            return weight / (self.u.clone() @ m @ self.v.clone())


def _sn(module: nn.Module, enabled: bool) -> nn.Module:
    """``module`` with a spectrally normalised weight when ``enabled`` (the release's SN layers)."""
    if enabled:
        parametrize.register_parametrization(module, "weight", _SpectralNorm(module.weight))
    return module


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose gain ``1 + W_g e`` and bias ``W_b e + b`` are linear in a class
    embedding ``e`` (BigGAN's ``ccbn``); a plain affine BatchNorm when ``cond_dim`` is None."""

    def __init__(self, channels: int, cond_dim: int | None, spectral_norm: bool = True):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=_CCBN_EPS, affine=cond_dim is None)
        self.gain = None if cond_dim is None else _sn(nn.Linear(cond_dim, channels), spectral_norm)
        self.bias = None if cond_dim is None else _sn(nn.Linear(cond_dim, channels), spectral_norm)

    def forward(self, x: torch.Tensor, e: torch.Tensor | None) -> torch.Tensor:
        x = self.bn(x)
        if self.gain is None:
            return x
        return x * (1 + self.gain(e))[:, :, None, None] + self.bias(e)[:, :, None, None]


class FusionBlock(nn.Module):
    """The release's ``SegBlock`` (without up-sampling, equal widths): a residual
    BN-ReLU-conv3×3-BN-ReLU-conv3×3 with class-conditional batch norms."""

    def __init__(self, channels: int, cond_dim: int | None, spectral_norm: bool = True):
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(channels, cond_dim, spectral_norm)
        self.conv1 = _sn(nn.Conv2d(channels, channels, 3, padding=1), spectral_norm)
        self.bn2 = ConditionalBatchNorm2d(channels, cond_dim, spectral_norm)
        self.conv2 = _sn(nn.Conv2d(channels, channels, 3, padding=1), spectral_norm)

    def forward(self, x: torch.Tensor, e: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.relu(self.bn1(x, e)))
        return x + self.conv2(F.relu(self.bn2(h, e)))


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resizing as released (``align_corners=False``); a no-op at the same size."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="bilinear",
                                                                       align_corners=False)


class ConvInterpreter(nn.Module):
    """One member: generator feature maps (in ``layer_shapes`` order), an optional
    class embedding and the extra inputs of ``cfg.extra_inputs`` ``[B, E, R, R]`` →
    per-pixel logits ``[B, out_dim, R, R]``."""

    def __init__(self, layer_shapes: Sequence[tuple[int, int, int]], out_dim: int, resolution: int,
                 cfg: ConvInterpreterConfig, cond_dim: int | None = None):
        super().__init__()
        self.sizes = [(int(h), int(w)) for _, h, w in layer_shapes]
        self.layer_dims = [int(c) for c, _, _ in layer_shapes]
        grouped = resolution_groups(self.sizes, len(cfg.channels), cfg.group_bounds)
        kept = [(g, width) for g, width in zip(grouped, cfg.channels) if g]
        self.groups = [g for g, _ in kept]
        self.targets = [max((self.sizes[i] for i in g), key=lambda s: s[0] * s[1]) for g in self.groups]
        self.resolution = int(resolution)
        self.extra_dim = sum(EXTRA_INPUTS[n] for n in cfg.extra_inputs)  # joins the finest group at R x R
        if self.extra_dim:
            self.targets[-1] = max(self.targets[-1], (self.resolution, self.resolution), key=lambda s: s[0] * s[1])
        widths = [width for _, width in kept]
        inputs = [sum(self.layer_dims[i] for i in g) for g in self.groups]
        inputs[-1] += self.extra_dim
        self.reduce = nn.ModuleList(nn.Conv2d(c, width, 1, bias=False) for c, width in zip(inputs, widths))
        fused = np.cumsum(widths).tolist()  # one block after every concatenation (or on a lone group)
        self.blocks = nn.ModuleList(FusionBlock(c, cond_dim, cfg.spectral_norm) for c in fused[1:] or fused)
        self.head = nn.Sequential(nn.BatchNorm2d(fused[-1]), nn.ReLU(),
                                  _sn(nn.Conv2d(fused[-1], out_dim, 3, padding=1), cfg.spectral_norm))

    def _reduced(self, g: int, maps: Sequence[torch.Tensor], extra: torch.Tensor | None = None) -> torch.Tensor:
        """Group ``g``'s 1×1 reduction of its taps (and of the ``extra`` inputs, in the finest group)
        upsampled to the group's size, computed at native sizes."""
        weight, offset, by_size = self.reduce[g].weight, 0, {}
        for i in self.groups[g]:
            y = F.conv2d(maps[i].float(), weight[:, offset : offset + self.layer_dims[i]])
            offset += self.layer_dims[i]
            by_size[self.sizes[i]] = by_size[self.sizes[i]] + y if self.sizes[i] in by_size else y
        if self.extra_dim and g == len(self.groups) - 1:
            if extra is None or extra.shape[1] != self.extra_dim:
                raise ValueError(f"this member reads {self.extra_dim} extra input channels, got "
                                 f"{None if extra is None else list(extra.shape)}")
            y, size = F.conv2d(extra.float(), weight[:, offset:]), (self.resolution, self.resolution)
            by_size[size] = by_size[size] + y if size in by_size else y
        return sum(_resize(y, self.targets[g]) for y in by_size.values())

    def forward(self, maps: Sequence[torch.Tensor], e: torch.Tensor | None = None,
                extra: torch.Tensor | None = None) -> torch.Tensor:
        h = self._reduced(0, maps, extra)
        if len(self.groups) == 1:
            h = self.blocks[0](h, e)
        for g in range(1, len(self.groups)):
            h = _resize(h, self.targets[g])
            h = self.blocks[g - 1](torch.cat([h, self._reduced(g, maps, extra)], 1), e)
        return _resize(self.head(h), (self.resolution, self.resolution))  # if the taps stop below the image size


def build_member(layer_shapes: Sequence[tuple[int, int, int]], num_classes: int, resolution: int,
                 cfg: ConvInterpreterConfig, cond_dim: int | None = None, seed: int | None = None) -> ConvInterpreter:
    """A member for ``num_classes`` labels (one logit when binary); with a ``seed``, its
    PyTorch-default initialisation (as released) is drawn from that seed."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return ConvInterpreter(layer_shapes, 1 if num_classes == 2 else num_classes, resolution, cfg, cond_dim)


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``[B, C, R, R]``: ``[1 - p, p]`` from one binary logit, else softmax."""
    logits = logits.float()
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], 1)
    return logits.softmax(1)


def pixel_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, weight: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, int, int]:
    """Mean loss over the annotated pixels (BCE-with-logits or cross-entropy; with ``weight``,
    the mean weighted by each pixel's class weight), and the number of them predicted right
    and annotated."""
    logits, valid = logits.float(), target != ignore_index
    if logits.shape[1] == 1:
        per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], (target == 1).float(), reduction="none")
        pred = (logits[:, 0] > 0).long()
    else:
        per_pixel = F.cross_entropy(logits, torch.where(valid, target, 0), reduction="none")
        pred = logits.argmax(1)
    n = int(valid.sum())
    if weight is None:
        loss = (per_pixel * valid).sum() / max(n, 1)
    else:
        w = weight.to(per_pixel.device)[torch.where(valid, target, 0)] * valid
        loss = (per_pixel * w).sum() / w.sum().clamp_min(1e-12)
    return loss, int(((pred == target) & valid).sum()), n


# -- training ----------------------------------------------------------------------
class _NativeMaps:
    """Batches of the annotated images' native-resolution float16 maps, held in memory
    for as many images as fit in ``cache_mb`` and read from the store for the rest;
    float32, standardised per channel, once :meth:`standardise` has been called."""

    def __init__(self, store: FeatureStore, ids: Sequence[str], layers: Sequence[str], cache_mb: float,
                 device: torch.device):
        self.store, self.ids, self.layers, self.device = store, list(ids), list(layers), device
        per_image = sum(2 * math.prod(store.shapes[l]) for l in layers)
        self.cached = min(len(ids), int(cache_mb * 2**20 // per_image))
        self.cache = {l: torch.empty((self.cached, *store.shapes[l]), dtype=torch.float16, device=device)
                      for l in layers}
        for n in range(self.cached):
            for l, a in store.read(self.ids[n], self.layers).items():
                self.cache[l][n] = torch.from_numpy(a)
        if self.cached < len(ids):
            log.info("holding the features of %d of %d images in memory (cache_mb); reading the rest per batch",
                     self.cached, len(ids))
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    def image(self, n: int) -> list[torch.Tensor]:
        """``[C, h, w]`` float16 maps of image ``n`` as stored, one per layer."""
        if n < self.cached:
            return [self.cache[l][n] for l in self.layers]
        a = self.store.read(self.ids[n], self.layers)
        return [torch.from_numpy(a[l]).to(self.device) for l in self.layers]

    def standardise(self) -> tuple[torch.Tensor, torch.Tensor]:
        """From now on, standardise every channel by its mean and standard deviation over all
        the images' native maps (:func:`~labelfactory.interpreters.mlp.channel_statistics`); returns them."""
        self.mean, self.std = channel_statistics(
            [x.flatten(1) for x in self.image(n)] for n in range(len(self.ids)))
        return self.mean, self.std

    def batch(self, index: torch.Tensor) -> list[torch.Tensor]:
        """``[B, C, h, w]`` maps of the images ``index``, one per layer: float16 as stored, or
        float32 standardised after :meth:`standardise`."""
        maps = [torch.stack(maps) for maps in zip(*(self.image(n) for n in index.tolist()))]
        return maps if self.mean is None else standardise_maps(maps, self.mean, self.std)


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Image indices in full batches, reshuffled every epoch (the release's shuffling, drop-last loader)."""
    while True:
        order = torch.randperm(n, generator=gen)
        for b in range(n // batch_size):
            yield order[b * batch_size : (b + 1) * batch_size]


def _fit_member(net: ConvInterpreter, maps: _NativeMaps, masks: np.ndarray, emb: torch.Tensor | None,
                cfg: ConvInterpreterConfig, ignore_index: int, gen: torch.Generator, device: torch.device,
                hist: ConvMemberHistory, report: Progress | None, member: int,
                weight: torch.Tensor | None = None, extra: torch.Tensor | None = None) -> None:
    """Train one member for ``cfg.iterations`` batches (the loss weighted per class by
    ``weight``, if given; ``extra``: every image's extra inputs ``[N, E, R, R]``); leaves it in eval mode.
    A non-finite loss stops it before its update, recorded in ``hist.diverged``."""
    amp = cfg.amp and device.type == "cuda"
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    hist.window = max(1, math.ceil(cfg.iterations / _CURVE_POINTS))
    loss_sum, correct, annotated, last = 0.0, 0, 0, []
    net.train()
    for it, index in zip(range(1, cfg.iterations + 1), _batches(len(masks), min(cfg.batch_size, len(masks)), gen)):
        target = torch.from_numpy(masks[index.numpy()]).to(device).long()
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = net(maps.batch(index), None if emb is None else emb[index.to(emb.device)],
                         None if extra is None else extra[index.to(extra.device)])
        loss, right, n = pixel_loss(logits, target, ignore_index, weight)
        value = loss.item()
        if not math.isfinite(value):
            hist.diverged = divergence(it - 1, last)
            break
        last = [value]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        loss_sum, correct, annotated = loss_sum + value, correct + right, annotated + n
        if it % hist.window == 0 or it == cfg.iterations:
            steps = it - hist.window * len(hist.loss_curve)
            hist.loss_curve.append(loss_sum / steps)
            hist.accuracy_curve.append(correct / max(annotated, 1))
            loss_sum, correct, annotated = 0.0, 0, 0
            if report is not None:
                report(member, it, hist.loss_curve[-1], hist.accuracy_curve[-1])
    hist.iterations = cfg.iterations if hist.diverged is None else hist.diverged["step"]
    net.eval()


def _check_conditioning(classes: np.ndarray | Sequence[int] | None, class_embedding: torch.Tensor | None,
                        n: int) -> tuple[np.ndarray | None, torch.Tensor | None]:
    """Per-image classes and the generator's class-embedding table, checked against each other."""
    if class_embedding is None:
        if classes is not None:
            raise ValueError("classes given without the generator's class_embedding to condition on")
        return None, None
    emb = torch.as_tensor(class_embedding).detach().float()
    if emb.ndim != 2:
        raise ValueError(f"class_embedding must be [n_classes, dim], got shape {list(emb.shape)}")
    if classes is None:
        raise ValueError("a class-conditional interpreter needs the class of every annotated image")
    cls = np.asarray(classes)
    if cls.shape != (n,) or not np.issubdtype(cls.dtype, np.integer):
        raise ValueError(f"classes must be {n} integers (one per annotated image), got {cls.dtype} {list(cls.shape)}")
    bad = np.unique(cls[(cls < 0) | (cls >= len(emb))])
    if bad.size:
        raise ValueError(f"classes {bad.tolist()} are outside the embedding's 0..{len(emb) - 1}")
    return cls.astype(np.int64), emb


def train_conv_ensemble(data: TrainingData, cfg: ConvInterpreterConfig | None = None,
                        device: torch.device | str = "cpu", progress: Progress | None = None,
                        on_divergence: str = "record") -> "ConvEnsemble":
    """Train BigDatasetGAN's interpreter ensemble on annotated generated images.

    ``data`` as for :func:`~labelfactory.interpreters.mlp.train_mlp_ensemble`; for a
    class-conditional generator also its ``classes`` (one per annotated image) and
    ``class_embedding``, the generator's ``[n_classes, d]`` embedding table, which
    the ensemble keeps; for ``cfg.extra_inputs`` ``rgb``, its ``images``.
    ``progress(member, iteration, loss, accuracy)`` is called at every point of the
    training curves. A member whose loss turns non-finite stops there and is dropped, or, if
    all do, the ensemble is recorded as diverged
    (:func:`~labelfactory.interpreters.base.keep_finite_members`); under
    ``on_divergence: fail`` the first raises :class:`~labelfactory.core.divergence.Diverged`.
    """
    cfg = cfg or ConvInterpreterConfig()
    store, masks, num_classes, ignore_index = data.store, data.masks, data.num_classes, data.ignore_index
    ids, layers, label_names = data.ids, data.layers, data.label_names
    if not (masks != ignore_index).any():
        raise ValueError("every mask pixel is ignore_index: nothing to train on")
    cls, emb = _check_conditioning(data.classes, data.class_embedding, len(masks))
    device = torch.device(device)
    maps = _NativeMaps(store, ids, layers, cfg.cache_mb, device)
    mean = std = None
    if cfg.normalize:
        mean, std = maps.standardise()
        log.info("standardising %d tap channels (std from %.3g to %.3g)", len(mean), std.min(), std.max())
    extra = training_inputs(data, cfg.extra_inputs, device)
    emb_table = None if emb is None else emb.to(device)
    per_image = None if cls is None else emb_table[torch.from_numpy(cls).to(device)]
    shapes = [store.shapes[l] for l in layers]
    seeds = [int(s) for s in np.random.SeedSequence(cfg.seed).generate_state(cfg.num_members)]
    annotated = torch.from_numpy(masks[masks != ignore_index].astype(np.int64))
    weight = class_weights(annotated, max(num_classes, 2), cfg.class_balance)
    log.info("training %d conv members on %d images, %d layers, %d classes, %s", cfg.num_members, len(masks),
             len(layers), num_classes, "class-conditional" if emb is not None else "unconditional")
    members, history = [], []
    for m, seed in enumerate(seeds):
        net = build_member(shapes, num_classes, store.resolution, cfg, None if emb is None else emb.shape[1],
                           seed).to(device)
        hist = ConvMemberHistory(seed=seed)
        _fit_member(net, maps, masks, per_image, cfg, ignore_index, torch.Generator().manual_seed(seed), device,
                    hist, progress, m, weight, extra)
        if run_status(hist.diverged, on_divergence, f"interpreter member {m}")["status"] == "ok":
            log.info("member %d: %d iterations, final training loss %.4f, pixel accuracy %.3f",
                     m, hist.iterations, hist.loss_curve[-1], hist.accuracy_curve[-1])
        members.append(net)
        history.append(hist)
    members, history, run = keep_finite_members(members, history, device)
    return ConvEnsemble(members, cfg, layers, shapes, num_classes, store.resolution, store.generator_hash,
                        history, label_names, emb_table, mean, std, run)


# -- the trained ensemble ----------------------------------------------------------
@INTERPRETERS.register("conv")
class ConvEnsemble(Interpreter):
    """Trained conv interpreters with the class embedding they condition on and what
    they need to be applied and audited."""

    name: ClassVar[str] = "conv"
    config_class: ClassVar[type] = ConvInterpreterConfig
    format_version: ClassVar[int] = FORMAT_VERSION
    class_conditional: ClassVar[bool] = True  # fit() takes the samples' classes and the class embedding

    def __init__(self, members: Sequence[ConvInterpreter], cfg: ConvInterpreterConfig, layers: Sequence[str],
                 layer_shapes: Sequence[tuple[int, int, int]], num_classes: int, resolution: int,
                 generator_hash: str, history: Sequence[ConvMemberHistory],
                 label_names: Sequence[str] | None = None, class_embedding: torch.Tensor | None = None,
                 tap_mean: torch.Tensor | None = None, tap_std: torch.Tensor | None = None,
                 run: Mapping | None = None):
        super().__init__()
        if len(layers) != len(layer_shapes) or len(members) != len(history):
            raise ValueError("need one shape per layer and one history per member")
        check_tap_statistics(cfg.normalize, sum(int(s[0]) for s in layer_shapes), tap_mean, tap_std)
        self.members = nn.ModuleList(members)
        self.cfg = cfg
        self.layers = list(layers)
        self.layer_shapes = [tuple(int(v) for v in s) for s in layer_shapes]
        self.num_classes = int(num_classes)
        self.resolution = int(resolution)
        self.generator_hash = generator_hash
        self.history = list(history)
        self.label_names = None if label_names is None else list(label_names)
        self.run = {"status": "ok", **(run or {})}
        self.compute_dtype = torch.float32  # of inference (autocast); see interpreters.PRECISIONS
        self.register_buffer("class_embedding", class_embedding)
        # per-channel standardisation of the taps (cfg.normalize); None (not in the state dict) without
        self.register_buffer("tap_mean", tap_mean)
        self.register_buffer("tap_std", tap_std)

    fit = staticmethod(train_conv_ensemble)

    @property
    def conditional(self) -> bool:
        return self.class_embedding is not None

    @property
    def extra_inputs(self) -> tuple[str, ...]:
        return self.cfg.extra_inputs

    def _maps(self, features: Mapping[str, torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        missing = [l for l in self.layers if l not in features]
        if missing:
            raise KeyError(f"features lack layers {missing} the interpreter was trained on")
        maps = [features[l].to(device) for l in self.layers]
        for l, s, x in zip(self.layers, self.layer_shapes, maps):
            if x.ndim != 4 or tuple(x.shape[1:]) != s or x.shape[0] != maps[0].shape[0]:
                raise ValueError(f"layer {l}: expected [B, {', '.join(map(str, s))}], got {list(x.shape)}")
        return maps if self.tap_mean is None else standardise_maps(maps, self.tap_mean, self.tap_std)

    def _embedding(self, classes: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if not self.conditional:
            return None
        if classes is None:
            raise ValueError("this interpreter is class-conditional: give the class of every sample")
        classes = torch.as_tensor(classes, device=self.class_embedding.device).long().reshape(-1)
        if len(classes) != batch or ((classes < 0) | (classes >= len(self.class_embedding))).any():
            raise ValueError(f"need {batch} classes in 0..{len(self.class_embedding) - 1}, got {classes.tolist()}")
        return self.class_embedding[classes]

    @torch.no_grad()
    def member_probabilities(self, features: Mapping[str, torch.Tensor], classes: torch.Tensor | None = None
                             ) -> torch.Tensor:
        """Probabilities ``[M, B, C, R, R]`` of every member for generator features
        ``{layer: [B, C_l, h, w]}`` (and the image under ``IMAGE`` for the ``rgb`` input) and,
        if class-conditional, the samples' ``classes`` ``[B]`` (ignored otherwise). Switches the ensemble to eval mode (running BN statistics)."""
        self.eval()
        device = next(self.parameters()).device
        maps = self._maps(features, device)
        e = self._embedding(classes, maps[0].shape[0])
        extra = extra_input_maps(self.extra_inputs, maps[0].shape[0], self.resolution, features.get(IMAGE), device)
        dtype = self.compute_dtype
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            return torch.stack([_probabilities(member(maps, e, extra)) for member in self.members])

    def metadata(self) -> dict:
        """What the JSON sidecar records."""
        return {
            "interpreter": self.name, "format_version": self.format_version, "config": asdict(self.cfg),
            "layers": self.layers, "layer_shapes": [list(s) for s in self.layer_shapes],
            "groups": [[self.layers[i] for i in g] for g in self.members[0].groups],
            "num_classes": self.num_classes, "label_names": self.label_names, "resolution": self.resolution,
            "generator_hash": self.generator_hash,
            "class_embedding_shape": None if not self.conditional else list(self.class_embedding.shape),
            "member_seeds": [h.seed for h in self.history], "history": [asdict(h) for h in self.history],
            **self.run,
        }

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "ConvEnsemble":
        """Read what :meth:`save` wrote; the ensemble comes back in eval mode."""
        meta, weights = read_interpreter(path, cls.name, cls.format_version)
        cfg = ConvInterpreterConfig(**meta["config"])
        shapes = [tuple(s) for s in meta["layer_shapes"]]
        emb_shape = meta["class_embedding_shape"]
        history = [ConvMemberHistory(**h) for h in meta["history"]]
        members = [build_member(shapes, meta["num_classes"], meta["resolution"], cfg,
                                None if emb_shape is None else emb_shape[1]) for _ in history]
        dim = sum(s[0] for s in shapes)
        stats = (torch.empty(dim), torch.empty(dim)) if cfg.normalize else (None, None)
        ens = cls(members, cfg, meta["layers"], shapes, meta["num_classes"], meta["resolution"],
                  meta["generator_hash"], history, meta["label_names"],
                  None if emb_shape is None else torch.empty(emb_shape), *stats, run_record(meta))
        ens.load_state_dict(weights)
        return ens.to(device).eval()
