"""The transfer experiment: pretraining methods, backbone files, downstream subsets, the semantic
finetuning head, the table and figure, the config section and the DAG of `snakemake pretraining`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torchvision
import yaml
from detectron2.modeling import build_model

from labelfactory.config import ConfigError, WorkflowConfig, load_config, validate_config
from labelfactory.core.divergence import Diverged
from labelfactory.core.provenance import describe_device
from labelfactory.downstream import pretrain
from labelfactory.downstream.class_aware import ClassAwareLabels
from labelfactory.toybench.datasets import ToyWorldObjects
from labelfactory.downstream.detectron import FinetuneConfig, check_backbone_fits, detectron2_config
from labelfactory.downstream.experiment import SettingInputs
from labelfactory.downstream.models import build_segmentation_model
from labelfactory.downstream.pretrain import (PRETRAINING_METHODS, PretrainConfig, PretrainInputs, finetune_semantic,
                                              pretrain_backbone, pretrain_inputs, semantic_config, subset_coco)
from labelfactory.toybench.scenes import SceneSpec, write_toy_scenes
from labelfactory.experiments.reporting import collect_transfer, plot_data_efficiency, write_transfer_table

from helpers import REPO, job_counts, make_tiny_project, snakemake, update_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOY_CONFIG = REPO / "config" / "pretraining-toy.yaml"
PAPER_CONFIG = REPO / "config" / "paper" / "pretraining.yaml"
BUDGET = dict(arch="resnet18", steps=24, batch_size=8, optimizer="adamw", lr=2e-3, schedule="cosine",
              atrous_rates=(1, 2), head_channels=16)
CLASSES = ("car", "face")


def _decreased(loss, k=6):
    loss = np.asarray(loss)
    return np.isfinite(loss).all() and loss[-k:].mean() < 0.8 * loss[:k].mean()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    train, test = root / "train" / "train.json", root / "test" / "test.json"
    write_toy_scenes(train, range(20), SceneSpec(size=64, classes=CLASSES))
    write_toy_scenes(test, range(1000, 1006), SceneSpec(size=64, classes=CLASSES))
    return train, test


@pytest.mark.slow
def test_dense_pretraining_lowers_its_loss(tmp_path, monkeypatch):
    # the synthetic samples stand in as toy-world object masks (reading shards is the workflow test's part)
    objects = ToyWorldObjects(range(64), CLASSES, 32)
    monkeypatch.setattr(pretrain.SETTINGS, "get", lambda name: lambda inputs, labels: objects)
    inputs = PretrainInputs(synthetic=SettingInputs("unused", class_aware=ClassAwareLabels((0, 1), CLASSES)))
    info = pretrain_backbone("segmentation", PretrainConfig(**BUDGET), inputs, tmp_path)
    assert len(info["loss"]) == 24 and _decreased(info["loss"]), np.round(info["loss"], 2)
    assert info["labels"] == ["background", *CLASSES] and info["num_images"] == 64
    assert json.loads((tmp_path / "pretrain.json").read_text())["method"] == "segmentation"


@pytest.mark.slow
def test_classification_pretraining_lowers_its_loss(tmp_path):
    inputs = pretrain_inputs("classification", real={"classes": list(CLASSES), "size": 32, "train_images": 64})
    info = pretrain_backbone("classification", PretrainConfig(**{**BUDGET, "steps": 30}), inputs, tmp_path)
    assert len(info["loss"]) == 30 and _decreased(info["loss"], k=8), np.round(info["loss"], 2)


@pytest.mark.parametrize("method", ["segmentation", "classification"])
def test_a_diverging_pretraining_is_recorded_or_fails(tmp_path, monkeypatch, method):
    """An absurd learning rate: the pretraining stops at its first non-finite loss and records it."""
    objects = ToyWorldObjects(range(16), CLASSES, 32)
    monkeypatch.setattr(pretrain.SETTINGS, "get", lambda name: lambda inputs, labels: objects)
    inputs = (PretrainInputs(synthetic=SettingInputs("unused", class_aware=ClassAwareLabels((0, 1), CLASSES)))
              if method == "segmentation" else
              pretrain_inputs("classification", real={"classes": list(CLASSES), "size": 32, "train_images": 16}))
    cfg = PretrainConfig(**{**BUDGET, "steps": 6, "optimizer": "sgd", "lr": 1e30, "schedule": "poly"})
    info = pretrain_backbone(method, cfg, inputs, tmp_path)
    assert info["status"] == "diverged" and 0 < info["step"] < 6 and len(info["loss"]) == info["step"]
    assert info["last_finite_loss"] == info["loss"][-1] and "diverged" not in info
    assert json.loads((tmp_path / "pretrain.json").read_text())["status"] == "diverged"
    assert (tmp_path / "backbone.pkl").is_file() and (tmp_path / "backbone.pth").is_file()
    with pytest.raises(Diverged, match=f"{method} pretraining: the loss became non-finite"):
        pretrain_backbone(method, cfg, inputs, tmp_path / "fail", on_divergence="fail")


def test_a_diverging_semantic_finetuning_is_recorded_unscored(tmp_path, scenes):
    options = {"model_options": {"output_stride": 8, "atrous_rates": [1, 2], "head_channels": 16}, "steps": 6,
               "batch_size": 4, "optimizer": "sgd", "lr": 1e30}
    cfg = semantic_config(options, "resnet18", seed=0, threads=1)
    result = finetune_semantic(None, *scenes, cfg, tmp_path / "results.json")
    assert result["status"] == "diverged" and "miou" not in result and 0 < result["step"] < 6
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert (on_disk["status"], on_disk["step"]) == ("diverged", result["step"])
    with pytest.raises(Diverged, match="semantic finetuning seed 0: the loss became non-finite"):
        finetune_semantic(None, *scenes, cfg, tmp_path / "fail.json", on_divergence="fail")


def test_backbone_files_load_into_mask_rcnn_and_deeplab(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        tv.bn1.running_mean.normal_()  # a tensor that cannot pass for an initial value
    torch.save(tv.state_dict(), tmp_path / "imagenet.pth")
    info = pretrain_backbone("weights", PretrainConfig(arch="resnet18"),
                             pretrain_inputs("weights", weights=str(tmp_path / "imagenet.pth")), tmp_path / "out")
    assert info["weights"].endswith("imagenet.pth")
    model = build_model(detectron2_config(FinetuneConfig(depth=18), "a", "b", 2, tmp_path))
    check_backbone_fits(model, tmp_path / "out" / "backbone.pkl")  # every ResNet tensor, right shape
    seg = build_segmentation_model("deeplabv3_resnet18", 3, backbone_weights=tmp_path / "out" / "backbone.pth")
    expected = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(seg.backbone.state_dict()[k], v) for k, v in expected.items())
    # random: the seeded initialisation, the same for the same seed
    for seed in (0, 0, 1):
        pretrain_backbone("random", PretrainConfig(arch="resnet18", seed=seed), PretrainInputs(), tmp_path / f"r{seed}")
    a, b = (torch.load(tmp_path / f"r{s}" / "backbone.pth", weights_only=True) for s in (0, 1))
    assert not torch.equal(a["conv1.weight"], b["conv1.weight"])
    with pytest.raises(KeyError, match="unknown pretraining method 'moco'; known: classification, random"):
        PRETRAINING_METHODS.get("moco")


def test_subsets_are_nested_with_absolute_paths(tmp_path, scenes):
    train, _ = scenes
    small, large = (subset_coco(train, None, f, 3, tmp_path / f"{f}.json") for f in (0.25, 0.5))
    assert (small["images"], large["images"], large["of_images"]) == (5, 10, 20)
    a, b = (json.loads((tmp_path / f"{f}.json").read_text()) for f in (0.25, 0.5))
    assert {r["id"] for r in a["images"]} < {r["id"] for r in b["images"]}
    assert all(r["file_name"].startswith("/") and (tmp_path / r["file_name"]).is_file() for r in b["images"])
    ids = {r["id"] for r in a["images"]}
    assert small["instances"] == len(a["annotations"]) == sum(
        x["image_id"] in ids for x in json.loads(train.read_text())["annotations"]) > 0
    with pytest.raises(ValueError, match=r"fraction must lie in \(0, 1\]"):
        subset_coco(train, None, 1.5, 0, tmp_path / "x.json")


@pytest.mark.slow
def test_semantic_finetuning_from_a_backbone_lowers_the_loss(tmp_path, scenes):
    backbone = tmp_path / "bb"
    pretrain_backbone("random", PretrainConfig(arch="resnet18"), PretrainInputs(), backbone)
    options = {"model_options": {"output_stride": 8, "atrous_rates": [1, 2], "head_channels": 16}, "steps": 20,
               "batch_size": 4, "optimizer": "adamw", "lr": 2e-3}
    cfg = semantic_config(options, "resnet18", seed=0, threads=1)
    result = finetune_semantic(backbone / "backbone.pth", *scenes, cfg, tmp_path / "results.json")
    assert _decreased(result["loss"], k=5), np.round(result["loss"], 2)
    assert 0 <= result["miou"] <= 1 and set(result["iou_by_class"]) == {"background", *CLASSES}
    assert (result["num_train_images"], result["num_test_images"]) == (20, 6)
    assert result["config"]["model_options"]["backbone_weights"] == str(backbone / "backbone.pth")
    assert result["device"] == describe_device("cpu", 1)


def test_transfer_table_and_figure(tmp_path):
    runs = []
    for init, ap in (("random", 10.0), ("synthetic", 20.0)):
        for f in (0.1, 1.0):
            for seed in (0, 1):
                det, sem = tmp_path / f"{init}{f}{seed}d.json", tmp_path / f"{init}{f}{seed}s.json"
                box = {"AP": ap * f + seed, "AP50": 2 * ap, "AP75": None}
                det.write_text(json.dumps({"bbox": box, "segm": {**box, "AP": None}}))
                sem.write_text(json.dumps({"miou": 0.5, "num_train_images": int(100 * f)}))
                runs.append({"target": "scenes", "tasks": ["instance", "semantic"], "init": init, "fraction": f,
                             "seed": seed, "detection": det, "semantic": sem})
    df = collect_transfer(runs)
    assert list(df["init"].cat.categories) == ["random", "synthetic"] and (df["mask_AP"] == 0).all()
    table = write_transfer_table(df, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "runs.csv")
    row = table.loc[("scenes", "synthetic", 1.0)]
    assert (row["runs"], row["train_images"], row["box_AP_mean"], row["miou_mean"]) == (2, 100, 20.5, 50.0)
    assert row["box_AP_sd"] == pytest.approx(np.std([20, 21], ddof=1))
    md = (tmp_path / "t.md").read_text()
    assert "| synthetic" in md and "10 %" in md and "20.5 ± 0.7" in md
    plot_data_efficiency(df, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 10_000

    # the detection of one synthetic 100 % run diverged (the case of issue 24): shown, and out of the means
    runs[-1]["detection"].write_text(json.dumps({"status": "diverged", "step": 40, "last_finite_loss": 2.0}))
    df = collect_transfer(runs)
    table = write_transfer_table(df, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "runs.csv")
    row = table.loc[("scenes", "synthetic", 1.0)]
    assert (row["runs"], row["diverged"], row["box_AP_mean"], row["miou_mean"]) == (1, 1, 20.0, 50.0)
    assert table["diverged"].sum() == 1
    line = next(x for x in (tmp_path / "t.md").read_text().splitlines() if "1 + 1 diverged" in x)
    assert line.startswith("| synthetic") and "100 % |" in line and "20.0 ± 0.0" in line
    plot_data_efficiency(df, tmp_path / "fig.png")

    # a second target with semantic segmentation only (the chest X-rays): its own block, mIoU its only metric
    for init in ("random", "synthetic"):
        for seed in (0, 1):
            sem = tmp_path / f"lungs-{init}{seed}.json"
            sem.write_text(json.dumps({"miou": 0.8 + 0.1 * seed, "num_train_images": 7}))
            runs.append({"target": "lungs", "tasks": ["semantic"], "init": init, "fraction": 1.0, "seed": seed,
                         "semantic": sem})
    df = collect_transfer(runs)
    table = write_transfer_table(df, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "runs.csv")
    assert list(table.index.get_level_values("target").unique()) == ["scenes", "lungs"]
    assert table.loc[("lungs", "random", 1.0), "miou_mean"] == pytest.approx(85.0)
    assert np.isnan(table.loc[("lungs", "random", 1.0), "box_AP_mean"])
    scenes, lungs = (tmp_path / "t.md").read_text().split("**lungs**")

    def cells(line):
        return [c.strip() for c in line.strip().strip("|").split("|")]

    assert scenes.startswith("**scenes**") and cells(scenes.splitlines()[2]) == [
        "init", "fraction", "runs", "train images", "box AP", "box AP50", "mask AP", "mask AP50", "mIoU"]
    assert cells(lungs.splitlines()[2]) == ["init", "fraction", "runs", "train images", "mIoU"]
    assert cells(lungs.splitlines()[4]) == ["random", "100 %", "2", "7", "85.0 ± 7.1"]
    plot_data_efficiency(df, tmp_path / "fig2.png")
    assert (tmp_path / "fig2.png").stat().st_size > (tmp_path / "fig.png").stat().st_size  # a second row


def _with_tasks(pretraining: dict) -> dict:
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return {**base, "pretraining": pretraining}


@pytest.mark.parametrize("section,message", [
    ({"inits": {"s": {"method": "segmentation", "task": "nope"}}},
     r"pretraining.inits.s.task: segmentation pretraining needs a key of `tasks` .*got 'nope'"),
    ({"inits": {"w": {"method": "weights"}}}, r"pretraining.inits.w.path: the weights method needs"),
    ({"inits": {"w": {"method": "weights", "path": "absent.pth"}}}, r"pretraining.inits.w.path: absent.pth does not exist"),
    ({"inits": {"r": {"method": "random", "task": "toy-car"}}}, r"pretraining.inits.r.task: only a segmentation init"),
    ({"inits": {"r": {"method": "moco"}}}, r"pretraining.inits.r.method: 'moco' is not one of"),
    ({"inits": {"r": {"method": "random"}}, "fractions": [0.1, 2]}, r"pretraining.fractions.1: 2 is greater than"),
    ({"inits": {"r": {"method": "random"}}, "targets": {"c": {"type": "coco", "tasks": ["instance"]}}},
     r"pretraining.targets.c: 'path' is a required property"),
    ({"inits": {"r": {"method": "random"}}, "targets": {"v": {"type": "voc", "tasks": ["semantic"], "path": "absent"}}},
     r"pretraining.targets.v.path: absent does not exist"),
    ({"inits": {"r": {"method": "random"}}, "targets": {"x": {"type": "chest_xray", "tasks": ["instance"], "path": "."}}},
     r"pretraining.targets.x.tasks: a chest_xray target has semantic lung masks only"),
    ({"inits": {"r": {"method": "random"}}, "targets": {"v": {"type": "voc", "tasks": ["semantic"], "path": ".",
                                                            "size": 32}}},
     r"pretraining.targets.v: Unevaluated properties are not allowed \('size' was unexpected\)"),
    ({"inits": {"r": {"method": "random"}}, "targets": {"t": {"type": "toy_scenes", "tasks": ["semantic"],
                                                            "objects": [3, 2]}}},
     r"pretraining.targets.t.objects: \[3, 2\] is not a range low <= high"),
    ({"inits": {"r": {"method": "random"}}, "data": {"type": "toy_scenes"}},
     r"pretraining: Additional properties are not allowed \('data' was unexpected\).*targets"),
    ({"inits": {"r": {"method": "random"}}, "detection": {"stpes": 3}}, r"pretraining.detection: Additional prop.*stpes"),
    ({}, r"pretraining: 'inits' is a required property"),
])
def test_bad_pretraining_config_is_a_clear_error(tmp_path, section, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(_with_tasks(section), base_dir=REPO)


def test_toy_and_paper_sections_validate():
    toy = WorkflowConfig.from_dict(validate_config(_with_tasks(yaml.safe_load(TOY_CONFIG.read_text())["pretraining"]),
                                                   base_dir=REPO)).pretraining
    assert toy.arch == "resnet18" and toy.inits["synthetic-objects"].task == "toy-objects"
    assert {i.method for i in toy.inits.values()} == {"random", "classification", "segmentation"}
    PretrainConfig.from_dict({**toy.pretrain, "arch": toy.arch})
    FinetuneConfig.from_dict({**toy.detection, "depth": 18})
    semantic_config(toy.semantic, toy.arch, 0, 1)
    paper = WorkflowConfig.from_dict(load_config(PAPER_CONFIG, check_files=False)).pretraining
    assert paper.arch == "resnet50" and paper.fractions == (0.01, 0.1, 1.0)
    assert {n: (t.type, t.tasks) for n, t in paper.targets.items()} == {
        "coco": ("coco", ("instance", "semantic")), "voc": ("voc", ("semantic", "instance")),
        "cityscapes": ("cityscapes", ("semantic", "instance")), "chest-xray": ("chest_xray", ("semantic",))}
    assert paper.detection["config_file"].endswith("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    assert (paper.detection["steps"], paper.detection["lr_steps"], paper.detection["batch_size"]) == \
        (90_000, [60_000, 80_000], 16)
    assert {i.method for i in paper.inits.values()} == {"random", "weights", "segmentation"}


def _dry_run(root, target: str | None = None, *configfiles):
    """Jobs per rule of a dry run of ``target`` (default: `all`) with ``configfiles`` (default: config.yaml)."""
    extra = ["--configfile", *map(str, configfiles)] if configfiles else []
    return job_counts(snakemake(root, *([target] if target else []), *extra, "-n", "--quiet", "rules",
                                timeout=300).stdout)


@pytest.mark.slow
def test_toy_dag_builds_and_stays_out_of_all(tmp_path):
    for folder in ("config", "weights"):
        (tmp_path / folder).symlink_to(REPO / folder)
    shutil.copy(TOY_CONFIG, tmp_path / "extra.yaml")
    (tmp_path / "config.yaml").write_text((REPO / "config" / "config.yaml").read_text())
    configs = (tmp_path / "config.yaml", tmp_path / "extra.yaml")
    counts = _dry_run(tmp_path, "pretraining", *configs)
    runs = 4 * 2 * 2  # inits x fractions x seeds on the one target, toy-scenes
    assert (counts["pretrain_backbone"], counts["finetune"], counts["finetune_semantic"]) == (4, runs, runs)
    assert (counts["toy_scenes"], counts["downstream_subset"], counts["filter"]) == (2, 3, 2)  # toy-objects, toy-car
    assert "target_data" not in counts
    default = _dry_run(tmp_path, None, *configs)
    tasks = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["tasks"]
    masked = [t for t in tasks.values() if t.get("annotation", {}).get("masks", True)]  # keypoint-only: no filter
    assert "finetune" not in default and "pretrain_backbone" not in default and default["filter"] == len(masked)


@pytest.mark.slow
def test_paper_dag_builds(tmp_path):
    from test_paper_configs import _stage

    cfg = yaml.safe_load(PAPER_CONFIG.read_text())
    _stage(cfg, tmp_path)
    shutil.copy(PAPER_CONFIG, tmp_path / "config.yaml")
    counts = _dry_run(tmp_path, "pretraining")
    runs = 3 * 3 * 3  # inits x fractions x seeds per target
    # Mask R-CNN on coco, voc and cityscapes; DeepLabV3 on all four; voc, cityscapes and the chest X-rays converted
    assert (counts["pretrain_backbone"], counts["finetune"], counts["finetune_semantic"]) == (3, 3 * runs, 4 * runs)
    assert (counts["target_data"], counts["downstream_subset"]) == (3 * 2, 4 * 4)  # 3 train fractions + test
    assert counts["synthesize"] == 1000 and "toy_scenes" not in counts


@pytest.mark.slow
def test_the_pretraining_target_completes_with_a_diverged_init_shown_in_its_table(tmp_path):
    """The smallest transfer experiment through the workflow: a random init and a classification init
    whose pretraining diverges (an absurd learning rate; random inits do not pretrain). Its pretraining and
    both finetunings from its trunk are recorded as diverged and the table still gets written."""
    toy = yaml.safe_load(TOY_CONFIG.read_text())["pretraining"]
    make_tiny_project(tmp_path)  # a valid config's task; the pretraining target builds none of its jobs
    update_config(tmp_path, {"pretraining": {
        "arch": "resnet18", "threads": 1, "seeds": 1, "fractions": [1.0],
        "pretrain": {"steps": 3, "batch_size": 4, "optimizer": "adamw", "lr": 1e30, "output_stride": 8,
                     "atrous_rates": [1], "head_channels": 8},
        "inits": {"random": {"method": "random"},
                  "classification": {"method": "classification", "real": {"classes": ["car", "face"], "size": 32,
                                                                          "train_images": 8}}},
        "targets": {"toy": {"type": "toy_scenes", "tasks": ["instance", "semantic"], "train_images": 4,
                            "test_images": 2, "size": 64}},
        "detection": {**toy["detection"], "steps": 2, "batch_size": 2, "lr_steps": [1], "warmup_steps": 1},
        "semantic": {"model_options": {"output_stride": 8, "atrous_rates": [1], "head_channels": 8}, "steps": 2,
                     "batch_size": 2, "optimizer": "adamw", "lr": 1e-3}}})
    snakemake(tmp_path, "pretraining", timeout=900)  # completes
    transfer = tmp_path / "results" / "pretraining"
    info = json.loads((transfer / "backbones" / "classification" / "pretrain.json").read_text())
    assert info["status"] == "diverged" and info["device"]["kind"] == "cpu"
    for stage in ("detection", "semantic"):
        assert json.loads((transfer / stage / "toy/classification/1/seed0/results.json").read_text())["status"] == \
            "diverged", stage
        assert json.loads((transfer / stage / "toy/random/1/seed0/results.json").read_text())["status"] == "ok", stage
    rows = {line.split("|")[1].strip(): line for line in (transfer / "report/pretraining_table.md").read_text()
            .splitlines() if line.startswith("| ") and "init" not in line}
    assert set(rows) == {"random", "classification"}
    assert "0 + 1 diverged" in rows["classification"] and "diverged" not in rows["random"]
