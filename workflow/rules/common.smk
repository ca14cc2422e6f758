"""Config validation (before any job) and the helpers every rule file uses."""

import re
from pathlib import Path

from snakemake.logging import logger

from labelfactory.config import WorkflowConfig, downstream_file_problems, validate_config
from labelfactory.config.schema import schema_node
from labelfactory.downstream.class_aware import ClassAwareLabels, class_names_for
from labelfactory.downstream.targets import coco_source
from labelfactory.core.runtime import release_stale_lock

if workflow.is_main_process:
    release_stale_lock()  # a killed run resumes with the same command

_validated = validate_config(config, base_dir=".")
config.clear()
config.update(_validated)
CFG = WorkflowConfig.from_dict(config)
if workflow.is_main_process:  # checked by the downstream jobs themselves: the stages before them run first
    for problem in downstream_file_problems(config):
        logger.warning(f"warning: {problem} (the task's downstream jobs fail until it does)")
# How the README runs a target of this config (error messages name it).
_CONFIGS = " ".join(map(str, workflow.config_settings.configfiles))
RUN_HINT = "make run " + (f"CONFIG='{_CONFIGS}' " if _CONFIGS else "") + "TARGETS="
TASKS = sorted(CFG.tasks)
# Tasks whose VQGAN re-encodes another task's annotations (rule reuse_annotations), and the rest.
REUSE_TASKS = [n for n in TASKS if CFG.tasks[n].reuse]
ANNOTATED_TASKS = [n for n in TASKS if not CFG.tasks[n].reuse]
CHECKPOINTS = sorted(CFG.checkpoints)
# GPU rules ask the scheduler for a GPU unless the config pins them to the CPU.
GPUS = 0 if CFG.device == "cpu" else 1
# The chain annotations -> features -> interpreter -> synthesis -> filter gates half the
# downstream runs; on few cores it goes first so those runs can start sooner.
UPSTREAM_PRIORITY = 10


def one_of(names):
    """A wildcard pattern matching exactly ``names`` (none: matches nothing)."""
    return "|".join(map(re.escape, names)) if names else "(?!)"


wildcard_constraints:
    task=one_of(TASKS),
    ckpt=one_of(CHECKPOINTS),
    shard=r"(c\d{4}-)?\d{5}",
    setting=one_of(schema_node("$defs/downstream/properties/settings/items")["enum"]),  # = downstream SETTINGS
    seed=r"\d+",


def task_of(wildcards):
    return CFG.tasks[wildcards.task]


def checkpoint_weights(wildcards):
    return f"resources/checkpoints/{task_of(wildcards).checkpoint}.safetensors"


def generator_options(task):
    """How the rules load a task's generator (labelfactory.generators.view.load_task_generator)."""
    return dict(truncation=task.truncation, average_latent=task.average_latent, image=task.image, task=task.name,
                truncation_cutoff=task.truncation_cutoff, diffusion=task.diffusion)


def validation_gate(wildcards):
    """The validation summary, an input of synthesis only where a failed check must stop it."""
    validation = task_of(wildcards).validation
    return f"results/{wildcards.task}/report/validation.json" if validation.enabled and validation.stop else []


def average_latent_file(wildcards):
    """The task's average-latent file, an input so that replacing it re-runs what renders."""
    return task_of(wildcards).average_latent or []


def local_source(url):
    """A checkpoint URL that names a local file is an input (edits re-run the fetch)."""
    if url.startswith("file://"):
        return url[len("file://") :]
    return url if "://" not in url else []


def annotation_files(wildcards):
    """Every file of the task's annotation folder, so any edit there re-runs the import."""
    task = task_of(wildcards)
    if not Path(task.annotations).is_dir():
        raise ValueError(
            f"task {wildcards.task}: annotation folder {task.annotations} does not exist. Render the samples "
            f"with `{RUN_HINT}results/{wildcards.task}/for_annotation`, annotate them and put the masks, "
            "manifest.csv and labels.yaml there (see docs/annotations.md)."
        )
    files = sorted(str(p) for p in Path(task.annotations).rglob("*") if p.is_file())
    return files + [task.labels] + ([task.annotation.latents] if task.annotation.latents else [])


def attempt_scaled(base):
    """A resource that grows with each retry (OOM or timeout kills are retried bigger)."""
    return lambda wildcards, attempt: base * attempt


def synthesis_options(task):
    """Fields of synthesize_shard's ShardSettings that come from the task's synthesis section."""
    s = task.synthesis
    options = dict(batch_size=s.batch_size, label_rule=s.label_rule, score_rule=s.score_rule,
                   top_fraction=s.top_fraction, store_latents=s.store_latents, store_uncertainty=s.store_uncertainty)
    if s.store_probabilities:  # only when on, so shards synthesised before the option existed stay current
        options["store_probabilities"] = True
    return {**options, "sampling": s.sampling} if s.sampling else options


