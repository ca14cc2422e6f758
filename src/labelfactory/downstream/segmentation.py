"""Train and score the downstream segmentation network.

One schedule for every data source (few-shot annotations, generated samples,
filtered samples, real labelled images), so the scores compare the data, not
the training. Training is step-based (not epoch-based) for the same reason,
and deterministic on the CPU for a seed and thread count. Scores come from one
confusion matrix over the whole test set; with ``snapshots`` > 1 a run also
keeps evenly spaced snapshots of its weights (in the same file, under
``snapshot.<step>.``) for DatasetGAN's cross-validated checkpoint selection
(:mod:`labelfactory.downstream.cross_validation`). With ``class_balance`` > 0 the
loss weighs each class by its pixel frequency in the training set to the power
``-class_balance``, so that small parts count (:func:`dataset_class_weights`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from labelfactory.core.divergence import divergence, finite_weights
from labelfactory.core.io import atomic_path, atomic_write_json, sha256_file
from labelfactory.core.provenance import describe_device
from labelfactory.core.metrics import class_weights_from_counts, confusion_matrix, scores_from_confusion
from labelfactory.core.typed import strict_from_dict
from labelfactory.downstream.data import IGNORE_INDEX, Augment, Augmented, ShardGroupedSampler
from labelfactory.downstream.models import SegmentationNet, build_segmentation_model, load_state_dict_checked

log = logging.getLogger(__name__)


@dataclass
class SegTrainConfig:
    """Model and schedule of one training run (defaults: the paper-scale setting)."""

    model: str = "deeplabv3_resnet101"
    model_options: dict[str, Any] = field(default_factory=dict)
    steps: int = 20_000
    batch_size: int = 16
    optimizer: Literal["sgd", "adamw"] = "sgd"  # SGD uses momentum 0.9
    lr: float = 0.01
    weight_decay: float = 1e-4
    schedule: Literal["poly", "cosine", "constant"] = "poly"
    poly_power: float = 0.9
    warmup_steps: int = 0
    augment: Augment = field(default_factory=Augment)
    seed: int = 0
    num_workers: int = 0
    ignore_index: int = IGNORE_INDEX
    threads: int | None = None  # CPU threads for the run; None keeps the process setting
    log_every: int = 100
    snapshots: int = 1  # weights kept at steps/snapshots, 2·steps/snapshots, ..., steps
    class_balance: float = 0.0  # loss weight frequency**-class_balance per class; 0: unweighted


    def __post_init__(self):
        if isinstance(self.augment, dict):
            self.augment = Augment(**{k: tuple(v) if k == "scale" else v for k, v in self.augment.items()})
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("poly", "cosine", "constant"):
            raise ValueError(f"schedule must be 'poly', 'cosine' or 'constant', got {self.schedule!r}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (BatchNorm after the ASPP image pooling needs it)")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must lie in [0, steps), got {self.warmup_steps} of {self.steps}")
        if not 1 <= self.snapshots <= self.steps:
            raise ValueError(f"snapshots must lie in [1, steps], got {self.snapshots} of {self.steps}")
        if self.class_balance < 0:
            raise ValueError(f"class_balance must be at least 0, got {self.class_balance}")

    @property
    def snapshot_steps(self) -> list[int]:
        """The steps after which a snapshot is kept; the last is the final model."""
        return [self.steps * (i + 1) // self.snapshots for i in range(self.snapshots)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SegTrainConfig":
        return strict_from_dict(cls, d)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def lr_factor(step: int, cfg: SegTrainConfig) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then poly or cosine decay to 0 (or
    ``constant``: 1, as the DatasetGAN and ddpm-segmentation releases train DeepLab with Adam)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    t = (step - cfg.warmup_steps) / (cfg.steps - cfg.warmup_steps)
    if cfg.schedule == "poly":
        return (1.0 - t) ** cfg.poly_power
    return 0.5 * (1.0 + math.cos(math.pi * t))


def build_optimizer(model: nn.Module, cfg: SegTrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def segmentation_loss(logits: torch.Tensor, label: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel cross-entropy averaged over labelled pixels (0, not NaN, when none are); with
    per-class ``weight`` ``[C]`` the weighted mean ``Σ w[label]·CE / Σ w[label]`` over them.
    A float ``label`` ``[B, C, H, W]`` holds soft targets ``p``: the loss is then
    ``Σ m·(-log q) / Σ m`` with ``m = p`` (or ``w·p``) per pixel and class, which is the hard
    loss for one-hot ``p``; pixels whose ``p`` is all 0 take no part."""
    if label.is_floating_point():
        mass = label if weight is None else label * weight[:, None, None]
        total = -(mass * F.log_softmax(logits, 1)).sum()
        return total / mass.sum().clamp(min=torch.finfo(mass.dtype).tiny)
    if weight is None:
        total = F.cross_entropy(logits, label, ignore_index=ignore_index, reduction="sum")
        return total / (label != ignore_index).sum().clamp(min=1)
    total = F.cross_entropy(logits, label, weight=weight, ignore_index=ignore_index, reduction="sum")
    return total / weight[label[label != ignore_index]].sum().clamp(min=torch.finfo(weight.dtype).tiny)


