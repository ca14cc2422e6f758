"""detectron2 as the transfer engine: backbone export, COCO datasets, Mask R-CNN finetuning.

BigDatasetGAN pretrains a ResNet on synthetic labelled images and finetunes
detectron2's Mask R-CNN (R-50-FPN 1x) from it on a real detection set, against
the same finetuning from random initialisation. Here:

- :func:`export_backbone` writes a torchvision-layout ResNet (the project's
  :func:`~.models.resnet_trunk`, a DeepLabV3 on one, or a torchvision
  classifier) in detectron2's checkpoint format, for ``MODEL.WEIGHTS``;
- :func:`register_coco` puts a COCO JSON (see :mod:`.coco_export`) into
  detectron2's catalogues with detectron2's own loader;
- :func:`finetune` trains detectron2's model-zoo Mask R-CNN with its
  ``DefaultTrainer`` on N GPUs (``detectron2.engine.launch``) or the CPU and
  scores it with ``COCOEvaluator``: box and mask AP, AP50, AP75.

The exported backbones keep torchvision's conventions, which the finetuning
config states for every run (pretrained or not): RGB input normalised with the
ImageNet statistics (:data:`PIXEL_MEAN`, :data:`PIXEL_STD` in 0-255 units) and
the stride of a bottleneck in its 3×3 conv (``STRIDE_IN_1X1: False``).
Nothing is downloaded: model-zoo configs are read from the installed package
and ``MODEL.WEIGHTS`` must be a local file or empty.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import DefaultTrainer, hooks, launch
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import CommonMetricPrinter, JSONWriter
from torch import nn

from labelfactory.core.io import atomic_path, atomic_torch_save, atomic_write_json
from labelfactory.core.divergence import divergence, run_status
from labelfactory.core.provenance import describe_device
from labelfactory.core.typed import strict_from_dict
from labelfactory.downstream.data import IMAGENET_MEAN, IMAGENET_STD
from labelfactory.downstream.models import WeightsError

MASK_RCNN_R50_FPN_1X = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
PIXEL_MEAN = tuple(255.0 * m for m in IMAGENET_MEAN)
PIXEL_STD = tuple(255.0 * s for s in IMAGENET_STD)
BACKBONE_PREFIX = "backbone.bottom_up."  # where an FPN model keeps its ResNet
AP_KEYS = ("AP", "AP50", "AP75")
log = logging.getLogger(__name__)

# --- backbone export -----------------------------------------------------------------
_BN = r"(?P<bn>weight|bias|running_mean|running_var)"
_RENAMES = [  # torchvision ResNet name -> detectron2 ResNet name
    (re.compile(r"conv1\.weight"), lambda m: "stem.conv1.weight"),
    (re.compile(rf"bn1\.{_BN}"), lambda m: f"stem.conv1.norm.{m['bn']}"),
    (re.compile(r"layer(?P<s>\d)\.(?P<b>\d+)\.conv(?P<c>\d)\.weight"),
     lambda m: f"res{int(m['s']) + 1}.{m['b']}.conv{m['c']}.weight"),
    (re.compile(rf"layer(?P<s>\d)\.(?P<b>\d+)\.bn(?P<c>\d)\.{_BN}"),
     lambda m: f"res{int(m['s']) + 1}.{m['b']}.conv{m['c']}.norm.{m['bn']}"),
    (re.compile(r"layer(?P<s>\d)\.(?P<b>\d+)\.downsample\.0\.weight"),
     lambda m: f"res{int(m['s']) + 1}.{m['b']}.shortcut.weight"),
    (re.compile(rf"layer(?P<s>\d)\.(?P<b>\d+)\.downsample\.1\.{_BN}"),
     lambda m: f"res{int(m['s']) + 1}.{m['b']}.shortcut.norm.{m['bn']}"),
]
_DROPPED = re.compile(r"(fc\.(weight|bias)|.*num_batches_tracked)")  # classifier; BN's step counter
_RESNET_KEY = re.compile(r"(?:^|\.)((?:stem|res\d)\..*)")  # a model's ResNet tensors, by their bare name


def detectron2_resnet_state(source: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision-layout ResNet in detectron2's ResNet names (``stem.conv1.weight``,
    ``res2.0.conv1.norm.weight``, ``res3.0.shortcut.weight``; BatchNorm becomes the
    ``norm`` of its conv, as FrozenBN takes it, without ``num_batches_tracked``).

    ``source``: a torchvision ResNet or :func:`~.models.resnet_trunk` (its ``fc``
    is dropped), a DeepLabV3 :class:`~.models.SegmentationNet` on one (its
    ``backbone``), or a state dict of any of them. Anything else is an error,
    as is a stem other than ImageNet's 7×7 conv (detectron2 has no other).
    """
    sd = source.state_dict() if isinstance(source, nn.Module) else dict(source)
    if any(k.startswith("backbone.") for k in sd):
        sd = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        if _DROPPED.fullmatch(key):
            continue
        for pattern, rename in _RENAMES:
            if match := pattern.fullmatch(key):
                out[rename(match)] = value.detach().cpu().clone()
                break
        else:
            unknown.append(key)
    if unknown:
        raise WeightsError(f"not a torchvision ResNet: {len(unknown)} keys without a detectron2 name, "
                           f"e.g. {unknown[:5]}")
    stem = out.get("stem.conv1.weight")
    if stem is None or tuple(stem.shape[1:]) != (3, 7, 7):
        raise WeightsError(f"detectron2's ResNet stem is a 7x7 conv on RGB; this backbone's is "
                           f"{None if stem is None else tuple(stem.shape)} (a small_stem trunk cannot be exported)")
    return out


