"""The keypoint head: DatasetGAN's keypoint interpreter, per-pixel heatmap regression.

Each keypoint of an annotated image becomes a Gaussian heatmap (peak 1, ``sigma`` pixels) at
the interpreter's resolution (:func:`gaussian_heatmaps`); an ensemble of per-pixel regressors
(:func:`~labelfactory.interpreters.mlp.build_member` stacks with one output per keypoint) learns
them from the same upsampled generator features as the MLP ensemble
(:class:`~labelfactory.interpreters.mlp.PixelFeatures`), with a mean squared error over the
keypoints each image labels (visibility 0 left out). Decoding (:func:`decode_heatmaps`) takes
each keypoint at the argmax of the members' mean heatmap, refined to sub-pixel by a parabola
through its neighbours, its confidence the peak value, and its uncertainty the spread of the
members' own argmax positions.

A head is not an :class:`~labelfactory.interpreters.base.Interpreter` (those return class
probabilities that synthesis votes on), so it is not in the interpreter registry: train it with
:func:`train_keypoint_head`, read it back with :meth:`KeypointHead.load`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from labelfactory.interpreters.base import TrainingData, check_tap_statistics, read_interpreter, save_interpreter
from labelfactory.interpreters.mlp import PixelFeatures, build_member

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_CHUNK = 8192  # pixels per forward pass at inference


@dataclass
class KeypointHeadConfig:
    """Hyperparameters of the head and its training: ``sigma`` of the Gaussian targets in pixels
    of the interpreter resolution; every member trains ``steps`` batches of ``batch_size`` pixels
    with Adam at ``lr``, half of each batch (``peak_fraction``) drawn within ``2·sigma`` of a
    labelled keypoint so the rare peaks are learnt, the rest from all pixels. ``normalize``
    standardises every tap channel as the MLP ensemble's option does."""

    num_members: int = 5
    sigma: float = 2.0
    lr: float = 1e-3
    batch_size: int = 256
    steps: int = 2000
    peak_fraction: float = 0.5
    seed: int = 0
    normalize: bool = True
    align_corners: bool = False

    def __post_init__(self):
        bad = [f"{k}={getattr(self, k)}" for k in ("num_members", "steps") if getattr(self, k) < 1]
        if self.batch_size < 2:  # BatchNorm1d needs two samples per batch
            bad.append(f"batch_size={self.batch_size} (need >= 2)")
        bad += [f"{k}={getattr(self, k)}" for k in ("sigma", "lr") if not getattr(self, k) > 0]
        if not 0 <= self.peak_fraction < 1:
            bad.append(f"peak_fraction={self.peak_fraction} (0 <= p < 1)")
        if bad:
            raise ValueError("invalid keypoint head config: " + ", ".join(bad))


def gaussian_heatmaps(keypoints: np.ndarray, resolution: int | tuple[int, int], sigma: float) -> torch.Tensor:
    """Float32 ``[N, K, H, W]`` targets (``resolution`` ``R`` for ``R x R``, or ``(H, W)``):
    ``exp(-d² / 2σ²)`` around each keypoint of ``keypoints`` ``[N, K, 3]`` (pixels, the centre of
    pixel ``(i, j)`` at ``(x=j, y=i)``); zero for keypoints with visibility 0."""
    kp = torch.as_tensor(np.asarray(keypoints, dtype=np.float32))
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    dx = torch.arange(w, dtype=torch.float32)[None, None, None, :] - kp[..., 0, None, None]
    dy = torch.arange(h, dtype=torch.float32)[None, None, :, None] - kp[..., 1, None, None]
    heat = torch.exp(-(dx.square() + dy.square()) / (2 * sigma**2))
    return heat * (kp[..., 2] > 0).float()[..., None, None]