CLASS_COUNT_ITEMS = 256  # training items whose labels give the class frequencies of class_balance


def dataset_class_weights(dataset: Dataset, num_classes: int, balance: float, seed: int,
                          ignore_index: int = IGNORE_INDEX, max_items: int = CLASS_COUNT_ITEMS) -> torch.Tensor | None:
    """The loss weights of ``class_balance`` (:func:`~labelfactory.core.metrics.class_weights_from_counts`)
    from the label frequencies of ``dataset``: of every item, or of ``max_items`` drawn with ``seed``
    (read in index order, so a shard dataset reads each shard once); ``ignore_index`` is not counted,
    soft targets count each class's probability mass. None for ``balance == 0``."""
    if balance == 0:
        return None
    n = len(dataset)
    picks = range(n) if n <= max_items else \
        torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_items].sort().values.tolist()
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for i in picks:
        label = dataset[i][1]
        if label.is_floating_point():
            if label.shape[0] != num_classes:
                raise ValueError(f"training item {i} has soft targets for {label.shape[0]} classes, not {num_classes}")
            counts += label.flatten(1).sum(1).double()
            continue
        label = label.flatten()
        label = label[label != ignore_index]
        if label.numel() and (label.min() < 0 or label.max() >= num_classes):
            raise ValueError(f"training item {i} has labels outside 0..{num_classes - 1} "
                             f"(ignore index {ignore_index})")
        counts += torch.bincount(label, minlength=num_classes)
    if counts.sum() == 0:
        raise ValueError(f"class_balance: the {len(picks)} training items counted have no labelled pixel")
    return class_weights_from_counts(counts, balance)


def optimise(model: nn.Module, cfg: SegTrainConfig, batch_loss: Callable[[int], torch.Tensor],
             keep: Collection[int] = (), progress: bool = True, what: str = "loss") -> dict:
    """``cfg.steps`` optimiser steps of ``model`` on ``batch_loss(step)`` (the loss of the next
    batch) with ``cfg``'s optimizer and learning rate schedule; the one training loop of every
    downstream network. Returns the history: per-step ``loss`` and ``lr``, ``threads``,
    ``snapshots`` ``{step: state dict}`` after the steps in ``keep``, ``wall_s`` and ``diverged``:
    None, or the :func:`~labelfactory.core.divergence.divergence` record of a run stopped at a
    non-finite loss (or ending with non-finite weights)."""
    opt = build_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    history: dict[str, Any] = {"loss": [], "lr": [], "threads": torch.get_num_threads(), "snapshots": {},
                               "diverged": None}
    model.train()
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        loss = batch_loss(step)
        value = loss.item()
        if not math.isfinite(value):
            history["diverged"] = divergence(step, history["loss"])
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        history["lr"].append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        history["loss"].append(value)
        if step + 1 in keep:
            history["snapshots"][step + 1] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if progress and (step + 1) % cfg.log_every == 0:
            recent = history["loss"][-cfg.log_every:]
            log.info("step %d/%d %s %.4g (%.1f s)", step + 1, cfg.steps, what, sum(recent) / len(recent),
                     time.perf_counter() - t0)
    if history["diverged"] is None and not finite_weights(model):
        history["diverged"] = divergence(cfg.steps - 1, history["loss"], "weights")
    history["wall_s"] = time.perf_counter() - t0
    return history