def export_backbone(source: nn.Module | Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Write a ResNet backbone (see :func:`detectron2_resnet_state`) for ``MODEL.WEIGHTS``.

    ``.pkl``: detectron2's model-zoo backbone form, ``{"model": name → array,
    "__author__", "matching_heuristics": True}`` with the bare ResNet names, which
    ``DetectionCheckpointer`` matches to any ResNet model (FPN's
    ``backbone.bottom_up.*``, C4's ``roi_heads.res5.*``); ``.pth``: the native
    layout of an FPN model's checkpoint (``{"model": backbone.bottom_up.* → tensor}``,
    loaded by exact names).
    """
    path = Path(path)
    state = detectron2_resnet_state(source)
    if path.suffix == ".pkl":
        obj = {"model": {k: v.numpy() for k, v in state.items()}, "__author__": "labelfactory",
               "matching_heuristics": True}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            pickle.dump(obj, f)
    elif path.suffix == ".pth":
        atomic_torch_save({"model": {BACKBONE_PREFIX + k: v for k, v in state.items()},
                           "__author__": "labelfactory"}, path)
    else:
        raise ValueError(f"{path}: a detectron2 backbone is written as .pkl or .pth")
    return path


def read_backbone(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an exported backbone by their stored names (bare in ``.pkl``,
    ``backbone.bottom_up.*`` in ``.pth``)."""
    path = Path(path)
    if path.suffix == ".pkl":
        with open(path, "rb") as f:
            return {k: torch.as_tensor(v) for k, v in pickle.load(f)["model"].items()}
    return dict(torch.load(path, map_location="cpu", weights_only=True)["model"])


def check_backbone_fits(model: nn.Module, path: str | Path) -> None:
    """Raise :class:`~.models.WeightsError` unless the backbone file holds every
    ResNet tensor of ``model`` (``stem``/``res2``..``res5``, wherever the model keeps
    them) under the name detectron2 will look for, with the right shape:
    detectron2 itself only warns and leaves a misfit at initialisation."""
    path = Path(path)
    given = read_backbone(path)
    missing, shapes = [], []
    for key, value in model.state_dict().items():
        m = _RESNET_KEY.search(key)
        if m is None:
            continue
        name = m.group(1) if path.suffix == ".pkl" else key
        if name not in given:
            missing.append(key)
        elif given[name].shape != value.shape:
            shapes.append(f"{key}: file {tuple(given[name].shape)} vs model {tuple(value.shape)}")
    if missing or shapes:
        raise WeightsError(f"{path} does not fit the model's ResNet ({len(missing)} tensors missing, "
                           f"{len(shapes)} mis-shaped): {(missing + shapes)[:5]}")


# --- datasets ------------------------------------------------------------------------
def register_coco(json_file: str | Path) -> str:
    """Register a COCO JSON written by :mod:`.coco_export` (images under its folder)
    with detectron2's ``register_coco_instances``; returns the dataset name (the
    resolved path). Registering the same file again replaces the entry."""
    json_file = Path(json_file).resolve()
    if not json_file.is_file():
        raise FileNotFoundError(f"no COCO dataset at {json_file}")
    name = str(json_file)
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(json_file), str(json_file.parent))
    return name


def coco_counts(json_file: str | Path) -> tuple[int, int]:
    """How many images and categories a COCO JSON declares."""
    coco = json.loads(Path(json_file).read_text())
    return len(coco["images"]), len(coco["categories"])


