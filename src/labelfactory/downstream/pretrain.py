"""Backbone pretraining and the transfer experiment (BigDatasetGAN's Sec. 5).

A ResNet trunk (torchvision layout, ImageNet 7×7 stem, so detectron2 reads it)
is initialised by one of the registered :data:`PRETRAINING_METHODS` under one
budget (:class:`PretrainConfig`: steps, batch, optimiser, schedule):

- ``segmentation``: dense pixel-wise training on a task's filtered synthetic
  shards (a DeepLabV3 on the trunk; BigDatasetGAN's class-aware labels, or a
  DatasetGAN task's part labels), the head then dropped;
- ``classification``: image classification on real toy-world images with their
  class labels (the stand-in for ImageNet pretraining);
- ``weights``: a local torchvision ResNet state dict (e.g. ImageNet weights);
- ``random``: the seeded initialisation, untrained.

Every method writes ``backbone.pkl`` (detectron2's format, for ``MODEL.WEIGHTS``),
``backbone.pth`` (the torchvision trunk state, for the project's DeepLabV3) and
``pretrain.json``. Each backbone is then finetuned on every transfer target
(:mod:`.targets`: a COCO JSON) at several training-set fractions: Mask R-CNN on
detectron2's engine (:func:`.detectron.finetune`), and semantic segmentation with
the project's torchvision DeepLabV3 (:func:`finetune_semantic`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from labelfactory.annotations.labels import LabelSet
from labelfactory.core.io import atomic_torch_save, atomic_write_json, atomic_write_text
from labelfactory.core.divergence import divergence, finite_weights, run_status
from labelfactory.core.provenance import describe_device
from labelfactory.core.registry import Registry
from labelfactory.core.typed import strict_from_dict
from labelfactory.downstream.class_aware import ClassAwareLabels
from labelfactory.downstream.data import IGNORE_INDEX
from labelfactory.downstream.detectron import export_backbone
from labelfactory.downstream.experiment import SETTINGS, SettingInputs
from labelfactory.downstream.models import load_state_dict_checked, read_state_dict, resnet_trunk
from labelfactory.downstream.real import RealDataSpec, real_dataset
from labelfactory.downstream.targets import target_semantic
from labelfactory.downstream.segmentation import (
    SegTrainConfig,
    build_optimizer,
    evaluate_segmentation,
    lr_factor,
    torch_threads,
    train_segmentation,
)

log = logging.getLogger(__name__)

DETECTRON2_BACKBONE, TORCHVISION_BACKBONE, PRETRAIN_INFO = "backbone.pkl", "backbone.pth", "pretrain.json"
ARCH_DEPTH = {"resnet18": 18, "resnet50": 50, "resnet101": 101}


@dataclass
class PretrainConfig:
    """The pretraining budget, the same for every method (defaults: ResNet-50).

    The dense objective trains a DeepLabV3 (``output_stride``, ``atrous_rates``,
    ``head_channels``) on the trunk; classification a linear layer on its pooled
    features; both for ``steps`` batches of ``batch_size`` with one optimiser and
    schedule."""

    arch: str = "resnet50"
    steps: int = 20_000
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01
    weight_decay: float = 1e-4
    schedule: str = "poly"
    warmup_steps: int = 0
    augment: dict = field(default_factory=lambda: {"hflip": True})
    output_stride: int = 8
    atrous_rates: tuple[int, ...] = (12, 24, 36)
    head_channels: int = 256
    seed: int = 0
    threads: int | None = None

    def __post_init__(self):
        if self.arch not in ARCH_DEPTH:
            raise ValueError(f"arch must be one of {sorted(ARCH_DEPTH)}, got {self.arch!r}")
        self.atrous_rates = tuple(self.atrous_rates)
        self.schedule_config()  # checks optimiser, schedule, batch and warm-up

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainConfig":
        return strict_from_dict(cls, d)

    def schedule_config(self) -> SegTrainConfig:
        """The segmentation trainer's config of the dense objective (its optimiser and
        schedule drive the classification baseline too)."""
        return SegTrainConfig(
            model=f"deeplabv3_{self.arch}",
            model_options={"output_stride": self.output_stride, "atrous_rates": list(self.atrous_rates),
                           "head_channels": self.head_channels},
            steps=self.steps, batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr,
            weight_decay=self.weight_decay, schedule=self.schedule, warmup_steps=self.warmup_steps,
            augment=dict(self.augment), seed=self.seed, threads=self.threads)


@dataclass(frozen=True)
class PretrainInputs:
    """What a method reads: ``synthetic`` (a task's annotations, manifest and label
    space) for ``segmentation``, ``real`` toy-world images for ``classification``,
    ``weights`` (a local file) for ``weights``."""

    synthetic: SettingInputs | None = None
    real: RealDataSpec | None = None
    weights: str | None = None


def pretrain_inputs(method: str, annotations: str | None = None, manifest: str | None = None,
                    class_aware: dict | None = None, real: dict | None = None,
                    weights: str | None = None) -> PretrainInputs:
    """What ``method`` reads, from the workflow's files and config (the rest ignored)."""
    if method == "segmentation":
        aware = ClassAwareLabels.from_dict(class_aware) if class_aware else None
        return PretrainInputs(synthetic=SettingInputs(str(annotations), manifest=str(manifest), class_aware=aware))
    if method == "classification":
        return PretrainInputs(real=RealDataSpec.from_dict({"type": "toyworld", "labels": "objects", **(real or {})}))
    return PretrainInputs(weights=weights if method == "weights" else None)