def task_scores(name):
    """Every downstream run's scores of task ``name``: each setting × seed, and with
    `score_interpreter` the interpreter's own (a one-run row of the table)."""
    ds = CFG.tasks[name].downstream
    own = [f"results/{name}/report/interpreter_test.json"] if ds.score_interpreter else []
    return expand("results/{task}/downstream/{setting}/seed{seed}/scores.json", task=name,
                  setting=ds.settings, seed=range(ds.seeds)) + own


def downstream_scores(wildcards):
    return task_scores(wildcards.task)


def class_aware_names(task):
    """Names of a class-conditional task's classes (config `class_names`, else class<id>)."""
    return class_names_for(task.classes, task.class_names, None)


def class_aware_labels(task):
    """The class-aware label space of a BigDatasetGAN task's downstream runs (a dict), else None."""
    if task.downstream.labels != "class_aware":
        return None
    return ClassAwareLabels(task.classes, class_aware_names(task)).to_dict()


def toy_classes(task):
    """The toy-world class behind the task's labels: one name, or {generator class: name}."""
    real = task.downstream.real
    if task.conditional:
        return dict(zip(task.classes, real["classes"] or [real["class"]]))
    return real["class"]


def annotator_class_names(task):
    """{class id of the annotated images: toy-world name} for the reference annotator (a single-class
    task's images carry its `class`, -1 for an unconditional generator's)."""
    names = toy_classes(task)
    return {int(k): v for k, v in names.items()} if isinstance(names, dict) else {task.cls: names}


def reuse_image_class(task):
    """The class every reused image takes: a single-class task's (`class`) reusing an unconditional
    task's annotations; None keeps the reused task's classes."""
    source = CFG.tasks[task.reuse["task"]]
    return task.cls if task.cls >= 0 and source.annotation_classes is None else None


def compared_scores(wildcards):
    """The runs of the tasks a task's table compares against (`downstream.compare`)."""
    return [p for other in task_of(wildcards).downstream.compare for p in task_scores(other)]


def combined_variant(task):
    """The name of a task's synthetic_combined rows: its variant and the combined tasks', e.g. BigGAN + VQGAN."""
    return " + ".join(CFG.tasks[n].variant for n in (task.name, *task.downstream.combine))


def compared_variants(wildcards):
    """{scores path: variant name} of the compared runs (each task's `variant`) and of the
    task's own synthetic_combined runs (the combined tasks' variants)."""
    task = task_of(wildcards)
    variants = {p: CFG.tasks[other].variant for other in task.downstream.compare for p in task_scores(other)}
    return {**variants, **{p: combined_variant(task) for p in task_scores(task.name) if "/synthetic_combined/" in p}}


def training_manifests(wildcards):
    """The manifests a run trains on: the task's own (synthetic settings), and with
    synthetic_combined also those of the `combine` tasks."""
    if not wildcards.setting.startswith("synthetic"):
        return []
    combined = task_of(wildcards).downstream.combine if wildcards.setting == "synthetic_combined" else ()
    return [f"results/{name}/manifest.parquet" for name in (wildcards.task, *combined)]


# downstream options that only some settings read, and the options that are off by default: a run's
# `options` param holds them only where they apply and are on, so that changing one reruns only the
# runs it changes, and runs trained before an option existed stay current
SETTING_OPTIONS = {"annotation_share": lambda s: s == "synthetic_plus_annotations",
                   "uncertain_pixels": lambda s: s.startswith("synthetic")}
OFF_BY_DEFAULT = {"class_balance": 0, "uncertain_pixels": 0}


def setting_options(options, setting):
    """The downstream training ``options`` that a run of ``setting`` reads and that are on."""
    return {k: v for k, v in options.items()
            if SETTING_OPTIONS.get(k, lambda s: True)(setting) and OFF_BY_DEFAULT.get(k, object()) != v}


def train_options(wildcards):
    """The `downstream` options of one training run (train_downstream's `options`)."""
    return setting_options(task_of(wildcards).downstream.train, wildcards.setting)


def real_training_data(wildcards):
    """The real dataset's training-split settings, only for the run that trains on it
    (so editing the test split, or the real data, retrains nothing else)."""
    if wildcards.setting != "fully_supervised":
        return None
    real = task_of(wildcards).downstream.real
    return {k: v for k, v in real.items() if not k.startswith("test_")}


KEYPOINT_TASKS = [n for n in TASKS if CFG.tasks[n].keypoints]


