"""Workflow configuration: schema validation with defaults, cross-checks, typed views.

The JSON schema (``workflow/schemas/config.schema.yaml``) is the single source
of truth for keys, types, ranges and defaults; :func:`validate_config` applies
it (filling defaults, as Snakemake's validator does) and then checks what a
schema cannot express (references between sections, files that must exist).
The Snakefile calls it at parse time, so a bad value fails before any job, and
every problem of the config is reported at once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message says which key and why."""


@dataclass(frozen=True)
class CheckpointSpec:
    name: str
    url: str
    sha256: str | None = None
    format: str = "auto"
    generator: dict | None = None  # a user's nn.Module class and how to run it (generators.torch_module)


@dataclass(frozen=True)
class AnnotationSpec:
    """Samples to annotate: ``num_samples`` seeds from ``seed_start`` (per class for
    class-conditional tasks, as BigDatasetGAN's 5 per class)."""

    num_samples: int = 16
    seed_start: int = 0
    expected_count: int | None = None
    expected_per_class: int | None = None
    latents: str | None = None
    merge: str | None = None
    select: str = "random"  # random = the seed range; uncertainty = active learning (labelfactory.active_learning)
    pool: dict = field(default_factory=lambda: {"seed_start": 1_000_000, "size": 1000})
    diversity: str = "none"
    oversample: float = 4.0

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
    real: dict = field(default_factory=dict)
    reference_annotator: str | None = None
    report_samples: int = 500
    labels: str = "annotated"
    compare: tuple[str, ...] = ()
    evaluation: dict = field(default_factory=lambda: {"protocol": "holdout", "folds": 5})
    variant: str | None = None
    combine: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: dict) -> "DownstreamSpec":
        own = {"enabled", "settings", "seeds", "threads", "real", "reference_annotator", "report_samples", "labels",
               "compare", "evaluation", "variant", "combine"}
        return cls(enabled=d["enabled"], settings=tuple(d["settings"]), seeds=d["seeds"], threads=d["threads"],
                   train={k: v for k, v in d.items() if k not in own}, real=dict(d["real"]),
                   reference_annotator=d["reference_annotator"], report_samples=d["report_samples"],
                   labels=d["labels"], compare=tuple(d["compare"]), evaluation=dict(d["evaluation"]),
                   variant=d["variant"], combine=tuple(d["combine"]))


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
    image: dict = field(default_factory=dict)
    annotation: AnnotationSpec = field(default_factory=AnnotationSpec)
    features: FeatureSpec = field(default_factory=FeatureSpec)
    interpreter: dict = field(default_factory=dict)
    synthesis: SynthesisSpec = field(default_factory=SynthesisSpec)
    filter_ratio: float = 0.1
    downstream: DownstreamSpec = field(default_factory=DownstreamSpec)
    reuse: dict | None = None  # {task, min_psnr}: a VQGAN re-encodes that task's annotations

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
    real: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PretrainingSpec:
    """BigDatasetGAN's transfer experiment (config ``pretraining``): backbones from
    ``inits`` under the ``pretrain`` budget, finetuned on ``data`` at each fraction and seed."""

    arch: str
    threads: int
    gpus: int
    seeds: int
    fractions: tuple[float, ...]
    subset_seed: int
    pretrain: dict
    inits: dict[str, InitSpec]
    data: dict
    detection: dict
    semantic: dict

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainingSpec":
        return cls(arch=d["arch"], threads=d["threads"], gpus=d["gpus"], seeds=d["seeds"],
                   fractions=tuple(float(f) for f in d["fractions"]), subset_seed=d["subset_seed"],
                   pretrain=dict(d["pretrain"]), inits={n: InitSpec(name=n, **i) for n, i in d["inits"].items()},
                   data=dict(d["data"]), detection=dict(d["detection"]), semantic=dict(d["semantic"]))


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
            classes = _classes(t["classes"])
            syn_classes = _classes(t["synthesis"]["classes"])
            tasks[n] = TaskSpec(
                name=n,
                checkpoint=t["checkpoint"],
                annotations=t.get("annotations"),
                labels=_labels_file(cfg["tasks"], n),
                cls=t["class"],
                classes=classes,
                class_names=tuple(t["class_names"]) if t["class_names"] else None,
                truncation=float(t["truncation"]),
                noise=t["noise"],
                average_latent=t["average_latent"],
                image=dict(t["image"]),
                annotation=AnnotationSpec(**t["annotation"]),
                features=FeatureSpec(layers=layers if isinstance(layers, str) else tuple(layers),
                                     batch_size=t["features"]["batch_size"]),
                interpreter=dict(t["interpreter"]),
                synthesis=SynthesisSpec(**{**t["synthesis"], "classes": syn_classes if syn_classes else classes}),
                filter_ratio=float(t["filter"]["ratio"]),
                downstream=DownstreamSpec.from_dict(t["downstream"]),
                reuse=dict(t["reuse"]) if t["reuse"] else None,
            )
        pretraining = PretrainingSpec.from_dict(cfg["pretraining"]) if cfg.get("pretraining") else None
        return cls(device=cfg["device"], checkpoints=ckpts, tasks=tasks, pretraining=pretraining)