Method = Callable[[PretrainConfig, PretrainInputs, torch.device], tuple[dict[str, torch.Tensor], dict]]
PRETRAINING_METHODS: Registry[Method] = Registry("pretraining method")


def _trunk(cfg: PretrainConfig) -> nn.Sequential:
    torch.manual_seed(cfg.seed)
    return resnet_trunk(cfg.arch, output_stride=32)[0]


@PRETRAINING_METHODS.register("random")
def random_init(cfg: PretrainConfig, inputs: PretrainInputs, device: torch.device) -> tuple[dict, dict]:
    """The seeded initialisation of the trunk (torchvision's; detectron2's is the same)."""
    return _trunk(cfg).state_dict(), {"loss": [], "num_images": 0}


@PRETRAINING_METHODS.register("weights")
def weights_init(cfg: PretrainConfig, inputs: PretrainInputs, device: torch.device) -> tuple[dict, dict]:
    """A local torchvision ResNet state dict (its ``fc`` ignored), loaded strictly."""
    if not inputs.weights:
        raise ValueError("the weights method needs a local weights file")
    trunk = _trunk(cfg)
    sd = {k: v for k, v in read_state_dict(inputs.weights).items() if not k.startswith("fc.")}
    load_state_dict_checked(trunk, sd, inputs.weights)
    return trunk.state_dict(), {"loss": [], "num_images": 0, "weights": str(inputs.weights)}


@PRETRAINING_METHODS.register("segmentation")
def segmentation_pretraining(cfg: PretrainConfig, inputs: PretrainInputs, device: torch.device) -> tuple[dict, dict]:
    """DeepLabV3 on the trunk trained on a task's filtered synthetic samples; the trunk is kept."""
    if inputs.synthetic is None:
        raise ValueError("segmentation pretraining needs a task's synthetic samples")
    labels = inputs.synthetic.labels()
    dataset = SETTINGS.get("synthetic_filtered")(inputs.synthetic, labels)
    model, history = train_segmentation(dataset, len(labels.names), cfg.schedule_config(), device)
    return model.cpu().backbone.state_dict(), {"loss": history["loss"], "num_images": len(dataset),
                                         "labels": list(labels.names), "diverged": history["diverged"]}


class ClassLabelled(Dataset):
    """Real images of single objects with their class index, read from a real dataset
    with object labels (background 0, class ``k`` labelled ``k + 1``: the ``objects``
    labels of BigDatasetGAN): each image's class is its one object label."""

    def __init__(self, spec: RealDataSpec):
        classes = spec.classes or (spec.cls,)
        self.objects = real_dataset(spec, "train", LabelSet(("background", *classes)))
        self.num_classes = len(classes)

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, mask = self.objects[i]
        present = torch.unique(mask[(mask > 0) & (mask != IGNORE_INDEX)])
        if len(present) != 1:
            raise ValueError(f"real image {i} shows labels {present.tolist()}: classification pretraining "
                             "needs exactly one object class per image")
        return image, int(present[0]) - 1


@PRETRAINING_METHODS.register("classification")
def classification_pretraining(cfg: PretrainConfig, inputs: PretrainInputs, device: torch.device) -> tuple[dict, dict]:
    """Cross-entropy classification of real labelled images by a linear layer on the
    trunk's pooled features, under the dense objective's optimiser and schedule."""
    if inputs.real is None:
        raise ValueError("classification pretraining needs real images with class labels")
    sched_cfg = cfg.schedule_config()
    dataset = ClassLabelled(inputs.real)
    with torch_threads(cfg.threads):
        trunk = _trunk(cfg)
        channels = trunk.layer4[-1].conv1.in_channels
        model = nn.Sequential(trunk, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(channels, dataset.num_classes)).to(device)
        generator = torch.Generator().manual_seed(cfg.seed)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=generator)
        opt = build_optimizer(model, sched_cfg)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, sched_cfg))
        losses: list[float] = []
        diverged = None
        model.train()
        while len(losses) < cfg.steps and diverged is None:
            for image, target in loader:
                if sched_cfg.augment.hflip:
                    flip = torch.rand(len(image), generator=generator) < 0.5
                    image = torch.where(flip[:, None, None, None], image.flip(-1), image)
                loss = F.cross_entropy(model(image.to(device)), target.to(device))
                value = loss.item()
                if not math.isfinite(value):
                    diverged = divergence(len(losses), losses)
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(value)
                if len(losses) == cfg.steps:
                    break
        if diverged is None and not finite_weights(model):
            diverged = divergence(cfg.steps - 1, losses, "weights")
    return trunk.cpu().state_dict(), {"loss": losses, "num_images": len(dataset), "diverged": diverged}