def keypoint_targets(name):
    """A keypoint task's table and sample grid, and its synthetic keypoints' quality where an annotator can tell."""
    task = CFG.tasks[name]
    quality = [f"results/{name}/report/keypoint_quality.json"] if task.keypoints.reference_annotator else []
    return [f"results/{name}/report/keypoints.md", f"results/{name}/report/keypoint_samples.png", *quality]


def final_targets():
    """What `snakemake` builds by default: the manifest, and the tables and figures where enabled."""
    targets = []
    for name in TASKS:
        task = CFG.tasks[name]
        # a reuse task's annotations are the reused task's; annotated images need no samples to annotate
        keypoints = bool(task.keypoints and task.keypoints.enabled)
        if not task.segmentation and not keypoints:  # a keypoint-only task outside the default run
            continue
        if not task.reuse and task.annotation.source == "samples":
            targets.append(f"results/{name}/for_annotation")
        if keypoints:
            targets += keypoint_targets(name)
        if not task.segmentation:
            continue
        targets += [f"results/{name}/manifest.parquet", f"results/{name}/report/samples.png"]
        if task.validation.enabled:
            targets.append(f"results/{name}/report/validation.png")
        if task.conditional:
            targets.append(f"results/{name}/report/samples_by_class.png")
        if task.downstream.enabled:
            targets.append(f"results/{name}/report/main_table.md")
        if task.downstream.score_interpreter:
            targets.append(f"results/{name}/report/interpreter_test.json")
        if task.downstream.reference_annotator or task.downstream.truth_masks:
            targets.append(f"results/{name}/report/uncertainty_vs_error.png")
    return targets


# --- the transfer experiment (rules/pretraining.smk) ---
PRE = CFG.pretraining
TRANSFER = "results/pretraining"


wildcard_constraints:
    init=one_of(PRE.inits if PRE else []),
    target=one_of(PRE.targets if PRE else []),
    fraction=r"[0-9.e-]+",
    split="train|test",


def init_of(wildcards):
    return PRE.inits[wildcards.init]


def target_of(wildcards):
    return PRE.targets[wildcards.target]


def pretrain_files(wildcards):
    """What an init reads: a task's annotations and manifest, or its weights file."""
    init = init_of(wildcards)
    if init.method == "segmentation":
        return {"annotations": f"results/{init.task}/annotations.h5", "manifest": f"results/{init.task}/manifest.parquet"}
    return {"weights": init.path} if init.method == "weights" else {}


def downstream_source(wildcards):
    """A target's whole split as COCO JSON (labelfactory.downstream.targets): the toy scenes' or a
    converted dataset's folder, written by a rule, or a coco target's dataset folder."""
    target = target_of(wildcards)
    if target.type == "toy_scenes":
        return f"{TRANSFER}/scenes/{wildcards.target}/{wildcards.split}"
    if target.type == "coco":
        return target.data["path"]
    return f"{TRANSFER}/converted/{wildcards.target}/{wildcards.split}"


def downstream_json(wildcards, source):
    """The COCO JSON and image root (None: the JSON's folder) of a target's split, from its source."""
    target = target_of(wildcards)
    if target.type == "coco":
        return tuple(map(str, coco_source(target.data, wildcards.split)))
    return f"{source}/{wildcards.split}.json", None


def transfer_runs():
    """Every finetuning run: target × init × fraction × seed with the results files of its target's tasks."""
    if PRE is None:
        raise ValueError("the config has no `pretraining` section: add one, e.g. `make pretraining` "
                         "(config/config.yaml with config/pretraining-toy.yaml)")
    return [{"target": t, "tasks": list(target.tasks), "init": i, "fraction": format(f, "g"), "seed": s,
             **{stage: f"{TRANSFER}/{stage}/{t}/{i}/{format(f, 'g')}/seed{s}/results.json"
                for task, stage in (("instance", "detection"), ("semantic", "semantic")) if task in target.tasks}}
            for t, target in PRE.targets.items() for i in PRE.inits for f in PRE.fractions for s in range(PRE.seeds)]


def pool_selection(task, select, k, draw=0):
    """sample_for_annotation's pick of ``k`` seeds from the task's candidate pool."""
    a = task.annotation
    return dict(select=select, k=k, draw=draw, pool_start=a.pool["seed_start"], pool_size=a.pool["size"],
                diversity=a.diversity, oversample=a.oversample, interpreter_type=task.interpreter["type"])


def task_selection(task):
    """The task's own selection: None (the annotation seed range) or its active-learning pick."""
    a = task.annotation
    return None if a.select == "random" else pool_selection(task, a.select, a.num_samples)
