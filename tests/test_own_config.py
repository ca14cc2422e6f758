"""A user's own config runs alone, through the command the README gives (`make run CONFIG=...`);
the toy default applies only without one; the downstream files are checked by the jobs that read them."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO, job_counts, make_tiny_project

from labelfactory.config import ConfigError, check_downstream_files, downstream_file_problems, validate_config
from labelfactory.config.schema import schema_node

VENV = Path(sys.executable).parent.parent


def make_run(root: Path, dry: bool = True, **variables: str) -> subprocess.CompletedProcess:
    """`make run VAR=value ...` in the repository, working in ``root``: a dry run (its stats table), or
    a run that fails; `-o` keeps make from reinstalling the virtualenv."""
    args = f"{'-n --quiet rules' if dry else '--cores 2'} --directory {root}"
    cmd = ["make", "-s", "-C", str(REPO), "-o", f"{VENV}/.installed", "run", f"VENV={VENV}",
           *(f"{k}={v}" for k, v in variables.items()), f"ARGS={args}"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert (proc.returncode == 0) == dry, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_own_config_runs_alone_and_its_first_stage_needs_no_test_folder(tmp_path):
    root = tmp_path / "lab"
    cfg = make_tiny_project(root, downstream=True)
    shutil.rmtree(root / "real")  # the test folder comes later
    (root / "config.yaml").unlink()
    (root / "my.yaml").write_text(yaml.safe_dump(cfg))

    # the target before --configfile: rendering the samples to annotate, and nothing of the toy tasks
    proc = make_run(root, CONFIG=str(root / "my.yaml"), TARGETS="results/tiny/for_annotation")
    assert job_counts(proc.stdout) == {"fetch_checkpoint": 1, "sample_for_annotation": 1, "total": 2}
    assert "tasks.tiny.downstream.real.path: real does not exist (the task's downstream jobs fail" in proc.stdout + proc.stderr

    # everything: one task's jobs, its downstream runs planned
    counts = job_counts(make_run(root, CONFIG=str(root / "my.yaml")).stdout)
    assert counts["sample_for_annotation"] == counts["import_annotations"] == counts["filter"] == 1
    settings = schema_node("$defs/downstream/properties/settings")["default"]
    assert counts["train_downstream"] == counts["evaluate_downstream"] == 2 * len(settings)  # 2 seeds

    # a downstream run fails in one line for want of the test folder
    proc = make_run(root, dry=False, CONFIG=str(root / "my.yaml"),
                    TARGETS="results/tiny/downstream/few_shot/seed0/model.safetensors")
    assert ("labelfactory: train_downstream failed: ConfigError: tasks.tiny.downstream.real.path: real does not exist "
            "(log: results/logs/train_downstream/tiny/few_shot/seed0.log)\n" in proc.stdout + proc.stderr)
    assert (root / "results/tiny/annotations.h5").is_file()


@pytest.mark.slow
def test_without_a_config_the_toy_default_runs(tmp_path):
    for folder in ("config", "weights"):
        (tmp_path / folder).symlink_to(REPO / folder)
    toy = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["tasks"]
    counts = job_counts(make_run(tmp_path, TARGETS="results/toy-car/for_annotation").stdout)
    assert counts["sample_for_annotation"] == 1 and "toy-car" in toy
    counts = job_counts(make_run(tmp_path).stdout)
    # every task filters its masks but the keypoint-only one, which is outside the default run
    assert counts["filter"] == len([t for t in toy.values() if t.get("annotation", {}).get("masks", True)])
    assert "filter_keypoints" not in counts and "sample_for_annotation" in counts


def test_downstream_files_are_checked_by_the_downstream_jobs(tmp_path):
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "labels.yaml").write_text("names: [background, thing]\n")
    cfg = validate_config({
        "checkpoints": {"g": {"url": "g.pt"}},
        "tasks": {t: {"checkpoint": "g", "annotations": "ann",
                      "downstream": {"real": {"type": "folder", "path": f"{t}-real"}, "weights": "w.pt"}}
                  for t in ("a", "b")}}, base_dir=tmp_path)  # the config as a whole is valid
    assert downstream_file_problems(cfg, tmp_path) == [
        "tasks.a.downstream.weights: w.pt does not exist", "tasks.a.downstream.real.path: a-real does not exist",
        "tasks.b.downstream.weights: w.pt does not exist", "tasks.b.downstream.real.path: b-real does not exist"]
    with pytest.raises(ConfigError) as e:
        check_downstream_files(cfg, "b", tmp_path)
    assert str(e.value) == ("tasks.b.downstream.weights: w.pt does not exist; "
                            "tasks.b.downstream.real.path: b-real does not exist")  # one line, all at once
    (tmp_path / "w.pt").touch()
    (tmp_path / "b-real").mkdir()
    check_downstream_files(cfg, "b", tmp_path)
    assert downstream_file_problems(cfg, tmp_path) == ["tasks.a.downstream.real.path: a-real does not exist"]