def _labels_file(tasks: dict, name: str, seen: tuple[str, ...] = ()) -> str | None:
    """A task's labels.yaml: its own `labels`, its folder's, or (reuse) the reused task's."""
    t = tasks.get(name)
    if not isinstance(t, dict) or name in seen:
        return None
    if t.get("labels"):
        return t["labels"]
    if t.get("annotations"):
        return str(Path(t["annotations"]) / "labels.yaml")
    reuse = t.get("reuse")
    return _labels_file(tasks, reuse.get("task"), (*seen, name)) if isinstance(reuse, dict) else None


def _classes(spec) -> tuple[int, ...] | None:
    if spec is None:
        return None
    return tuple(parse_range(spec)) if isinstance(spec, str) else tuple(spec)


def validate_config(cfg: dict, base_dir: str | Path = ".", check_files: bool = True) -> dict:
    """Validate against the schema (filling defaults) and cross-check; returns the filled dict.

    Every problem is reported in one :class:`ConfigError`, a line each with its key
    path and what is allowed; a value the schema rejects is not cross-checked.
    ``base_dir`` is where relative paths in the config are resolved (the
    workflow's working directory)."""
    cfg = copy.deepcopy(cfg)
    errors = _schema_errors(cfg)
    problems = [_schema_message(e) for e in errors]
    rejected = [tuple(e.absolute_path) for e in errors]
    if isinstance(cfg.get("checkpoints"), dict) and isinstance(cfg.get("tasks"), dict):
        for name in cfg["tasks"]:
            problems += _task_problems(cfg, name, rejected, Path(base_dir), check_files)
    if not errors:  # the ablations' cross-checks read the filled-in tasks
        from .ablations import ablation_problems

        problems += ablation_problems(cfg)
    if _accepted(cfg, rejected, ("pretraining",)) and isinstance(cfg.get("tasks"), dict):
        problems += _pretraining_problems(cfg, Path(base_dir), check_files)
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise ConfigError(f"invalid configuration ({count}):\n  " + "\n  ".join(problems))
    return cfg


def _schema_errors(cfg: dict) -> list:
    """Every schema violation in ``cfg``, filling in defaults on the way (as Snakemake's
    ``validate(set_default=True)`` does, but without stopping at the first error)."""
    from jsonschema import Draft202012Validator, validators

    properties = Draft202012Validator.VALIDATORS["properties"]

    def fill_defaults(validator, props, instance, schema):
        if validator.is_type(instance, "object"):
            for key, sub in props.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from properties(validator, props, instance, schema)

    validator = validators.extend(Draft202012Validator, {"properties": fill_defaults})
    return list(validator(yaml.safe_load(SCHEMA_PATH.read_text())).iter_errors(cfg))


def _accepted(cfg: dict, rejected: list[tuple], path: tuple) -> bool:
    """Whether ``path`` is in ``cfg`` and the schema rejected nothing at or under it."""
    node = cfg
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return not any(r[:len(path)] == path for r in rejected)