def pretrain_backbone(method: str, cfg: PretrainConfig, inputs: PretrainInputs, out_dir: str | Path,
                      device: str | torch.device = "cpu", on_divergence: str = "record") -> dict:
    """Run ``method`` and write the trunk as ``backbone.pkl`` (detectron2) and
    ``backbone.pth`` (torchvision state), plus ``pretrain.json`` (method, loss
    history, images, wall time, device, ``status``); returns the latter. A diverged
    run (:func:`~labelfactory.core.divergence.run_status`) still writes its trunk:
    the finetuning runs from it then diverge too, and are recorded so."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    state, history = PRETRAINING_METHODS.get(method)(cfg, inputs, torch.device(device))
    export_backbone(state, out_dir / DETECTRON2_BACKBONE)
    atomic_torch_save({k: v.detach().cpu().contiguous() for k, v in state.items()}, out_dir / TORCHVISION_BACKBONE)
    status = run_status(history.pop("diverged", None), on_divergence, f"{method} pretraining")
    info = {"method": method, **history, "wall_s": time.perf_counter() - t0, "config": asdict(cfg),
            "device": describe_device(device, cfg.threads), **status}
    atomic_write_json(out_dir / PRETRAIN_INFO, info)
    log.info("%s: %d steps on %d images, %.0f s", method, len(history["loss"]), history["num_images"], info["wall_s"])
    return info


# --- downstream data -------------------------------------------------------------------
def subset_coco(json_path: str | Path, image_root: str | Path | None, fraction: float, seed: int,
                out_path: str | Path) -> dict:
    """A fraction of a COCO set as a new JSON: the first ``max(1, round(fraction·N))``
    images of a ``seed``-fixed permutation (so smaller fractions are nested in larger
    ones), with their annotations, image paths (and a converted target's semantic mask
    paths) made absolute (``image_root``, default the JSON's folder; semantic masks: the
    JSON's folder) so the file can live anywhere. Returns the counts."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    json_path = Path(json_path)
    root = Path(image_root or json_path.parent).resolve()
    coco = json.loads(json_path.read_text())
    images = sorted(coco["images"], key=lambda r: r["id"])
    if not images:
        raise ValueError(f"{json_path}: no images")
    n = max(1, round(fraction * len(images)))
    chosen = sorted(np.random.default_rng(seed).permutation(len(images))[:n].tolist())
    records = [{**images[i], "file_name": str(root / images[i]["file_name"])} for i in chosen]
    for r in records:
        if "semantic_file_name" in r:
            r["semantic_file_name"] = str(json_path.parent.resolve() / r["semantic_file_name"])
    ids = {r["id"] for r in records}
    annotations = [a for a in coco["annotations"] if a["image_id"] in ids]
    atomic_write_text(out_path, json.dumps({**coco, "images": records, "annotations": annotations}) + "\n")
    return {"images": len(records), "instances": len(annotations), "of_images": len(images)}


def finetune_semantic(backbone: str | Path | None, train_json: str | Path, test_json: str | Path,
                      cfg: SegTrainConfig, out_json: str | Path, device: str | torch.device = "cpu",
                      on_divergence: str = "record", size: tuple[int, int] | None = None) -> dict:
    """Train the project's DeepLabV3 with its trunk from ``backbone`` (a torchvision
    state, :data:`TORCHVISION_BACKBONE`) on a target's semantic masks
    (:func:`~.targets.target_semantic`, resized to ``size`` where given), score it on
    another; writes and returns mIoU, per-class IoU, pixel accuracy, loss history,
    device and ``status`` (a diverged run is not scored, see
    :func:`~labelfactory.core.divergence.run_status`)."""
    train, names = target_semantic(train_json, size)
    test, test_names = target_semantic(test_json, size)
    if names != test_names:
        raise ValueError(f"{train_json} and {test_json} have different categories: {names} vs {test_names}")
    cfg = replace(cfg, model_options={**cfg.model_options, "backbone_weights": str(backbone) if backbone else None})
    model, history = train_segmentation(train, len(names), cfg, device)
    status = run_status(history["diverged"], on_divergence, f"semantic finetuning seed {cfg.seed}")
    scores = {}
    if status["status"] == "ok":
        scores = evaluate_segmentation(model, test, len(names), device, class_names=names)
        scores = {k: scores[k] for k in ("miou", "iou_by_class", "pixel_accuracy")}
    result = {**scores, "num_train_images": len(train), "num_test_images": len(test), "loss": history["loss"],
              "wall_s": history["wall_s"], "config": cfg.to_dict(),
              "device": describe_device(device, history["threads"]), **status}
    atomic_write_json(out_json, result)
    return result


def semantic_config(options: dict[str, Any], arch: str, seed: int, threads: int | None) -> SegTrainConfig:
    """The semantic finetuning run: DeepLabV3 on ``arch`` with the config's options."""
    return SegTrainConfig.from_dict({**options, "model": f"deeplabv3_{arch}", "seed": seed, "threads": threads})