# --- finetuning ----------------------------------------------------------------------
@dataclass
class FinetuneConfig:
    """One Mask R-CNN finetuning run (defaults: the model zoo's R-50-FPN 1x schedule).

    ``weights``: an exported backbone file (:func:`export_backbone`), or None for
    random initialisation. ``batch_size`` counts images per step over all GPUs;
    ``num_gpus`` 0 trains on the CPU in this process. ``overrides`` are further
    detectron2 config keys (``{"MODEL.RPN.POST_NMS_TOPK_TRAIN": 500}``), applied last.
    """

    config_file: str = MASK_RCNN_R50_FPN_1X
    depth: int = 50
    weights: str | None = None
    freeze_at: int = 2
    steps: int = 90_000
    batch_size: int = 16
    lr: float = 0.02
    lr_steps: tuple[int, ...] = (60_000, 80_000)
    warmup_steps: int = 1000
    min_size_train: tuple[int, ...] = (640, 672, 704, 736, 768, 800)
    max_size_train: int = 1333
    min_size_test: int = 800
    max_size_test: int = 1333
    num_gpus: int = 0
    num_workers: int = 4
    seed: int = 0
    threads: int | None = None  # CPU threads per process; None keeps the process setting
    save_model: bool = True  # write model_final.pth into the output folder
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.lr_steps, self.min_size_train = tuple(self.lr_steps), tuple(self.min_size_train)
        if self.depth not in (18, 34, 50, 101, 152):
            raise ValueError(f"depth must be a detectron2 ResNet depth (18, 34, 50, 101, 152), got {self.depth}")
        if any(not 0 < s < self.steps for s in self.lr_steps):
            raise ValueError(f"lr_steps must lie in (0, steps={self.steps}), got {self.lr_steps}")
        if self.num_gpus < 0 or self.batch_size < max(1, self.num_gpus):
            raise ValueError(f"need num_gpus >= 0 and at least one image per GPU, got batch_size "
                             f"{self.batch_size} on {self.num_gpus} GPUs")
        if self.weights is not None and not Path(self.weights).is_file():
            raise WeightsError(f"backbone weights {self.weights} is not a local file (nothing is downloaded)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneConfig":
        return strict_from_dict(cls, d)


def detectron2_config(cfg: FinetuneConfig, train: str, test: str, num_classes: int,
                      output_dir: str | Path) -> CfgNode:
    """The detectron2 config of a run: the model-zoo file, then ``cfg``'s fields,
    then ``cfg.overrides``."""
    d2 = get_cfg()
    local = Path(cfg.config_file)  # a local config file (e.g. a copy of detectron2's configs/), else a model-zoo name
    d2.merge_from_file(str(local) if local.is_file() else model_zoo.get_config_file(cfg.config_file))
    d2.MODEL.DEVICE = "cuda" if cfg.num_gpus else "cpu"
    d2.MODEL.WEIGHTS = str(cfg.weights or "")
    d2.MODEL.PIXEL_MEAN, d2.MODEL.PIXEL_STD, d2.INPUT.FORMAT = list(PIXEL_MEAN), list(PIXEL_STD), "RGB"
    d2.MODEL.RESNETS.DEPTH = cfg.depth
    d2.MODEL.RESNETS.STRIDE_IN_1X1 = False
    if cfg.depth < 50:
        d2.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    d2.MODEL.BACKBONE.FREEZE_AT = cfg.freeze_at
    d2.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    d2.DATASETS.TRAIN, d2.DATASETS.TEST = (train,), (test,)
    d2.DATALOADER.NUM_WORKERS = cfg.num_workers
    d2.INPUT.MIN_SIZE_TRAIN, d2.INPUT.MAX_SIZE_TRAIN = cfg.min_size_train, cfg.max_size_train
    d2.INPUT.MIN_SIZE_TEST, d2.INPUT.MAX_SIZE_TEST = cfg.min_size_test, cfg.max_size_test
    d2.INPUT.MASK_FORMAT = "bitmask"  # reads RLE (our exports) and polygons alike
    d2.SOLVER.MAX_ITER, d2.SOLVER.IMS_PER_BATCH, d2.SOLVER.BASE_LR = cfg.steps, cfg.batch_size, cfg.lr
    d2.SOLVER.STEPS, d2.SOLVER.WARMUP_ITERS = cfg.lr_steps, cfg.warmup_steps
    d2.SOLVER.CHECKPOINT_PERIOD = cfg.steps + 1  # only model_final
    d2.TEST.EVAL_PERIOD = 0
    d2.SEED = cfg.seed
    d2.OUTPUT_DIR = str(output_dir)
    d2.merge_from_list([x for kv in cfg.overrides.items() for x in kv])
    if d2.MODEL.WEIGHTS and "://" in d2.MODEL.WEIGHTS:
        raise WeightsError(f"MODEL.WEIGHTS {d2.MODEL.WEIGHTS} is a URL; nothing is downloaded")
    return d2


class _Trainer(DefaultTrainer):
    """DefaultTrainer with the COCO evaluator (pure-Python COCOeval), writers that
    need no tensorboard, and evaluation left to the caller."""

    def __init__(self, cfg: CfgNode, save_model: bool):
        self.save_model = save_model  # read by build_hooks, which DefaultTrainer.__init__ calls
        super().__init__(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return COCOEvaluator(dataset_name, tasks=("bbox", "segm"), use_fast_impl=False,
                             output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))

    def build_writers(self):
        return [CommonMetricPrinter(self.max_iter), JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"))]

    def build_hooks(self):
        drop = (hooks.EvalHook,) + (() if self.save_model else (hooks.PeriodicCheckpointer,))
        return [h for h in super().build_hooks() if not isinstance(h, drop)]


def _finite(obj):
    """NaN (COCOEvaluator's "no prediction") as None, so the results are strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


def _worker(cfg: FinetuneConfig, train_json: str, test_json: str, num_classes: int, num_train_images: int,
            output_dir: str, on_divergence: str) -> None:
    """One training process (of ``launch``): register, build, load, train, evaluate;
    the main process writes ``results.json``. detectron2 stops a run whose loss or
    predicted boxes turn non-finite with a ``FloatingPointError``: under
    ``on_divergence: record`` that run is recorded unscored (``status: diverged``)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d2 = detectron2_config(cfg, register_coco(train_json), register_coco(test_json), num_classes, output_dir)
    seed_all_rng(cfg.seed + comm.get_rank())
    trainer = _Trainer(d2, cfg.save_model)
    if cfg.weights:
        check_backbone_fits(getattr(trainer.model, "module", trainer.model), cfg.weights)  # DDP wraps it
    trainer.resume_or_load(resume=False)
    diverged = None
    try:
        trainer.train()
    except FloatingPointError as e:
        log.info("detectron2: %s", str(e).splitlines()[0])
        diverged = divergence(trainer.iter, _losses(trainer))
    status = run_status(diverged, on_divergence, f"Mask R-CNN finetuning seed {cfg.seed}")
    metrics = trainer.test(d2, trainer.model) if diverged is None else {}
    if comm.is_main_process():
        atomic_write_json(Path(output_dir) / "results.json", _finite({
            **{task: dict(metrics[task]) for task in metrics}, "num_train_images": num_train_images,
            "loss": _losses(trainer),
            "config": cfg.to_dict(), "world_size": comm.get_world_size(),
            "device": describe_device(d2.MODEL.DEVICE), **status,
        }))


def _losses(trainer: DefaultTrainer) -> list[float]:
    """The total loss of every step detectron2 logged (its non-finite loss is not)."""
    history = trainer.storage.histories()
    return [float(v) for v, _ in history["total_loss"].values()] if "total_loss" in history else []


def finetune(cfg: FinetuneConfig, train_json: str | Path, test_json: str | Path, output_dir: str | Path,
             on_divergence: str = "record") -> dict:
    """Finetune Mask R-CNN on the COCO set ``train_json`` and score it on ``test_json``
    (same categories), on ``cfg.num_gpus`` GPUs (one process each) or the CPU.

    Writes ``output_dir/results.json`` (returned): ``bbox`` and ``segm`` AP
    metrics from ``COCOEvaluator`` (AP, AP50, AP75, APs/m/l, per-class AP; in %,
    None where the model predicted nothing), ``num_train_images``, the per-step ``loss``, the config, the
    device and ``status`` (``diverged``: no metrics, see
    :func:`~labelfactory.core.divergence.run_status`); plus detectron2's
    ``metrics.json``, ``model_final.pth`` and ``inference/``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").unlink(missing_ok=True)  # written anew by the main process
    num_classes = coco_counts(test_json)[1]
    args = (cfg, str(train_json), str(test_json), num_classes, coco_counts(train_json)[0], str(output_dir),
            on_divergence)
    launch(_worker, max(1, cfg.num_gpus), dist_url="auto", args=args)
    return json.loads((output_dir / "results.json").read_text())