def _task_problems(cfg: dict, name: str, rejected: list[tuple], base_dir: Path, check_files: bool) -> list[str]:
    """What the schema cannot express about one task, checked on the keys the schema accepted."""
    task, checkpoints = cfg["tasks"][name], cfg["checkpoints"]

    def accepted(*keys: str) -> bool:
        return all(_accepted(cfg, rejected, ("tasks", name, *k.split("."))) for k in keys)

    problems = []
    if accepted("checkpoint") and task["checkpoint"] not in checkpoints:
        problems.append(f"tasks.{name}.checkpoint: {task['checkpoint']!r} is not a key of `checkpoints` "
                        f"(known: {sorted(checkpoints)})")
    if accepted("annotation.seed_start", "annotation.num_samples", "synthesis.seed_start", "synthesis.num_shards",
                "synthesis.samples_per_shard"):
        ann_seeds = range(task["annotation"]["seed_start"],
                          task["annotation"]["seed_start"] + task["annotation"]["num_samples"])
        syn = task["synthesis"]
        syn_seeds = range(syn["seed_start"], syn["seed_start"] + syn["num_shards"] * syn["samples_per_shard"])
        if ann_seeds.start < syn_seeds.stop and syn_seeds.start < ann_seeds.stop:
            problems.append(f"tasks.{name}.synthesis.seed_start: synthesis seeds {syn_seeds.start}.."
                            f"{syn_seeds.stop - 1} overlap the annotation seeds {ann_seeds.start}..{ann_seeds.stop - 1}")
    if accepted("reuse", "classes") and not any(r[:3] == ("tasks", name, "annotations") for r in rejected):
        problems += _reuse_problems(cfg, name)
    if check_files and accepted("annotations", "labels") and task.get("annotations"):
        ann = base_dir / task["annotations"]
        labels = base_dir / (task["labels"] or Path(task["annotations"]) / "labels.yaml")
        # a missing folder is fine until import_annotations needs it: the samples
        # to annotate are rendered first (rule sample_for_annotation)
        if ann.is_dir() and not labels.is_file():
            problems.append(f"tasks.{name}.labels: {labels} does not exist")
    if accepted("downstream.real", "downstream.weights", "downstream.backbone_weights",
                "downstream.reference_annotator"):
        problems += _downstream_problems(name, task["downstream"], base_dir, check_files)
    if accepted("classes", "class_names", "downstream.labels", "downstream.real", "annotation.expected_per_class"):
        problems += _class_problems(name, task)
    if accepted("checkpoint", "truncation", "average_latent", "image") and task["checkpoint"] in checkpoints:
        problems += _generator_problems(name, task, checkpoints[task["checkpoint"]], base_dir, check_files)
    if accepted("downstream.snapshots", "downstream.steps", "downstream.evaluation"):
        problems += _snapshot_problems(f"tasks.{name}.downstream", task["downstream"])
    for key in ("compare", "combine"):
        if accepted(f"downstream.{key}"):
            problems += [f"tasks.{name}.downstream.{key}: {other!r} is not another key of `tasks`"
                         for other in task["downstream"][key] if other not in cfg["tasks"] or other == name]
    if accepted("downstream.combine", "downstream.settings", "downstream.labels", "classes"):
        problems += _combine_problems(cfg, name)
    return problems


def _reuse_problems(cfg: dict, name: str) -> list[str]:
    """Exactly one of `annotations` and `reuse`; a reused task that has annotations of its own
    and the same classes."""
    task, where = cfg["tasks"][name], f"tasks.{name}"
    if bool(task.get("annotations")) == bool(task["reuse"]):
        return [f"{where}: give either `annotations` (a folder) or `reuse` (a task whose annotations a VQGAN "
                f"re-encodes), {'not both' if task['reuse'] else 'neither is set'}"]
    if not task["reuse"]:
        return []
    source = task["reuse"]["task"]
    other = cfg["tasks"].get(source)
    if other is None or source == name:
        return [f"{where}.reuse.task: {source!r} is not another key of `tasks`"]
    if not isinstance(other, dict) or not other.get("annotations"):
        return [f"{where}.reuse.task: {source!r} has no annotation folder of its own to reuse"]
    if not _same_classes(other.get("classes"), task["classes"]):
        return [f"{where}.classes: {task['classes']} differ from the reused task {source!r}'s "
                f"{other.get('classes')} (its annotations keep their classes)"]
    return []


