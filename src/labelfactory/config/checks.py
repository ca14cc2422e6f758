"""What the schema cannot express: references between sections, files that must
exist, the ablations' sizes. :func:`validate_config` runs the schema and these
checks and reports every problem at once; the Snakefile calls it at parse time.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from labelfactory.config.schema import ConfigError, schema_errors, schema_message
from labelfactory.config.specs import DownstreamSpec, labels_file, task_classes

# checkpoint formats that can hold a StyleGAN1 in DatasetGAN's layout (the canonical one: a converted one)
STYLEGAN1_FORMATS = ("auto", "safetensors", "datasetgan-stylegan1")
# checkpoint formats that can hold a diffusion model (whose features annotated images can have)
DIFFUSION_FORMATS = ("auto", "safetensors", "guided-diffusion", "diffusers", "stable-diffusion")
# checkpoint formats that can hold a Stable Diffusion folder (whose classes are text prompts)
PROMPT_FORMATS = ("auto", "safetensors", "stable-diffusion")


def validate_config(cfg: dict, base_dir: str | Path = ".", check_files: bool = True) -> dict:
    """Validate against the schema (filling defaults) and cross-check; returns the filled dict.

    Every problem is reported in one :class:`ConfigError`, a line each with its key
    path and what is allowed; a value the schema rejects is not cross-checked.
    ``base_dir`` is where relative paths in the config are resolved (the
    workflow's working directory)."""
    cfg = copy.deepcopy(cfg)
    errors = schema_errors(cfg)
    problems = [schema_message(e) for e in errors]
    rejected = [tuple(e.absolute_path) for e in errors]
    if isinstance(cfg.get("checkpoints"), dict) and isinstance(cfg.get("tasks"), dict):
        for name in cfg["tasks"]:
            problems += _task_problems(cfg, name, rejected, Path(base_dir), check_files)
    if not errors:  # the ablations' cross-checks read the filled-in tasks
        problems += ablation_problems(cfg)
    if _accepted(cfg, rejected, ("pretraining",)) and isinstance(cfg.get("tasks"), dict):
        problems += _pretraining_problems(cfg, Path(base_dir), check_files)
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise ConfigError(f"invalid configuration ({count}):\n  " + "\n  ".join(problems))
    return cfg


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
    if accepted("downstream.real"):
        problems += _downstream_problems(name, task["downstream"])
    if accepted("classes", "class_names", "downstream.labels", "downstream.real", "annotation.expected_per_class"):
        problems += _class_problems(name, task)
    if accepted("checkpoint", "truncation", "average_latent", "truncation_cutoff", "image") \
            and task["checkpoint"] in checkpoints:
        problems += _generator_problems(name, task, checkpoints[task["checkpoint"]], base_dir, check_files)
    if accepted("checkpoint", "diffusion", "classes", "class", "synthesis.classes") \
            and task["checkpoint"] in checkpoints:
        problems += _prompt_problems(name, task, checkpoints[task["checkpoint"]])
    if accepted("downstream.snapshots", "downstream.steps", "downstream.evaluation"):
        problems += _snapshot_problems(f"tasks.{name}.downstream", task["downstream"])
    for key in ("compare", "combine"):
        if accepted(f"downstream.{key}"):
            problems += [f"tasks.{name}.downstream.{key}: {other!r} is not another key of `tasks`"
                         for other in task["downstream"][key] if other not in cfg["tasks"] or other == name]
    if accepted("downstream.combine", "downstream.settings", "downstream.labels", "classes"):
        problems += _combine_problems(cfg, name)
    if accepted("downstream.uncertain_pixels", "downstream.settings", "downstream.combine"):
        problems += _uncertainty_problems(cfg, name)
    if accepted("downstream.settings", "downstream.labels", "synthesis.store_probabilities"):
        problems += _soft_target_problems(name, task)
    if accepted("keypoints", "annotation.masks", "annotation.source", "reuse", "classes"):
        problems += _keypoint_problems(name, task)
    return problems


def _keypoint_problems(name: str, task: dict) -> list[str]:
    """A keypoint-only folder needs the keypoint stages; the keypoint stages need rendered samples of one kind."""
    where, kp = f"tasks.{name}", task["keypoints"]
    problems = []
    if not task["annotation"]["masks"] and not kp:
        problems.append(f"{where}.annotation.masks: false (a keypoint-only folder) needs the `keypoints` section, "
                        "the only stages such a task runs")
    if kp or not task["annotation"]["masks"]:
        if task.get("reuse") or task["annotation"]["source"] != "samples":
            problems.append(f"{where}.keypoints: keypoints are read from a samples folder (annotation.source: "
                            "samples, no reuse)")
        if task["classes"] is not None:
            problems.append(f"{where}.keypoints: keypoint tasks are of one class (`class`), not `classes`")
    return problems


def _reuse_problems(cfg: dict, name: str) -> list[str]:
    """Exactly one of `annotations` and `reuse`; a reused task that has annotations of its own
    and the same classes."""
    task, where = cfg["tasks"][name], f"tasks.{name}"
    if bool(task.get("annotations")) == bool(task["reuse"]):
        return [f"{where}: give either `annotations` (a folder) or `reuse` (a task whose annotations a VQGAN "
                f"re-encodes or a diffusion model reads), {'not both' if task['reuse'] else 'neither is set'}"]
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
        return task_classes(a) == task_classes(b)
    except (TypeError, ValueError):
        return True


def _uncertainty_problems(cfg: dict, name: str) -> list[str]:
    """`uncertain_pixels` reads the per-pixel uncertainty of the shards the synthetic settings train on."""
    ds = cfg["tasks"][name]["downstream"]
    if not ds["uncertain_pixels"] or not any(s.startswith("synthetic") for s in ds["settings"]):
        return []
    sources = [name, *(ds["combine"] if "synthetic_combined" in ds["settings"] else ())]
    return [f"tasks.{name}.downstream.uncertain_pixels: needs the per-pixel uncertainty of {other!r}'s shards, "
            f"which tasks.{other}.synthesis.store_uncertainty: false leaves out"
            for other in dict.fromkeys(sources) if isinstance(cfg["tasks"].get(other), dict)
            and cfg["tasks"][other].get("synthesis", {}).get("store_uncertainty", True) is False]


def _soft_target_problems(name: str, task: dict) -> list[str]:
    """The setting synthetic_soft trains on the class probabilities the task's shards store, over its own labels."""
    if "synthetic_soft" not in task["downstream"]["settings"]:
        return []
    where = f"tasks.{name}"
    problems = []
    if not task["synthesis"]["store_probabilities"]:
        problems.append(f"{where}.downstream.settings: synthetic_soft trains on the shards' class probabilities; "
                        f"set {where}.synthesis.store_probabilities: true")
    if task["downstream"]["labels"] == "class_aware":
        problems.append(f"{where}.downstream.settings: synthetic_soft trains on the annotated labels' "
                        "probabilities, not on class-aware labels (downstream.labels: class_aware)")
    return problems


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
        elif ds["labels"] != "class_aware" and labels_file(cfg["tasks"], other) != labels_file(cfg["tasks"], name):
            problems.append(f"{where}.combine: {other!r} has another labels.yaml than {name!r}")
    return problems


def _generator_problems(name: str, task: dict, checkpoint: dict, base_dir: Path, check_files: bool) -> list[str]:
    """The average latent a checkpoint format needs, a truncation cut-off only where one can act,
    and an image crop inside its image."""
    where, problems = f"tasks.{name}", []
    fmt = checkpoint.get("format", "auto")
    if task["truncation_cutoff"] is not None and (fmt not in STYLEGAN1_FORMATS or checkpoint.get("generator")):
        other = "a user's torch module" if checkpoint.get("generator") else f"format {fmt!r}"
        problems.append(f"{where}.truncation_cutoff: is for StyleGAN1 checkpoints in DatasetGAN's layout, "
                        f"not {other}")
    avg = task["average_latent"]
    if avg is None and task["truncation"] < 1 and checkpoint.get("format") == "datasetgan-stylegan1":
        problems.append(f"{where}.average_latent: truncation {task['truncation']:g} needs the average latent, which "
                        "datasetgan-stylegan1 checkpoints do not hold (give the release's avg_latent_stylegan1.npy)")
    if avg is not None and check_files and not (base_dir / avg).is_file():
        problems.append(f"{where}.average_latent: {avg} does not exist")
    if fmt not in DIFFUSION_FORMATS or checkpoint.get("generator"):
        other = "a user's torch module" if checkpoint.get("generator") else f"a {fmt} checkpoint"
        if task["annotation"]["source"] == "images":
            problems.append(f"{where}.annotation.source: images is for diffusion generators, which compute "
                            f"features of any image; {other} computes them from latents (use samples)")
        if task["downstream"]["score_interpreter"]:
            problems.append(f"{where}.downstream.score_interpreter: is for diffusion generators, which compute "
                            f"features of any image; {other} computes them from latents")
    if task["annotation"]["source"] == "images" and task["image"] != {"size": None, "crop": None}:
        problems.append(f"{where}.image: annotated images (annotation.source: images) are resized to the "
                        "generator's resolution; an image view is for samples")
    size, crop = task["image"]["size"], task["image"]["crop"]
    if crop is not None and not (crop[0] < crop[1] <= (size or crop[1]) and crop[2] < crop[3] <= (size or crop[3])):
        problems.append(f"{where}.image.crop: {crop} is not [top, bottom, left, right] with top < bottom and "
                        f"left < right" + (f" inside the {size}x{size} image" if size else ""))
    return problems


def _prompt_problems(name: str, task: dict, checkpoint: dict) -> list[str]:
    """A Stable Diffusion checkpoint's class prompts: needed there, one for every class the task
    annotates or synthesises (by class id), and refused for every other format."""
    where, fmt = f"tasks.{name}.diffusion", checkpoint.get("format", "auto")
    diffusion = task["diffusion"] or {}
    prompts = diffusion.get("class_prompts")
    if fmt not in PROMPT_FORMATS or checkpoint.get("generator"):
        given = [k for k in ("class_prompts", "guidance_scale") if diffusion.get(k) is not None]
        return [f"{where}.{given[0]}: is for Stable Diffusion checkpoints, not format {fmt!r}"] if given else []
    if prompts is None:
        return [f"{where}.class_prompts: a stable-diffusion checkpoint needs one text prompt per class"] \
            if fmt == "stable-diffusion" else []
    classes = set(task_classes(task["classes"]) or ()) | set(task_classes(task["synthesis"]["classes"]) or ())
    classes |= {task["class"]} if task["class"] >= 0 else set()
    if not classes:
        return [f"{where}.class_prompts: prompts are per class; give the task's `classes` (or `class`)"]
    if max(classes) >= len(prompts):
        return [f"{where}.class_prompts: {len(prompts)} prompts for classes up to {max(classes)} (one prompt "
                "per class id, class 0 first)"]
    return []


def pretraining_files(cfg: dict) -> dict[str, str]:
    """``{key path: file}`` of every local file or folder the ``pretraining`` section names
    (weights of `weights` inits, the dataset folders of its targets)."""
    pre = cfg.get("pretraining") or {}
    files = {f"pretraining.inits.{n}.path": i.get("path") for n, i in pre.get("inits", {}).items()
             if i.get("method") == "weights"}
    files.update({f"pretraining.targets.{n}.path": t.get("path") for n, t in (pre.get("targets") or {}).items()
                  if t.get("type") != "toy_scenes"})
    return {k: v for k, v in files.items() if v}


def _pretraining_problems(cfg: dict, base_dir: Path, check_files: bool) -> list[str]:
    """An init's task and weights against the rest of the config; the targets' ranges and tasks; the files."""
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
    for name, target in pre["targets"].items():
        if target["type"] == "toy_scenes" and target["objects"][0] > target["objects"][1]:
            problems.append(f"pretraining.targets.{name}.objects: {target['objects']} is not a range low <= high")
        if target["type"] == "chest_xray" and "instance" in target["tasks"]:
            problems.append(f"pretraining.targets.{name}.tasks: a chest_xray target has semantic lung masks only, "
                            "no instances (tasks: [semantic])")
    if check_files:
        problems += [f"{key}: {path} does not exist" for key, path in pretraining_files(cfg).items()
                     if not (base_dir / path).exists()]
    return problems


def _class_problems(name: str, task: dict) -> list[str]:
    """A class-conditional task's classes against its names, labels and real data."""
    where = f"tasks.{name}"
    classes = task_classes(task["classes"])
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
    if ds["evaluation"]["protocol"] != "holdout" and ds["snapshots"] < 2:
        problems.append(f"{where}.evaluation.protocol: {ds['evaluation']['protocol']} chooses among snapshots; "
                        f"set {where}.snapshots >= 2")
    return problems


def _downstream_problems(task: str, ds: dict) -> list[str]:
    if ds["real"]["type"] != "toyworld" and not ds["real"]["path"]:
        return [f"tasks.{task}.downstream.real.path: a `{ds['real']['type']}` dataset needs its path"]
    return []


def downstream_file_problems(cfg: dict, base_dir: str | Path = ".") -> list[str]:
    """The files of every task's ``downstream`` section that do not exist: not a problem of the
    config as a whole, since the stages before the downstream runs (rendering the samples to
    annotate first) do not read them; the downstream jobs check them (:func:`check_downstream_files`)."""
    problems = []
    for name, task in cfg["tasks"].items():
        ds = task["downstream"]
        files = {"weights": ds["weights"], "backbone_weights": ds["backbone_weights"],
                 "reference_annotator": ds["reference_annotator"], "truth_masks": ds["truth_masks"],
                 "real.path": ds["real"]["path"] if ds["real"]["type"] != "toyworld" else None}
        problems += [f"tasks.{name}.downstream.{key}: {path} does not exist" for key, path in files.items()
                     if path and not (Path(base_dir) / path).exists()]
        kp = task.get("keypoints") or {}
        if kp.get("reference_annotator") and not (Path(base_dir) / kp["reference_annotator"]).exists():
            problems.append(f"tasks.{name}.keypoints.reference_annotator: {kp['reference_annotator']} does not exist")
    return problems


def check_downstream_files(cfg: dict, task: str, base_dir: str | Path = ".") -> None:
    """Raise one :class:`ConfigError` naming, on one line, every file task ``task``'s downstream
    section names that does not exist (a downstream job's first step)."""
    problems = [p for p in downstream_file_problems(cfg, base_dir) if p.startswith(f"tasks.{task}.downstream.")]
    if problems:
        raise ConfigError("; ".join(problems))


def load_config(path: str | Path, check_files: bool = True) -> dict:
    """Read a YAML config file and validate it (paths relative to the current directory)."""
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the config must be a mapping")
    return validate_config(cfg, ".", check_files)


def ablation_problems(cfg: dict) -> list[str]:
    """What the schema cannot say about ``cfg["ablations"]``; fills each interpreter
    variant in as the whole interpreter it stands for (the task's, overridden), and each
    downstream arm's options with their defaults."""
    problems = []
    for name, spec in cfg.get("ablations", {}).items():
        where = f"ablations.{name}"
        task = cfg["tasks"].get(name)
        if not isinstance(task, dict):
            problems.append(f"{where}: {name!r} is not a key of `tasks`")
            continue
        if task.get("classes") is not None or not task["downstream"]["enabled"]:
            problems.append(f"{where}: ablations need an unconditional task with downstream runs")
            continue
        per_shard = task["synthesis"]["samples_per_shard"]
        sizes = list(spec["synthetic_size"]) + ([spec["retrain_size"]] if spec["retrain_size"] else [])
        problems += [f"{where}: synthetic set size {n} is not a multiple of samples_per_shard {per_shard}"
                     for n in sizes if n % per_shard]
        have = task["annotation"]["expected_count"] or task["annotation"]["num_samples"]
        problems += [f"{where}.num_annotations: {k} exceeds the task's {have} annotations"
                     for k in spec["num_annotations"] if k > have]
        sel = spec["selection"]
        if sel and sel["initial"] > have:
            problems.append(f"{where}.selection.initial: {sel['initial']} exceeds the task's {have} annotations")
        if sel and "manual" in sel["methods"] and sel["initial"] + sel["step"] * sel["rounds"] > have:
            problems.append(f"{where}.selection: the manual arm's {sel['initial'] + sel['step'] * sel['rounds']} "
                            f"annotations exceed the task's {have}")
        if sel and not task["downstream"]["reference_annotator"]:
            problems.append(f"{where}.selection: needs tasks.{name}.downstream.reference_annotator "
                            "(the simulated annotator labels the picks)")
        if sel and sel["step"] * sel["rounds"] > task["annotation"]["pool"]["size"]:
            problems.append(f"{where}.selection: {sel['rounds']} rounds of {sel['step']} exceed the pool of "
                            f"{task['annotation']['pool']['size']} (tasks.{name}.annotation.pool.size)")
        for variant, override in spec["interpreter"].items():
            base = task["interpreter"]
            merged = {**base, **override} if override.get("type", base["type"]) == base["type"] else dict(override)
            probe = {"checkpoints": cfg["checkpoints"], "tasks": {name: {**copy.deepcopy(task), "interpreter": merged}}}
            errors = schema_errors(probe)
            problems += [f"{where}.interpreter.{variant}: " + schema_message(e).split(": ", 1)[1]
                         for e in errors if tuple(e.absolute_path)[:3] == ("tasks", name, "interpreter")]
            spec["interpreter"][variant] = probe["tasks"][name]["interpreter"]
        for arm, override in spec["downstream"].items():
            problems += _downstream_arm_problems(cfg, name, arm, override)
    return problems


def _downstream_arm_problems(cfg: dict, name: str, arm: str, override: dict) -> list[str]:
    """A downstream arm's keys are the task's downstream training options (and ``setting``), its
    values valid as the task's; fills nested defaults in (e.g. a partial ``augment``)."""
    where, task = f"ablations.{name}.downstream.{arm}", cfg["tasks"][name]
    options = set(DownstreamSpec.from_dict(task["downstream"]).train)
    unknown = [k for k in override if k != "setting" and k not in options]
    if unknown:
        return [f"{where}.{k}: not a downstream training option (allowed: setting, {', '.join(sorted(options))})"
                for k in unknown]
    keys = [k for k in override if k != "setting"]
    merged = {**task["downstream"], **{k: copy.deepcopy(override[k]) for k in keys}}
    probe = {"checkpoints": cfg["checkpoints"], "tasks": {name: {**copy.deepcopy(task), "downstream": merged}}}
    errors = [e for e in schema_errors(probe) if tuple(e.absolute_path)[:3] == ("tasks", name, "downstream")]
    problems = [".".join([where, *map(str, tuple(e.absolute_path)[3:])]) + ": " + schema_message(e).split(": ", 1)[1]
                for e in errors]
    if not errors and merged["uncertain_pixels"] and task["synthesis"]["store_uncertainty"] is False:
        problems.append(f"{where}.uncertain_pixels: needs the per-pixel uncertainty of the task's shards, which "
                        f"tasks.{name}.synthesis.store_uncertainty: false leaves out")
    if override["setting"] == "synthetic_soft" and not task["synthesis"]["store_probabilities"]:
        problems.append(f"{where}.setting: synthetic_soft trains on the shards' class probabilities; set "
                        f"tasks.{name}.synthesis.store_probabilities: true")
    override.update({k: merged[k] for k in keys})
    return problems
