"""The papers' configs: each validates against the schema and dry-runs to the expected DAG."""

import shutil
from pathlib import Path

import pytest
import yaml

from labelfactory.config import WorkflowConfig, load_config, pretraining_files

from helpers import REPO, job_counts, snakemake

PAPER_CONFIGS = sorted((REPO / "config" / "paper").glob("*.yaml"))


def _stage(cfg: dict, root: Path) -> None:
    """Placeholders for what a user downloads (checkpoints, annotation folders, real data),
    and the repository files the config names, so the DAG can be built in ``root``."""
    for ckpt in cfg["checkpoints"].values():
        if "://" not in ckpt["url"]:
            (root / ckpt["url"]).parent.mkdir(parents=True, exist_ok=True)
            (root / ckpt["url"]).write_bytes(b"placeholder")
    for task in cfg["tasks"].values():
        if "reuse" in task:  # its annotations are another task's
            continue
        ann = root / task["annotations"]
        (ann / "annotations").mkdir(parents=True, exist_ok=True)
        (ann / "latents").mkdir(exist_ok=True)
        (ann / "annotations" / "placeholder.png").write_bytes(b"")
        labels = task.get("labels") or str(Path(task["annotations"]) / "labels.yaml")
        (root / labels).parent.mkdir(parents=True, exist_ok=True)
        if (REPO / labels).is_file():
            shutil.copy(REPO / labels, root / labels)
        else:
            (root / labels).write_text(yaml.safe_dump({"names": ["background", "object"]}))
        for placeholder in (task.get("average_latent"), task.get("annotation", {}).get("latents")):
            if placeholder:
                (root / placeholder).parent.mkdir(parents=True, exist_ok=True)
                (root / placeholder).write_bytes(b"")
        real = task.get("downstream", {}).get("real", {})
        if real.get("type") == "folder":
            (root / real["path"]).mkdir(parents=True, exist_ok=True)
    for key, path in pretraining_files(cfg).items():  # the transfer experiment's weights and dataset folders
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        if key.startswith("pretraining.targets."):
            (root / path).mkdir(exist_ok=True)
        else:
            (root / path).touch()


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_paper_config_validates(path):
    cfg = load_config(path, check_files=False)
    WorkflowConfig.from_dict(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_paper_config_dry_runs(path, tmp_path):
    cfg = yaml.safe_load(path.read_text())
    _stage(cfg, tmp_path)
    shutil.copy(path, tmp_path / "config.yaml")
    out = snakemake(tmp_path, "-n", "--quiet", "rules", timeout=300).stdout
    counts = job_counts(out)
    typed = WorkflowConfig.from_dict(load_config(tmp_path / "config.yaml", check_files=False))
    assert counts.get("synthesize", 0) == sum(len(t.synthesis.shards) for t in typed.tasks.values() if t.segmentation)
    assert counts.get("synthesize_keypoints", 0) == sum(len(t.synthesis.shards) for t in typed.tasks.values()
                                                        if t.keypoints and t.keypoints.enabled)
    assert counts.get("train_keypoint_detector", 0) == sum(len(t.keypoints.settings) * t.keypoints.seeds
                                                           for t in typed.tasks.values() if t.keypoints)
    reusing = [t for t in typed.tasks.values() if t.reuse]
    assert counts["import_annotations"] == len(typed.tasks) - len(reusing)
    assert counts.get("reuse_annotations", 0) == len(reusing)
    # samples to annotate are rendered for the tasks that annotate samples (not annotated images)
    sampled = [t for t in typed.tasks.values() if not t.reuse and t.annotation.source == "samples"]
    assert counts.get("sample_for_annotation", 0) == len(sampled)
    assert counts.get("score_interpreter", 0) == sum(t.downstream.score_interpreter for t in typed.tasks.values())


def test_bigdatasetgan_config_is_the_release_setting():
    typed = WorkflowConfig.from_dict(load_config(REPO / "config/paper/bigdatasetgan.yaml", check_files=False))
    task = typed.tasks["imagenet"]
    assert task.classes == tuple(range(1000)) and task.annotation.num_samples == 5
    assert task.interpreter["type"] == "conv"
    assert (task.interpreter["batch_size"], task.interpreter["lr"], task.interpreter["iterations"]) == (4, 1e-3, 5000)
    assert len(task.synthesis.shards) == 1000 and task.synthesis.shards[0] == "c0000-00000"
    # the VQGAN task: the taming cin_transformer release, reusing the BigGAN-512 annotations, sampled
    # as taming-transformers' README samples it; its rows and the combined ones in imagenet's table
    vq = typed.tasks["imagenet-vqgan"]
    ckpt = typed.checkpoints[vq.checkpoint]
    assert ckpt.format == "lightning-taming" and ckpt.url.endswith("_cin_transformer/checkpoints/last.ckpt")
    assert vq.reuse["task"] == "imagenet" and vq.annotations is None and vq.classes == task.classes
    assert vq.synthesis.sampling == {"temperature": 1.0, "top_k": 600, "top_p": 0.92}
    assert vq.interpreter["type"] == "conv" and vq.synthesis.store_latents
    assert task.downstream.compare == task.downstream.combine == ("imagenet-vqgan",)
    assert "synthetic_combined" in task.downstream.settings and vq.labels == task.labels


# the release's settings per domain: generator resolution, feature width, image view, annotations
DATASETGAN = {
    "car20": (512, 5056, {"size": 512, "crop": [64, 448, 0, 512]}, 16, None),
    "adecar12": (512, 5056, {"size": 512, "crop": [64, 448, 0, 512]}, 16, "car20-to-adecar12"),
    "face34": (1024, 5088, {"size": 512, "crop": None}, 16, None),
    "celebamask8": (1024, 5088, {"size": 512, "crop": None}, 16, "face34-to-celebamask8"),
    "cat16": (256, 4992, {"size": None, "crop": None}, 30, None),
    "bedroom19": (256, 4992, {"size": None, "crop": None}, 40, None),
    "bird11": (256, 4992, {"size": None, "crop": None}, 30, None),
}


@pytest.mark.parametrize("name", list(DATASETGAN))
def test_datasetgan_config_is_the_release_setting(name):
    from labelfactory.annotations.labels import load_labels
    from labelfactory.annotations.datasetgan_release import MERGES
    from labelfactory.generators.stylegan1 import StyleGAN1Config, StyleGAN1Generator, release_channels
    import torch

    resolution, width, image, count, merge = DATASETGAN[name]
    cfg = load_config(REPO / "config/paper" / f"{name}.yaml", check_files=False)
    typed = WorkflowConfig.from_dict(cfg)
    (task,) = typed.tasks.values()
    assert cfg["checkpoints"][task.checkpoint]["format"] == "datasetgan-stylegan1"
    assert task.name == name and (task.truncation, task.noise) == (0.7, "none") and task.average_latent
    assert task.image == image and task.annotation.expected_count == count and task.annotation.merge == merge
    with torch.device("meta"):
        g = StyleGAN1Generator(StyleGAN1Config(resolution=resolution, channels=release_channels(resolution)))
    assert task.features.layers == "all" and sum(c for c, _, _ in g.feature_shapes().values()) == width
    assert len(task.synthesis.shards) * task.synthesis.samples_per_shard == 10_000 and task.filter_ratio == 0.1
    assert (task.interpreter["type"], task.interpreter["num_members"]) == ("mlp", 10)
    assert task.downstream.train["model"] == "deeplabv3_resnet101"
    names = load_labels(REPO / task.labels).names
    assert names == (MERGES[merge][1] if merge else names) and len(names) == int("".join(filter(str.isdigit, name)))


@pytest.mark.parametrize("name,classes,training_number", [("ffhq34", 34, 20), ("bedroom28", 29, 40), ("cat15", 15, 30),
                                                          ("horse21", 21, 30)])
def test_ddpm_segmentation_configs_are_its_experiments(name, classes, training_number):
    """ddpm-segmentation's experiments/<name>/datasetDDPM.json: its 256 px flags, blocks 5, 6, 7, 8, 12 at steps
    50, 150, 250 (its dim of 8448 channels, measured on the UNet the flags build), annotated images, its
    class count, and DeepLab scored by the snapshot best on the real train images."""
    import torch

    from labelfactory.annotations.labels import load_labels
    from labelfactory.generators.guided_unet import GuidedUNet

    typed = WorkflowConfig.from_dict(load_config(REPO / f"config/paper/ddpm-{name}.yaml", check_files=False))
    (task,) = typed.tasks.values()
    flags = typed.checkpoints[task.checkpoint].model_flags
    with torch.device("meta"):
        shapes = GuidedUNet(flags).output_shapes
    taps = [(int(t[1:]), int(b)) for t, _, b in (layer.split(".") for layer in task.features.layers)]
    assert taps == [(t, b) for t in (50, 150, 250) for b in (5, 6, 7, 8, 12)]
    assert sum(shapes[b][0] for _, b in taps) == 8448
    assert task.diffusion == {"sampler": "ddpm", "sampling_steps": 1000, "eta": 0.0, "feature_steps": [50, 150, 250],
                              "feature_noise_seed": 0}
    assert task.annotation.source == "images" and task.annotation.expected_count == training_number
    assert len(load_labels(REPO / task.labels).names) == classes
    assert (task.interpreter["num_members"], task.interpreter["lr"], task.interpreter["batch_size"]) == (10, 1e-3, 64)
    ds = task.downstream
    train = {k: ds.train[k] for k in ("snapshots", "steps", "batch_size", "schedule", "optimizer", "weight_decay", "lr")}
    assert ds.score_interpreter and ds.evaluation["protocol"] == "validation" and train == {
        "snapshots": 20, "steps": 22500, "batch_size": 8, "schedule": "constant", "optimizer": "adamw",
        "weight_decay": 0.0, "lr": 1e-3}
    assert len(task.synthesis.shards) * task.synthesis.samples_per_shard == 10000 and task.filter_ratio == 0.1


def test_datasetdm_config_is_its_setting():
    """DatasetDM's VOC setting on a Stable Diffusion folder: one text prompt per class (named as the class),
    50 guided steps at 7.5, the decoder blocks' taps at t = 1 of annotated real images."""
    typed = WorkflowConfig.from_dict(load_config(REPO / "config/paper/datasetdm-sd.yaml", check_files=False))
    (task,) = typed.tasks.values()
    assert typed.checkpoints[task.checkpoint].format == "stable-diffusion"
    prompts = task.diffusion["class_prompts"]
    assert task.classes == tuple(range(20)) and len(prompts) == len(task.class_names) == 20
    assert all(name.replace("tv", "tv ").replace("dining", "dining ").replace("potted", "potted ") in prompt
               for name, prompt in zip(task.class_names, prompts))
    assert (task.diffusion["sampler"], task.diffusion["sampling_steps"], task.diffusion["guidance_scale"]) == \
        ("ddim", 50, 7.5)
    assert list(task.features.layers) == [f"t1.{b}" for b in ("mid_block", *(f"up_blocks.{i}" for i in range(4)))]
    assert task.annotation.source == "images"


@pytest.mark.parametrize("name", ["car", "face"])
def test_keypoint_configs_run_only_the_keypoint_stages(name):
    task = WorkflowConfig.from_dict(load_config(REPO / f"config/paper/{name}-keypoints.yaml",
                                                check_files=False)).tasks[f"{name}-keypoints"]
    assert not task.segmentation and task.keypoints.enabled
    assert task.keypoint_real["type"] == "coco_keypoints"
    train = task.keypoint_train  # the downstream options with keypoints.detector over them
    assert train["model"] == "deeplabv3_resnet50" and train["model_options"] == {"output_stride": 8}
    from labelfactory.annotations.labels import load_labels

    spec = load_labels(REPO / task.labels).keypoints
    assert len(spec.names) == {"car": 12, "face": 5}[name] and all(len(p) == 2 for p in spec.flip_pairs)