def run_record(setting: str, seed: int, num_train_images: int, history: dict, device: str | torch.device) -> dict:
    """What a trained run's sidecar records of it: setting, seed, training-set size, wall time,
    threads, the mean loss of its last 20 steps and the device (from :func:`optimise`'s history)."""
    recent = history["loss"][-20:]
    return {"setting": setting, "seed": seed, "num_train_images": num_train_images, "wall_s": history["wall_s"],
            "threads": history["threads"], "final_loss": float(np.mean(recent)) if recent else None,
            "device": describe_device(device, history["threads"])}


def train_segmentation(dataset: Dataset, num_classes: int, cfg: SegTrainConfig, device: str | torch.device = "cpu",
                       progress: bool = True) -> tuple[SegmentationNet, dict]:
    """Train a fresh model on ``dataset`` for ``cfg.steps`` batches (epochs
    wrap around, so few-shot and large sets get the same schedule).

    Returns the model in eval mode and the history of :func:`optimise`, with ``cfg.snapshots`` > 1
    the snapshots (the last is the returned model's).
    """
    if len(dataset) == 0:
        raise ValueError("cannot train a segmentation network on an empty dataset")
    device = torch.device(device)
    with torch_threads(cfg.threads):
        torch.manual_seed(cfg.seed)
        model = build_segmentation_model(cfg.model, num_classes, **cfg.model_options).to(device)
        generator = torch.Generator().manual_seed(cfg.seed)
        loader = DataLoader(Augmented(dataset, cfg.augment), batch_size=cfg.batch_size,
                            sampler=ShardGroupedSampler(dataset, generator), num_workers=cfg.num_workers,
                            generator=generator, pin_memory=device.type == "cuda", drop_last=True)
        weight = dataset_class_weights(dataset, num_classes, cfg.class_balance, cfg.seed, cfg.ignore_index)
        if weight is not None:
            log.info("class weights %s", [round(w, 3) for w in weight.tolist()])
            weight = weight.to(device)
        batches = iter(loader)

        def batch_loss(step: int) -> torch.Tensor:
            image, label = next(batches)
            return segmentation_loss(model(image.to(device, non_blocking=True)), label.to(device, non_blocking=True),
                                     cfg.ignore_index, weight)

        history = optimise(model, cfg, batch_loss, set(cfg.snapshot_steps) if cfg.snapshots > 1 else (), progress)
    return model.eval(), history


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class map ``[B, H, W]`` for a batch of normalised images."""
    return model(images).argmax(1)


@torch.no_grad()
def per_image_confusions(model: nn.Module, dataset: Dataset, num_classes: int, device: str | torch.device = "cpu",
                         batch_size: int = 64, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``[images, C, C]`` confusion matrices of ``model`` on each image of ``dataset``, in its order."""
    device = torch.device(device)
    model.eval().to(device)
    out = []
    for image, label in DataLoader(dataset, batch_size=batch_size):
        pred = predict(model, image.to(device))
        out += [confusion_matrix(p, t, num_classes, ignore_index) for p, t in zip(pred, label.to(device))]
    return torch.stack(out)


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, dataset: Dataset, num_classes: int, device: str | torch.device = "cpu",
                          batch_size: int = 64, ignore_index: int = IGNORE_INDEX,
                          class_names: Sequence[str] | None = None) -> dict:
    """Score ``model`` on ``dataset``: the confusion matrix summed over all
    images, then :func:`scores_from_confusion` (plus ``num_images``)."""
    device = torch.device(device)
    model.eval().to(device)
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for image, label in DataLoader(dataset, batch_size=batch_size):
        pred = predict(model, image.to(device))
        conf += confusion_matrix(pred, label.to(device), num_classes, ignore_index)
    return {**scores_from_confusion(conf, class_names), "num_images": len(dataset)}


