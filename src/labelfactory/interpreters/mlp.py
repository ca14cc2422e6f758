"""DatasetGAN's style interpreter: an ensemble of per-pixel MLP classifiers.

Each member classifies a pixel from the concatenation of the chosen generator
feature maps, bilinearly upsampled to the image resolution (as DatasetGAN's
``nn.Upsample``, ``align_corners=False``). That ``[pixels, D]`` volume (85 GB in
float32 for 16 images at 512² with D = 5056) is never materialised:

- training keeps only the native-resolution maps (float16, as stored) and
  computes the features of each sampled pixel from its four bilinear source
  neighbours per map (:class:`PixelFeatures`);
- inference applies each member's first Linear to every map at its native
  resolution (a 1×1 conv with that layer's slice of the weight) and upsamples
  the narrow result. Upsampling and the first layer are both linear, so this is
  exact; the rest of the MLP (ReLU, BatchNorm in eval mode, ...) runs per pixel.
  The fast path does this for all members at once (their first layers as one
  matrix, later layers as batched matmuls with BatchNorm folded in), one tile of
  output rows at a time, upsampling with 2-tap stencils (or, for maps at most
  ``_DENSE_COLUMNS`` wide, a matmul along columns): bounded work per output
  pixel, where the dense ``[R, h]`` matrices of the reference path cost O(h).

With ``normalize``, every tap channel is standardised by its mean and standard
deviation over the annotated images' native maps (:func:`channel_statistics`,
kept as the ensemble's ``tap_mean`` / ``tap_std`` buffers): training standardises
the gathered pixel features, inference the native maps (:func:`standardise_maps`)
before both paths read them. The map is affine per channel and bilinear weights
sum to one, so standardising before or after the upsampling is the same.

With ``extra_inputs`` every pixel also gets the image's own RGB and/or its coordinates
(:func:`~labelfactory.interpreters.base.extra_input_maps`, in [-1, 1], never standardised):
extra columns of the gathered training features, and extra full-resolution maps at inference.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labelfactory.core.divergence import divergence, run_status
from labelfactory.core.metrics import class_weights
from labelfactory.features import FeatureStore
from labelfactory.interpreters.base import (
    EXTRA_INPUTS,
    IMAGE,
    INTERPRETERS,
    STD_FLOOR,
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
_EVAL_CHUNK = 8192  # held-out pixels per forward pass
_GATHER_CHUNK = 1024  # held-out pixels per feature gather (its temporaries are 4 × this × the widest group)
_TILE_PIXELS = 2048  # output pixels per fused inference pass (bounds its [members · w1, pixels] tile)
_DENSE_COLUMNS = 32  # maps up to this wide upsample columns by a dense matmul (2·w flops per output, at
# GEMM speed); wider ones by 1-D F.interpolate (memory-bound, constant per output): measured crossover on CPU


@dataclass
class MLPEnsembleConfig:
    """Hyperparameters of the ensemble and its training.

    Members, optimiser, batch size, epoch cap and patience follow DatasetGAN's
    release (which counts patience over training-loss checks). Here the
    held-out pixels are scored every ``eval_every`` batches; a member stops when
    ``patience`` evaluations in a row bring no lower held-out loss, after
    ``max_epochs`` passes over its training pixels, or after ``max_batches``.
    ``normalize``: standardise every tap channel by its mean and standard
    deviation over the annotated images (DatasetGAN feeds the taps raw). ``extra_inputs``:
    per-pixel inputs beside the taps, ``rgb`` and/or ``coords`` (DatasetGAN: none).
    """

    num_members: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    patience: int = 50
    eval_every: int = 100
    max_epochs: int = 100
    max_batches: int | None = None
    holdout_pixels: int = 4096
    seed: int = 0
    upsample: str = "bilinear"
    align_corners: bool = False
    class_balance: float = 0.0  # loss weight frequency**-class_balance per class (core.metrics.class_weights)
    normalize: bool = False
    extra_inputs: tuple[str, ...] = ()

    def __post_init__(self):
        self.extra_inputs = check_extra_inputs(self.extra_inputs)
        positive = {k: getattr(self, k) for k in ("num_members", "patience", "eval_every", "max_epochs",
                                                   "holdout_pixels")}
        bad = [f"{k}={v}" for k, v in positive.items() if v < 1]
        if self.max_batches is not None and self.max_batches < 1:
            bad.append(f"max_batches={self.max_batches}")
        if self.batch_size < 2:  # BatchNorm1d needs two samples per batch
            bad.append(f"batch_size={self.batch_size} (need >= 2)")
        if not self.lr > 0:
            bad.append(f"lr={self.lr}")
        if self.upsample != "bilinear":
            bad.append(f"upsample={self.upsample!r} (only 'bilinear')")
        if not 0 <= self.class_balance <= 1:
            bad.append(f"class_balance={self.class_balance} (0..1)")
        if bad:
            raise ValueError("invalid MLP ensemble config: " + ", ".join(bad))


@dataclass
class MemberHistory:
    """How one member was trained: its seed, the pixels it saw, and where it stopped
    (``diverged``: the :func:`~labelfactory.core.divergence.divergence` record of a
    training loss that turned non-finite, else None)."""

    seed: int
    train_pixels: int
    holdout_pixels: int
    batches: int = 0
    best_batch: int = 0
    best_loss: float | None = None  # None until a held-out loss was finite (strict JSON in the sidecar)
    best_accuracy: float = 0.0
    stop_reason: str = ""  # early_stopping | max_batches | max_epochs | diverged
    diverged: dict | None = None


def build_member(dim: int, num_classes: int, generator: torch.Generator | None = None) -> nn.Sequential:
    """DatasetGAN's pixel classifier; with a ``generator``, initialised as released
    (Linear weights N(0, 0.02), biases 0, BatchNorm at its defaults)."""
    w1, w2 = (256, 128) if num_classes >= 32 else (128, 32)
    net = nn.Sequential(
        nn.Linear(dim, w1), nn.ReLU(), nn.BatchNorm1d(w1),
        nn.Linear(w1, w2), nn.ReLU(), nn.BatchNorm1d(w2),
        nn.Linear(w2, num_classes),
    )
    if generator is not None:
        with torch.no_grad():
            for m in net:
                if isinstance(m, nn.Linear):
                    m.weight.normal_(0.0, 0.02, generator=generator)
                    m.bias.zero_()
    return net


# -- per-channel standardisation of the taps --------------------------------------
# -- per-pixel features from native-resolution maps -------------------------------
def bilinear_taps(out_size: int, in_size: int, align_corners: bool = False,
                  device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """For each output index, its two source indices ``[out, 2]`` (long) and their
    weights ``[out, 2]``, computed as ``F.interpolate(mode='bilinear')`` does."""
    d = torch.arange(out_size, dtype=torch.float32, device=device)
    if align_corners:
        src = d * ((in_size - 1) / (out_size - 1)) if out_size > 1 else torch.zeros_like(d)
    else:
        src = ((d + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=in_size - 1)
    hi = (lo + 1).clamp(max=in_size - 1)
    frac = (src - lo).clamp(0, 1)
    return torch.stack([lo, hi], 1), torch.stack([1 - frac, frac], 1)


@dataclass
class _Group:
    """Consecutive layers of one spatial size, stored channels-last as ``[N*h*w, C]`` float16."""

    layers: list[str]
    h: int
    w: int
    offset: int
    channels: int
    maps: torch.Tensor | None = None
    rows: torch.Tensor | None = None  # [size, 2] source row offsets (index · w) of each output row
    row_weights: torch.Tensor | None = None
    cols: torch.Tensor | None = None  # [size, 2] source columns of each output column
    col_weights: torch.Tensor | None = None


class PixelFeatures:
    """Upsampled, concatenated features of chosen output pixels, from native-resolution maps.

    Holds the maps of ``num_images`` images as stored (float16) and returns, for
    flat pixel indices into ``[num_images, size, size]``, the float32 rows of the
    virtual ``[pixels, D]`` matrix: per map the bilinear combination of the
    pixel's four source neighbours, i.e. ``F.interpolate`` of the whole map read
    at that pixel. Memory is the native feature volume, whatever ``size`` is.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, int, int]], num_images: int, size: int,
                 align_corners: bool = False, device: torch.device | str = "cpu"):
        self.layers = list(shapes)
        self.shapes = {l: tuple(s) for l, s in shapes.items()}
        self.num_images, self.size = num_images, size
        self.groups: list[_Group] = []
        offset = 0
        for layer, (c, h, w) in self.shapes.items():
            g = self.groups[-1] if self.groups else None
            if g is not None and (g.h, g.w) == (h, w):
                g.layers.append(layer)
                g.channels += c
            else:
                self.groups.append(_Group([layer], h, w, offset, c))
            offset += c
        self.dim = offset
        for g in self.groups:
            g.maps = torch.empty(num_images * g.h * g.w, g.channels, dtype=torch.float16, device=device)
            rows, g.row_weights = bilinear_taps(size, g.h, align_corners, device)
            g.rows = rows * g.w
            g.cols, g.col_weights = bilinear_taps(size, g.w, align_corners, device)

    @classmethod
    def from_store(cls, store: FeatureStore, ids: Sequence[str], layers: Sequence[str],
                   align_corners: bool = False, device: torch.device | str = "cpu") -> "PixelFeatures":
        """Load the ``layers`` of images ``ids`` from a feature store, one image at a time."""
        feats = cls({l: store.shapes[l] for l in layers}, len(ids), store.resolution, align_corners, device)
        for n, image_id in enumerate(ids):
            feats.put(n, store.read(image_id, list(layers)))
        return feats

    def put(self, index: int, maps: Mapping[str, np.ndarray | torch.Tensor]) -> None:
        """Store image ``index``'s maps ``{layer: [C, h, w]}``."""
        for l in self.layers:
            if tuple(maps[l].shape) != self.shapes[l]:
                raise ValueError(f"layer {l}: expected shape {list(self.shapes[l])}, got {list(maps[l].shape)}")
        for g in self.groups:
            x = torch.cat([torch.as_tensor(maps[l]) for l in g.layers]).reshape(g.channels, g.h * g.w)
            g.maps[index * g.h * g.w : (index + 1) * g.h * g.w] = x.T

    def statistics(self, floor: float = STD_FLOOR) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`channel_statistics` of the held maps: each channel's mean and standard deviation ``[D]``
        over the native-resolution pixels of all images."""
        return channel_statistics(([g.maps[n * g.h * g.w : (n + 1) * g.h * g.w].T for g in self.groups]
                                   for n in range(self.num_images)), floor)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Float32 ``[B, D]`` features of flat pixel indices ``[B]``."""
        b, s = len(pixels), self.size
        n = torch.div(pixels, s * s, rounding_mode="trunc")
        rest = pixels - n * (s * s)
        oy = torch.div(rest, s, rounding_mode="trunc")
        ox = rest - oy * s
        out = torch.empty(b, self.dim, dtype=torch.float32, device=pixels.device)
        for g in self.groups:  # index_select: several times faster than advanced indexing on CPU
            rows = (n * (g.h * g.w))[:, None, None] + g.rows.index_select(0, oy)[:, :, None] \
                + g.cols.index_select(0, ox)[:, None, :]
            weights = g.row_weights.index_select(0, oy)[:, :, None] * g.col_weights.index_select(0, ox)[:, None, :]
            v = g.maps.index_select(0, rows.view(-1)).float().view(b, 4, g.channels)
            out[:, g.offset : g.offset + g.channels] = torch.bmm(weights.view(b, 1, 4), v).view(b, g.channels)
        return out


