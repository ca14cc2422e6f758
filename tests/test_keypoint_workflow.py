"""DatasetGAN's keypoint experiment through the workflow on a tiny project (real Snakemake, real jobs):
a keypoint-only annotation folder, the head, keypoint shards, the filter, detectors per setting
scored on toy-world cars with exact keypoints, the table and the filter's report."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from labelfactory.annotations.keypoints import KeypointSet, write_keypoints
from labelfactory.annotations.labels import KeypointSpec
from labelfactory.downstream.keypoint_detector import save_keypoint_detector
from labelfactory.downstream.models import build_segmentation_model
from labelfactory.downstream.segmentation import SegTrainConfig
from labelfactory.toybench import world as tw

from helpers import TINY_SEGMENTATION, config_changed, job_counts, make_tiny_project, snakemake

pytestmark = pytest.mark.slow

NAMES = list(tw.keypoint_names("car"))
KEYPOINT_RULES = ("train_keypoint_head", "synthesize_keypoints", "filter_keypoints", "train_keypoint_detector",
                  "evaluate_keypoint_detector", "keypoint_table", "keypoint_sample_grid", "keypoint_label_quality")


def image_keypoints(image: np.ndarray) -> np.ndarray:
    """The tiny project's "annotator": five points that move with the image's brightest rows and columns."""
    lum = image.astype(np.float32).mean(-1)
    row, col = int(lum.mean(1).argmax()), int(lum.mean(0).argmax())
    pts = [(col, row), (15 - col, row), (col, 15 - row), (8, row), (col, 8)]
    return np.array([[x, y, 2] for x, y in pts], dtype=np.float32)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("kp")
    cfg = make_tiny_project(root, n_annotations=4, size=16)
    ann = root / "ann"
    ids = sorted(p.name.removesuffix(".image.png") for p in ann.glob("*.image.png"))
    for i in ids:
        (ann / f"{i}.png").unlink()  # a keypoint-only folder: no masks
    spec = KeypointSpec(NAMES, (), ())
    kp = np.stack([image_keypoints(np.asarray(Image.open(ann / f"{i}.image.png"))) for i in ids])
    write_keypoints(ann, KeypointSet(ids, kp, spec))
    (ann / "labels.yaml").write_text(yaml.safe_dump({"names": ["background", "a", "b"], "keypoints": {"names": NAMES}}))
    torch.manual_seed(0)
    opts = SegTrainConfig(model="deeplabv3_resnet18", model_options=TINY_SEGMENTATION, steps=2, batch_size=2)
    save_keypoint_detector(build_segmentation_model(opts.model, len(NAMES), **TINY_SEGMENTATION),
                           root / "annotator.safetensors", opts, NAMES, 1.5)
    task = cfg["tasks"]["tiny"]
    task["annotation"]["masks"] = False
    task["downstream"] = {"model": "deeplabv3_resnet18", "model_options": TINY_SEGMENTATION, "steps": 4,
                          "batch_size": 2, "optimizer": "adamw", "lr": 1e-3,
                          "real": {"type": "toyworld", "class": "car", "size": 16, "train_images": 6,
                                   "test_images": 5}}
    task["keypoints"] = {"head": {"num_members": 2, "steps": 30, "batch_size": 64}, "seeds": 2, "threads": 1,
                         "sigma": 1.5, "filter_ratio": 0.25, "detector": {"steps": 3},
                         "reference_annotator": "annotator.safetensors"}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


def test_the_default_run_leaves_a_disabled_keypoint_only_task_alone(project):
    counts = job_counts(snakemake(project, "-n", "--quiet", "rules").stdout)
    assert not any(r in counts for r in KEYPOINT_RULES + ("train_interpreter", "synthesize", "filter"))
    planned = job_counts(snakemake(project, "keypoints", "-n", "--quiet", "rules").stdout)
    assert planned["synthesize_keypoints"] == 2 and planned["train_keypoint_detector"] == 8
    assert all(planned[r] >= 1 for r in KEYPOINT_RULES) and "train_interpreter" not in planned


def test_keypoint_target_runs_end_to_end_and_reruns_nothing(project):
    snakemake(project, "keypoints")
    with h5py.File(project / "results/tiny/annotations.h5") as f:
        assert (f["masks"][()] == 255).all() and f["keypoints"].shape == (4, 5, 3)
    with h5py.File(project / "results/tiny/keypoints/shards/00000.h5") as f:
        assert f["keypoints"].shape == (6, 5, 3) and f["images"].shape == (6, 16, 16, 3)
        assert f.attrs["kind"] == "keypoints" and json.loads(f.attrs["keypoint_names"]) == NAMES
        assert np.allclose(f["score"][()], f["spread"][()].mean(1))
    manifest = pd.read_parquet(project / "results/tiny/keypoints/manifest.parquet")
    assert len(manifest) == 12 and int(manifest["kept"].sum()) == 9
    assert manifest.loc[~manifest["kept"], "score"].min() >= manifest.loc[manifest["kept"], "score"].max()

    runs = pd.read_csv(project / "results/tiny/report/keypoint_runs.csv")
    assert len(runs) == 8 and set(runs["seed"]) == {0, 1}
    sizes = runs.groupby("setting")["num_train_images"].first()
    assert (sizes["few_shot"], sizes["synthetic"], sizes["synthetic_filtered"], sizes["fully_supervised"]) == \
        (4, 12, 9, 6)
    assert runs[["pck@0.05", "pck@0.1", "ap"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (runs["pck@0.05"] <= runs["pck@0.1"]).all()
    table = (project / "results/tiny/report/keypoints.md").read_text()
    for title in ("few-shot", "synthetic, filtered", "fully supervised (real)", "PCK@0.1", "AP (OKS)", "Device: "):
        assert title in table
    assert "unrecorded" not in table  # every run names its device
    assert (project / "results/tiny/report/keypoint_samples.png").stat().st_size > 1000
    quality = json.loads((project / "results/tiny/report/keypoint_quality.json").read_text())
    assert quality["samples"] == 12 and 0 <= quality["pck_kept"] <= 1
    assert not (project / "results/tiny/interpreter.safetensors").exists()  # no segmentation stage ran
    assert "Nothing to be done" in snakemake(project, "keypoints", "-n").stdout


def test_editing_the_keypoint_filter_reruns_only_what_reads_it(project):
    snakemake(project, "keypoints")
    with config_changed(project, {"tasks": {"tiny": {"keypoints": {"filter_ratio": 0.5}}}}):
        planned = job_counts(snakemake(project, "keypoints", "-n", "--quiet", "rules").stdout)
    assert planned.get("filter_keypoints") == 1 and "train_keypoint_head" not in planned
    assert "synthesize_keypoints" not in planned and planned["train_keypoint_detector"] == 4  # the synthetic settings
