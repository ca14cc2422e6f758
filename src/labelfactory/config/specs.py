"""Typed views of a validated configuration.

Defaults come from the schema: a field restating a scalar default is checked
against it (tests/test_config.py), and a field holding a whole section as a
dict defaults to the schema's filled-in section (:func:`_schema_default`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from labelfactory.config.schema import schema_default


def _schema_default(pointer: str):
    """A ``default_factory``: what a config leaving out the key at ``pointer`` gets."""
    return lambda: schema_default(pointer)


@dataclass(frozen=True)
class CheckpointSpec:
    name: str
    url: str
    sha256: str | None = None
    format: str = "auto"
    generator: dict | None = None  # a user's nn.Module class and how to run it (generators.torch_module)
    model_flags: dict | None = None  # guided-diffusion's create_model_and_diffusion flags (generators.guided_diffusion)


@dataclass(frozen=True)
class AnnotationSpec:
    """Samples to annotate: ``num_samples`` seeds from ``seed_start`` (per class for
    class-conditional tasks, as BigDatasetGAN's 5 per class)."""

    num_samples: int = 16
    seed_start: int = 0
    expected_count: int | None = None
    expected_per_class: int | None = None
    only_masked: bool = False
    source: str = "samples"  # samples = rendered from seeds; images = given annotated images (diffusion generators)
    latents: str | None = None
    merge: str | None = None
    select: str = "random"  # random = the seed range; uncertainty = active learning (annotations.active_selection)
    pool: dict = field(default_factory=lambda: {"seed_start": 1_000_000, "size": 1000})
    diversity: str = "none"
    oversample: float = 4.0
    masks: bool = True  # false: a keypoint-only folder; the task runs the keypoint stages only

    @property
    def seeds(self) -> list[int]:
        return list(range(self.seed_start, self.seed_start + self.num_samples))


@dataclass(frozen=True)
class FeatureSpec:
    layers: str | tuple[str, ...] = "all"
    batch_size: int = 8


def parse_range(spec: str) -> list[int]:
    """``"0-3,7"`` → ``[0, 1, 2, 3, 7]`` (inclusive ranges, as NVIDIA's ``generate.py`` seeds)."""
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def labels_file(tasks: dict, name: str, seen: tuple[str, ...] = ()) -> str | None:
    """A task's labels.yaml: its own `labels`, its folder's, or (reuse) the reused task's."""
    t = tasks.get(name)
    if not isinstance(t, dict) or name in seen:
        return None
    if t.get("labels"):
        return t["labels"]
    if t.get("annotations"):
        return str(Path(t["annotations"]) / "labels.yaml")
    reuse = t.get("reuse")
    return labels_file(tasks, reuse.get("task"), (*seen, name)) if isinstance(reuse, dict) else None


def task_classes(spec) -> tuple[int, ...] | None:
    if spec is None:
        return None
    return tuple(parse_range(spec)) if isinstance(spec, str) else tuple(spec)


@dataclass(frozen=True)
class SynthesisSpec:
    """Scattered synthesis: ``num_shards`` shards per class, each a block of seeds.

    Shard ids are ``{i:05d}`` for a single class and ``c{class:04d}-{i:05d}`` when
    sweeping the classes of a class-conditional generator."""

    num_shards: int = 4
    samples_per_shard: int = 500
    seed_start: int = 100000
    classes: tuple[int, ...] | None = None
    batch_size: int = 64
    label_rule: str = "vote"
    score_rule: str = "top10"
    top_fraction: float = 0.1
    store_latents: bool = False
    store_uncertainty: bool = True
    store_probabilities: bool = False
    precision: str = "float32"
    sampling: dict | None = None  # VQGAN prior: temperature, top_k, top_p

    @property
    def shards(self) -> list[str]:
        blocks = [f"{i:05d}" for i in range(self.num_shards)]
        if self.classes is None:
            return blocks
        return [f"c{c:04d}-{b}" for c in self.classes for b in blocks]

    def shard_class(self, shard: str, default: int) -> int:
        """The class a shard synthesises (``default``, the task's class, for plain shard ids)."""
        return int(shard[1:5]) if shard.startswith("c") else default

    def seeds(self, shard: str) -> list[int]:
        """Seeds of one shard: consecutive blocks, so every (seed, class) is in exactly one shard."""
        start = self.seed_start + int(shard[-5:]) * self.samples_per_shard
        return list(range(start, start + self.samples_per_shard))


@dataclass(frozen=True)
class DownstreamSpec:
    """The downstream experiment of a task: ``train`` holds the model and
    schedule options (see :func:`labelfactory.downstream.experiment.seg_config`),
    ``real`` the real dataset (:class:`~labelfactory.downstream.experiment.RealDataSpec`)."""

    enabled: bool = True
    settings: tuple[str, ...] = ("few_shot", "synthetic", "synthetic_filtered", "fully_supervised")
    seeds: int = 3
    threads: int = 4
    train: dict = field(default_factory=dict)
    real: dict = field(default_factory=_schema_default("$defs/downstream/properties/real"))
    reference_annotator: str | None = None
    report_samples: int = 500
    truth_masks: str | None = None
    labels: str = "annotated"
    compare: tuple[str, ...] = ()
    evaluation: dict = field(default_factory=lambda: {"protocol": "holdout", "folds": 5})
    variant: str | None = None
    combine: tuple[str, ...] = ()
    score_interpreter: bool = False  # diffusion tasks: the interpreter itself scored on the real test images

    @classmethod
    def from_dict(cls, d: dict) -> "DownstreamSpec":
        own = {"enabled", "settings", "seeds", "threads", "real", "reference_annotator", "report_samples", "labels",
               "compare", "evaluation", "variant", "combine", "truth_masks", "score_interpreter"}
        return cls(enabled=d["enabled"], settings=tuple(d["settings"]), seeds=d["seeds"], threads=d["threads"],
                   train={k: v for k, v in d.items() if k not in own}, real=dict(d["real"]),
                   reference_annotator=d["reference_annotator"], report_samples=d["report_samples"],
                   labels=d["labels"], compare=tuple(d["compare"]), evaluation=dict(d["evaluation"]),
                   variant=d["variant"], combine=tuple(d["combine"]), truth_masks=d["truth_masks"],
                   score_interpreter=d["score_interpreter"])


@dataclass(frozen=True)
class KeypointsSpec:
    """DatasetGAN's keypoint experiment of a task (config ``tasks.<t>.keypoints``): the ``head``
    (:class:`~labelfactory.interpreters.keypoints.KeypointHeadConfig` keys), its shards' options,
    the filter, and the detector runs (``detector`` options over the task's downstream ones,
    ``real``: None for the task's downstream real data)."""

    enabled: bool = False
    head: dict = field(default_factory=dict)
    store_heatmaps: bool = False
    filter_ratio: float = 0.1
    settings: tuple[str, ...] = ("few_shot", "synthetic", "synthetic_filtered", "fully_supervised")
    seeds: int = 3
    threads: int = 4
    sigma: float = 2.0
    detector: dict = field(default_factory=dict)
    real: dict | None = None
    reference_annotator: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "KeypointsSpec":
        return cls(**{**d, "head": dict(d["head"]), "settings": tuple(d["settings"]), "detector": dict(d["detector"]),
                      "real": dict(d["real"]) if d["real"] else None})


@dataclass(frozen=True)
class ValidationSpec:
    """The config's ``tasks.<t>.validation``: ``folds`` (at most one per image), ensemble
    ``members`` per fold (None: the task's), the floor ``min_iou`` of every class's IoU,
    ``stop``: whether flagged classes stop the workflow before synthesis, and ``few_shot``:
    whether the downstream model cross-validated on the same folds (``few_shot_steps`` steps,
    None: the task's schedule) is a second baseline."""

    enabled: bool = True
    folds: int = 4
    members: int | None = 3
    min_iou: float = 0.2
    stop: bool = False
    few_shot: bool = False
    few_shot_steps: int | None = None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    checkpoint: str
    annotations: str | None
    labels: str
    cls: int = -1
    classes: tuple[int, ...] | None = None
    class_names: tuple[str, ...] | None = None
    truncation: float = 1.0
    noise: str = "const"
    average_latent: str | None = None
    truncation_cutoff: int | None = None  # StyleGAN1: None = its resolution's (8 from 512 px up, else 7)
    diffusion: dict | None = None  # diffusion generators: sampler, steps, class prompts (generators.view.set_diffusion)
    image: dict = field(default_factory=_schema_default("$defs/task/properties/image"))
    annotation: AnnotationSpec = field(default_factory=AnnotationSpec)
    features: FeatureSpec = field(default_factory=FeatureSpec)
    interpreter: dict = field(default_factory=_schema_default("$defs/task/properties/interpreter"))
    synthesis: SynthesisSpec = field(default_factory=SynthesisSpec)
    validation: ValidationSpec = field(default_factory=ValidationSpec)
    filter_ratio: float = 0.1
    downstream: DownstreamSpec = field(default_factory=DownstreamSpec)
    reuse: dict | None = None  # {task, min_psnr}: a VQGAN re-encodes that task's annotations
    keypoints: KeypointsSpec | None = None  # DatasetGAN's keypoint experiment

    @property
    def segmentation(self) -> bool:
        """Whether the task runs the segmentation stages (its annotations have masks)."""
        return self.annotation.masks

    @property
    def keypoint_train(self) -> dict:
        """The keypoint detector's training options: the task's downstream ones, ``keypoints.detector`` over them."""
        return {**self.downstream.train, **self.keypoints.detector}

    @property
    def keypoint_real(self) -> dict:
        """The keypoint experiment's real data: ``keypoints.real``, else the task's ``downstream.real``."""
        return self.keypoints.real or self.downstream.real

    @property
    def variant(self) -> str:
        """How this task's rows are named in another task's table."""
        return self.downstream.variant or f"{self.interpreter['type']} interpreter"

    @property
    def conditional(self) -> bool:
        """A class-conditional task: annotated and synthesised per class (BigDatasetGAN)."""
        return self.classes is not None

    @property
    def annotation_classes(self) -> list[int] | None:
        """The class of every sample to annotate, per class in turn (None: unconditional)."""
        if self.classes is not None:
            return list(self.classes)
        return None if self.cls < 0 else [self.cls]


@dataclass(frozen=True)
class InitSpec:
    """One initialisation of the transfer experiment (a method of
    :data:`labelfactory.downstream.pretrain.PRETRAINING_METHODS` and what it reads)."""

    name: str
    method: str
    task: str | None = None
    path: str | None = None
    real: dict = field(default_factory=_schema_default("$defs/init/properties/real"))


@dataclass(frozen=True)
class TargetSpec:
    """One transfer target (config ``pretraining.targets.<name>``): its reader ``type``, the
    ``tasks`` run on it (``instance``, ``semantic``) and ``data``, the whole entry (paths,
    splits, resize, or the toy scenes' sizes)."""

    name: str
    type: str
    tasks: tuple[str, ...]
    data: dict


@dataclass(frozen=True)
class PretrainingSpec:
    """BigDatasetGAN's transfer experiment (config ``pretraining``): backbones from
    ``inits`` under the ``pretrain`` budget, finetuned on each of ``targets`` at each fraction and seed."""

    arch: str
    threads: int
    gpus: int
    seeds: int
    fractions: tuple[float, ...]
    subset_seed: int
    pretrain: dict
    inits: dict[str, InitSpec]
    targets: dict[str, TargetSpec]
    detection: dict
    semantic: dict

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainingSpec":
        return cls(arch=d["arch"], threads=d["threads"], gpus=d["gpus"], seeds=d["seeds"],
                   fractions=tuple(float(f) for f in d["fractions"]), subset_seed=d["subset_seed"],
                   pretrain=dict(d["pretrain"]), inits={n: InitSpec(name=n, **i) for n, i in d["inits"].items()},
                   targets={n: TargetSpec(name=n, type=t["type"], tasks=tuple(t["tasks"]), data=dict(t))
                            for n, t in d["targets"].items()},
                   detection=dict(d["detection"]), semantic=dict(d["semantic"]))


@dataclass(frozen=True)
class WorkflowConfig:
    device: str
    checkpoints: dict[str, CheckpointSpec]
    tasks: dict[str, TaskSpec]
    pretraining: PretrainingSpec | None = None

    @classmethod
    def from_dict(cls, cfg: dict) -> "WorkflowConfig":
        """Typed view of an already validated config dict."""
        ckpts = {n: CheckpointSpec(name=n, **c) for n, c in cfg["checkpoints"].items()}
        tasks = {}
        for n, t in cfg["tasks"].items():
            t = dict(t)
            layers = t["features"]["layers"]
            classes = task_classes(t["classes"])
            syn_classes = task_classes(t["synthesis"]["classes"])
            tasks[n] = TaskSpec(
                name=n,
                checkpoint=t["checkpoint"],
                annotations=t.get("annotations"),
                labels=labels_file(cfg["tasks"], n),
                cls=t["class"],
                classes=classes,
                class_names=tuple(t["class_names"]) if t["class_names"] else None,
                truncation=float(t["truncation"]),
                noise=t["noise"],
                average_latent=t["average_latent"],
                truncation_cutoff=t["truncation_cutoff"],
                diffusion=t["diffusion"],
                image=dict(t["image"]),
                annotation=AnnotationSpec(**t["annotation"]),
                features=FeatureSpec(layers=layers if isinstance(layers, str) else tuple(layers),
                                     batch_size=t["features"]["batch_size"]),
                interpreter=dict(t["interpreter"]),
                synthesis=SynthesisSpec(**{**t["synthesis"], "classes": syn_classes if syn_classes else classes}),
                validation=ValidationSpec(**t["validation"]),
                filter_ratio=float(t["filter"]["ratio"]),
                downstream=DownstreamSpec.from_dict(t["downstream"]),
                reuse=dict(t["reuse"]) if t["reuse"] else None,
                keypoints=KeypointsSpec.from_dict(t["keypoints"]) if t["keypoints"] else None,
            )
        pretraining = PretrainingSpec.from_dict(cfg["pretraining"]) if cfg.get("pretraining") else None
        return cls(device=cfg["device"], checkpoints=ckpts, tasks=tasks, pretraining=pretraining)