def _same_classes(a, b) -> bool:
    """Whether two tasks' `classes` name the same classes (True when one is malformed: the schema says so)."""
    try:
        return _classes(a) == _classes(b)
    except (TypeError, ValueError):
        return True


def _combine_problems(cfg: dict, name: str) -> list[str]:
    """`combine` and the synthetic_combined setting go together, over tasks of one label space."""
    task, where = cfg["tasks"][name], f"tasks.{name}.downstream"
    ds = task["downstream"]
    if bool(ds["combine"]) != ("synthetic_combined" in ds["settings"]):
        return [f"{where}.combine: the setting synthetic_combined needs the tasks to combine, and `combine` "
                "needs synthetic_combined in `settings`"]
    problems = []
    for other in ds["combine"]:
        o = cfg["tasks"].get(other)
        if not isinstance(o, dict) or other == name:
            continue
        if not _same_classes(o.get("classes"), task["classes"]) or \
                o.get("downstream", {}).get("labels") != ds["labels"]:
            problems.append(f"{where}.combine: {other!r} has other classes or labels than {name!r} "
                            "(combined samples must share one label space)")
        elif ds["labels"] != "class_aware" and _labels_file(cfg["tasks"], other) != _labels_file(cfg["tasks"], name):
            problems.append(f"{where}.combine: {other!r} has another labels.yaml than {name!r}")
    return problems


def _generator_problems(name: str, task: dict, checkpoint: dict, base_dir: Path, check_files: bool) -> list[str]:
    """The average latent a checkpoint format needs, and an image crop inside its image."""
    where, problems = f"tasks.{name}", []
    avg = task["average_latent"]
    if avg is None and task["truncation"] < 1 and checkpoint.get("format") == "datasetgan-stylegan1":
        problems.append(f"{where}.average_latent: truncation {task['truncation']:g} needs the average latent, which "
                        "datasetgan-stylegan1 checkpoints do not hold (give the release's avg_latent_stylegan1.npy)")
    if avg is not None and check_files and not (base_dir / avg).is_file():
        problems.append(f"{where}.average_latent: {avg} does not exist")
    size, crop = task["image"]["size"], task["image"]["crop"]
    if crop is not None and not (crop[0] < crop[1] <= (size or crop[1]) and crop[2] < crop[3] <= (size or crop[3])):
        problems.append(f"{where}.image.crop: {crop} is not [top, bottom, left, right] with top < bottom and "
                        f"left < right" + (f" inside the {size}x{size} image" if size else ""))
    return problems


def pretraining_files(cfg: dict) -> dict[str, str]:
    """``{key path: file}`` of every local file the ``pretraining`` section names
    (weights of `weights` inits, the `coco` data's JSON files and image folders)."""
    pre = cfg.get("pretraining") or {}
    files = {f"pretraining.inits.{n}.path": i.get("path") for n, i in pre.get("inits", {}).items()
             if i.get("method") == "weights"}
    data = pre.get("data", {})
    if data.get("type") == "coco":
        files.update({f"pretraining.data.{k}": data.get(k) for k in ("train_json", "test_json", "train_image_root",
                                                                     "test_image_root")})
    return {k: v for k, v in files.items() if v}


def _pretraining_problems(cfg: dict, base_dir: Path, check_files: bool) -> list[str]:
    """An init's task, weights and data against the rest of the config; the data's files."""
    pre, problems = cfg["pretraining"], []
    for name, init in pre["inits"].items():
        where, method = f"pretraining.inits.{name}", init["method"]
        if method == "segmentation" and init["task"] not in cfg["tasks"]:
            problems.append(f"{where}.task: segmentation pretraining needs a key of `tasks` "
                            f"(known: {sorted(cfg['tasks'])}), got {init['task']!r}")
        if method == "weights" and not init["path"]:
            problems.append(f"{where}.path: the weights method needs a local torchvision ResNet state dict")
        problems += [f"{where}.{key}: only a {used} init reads `{key}` (this one is {method})"
                     for key, used in (("task", "segmentation"), ("path", "weights")) if init[key] and method != used]
    if pre["data"]["type"] == "coco":
        problems += [f"pretraining.data.{k}: a `coco` downstream set needs its instances JSON"
                     for k in ("train_json", "test_json") if not pre["data"][k]]
    lo, hi = pre["data"]["objects"]
    if lo > hi:
        problems.append(f"pretraining.data.objects: [{lo}, {hi}] is not a range low <= high")
    if check_files:
        problems += [f"{key}: {path} does not exist" for key, path in pretraining_files(cfg).items()
                     if not (base_dir / path).exists()]
    return problems