SNAPSHOT = "snapshot."


def save_model(model: SegmentationNet, path: str | Path, cfg: SegTrainConfig, num_classes: int,
               metrics: dict | None = None, class_names: Sequence[str] | None = None,
               snapshots: dict[int, dict[str, torch.Tensor]] | None = None) -> None:
    """Write ``<path>.safetensors`` (the state dict, and each snapshot's under
    ``snapshot.<step>.``) and ``<path>.json`` (model name and options, class count
    and names, training config, metrics, snapshot steps, sha256)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a segmentation model is saved as a .safetensors file")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for step, state in (snapshots or {}).items():
        tensors.update({f"{SNAPSHOT}{step}.{k}": v.contiguous() for k, v in state.items()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    options = {k: v for k, v in cfg.model_options.items() if k not in ("weights", "backbone_weights")}
    atomic_write_json(path.with_suffix(".json"), {
        "model": cfg.model, "model_options": options, "num_classes": num_classes,
        "class_names": list(class_names) if class_names is not None else None,
        "config": cfg.to_dict(), "metrics": metrics, "snapshot_steps": sorted(snapshots or {}),
        "sha256": sha256_file(path),
    })


def _checked_sidecar(path: Path) -> dict:
    meta = json.loads(path.with_suffix(".json").read_text())
    if sha256_file(path) != meta["sha256"]:
        raise ValueError(f"{path}: sha256 differs from its sidecar: the file is corrupt or was replaced")
    return meta


def _build_saved(path: Path, meta: dict, prefix: str | None, device: str | torch.device) -> SegmentationNet:
    """The model of ``meta`` with the tensors under ``prefix`` (None: the final weights), read
    alone from the file (a run's file holds every snapshot)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = [k for k in f.keys() if (k.startswith(prefix) if prefix else not k.startswith(SNAPSHOT))]
        sd = {k.removeprefix(prefix or ""): f.get_tensor(k) for k in keys}
    model = build_segmentation_model(meta["model"], meta["num_classes"], **meta["model_options"])
    load_state_dict_checked(model, sd, path)
    return model.to(device).eval()


def load_model(path: str | Path, device: str | torch.device = "cpu",
               snapshot: int | None = None) -> tuple[SegmentationNet, dict]:
    """Rebuild a model saved by :func:`save_model` (the final weights, or the
    ``snapshot`` of that step); returns it in eval mode and its sidecar."""
    path = Path(path)
    meta = _checked_sidecar(path)
    if snapshot is not None and snapshot not in meta.get("snapshot_steps", []):
        raise ValueError(f"{path}: no snapshot of step {snapshot} (it has {meta.get('snapshot_steps', [])})")
    return _build_saved(path, meta, None if snapshot is None else f"{SNAPSHOT}{snapshot}.", device), meta


def load_snapshots(path: str | Path, device: str | torch.device = "cpu") -> Iterator[tuple[int, SegmentationNet]]:
    """Every snapshot of a saved run as ``(step, model)`` in step order; the file's sha256 is
    checked once, and each snapshot reads only its own tensors."""
    path = Path(path)
    meta = _checked_sidecar(path)
    for step in meta.get("snapshot_steps", []):
        yield step, _build_saved(path, meta, f"{SNAPSHOT}{step}.", device)