# -- training ----------------------------------------------------------------------
def _batches(train: torch.Tensor, batch_size: int, max_epochs: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Full batches of training pixels, reshuffled every epoch by ``gen``."""
    per_epoch = len(train) // batch_size
    for _ in range(max_epochs):
        order = train[torch.randperm(len(train), generator=gen).to(train.device)]
        for b in range(per_epoch):
            yield order[b * batch_size : (b + 1) * batch_size]


@torch.no_grad()
def _evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None
              ) -> tuple[float, float]:
    """Held-out (class-weighted) cross-entropy and accuracy, with BatchNorm in eval mode."""
    net.eval()
    logits = torch.cat([net(c) for c in x.split(_EVAL_CHUNK)])
    net.train()
    return F.cross_entropy(logits, y, weight=weight).item(), (logits.argmax(1) == y).float().mean().item()


def _fit_member(net: nn.Module, features: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor,
                train: torch.Tensor, hold_x: torch.Tensor, hold_y: torch.Tensor, cfg: MLPEnsembleConfig,
                gen: torch.Generator, hist: MemberHistory, report: Callable[[int, float, float], None],
                weight: torch.Tensor | None = None) -> None:
    """Train one member with early stopping on the held-out loss (both weighted per class by
    ``weight``, if given); leaves it at its best state. The training losses are read at each
    evaluation (no synchronisation per batch): the first non-finite one stops the member there,
    recorded in ``hist.diverged`` (the member as it stopped)."""
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, fused=True)
    best_state: dict[str, torch.Tensor] = {}
    stale = 0
    pending: list[torch.Tensor] = []  # training losses not yet read
    finite: list[float] = []  # the last finite one read

    def diverged() -> bool:
        """Read the pending losses; at a non-finite one, record it in ``hist`` and say so."""
        values = torch.stack(pending).tolist() if pending else []
        start = hist.batches - len(values)
        pending.clear()
        for i, v in enumerate(values):
            if not math.isfinite(v):
                hist.diverged, hist.stop_reason = divergence(start + i, finite), "diverged"
                return True
            finite[:] = [v]
        return False

    def evaluate() -> bool:
        nonlocal best_state, stale
        loss, acc = _evaluate(net, hold_x, hold_y, weight)
        report(hist.batches, loss, acc)
        if math.isfinite(loss) and (hist.best_loss is None or loss < hist.best_loss):
            hist.best_loss, hist.best_accuracy, hist.best_batch = loss, acc, hist.batches
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            stale = 0
        else:
            stale += 1
        return stale >= cfg.patience

    net.train()
    hist.stop_reason = "max_epochs"
    for pix in _batches(train, min(cfg.batch_size, len(train)), cfg.max_epochs, gen):
        loss = F.cross_entropy(net(features(pix)), labels.index_select(0, pix).long(), weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist.batches += 1
        pending.append(loss.detach())
        if hist.batches % cfg.eval_every == 0:
            if diverged():
                break
            if evaluate():
                hist.stop_reason = "early_stopping"
                break
        if hist.batches == cfg.max_batches:
            hist.stop_reason = "max_batches"
            break
    if hist.diverged is None and not diverged():
        if hist.batches % cfg.eval_every:
            evaluate()
        if best_state:
            net.load_state_dict(best_state)
        else:  # the training loss stayed finite, the held-out loss never was
            hist.diverged, hist.stop_reason = divergence(hist.batches, finite, "held-out loss"), "diverged"
    net.eval()


def fit_members(features: Callable[[torch.Tensor], torch.Tensor], dim: int, labels: torch.Tensor,
                pixels: torch.Tensor, num_classes: int, cfg: MLPEnsembleConfig,
                device: torch.device | str = "cpu", progress: Progress | None = None,
                on_divergence: str = "record") -> tuple[list[nn.Sequential], list[MemberHistory]]:
    """Train ``cfg.num_members`` pixel classifiers on any per-pixel feature source.

    ``pixels`` are the flat indices of the annotated pixels into ``labels``;
    ``features(pixels[i:j])`` gives their float32 ``[B, dim]`` features. The
    held-out pixels are drawn once with ``cfg.seed`` (at most a fifth of the
    annotated ones) and never trained on; each member has its own seed, derived
    from ``cfg.seed``, for its initial weights and its data order. A member whose
    loss turned non-finite is returned as it stopped, its history's ``diverged`` set
    (``on_divergence: fail`` raises :class:`~labelfactory.core.divergence.Diverged` instead).
    """
    n_hold = min(cfg.holdout_pixels, len(pixels) // 5)
    if n_hold < 1 or len(pixels) - n_hold < 2:
        raise ValueError(f"{len(pixels)} annotated pixels are too few to train on and hold some out")
    if n_hold < cfg.holdout_pixels:
        log.info("holding out %d pixels (a fifth of the annotated ones), not %d", n_hold, cfg.holdout_pixels)
    perm = torch.randperm(len(pixels), generator=torch.Generator().manual_seed(cfg.seed)).to(pixels.device)
    hold, train = pixels[perm[:n_hold]], pixels[perm[n_hold:]]
    hold_x = torch.cat([features(c) for c in hold.split(_GATHER_CHUNK)])
    hold_y = labels[hold].long()
    seeds = [int(s) for s in np.random.SeedSequence(cfg.seed).generate_state(cfg.num_members)]
    weight = class_weights(labels[train], num_classes, cfg.class_balance)
    weight = None if weight is None else weight.to(labels.device)
    log.info("training %d members on %d pixels (%d held out), %d features per pixel, %d classes%s",
             cfg.num_members, len(train), n_hold, dim, num_classes,
             "" if weight is None else f", class weights {[round(w, 2) for w in weight.tolist()]}")
    members, histories = [], []
    for m, seed in enumerate(seeds):
        gen = torch.Generator().manual_seed(seed)
        net = build_member(dim, num_classes, gen).to(device)
        hist = MemberHistory(seed=seed, train_pixels=len(train), holdout_pixels=n_hold)

        def report(batch: int, loss: float, acc: float, m: int = m) -> None:
            evals = batch // cfg.eval_every
            log.log(logging.INFO if evals % 10 == 0 else logging.DEBUG,
                    "member %d: batch %d, held-out loss %.4f, accuracy %.3f", m, batch, loss, acc)
            if progress is not None:
                progress(m, batch, loss, acc)

        _fit_member(net, features, labels, train, hold_x, hold_y, cfg, gen, hist, report, weight)
        run_status(hist.diverged, on_divergence, f"interpreter member {m}")
        log.info("member %d: %s after %d batches; best held-out loss %s, accuracy %.3f (batch %d)",
                 m, hist.stop_reason, hist.batches, hist.best_loss, hist.best_accuracy, hist.best_batch)
        members.append(net)
        histories.append(hist)
    return members, histories


def train_mlp_ensemble(data: TrainingData, cfg: MLPEnsembleConfig | None = None,
                       device: torch.device | str = "cpu", progress: Progress | None = None,
                       on_divergence: str = "record") -> "MLPEnsemble":
    """Train DatasetGAN's interpreter on annotated generated images.

    ``data`` (checked when built) gives the store, the masks of its images ``ids``
    (pixels equal to ``ignore_index`` skipped) and the ``layers``, read in the
    store's order; its ``classes`` and ``class_embedding`` are ignored (the MLP
    is unconditional). ``progress(member, batch, loss, accuracy)`` is called at
    every held-out evaluation. With ``cfg.normalize`` the features are standardised
    per channel by the statistics of the annotated images' native maps, which the
    ensemble keeps and applies at inference; ``cfg.extra_inputs`` are appended after them
    (``rgb`` from ``data.images``). Members whose loss turned non-finite are dropped, or,
    if all did, the ensemble is recorded as diverged
    (:func:`~labelfactory.interpreters.base.keep_finite_members`); under
    ``on_divergence: fail`` the first raises :class:`~labelfactory.core.divergence.Diverged`.
    """
    cfg = cfg or MLPEnsembleConfig()
    store, masks, num_classes, ignore_index = data.store, data.masks, data.num_classes, data.ignore_index
    ids, layers, label_names = data.ids, data.layers, data.label_names
    feats = PixelFeatures.from_store(store, ids, layers, cfg.align_corners, device)
    labels = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8).reshape(-1)).to(device)
    pixels = torch.nonzero(labels != ignore_index).squeeze(1)
    features: Callable[[torch.Tensor], torch.Tensor] = feats
    mean = std = None
    if cfg.normalize:
        mean, std = feats.statistics()
        log.info("standardising %d tap channels (std from %.3g to %.3g)", feats.dim, std.min(), std.max())

        def features(pix: torch.Tensor) -> torch.Tensor:
            return feats(pix).sub_(mean).div_(std)

    extra = training_inputs(data, cfg.extra_inputs, device)
    dim = feats.dim
    if extra is not None:
        rows, taps = extra.permute(0, 2, 3, 1).reshape(-1, extra.shape[1]), features  # rows in label order
        dim += rows.shape[1]
        log.info("extra inputs %s: %d more features per pixel", list(cfg.extra_inputs), rows.shape[1])

        def features(pix: torch.Tensor) -> torch.Tensor:
            return torch.cat([taps(pix), rows.index_select(0, pix)], 1)

    members, history = fit_members(features, dim, labels, pixels, num_classes, cfg, device, progress, on_divergence)
    members, history, run = keep_finite_members(members, history, device)
    return MLPEnsemble(members, cfg, layers, [store.shapes[l][0] for l in layers], num_classes, store.resolution,
                       store.generator_hash, history, label_names, mean, std, run)


# -- the trained ensemble ----------------------------------------------------------
def stack_members(members: Sequence[nn.Module]) -> tuple[torch.Tensor, torch.Tensor,
                                                         list[tuple[torch.Tensor, torch.Tensor]]]:
    """The ensemble as batched tensors: every member's first Linear as one ``[M·w1, D]`` weight
    and ``[M·w1]`` bias, and each later Linear stacked over members as ``([M, out, in], [M, out, 1])``
    with the eval-mode BatchNorm before it folded in. Members must be :func:`build_member` stacks
    (Linear, ReLU, BatchNorm1d, ..., Linear); a ReLU follows every Linear but the last."""
    kinds = [type(m) for m in members[0]]
    if kinds != [nn.Linear, nn.ReLU, nn.BatchNorm1d] * (len(kinds) // 3) + [nn.Linear] \
            or any([type(m) for m in net] != kinds for net in members):
        raise ValueError(f"members must be Linear, ReLU, BatchNorm1d, ..., Linear stacks, got {kinds}")
    weight = torch.cat([net[0].weight for net in members])
    bias = torch.cat([net[0].bias for net in members])
    layers = []
    for i in range(3, len(kinds), 3):
        ws, bs = [], []
        for net in members:
            bn, lin = net[i - 1], net[i]
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            ws.append(lin.weight * scale)
            bs.append(lin.bias + lin.weight @ (bn.bias - bn.running_mean * scale))
        layers.append((torch.stack(ws), torch.stack(bs)[..., None]))
    return weight, bias, layers


class _TileUpsampler:
    """Adds the bilinear upsampling (as ``F.interpolate``) of a ``[K, h, w]`` map to a tile of output
    rows ``[K, rows · size]``: each row interpolated between its two source rows, then the columns by
    a dense ``[w, size]`` matmul for narrow maps or by 1-D ``F.interpolate`` for wide ones."""

    def __init__(self, h: int, w: int, size: int, align_corners: bool, device: torch.device, dtype: torch.dtype):
        rows, weights = bilinear_taps(size, h, align_corners, device)
        self.lo, self.hi, self.frac = rows[:, 0], rows[:, 1], weights[:, 1:].to(dtype)
        self.size, self.align_corners = size, align_corners
        self.columns = None
        if w <= _DENSE_COLUMNS:
            eye = torch.eye(w, device=device, dtype=dtype)[None]
            self.columns = F.interpolate(eye, size=size, mode="linear", align_corners=align_corners)[0]

    def add_to(self, tile: torch.Tensor, y: torch.Tensor, r0: int, r1: int) -> None:
        z = torch.lerp(y.index_select(1, self.lo[r0:r1]), y.index_select(1, self.hi[r0:r1]), self.frac[r0:r1])
        k, t, w = z.shape
        if self.columns is not None:
            tile.view(k * t, self.size).addmm_(z.view(k * t, w), self.columns)
        else:
            tile.add_(F.interpolate(z.view(1, k * t, w), size=self.size, mode="linear",
                                    align_corners=self.align_corners).view(k, -1))


def _linear_sum(parts: list[tuple[torch.Tensor, torch.Tensor]], bias: torch.Tensor | None = None,
                columns: int = 0) -> torch.Tensor:
    """``bias[:, None] + Σ weight @ x`` over ``parts``; with no parts, ``bias`` repeated over ``columns``."""
    if not parts:
        return bias[:, None].expand(-1, columns).clone()
    (w, x), *rest = parts
    out = w @ x if bias is None else torch.addmm(bias[:, None], w, x)
    for w, x in rest:
        out.addmm_(w, x)
    return out


@functools.lru_cache(maxsize=64)
def _tile_upsampler(h: int, w: int, size: int, align_corners: bool, device: torch.device,
                    dtype: torch.dtype) -> _TileUpsampler:
    return _TileUpsampler(h, w, size, align_corners, device, dtype)


@INTERPRETERS.register("mlp")
class MLPEnsemble(Interpreter):
    """A trained ensemble of pixel classifiers with what it needs to be applied and audited."""

    name: ClassVar[str] = "mlp"
    config_class: ClassVar[type] = MLPEnsembleConfig
    format_version: ClassVar[int] = FORMAT_VERSION

    def __init__(self, members: Sequence[nn.Module], cfg: MLPEnsembleConfig, layers: Sequence[str],
                 layer_dims: Sequence[int], num_classes: int, resolution: int, generator_hash: str,
                 history: Sequence[MemberHistory], label_names: Sequence[str] | None = None,
                 tap_mean: torch.Tensor | None = None, tap_std: torch.Tensor | None = None,
                 run: Mapping | None = None):
        super().__init__()
        if len(layers) != len(layer_dims) or len(members) != len(history):
            raise ValueError("need one dim per layer and one history per member")
        check_tap_statistics(cfg.normalize, sum(int(c) for c in layer_dims), tap_mean, tap_std)
        self.members = nn.ModuleList(members)
        self.cfg = cfg
        self.layers = list(layers)
        self.layer_dims = [int(c) for c in layer_dims]
        self.num_classes = int(num_classes)
        self.resolution = int(resolution)
        self.generator_hash = generator_hash
        self.history = list(history)
        self.label_names = None if label_names is None else list(label_names)
        self.run = {"status": "ok", **(run or {})}
        self._interp_cache: dict[tuple, torch.Tensor] = {}
        self.compute_dtype = torch.float32  # of the fast path's matmuls; see interpreters.PRECISIONS
        # per-channel standardisation of the taps (cfg.normalize); None (not in the state dict) without
        self.register_buffer("tap_mean", tap_mean)
        self.register_buffer("tap_std", tap_std)

    fit = staticmethod(train_mlp_ensemble)

    @property
    def extra_inputs(self) -> tuple[str, ...]:
        return self.cfg.extra_inputs

    @property
    def input_dims(self) -> list[int]:
        """Channels of every map :meth:`_maps` returns: the taps', then the extra inputs' (if any)."""
        extra = sum(EXTRA_INPUTS[n] for n in self.extra_inputs)
        return self.layer_dims + ([extra] if extra else [])

    @property
    def dim(self) -> int:
        return sum(self.input_dims)

    def _maps(self, features: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The ensemble's layers from a batch of generator features, as float32 on its device
        (standardised per channel with ``normalize``), then its extra inputs' ``[B, E, R, R]``."""
        missing = [l for l in self.layers if l not in features]
        if missing:
            raise KeyError(f"features lack layers {missing} the interpreter was trained on")
        device = self.members[0][0].weight.device
        maps = [features[l].to(device, torch.float32) for l in self.layers]
        for l, c, x in zip(self.layers, self.layer_dims, maps):
            if x.ndim != 4 or x.shape[1] != c or x.shape[0] != maps[0].shape[0]:
                raise ValueError(f"layer {l}: expected [B, {c}, h, w], got {list(x.shape)}")
        if self.tap_mean is not None:
            maps = standardise_maps(maps, self.tap_mean, self.tap_std)
        extra = extra_input_maps(self.extra_inputs, maps[0].shape[0], self.resolution, features.get(IMAGE), device)
        return maps if extra is None else [*maps, extra]

    def _first_layer(self, linear: nn.Linear, maps: list[torch.Tensor]) -> torch.Tensor:
        """``linear`` over the upsampled concatenated maps, computed at native resolution: ``[B, w1, R, R]``."""
        by_size: dict[tuple[int, int], torch.Tensor] = {}
        offset = 0
        for x, c in zip(maps, self.input_dims):
            y = F.conv2d(x, linear.weight[:, offset : offset + c, None, None])
            offset += c
            key = tuple(y.shape[-2:])
            by_size[key] = by_size[key] + y if key in by_size else y
        b, r = maps[0].shape[0], self.resolution
        out = linear.bias[None, :, None, None].expand(b, -1, r, r).clone()
        for (h, w), y in by_size.items():
            if (h, w) != (self.resolution, self.resolution):
                y = self._interpolation(h, y) @ y @ self._interpolation(w, y).T
            out.add_(y)
        return out

    def _interpolation(self, size: int, like: torch.Tensor) -> torch.Tensor:
        """The ``[R, size]`` matrix of 1-D linear upsampling to the image resolution, for the
        reference path (bilinear is separable: ``A @ y @ A.T`` equals ``F.interpolate``)."""
        key = (size, like.device, like.dtype)
        if key not in self._interp_cache:
            eye = torch.eye(size, device=like.device, dtype=like.dtype)[None]
            a = F.interpolate(eye, size=self.resolution, mode="linear", align_corners=self.cfg.align_corners)
            self._interp_cache[key] = a[0].T.contiguous()
        return self._interp_cache[key]

    @torch.no_grad()
    def member_probabilities(self, features: Mapping[str, torch.Tensor], classes: torch.Tensor | None = None
                             ) -> torch.Tensor:
        """Softmax probabilities ``[M, B, C, R, R]`` of every member for generator
        features ``{layer: [B, C_l, h, w]}`` (switches the ensemble to eval mode).
        ``classes`` is accepted for the interpreters' common signature; pixels are
        classified from their features alone.

        All members at once, one tile of output rows at a time: the first layers
        (:func:`stack_members`) at native resolution per map size, upsampled into
        the tile by :class:`_TileUpsampler`, then the later layers as batched
        matmuls. Matmuls run in :attr:`compute_dtype`; probabilities are float32.
        Equals :meth:`member_probabilities_reference` up to float rounding."""
        self.eval()
        dtype = self.compute_dtype
        maps = [x.to(dtype) for x in self._maps(features)]
        weight, bias, layers = stack_members(self.members)
        weight, bias = weight.to(dtype), bias.to(dtype)
        layers = [(w.to(dtype), b.to(dtype)) for w, b in layers]
        by_size: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        offset = 0
        for x, c in zip(maps, self.input_dims):
            by_size.setdefault(tuple(x.shape[-2:]), []).append((weight[:, offset : offset + c], x))
            offset += c
        m, k, r, device = len(self.members), len(bias), self.resolution, bias.device
        full = by_size.pop((r, r), [])
        ups = {hw: _tile_upsampler(*hw, r, self.cfg.align_corners, device, dtype) for hw in by_size}
        step = max(1, _TILE_PIXELS // r)
        out = torch.empty(m, maps[0].shape[0], self.num_classes, r, r, device=device)
        for n in range(out.shape[1]):
            native = [(ups[hw], _linear_sum([(wt, x[n].flatten(1)) for wt, x in parts]).view(k, *hw))
                      for hw, parts in by_size.items()]
            for r0 in range(0, r, step):
                r1 = min(r, r0 + step)
                tile = _linear_sum([(wt, x[n, :, r0:r1].flatten(1)) for wt, x in full], bias, (r1 - r0) * r)
                for up, y in native:
                    up.add_to(tile, y, r0, r1)
                hidden = tile.view(m, -1, tile.shape[1]).relu_()
                for i, (w, b) in enumerate(layers):
                    hidden = torch.baddbmm(b, w, hidden)
                    if i < len(layers) - 1:
                        hidden.relu_()
                out[:, n, :, r0:r1] = hidden.float().softmax(1).view(m, -1, r1 - r0, r)
        return out

    @torch.no_grad()
    def member_probabilities_reference(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`member_probabilities` member by member, upsampling with dense ``[R, h]``
        matrices and running each member's modules as they are (the path the fast one is tested against)."""
        self.eval()
        maps = self._maps(features)
        b, r = maps[0].shape[0], self.resolution
        out = torch.empty(len(self.members), b, self.num_classes, r, r, device=maps[0].device)
        for m, member in enumerate(self.members):
            h = self._first_layer(member[0], maps)
            logits = member[1:](h.permute(0, 2, 3, 1).reshape(-1, h.shape[1]))
            out[m] = logits.softmax(1).reshape(b, r, r, -1).permute(0, 3, 1, 2)
        return out

    def metadata(self) -> dict:
        """What the JSON sidecar records."""
        return {
            "interpreter": self.name, "format_version": self.format_version, "config": asdict(self.cfg),
            "layers": self.layers, "layer_dims": self.layer_dims, "num_classes": self.num_classes,
            "label_names": self.label_names, "resolution": self.resolution, "generator_hash": self.generator_hash,
            "member_seeds": [h.seed for h in self.history], "history": [asdict(h) for h in self.history],
            **self.run,
        }

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "MLPEnsemble":
        """Read what :meth:`save` wrote; the ensemble comes back in eval mode."""
        meta, weights = read_interpreter(path, cls.name, cls.format_version)
        history = [MemberHistory(**h) for h in meta["history"]]
        dim, classes, cfg = sum(meta["layer_dims"]), meta["num_classes"], MLPEnsembleConfig(**meta["config"])
        stats = (torch.empty(dim), torch.empty(dim)) if cfg.normalize else (None, None)
        width = dim + sum(EXTRA_INPUTS[n] for n in cfg.extra_inputs)
        ens = cls([build_member(width, classes) for _ in history], cfg,
                  meta["layers"], meta["layer_dims"], classes, meta["resolution"], meta["generator_hash"],
                  history, meta["label_names"], *stats, run_record(meta))
        ens.load_state_dict(weights)
        return ens.to(device).eval()