def _refine(heat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Sub-pixel offsets in [-0.5, 0.5] of peaks at flat ``index`` ``[..]`` of maps ``heat`` ``[.., H, W]``,
    from the parabola through each peak and its two neighbours along x and along y."""
    h, w = heat.shape[-2:]
    flat = heat.flatten(-2)
    y, x = index // w, index % w

    def along(pos: torch.Tensor, step: int, size: int) -> torch.Tensor:
        lo = flat.gather(-1, (index - step * (pos > 0).long())[..., None])[..., 0]
        hi = flat.gather(-1, (index + step * (pos < size - 1).long())[..., None])[..., 0]
        mid = flat.gather(-1, index[..., None])[..., 0]
        curve = lo - 2 * mid + hi
        off = torch.where(curve < 0, 0.5 * (lo - hi) / curve.clamp(max=-1e-12), torch.zeros_like(mid))
        return off.clamp(-0.5, 0.5)

    return torch.stack([x.float() + along(x, 1, w), y.float() + along(y, w, h)], -1)


@dataclass
class DecodedKeypoints:
    """Keypoints decoded from an ensemble's heatmaps: ``positions`` ``[B, K, 2]`` (x, y pixels),
    ``confidence`` ``[B, K]`` (the mean heatmap's peak, about 1 where the members are sure),
    ``spread`` ``[B, K]`` (root mean squared distance, in pixels, of the members' own argmax
    positions from their mean: the ensemble's disagreement)."""

    positions: torch.Tensor
    confidence: torch.Tensor
    spread: torch.Tensor

    def as_coco(self) -> np.ndarray:
        """``[B, K, 3]`` (x, y, confidence), COCO's keypoint layout with the confidence as the third value."""
        return torch.cat([self.positions, self.confidence[..., None]], -1).numpy()


def decode_heatmaps(heatmaps: torch.Tensor) -> DecodedKeypoints:
    """Decode the members' heatmaps ``[M, B, K, H, W]`` (see :class:`DecodedKeypoints`)."""
    w = heatmaps.shape[-1]
    mean = heatmaps.mean(0)
    peak, index = mean.flatten(-2).max(-1)
    member_index = heatmaps.flatten(-2).argmax(-1)
    member_xy = torch.stack([member_index % w, member_index // w], -1).float()
    spread = (member_xy - member_xy.mean(0)).square().sum(-1).mean(0).sqrt()
    return DecodedKeypoints(_refine(mean, index), peak, spread)


@dataclass
class MemberRecord:
    """How one member was trained: its seed and its training loss over the last 100 batches."""

    seed: int
    final_loss: float


class KeypointHead(nn.Module):
    """A trained ensemble of per-pixel keypoint-heatmap regressors, with what applies it."""

    name: ClassVar[str] = "keypoints"
    format_version: ClassVar[int] = FORMAT_VERSION

    def __init__(self, members: Sequence[nn.Module], cfg: KeypointHeadConfig, layers: Sequence[str],
                 layer_shapes: Mapping[str, Sequence[int]], keypoint_names: Sequence[str], resolution: int,
                 generator_hash: str, history: Sequence[MemberRecord], tap_mean: torch.Tensor | None = None,
                 tap_std: torch.Tensor | None = None):
        super().__init__()
        self.layer_shapes = {l: tuple(int(c) for c in layer_shapes[l]) for l in layers}
        check_tap_statistics(cfg.normalize, sum(s[0] for s in self.layer_shapes.values()), tap_mean, tap_std)
        self.members = nn.ModuleList(members)
        self.cfg, self.layers, self.keypoint_names = cfg, list(layers), list(keypoint_names)
        self.resolution, self.generator_hash, self.history = int(resolution), generator_hash, list(history)
        self.register_buffer("tap_mean", tap_mean)
        self.register_buffer("tap_std", tap_std)

    @torch.no_grad()
    def member_heatmaps(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Heatmaps ``[M, B, K, R, R]`` of every member for generator features ``{layer: [B, C_l, h, w]}``,
        from each pixel's upsampled features exactly as in training (switches to eval mode)."""
        self.eval()
        missing = [l for l in self.layers if l not in features]
        if missing:
            raise KeyError(f"features lack layers {missing} the keypoint head was trained on")
        b, r = features[self.layers[0]].shape[0], self.resolution
        device = self.members[0][0].weight.device
        feats = PixelFeatures(self.layer_shapes, b, r, self.cfg.align_corners, device)
        for n in range(b):
            feats.put(n, {l: features[l][n] for l in self.layers})
        out = torch.empty(len(self.members), b * r * r, len(self.keypoint_names), device=device)
        for pix in torch.arange(b * r * r, device=device).split(_CHUNK):
            x = feats(pix)
            if self.tap_mean is not None:
                x = x.sub_(self.tap_mean).div_(self.tap_std)
            for m, member in enumerate(self.members):
                out[m, pix] = member(x)
        return out.view(len(self.members), b, r, r, -1).permute(0, 1, 4, 2, 3)

    def predict(self, features: Mapping[str, torch.Tensor]) -> DecodedKeypoints:
        """:func:`decode_heatmaps` of :meth:`member_heatmaps`."""
        return decode_heatmaps(self.member_heatmaps(features))

    def metadata(self) -> dict:
        """What the JSON sidecar records."""
        return {"interpreter": self.name, "format_version": self.format_version, "config": asdict(self.cfg),
                "layers": self.layers, "layer_shapes": {l: list(s) for l, s in self.layer_shapes.items()},
                "keypoint_names": self.keypoint_names, "resolution": self.resolution,
                "generator_hash": self.generator_hash, "history": [asdict(h) for h in self.history]}

    def save(self, path: str | Path) -> None:
        """Weights to ``path`` (safetensors) and :meth:`metadata` to its JSON sidecar, each atomically."""
        save_interpreter(self, path, self.metadata())

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "KeypointHead":
        """Read what :meth:`save` wrote; the head comes back in eval mode."""
        meta, weights = read_interpreter(path, cls.name, cls.format_version)
        cfg = KeypointHeadConfig(**meta["config"])
        dim = sum(s[0] for s in meta["layer_shapes"].values())
        stats = (torch.empty(dim), torch.empty(dim)) if cfg.normalize else (None, None)
        history = [MemberRecord(**h) for h in meta["history"]]
        head = cls([build_member(dim, len(meta["keypoint_names"])) for _ in history], cfg, meta["layers"],
                   meta["layer_shapes"], meta["keypoint_names"], meta["resolution"], meta["generator_hash"],
                   history, *stats)
        head.load_state_dict(weights)
        return head.to(device).eval()


def _peak_pixels(heat: torch.Tensor) -> torch.Tensor:
    """Flat indices of the pixels where any target heatmap of ``[N, K, R, R]`` exceeds ``exp(-2)``
    (within two sigmas of a labelled keypoint)."""
    return torch.nonzero(heat.amax(1).flatten() > math.exp(-2.0)).squeeze(1)


def train_keypoint_head(data: TrainingData, keypoints: np.ndarray, keypoint_names: Sequence[str],
                        cfg: KeypointHeadConfig | None = None, device: torch.device | str = "cpu") -> KeypointHead:
    """Train a keypoint head on the annotated images of ``data`` (its store, ``ids``, ``layers`` and
    ``generator_hash``; its masks are not read: a keypoint-only set passes masks all ``ignore_index``)
    with their ``keypoints`` ``[N, K, 3]`` in pixels of the store's resolution, in the order of
    ``keypoint_names``."""
    cfg = cfg or KeypointHeadConfig()
    keypoints = np.asarray(keypoints, dtype=np.float32)
    n, r = len(data.ids), data.store.resolution
    if keypoints.shape != (n, len(keypoint_names), 3):
        raise ValueError(f"keypoints must be [N, K, 3] = {[n, len(keypoint_names), 3]} (one row per annotated "
                         f"image, one per keypoint name), got {list(keypoints.shape)}")
    labelled = torch.as_tensor(keypoints[..., 2] > 0, device=device).float()
    if not labelled.any():
        raise ValueError("no labelled keypoint (visibility > 0) to train on")
    feats = PixelFeatures.from_store(data.store, data.ids, data.layers, cfg.align_corners, device)
    mean = std = None
    if cfg.normalize:
        mean, std = feats.statistics()
    heat = gaussian_heatmaps(keypoints, r, cfg.sigma).to(device)
    targets = heat.permute(0, 2, 3, 1).reshape(-1, len(keypoint_names))  # rows in PixelFeatures' pixel order
    peaks = _peak_pixels(heat)
    n_peak = int(round(cfg.batch_size * cfg.peak_fraction))
    seeds = [int(s) for s in np.random.SeedSequence(cfg.seed).generate_state(cfg.num_members)]
    log.info("training %d keypoint members on %d images, %d keypoints, %d features per pixel",
             cfg.num_members, n, len(keypoint_names), feats.dim)
    members, history = [], []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        net = build_member(feats.dim, len(keypoint_names), gen).to(device).train()
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        losses = []
        for _ in range(cfg.steps):
            pix = torch.cat([peaks[torch.randint(len(peaks), (n_peak,), generator=gen).to(device)],
                             torch.randint(n * r * r, (cfg.batch_size - n_peak,), generator=gen).to(device)])
            x = feats(pix)
            if mean is not None:
                x = x.sub_(mean).div_(std)
            weight = labelled.index_select(0, torch.div(pix, r * r, rounding_mode="floor"))
            loss = ((net(x) - targets.index_select(0, pix)).square() * weight).sum() / weight.sum().clamp_min(1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        final = float(torch.stack(losses[-100:]).mean())
        if not math.isfinite(final):
            raise ValueError(f"keypoint member with seed {seed}: the training loss became non-finite; "
                             "retrain with a lower lr")
        members.append(net.eval())
        history.append(MemberRecord(seed, final))
        log.info("keypoint member %d: final training loss %.5f", len(members) - 1, final)
    return KeypointHead(members, cfg, data.layers, data.store.shapes, keypoint_names, r,
                        data.store.generator_hash, history, mean, std)
