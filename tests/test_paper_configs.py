"""The papers' configs: each validates against the schema and dry-runs to the expected DAG."""

import shutil
from pathlib import Path

import pytest
import yaml

from labelfactory.config import WorkflowConfig, load_config

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
        real = task.get("downstream", {}).get("real", {})
        if real.get("type") == "folder":
            (root / real["path"]).mkdir(parents=True, exist_ok=True)


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
    assert counts["synthesize"] == sum(len(t.synthesis.shards) for t in typed.tasks.values())
    assert counts["import_annotations"] == len(typed.tasks)


def test_bigdatasetgan_config_is_the_release_setting():
    typed = WorkflowConfig.from_dict(load_config(REPO / "config/paper/bigdatasetgan.yaml", check_files=False))
    task = typed.tasks["imagenet"]
    assert task.classes == tuple(range(1000)) and task.annotation.num_samples == 5
    assert task.interpreter["type"] == "conv"
    assert (task.interpreter["batch_size"], task.interpreter["lr"], task.interpreter["iterations"]) == (4, 1e-3, 5000)
    assert len(task.synthesis.shards) == 1000 and task.synthesis.shards[0] == "c0000-00000"