def _class_problems(name: str, task: dict) -> list[str]:
    """A class-conditional task's classes against its names, labels and real data."""
    where = f"tasks.{name}"
    classes = _classes(task["classes"])
    ds, real = task["downstream"], task["downstream"]["real"]
    problems = []
    if classes is None:
        if ds["labels"] == "class_aware":
            problems.append(f"{where}.downstream.labels: class_aware needs the task's `classes`")
        if task["annotation"]["expected_per_class"] is not None and task["class"] < 0:
            problems.append(f"{where}.annotation.expected_per_class: needs `classes` (or `class`)")
        return problems
    if task["class_names"] is not None and len(task["class_names"]) != len(classes):
        problems.append(f"{where}.class_names: {len(task['class_names'])} names for {len(classes)} classes")
    if real["type"] == "toyworld" and real["labels"] == "objects" and real["classes"] is not None \
            and len(real["classes"]) != len(classes):
        problems.append(f"{where}.downstream.real.classes: {len(real['classes'])} toy classes for the task's "
                        f"{len(classes)} classes (one per class, in order)")
    return problems


def _snapshot_problems(where: str, ds: dict) -> list[str]:
    problems = []
    if ds["snapshots"] > ds["steps"]:
        problems.append(f"{where}.snapshots: {ds['snapshots']} snapshots of a {ds['steps']}-step run")
    if ds["evaluation"]["protocol"] == "cross_validation" and ds["snapshots"] < 2:
        problems.append(f"{where}.evaluation.protocol: cross_validation chooses among snapshots; "
                        f"set {where}.snapshots >= 2")
    return problems


def _downstream_problems(task: str, ds: dict, base_dir: Path, check_files: bool) -> list[str]:
    where = f"tasks.{task}.downstream"
    problems = []
    on_disk = ds["real"]["type"] != "toyworld"
    if on_disk and not ds["real"]["path"]:
        problems.append(f"{where}.real.path: a `{ds['real']['type']}` dataset needs its path")
    if check_files:
        files = {"weights": ds["weights"], "backbone_weights": ds["backbone_weights"],
                 "reference_annotator": ds["reference_annotator"],
                 "real.path": ds["real"]["path"] if on_disk else None}
        problems += [f"{where}.{key}: {path} does not exist" for key, path in files.items()
                     if path and not (base_dir / path).exists()]
    return problems


def _schema_message(err) -> str:
    """``key.path: what is wrong`` for one jsonschema error, with what is allowed
    where the validator's own message does not say it."""
    where = ".".join(map(str, err.absolute_path)) or "<root>"
    msg = err.message
    if err.validator == "additionalProperties" and err.validator_value is False:
        msg += f" (allowed: {', '.join(err.schema.get('properties', {}))})"
    elif err.validator in ("oneOf", "anyOf") and err.context:
        msg += f" (allowed: {'; or '.join(_describe(s) for s in err.validator_value)})"
    elif "propertyNames" in err.absolute_schema_path:
        msg = f"key {msg}"
    return f"{where}: {msg}"


def _describe(schema: dict) -> str:
    """A schema's allowed values in words: ``one of 'all'``, ``array of string``, ..."""
    if "enum" in schema:
        return "one of " + ", ".join(map(repr, schema["enum"]))
    kind = schema.get("type", "any value")
    text = " or ".join(kind) if isinstance(kind, list) else kind
    if "pattern" in schema:
        text += f" matching {schema['pattern']!r}"
    if isinstance(schema.get("items"), dict):
        text += f" of {_describe(schema['items'])}"
    return text


def load_config(path: str | Path, check_files: bool = True) -> dict:
    """Read a YAML config file and validate it (paths relative to the current directory)."""
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the config must be a mapping")
    return validate_config(cfg, ".", check_files)
