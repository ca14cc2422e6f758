"""BigDatasetGAN through the workflow on a tiny class-conditional project (real Snakemake, real jobs),
with its second generator: the toy VQGAN reusing the BigGAN annotations."""

import json

import numpy as np
import pandas as pd
import pytest

from labelfactory.annotations.annotation_set import load_annotation_set
from labelfactory.generators.base import images_to_uint8
from labelfactory.generators.loading import load_generator
from labelfactory.synthesis.shards import read_samples

from helpers import make_tiny_conditional_project, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("bdg")
    make_tiny_conditional_project(root, vqgan=True)
    snakemake(root)
    return root


def test_annotations_features_and_interpreter_per_class(project):
    meta = json.loads((project / "resources/checkpoints/big.json").read_text())
    assert meta["arch"] == "biggan" and meta["converted_from"] == "biggan-pytorch"
    ann = load_annotation_set(project / "results/objects/annotations.h5")
    assert sorted(ann.classes.tolist()) == [0, 0, 0, 1, 1, 1]
    side = json.loads((project / "results/objects/interpreter.json").read_text())
    assert side["interpreter"] == "conv" and len(side["member_seeds"]) == 2


def test_shards_per_class_and_every_sample_regenerable(project):
    manifest = pd.read_parquet(project / "results/objects/manifest.parquet")
    assert manifest.groupby("class").size().to_dict() == {0: 6, 1: 6}
    assert int((~manifest["kept"]).sum()) == 3  # floor(0.25 * 12) across both classes
    backend = load_generator(project / "resources/checkpoints/big.safetensors")
    row = manifest.iloc[7]
    images, labels = read_samples(project / row["shard"], np.array([row["index"]]))
    z = backend.draw_latents([int(row["seed"])])
    again = images_to_uint8(__import__("torch").from_numpy(backend.render(z, [int(row["class"])])))
    assert np.array_equal(images[0], again[0])
    assert set(np.unique(labels)) <= {0, 1}


def test_class_aware_table_and_class_grid(project):
    runs = pd.read_csv(project / "results/objects/report/runs.csv")
    assert {"foreground_iou", "iou/background", "iou/car", "iou/face"} <= set(runs.columns)
    assert len(runs) == 11 and set(runs["seed"]) == {0, 1}
    sizes = runs.groupby("setting")["num_train_images"].first()
    assert (sizes["few_shot"], sizes["synthetic"], sizes["synthetic_filtered"], sizes["fully_supervised"]) == \
        (6, 12, 9, 6)
    # the VQGAN's own rows, and both generators' kept samples together
    assert (sizes["synthetic_filtered | VQGAN"], sizes["synthetic_combined | BigGAN + VQGAN"]) == (9, 18)
    md = (project / "results/objects/report/main_table.md").read_text()
    assert "fg IoU" in md and "car" in md and "face" in md
    assert "synthetic, filtered (VQGAN)" in md and "synthetic, filtered, combined (BigGAN + VQGAN)" in md
    assert (project / "results/objects/report/samples_by_class.png").stat().st_size > 0


def test_vqgan_task_reuses_the_annotations_and_samples_codes_per_seed_and_class(project):
    source = load_annotation_set(project / "results/objects/annotations.h5")
    reused = load_annotation_set(project / "results/vq/annotations.h5")
    vq = load_generator(project / "resources/checkpoints/vq.safetensors")
    assert reused.generator_hash == vq.generator_hash and reused.latents.dtype == np.int64
    assert reused.ids == source.ids and np.array_equal(reused.masks, source.masks)
    report = pd.read_csv(project / "results/vq/report/reuse.csv")
    summary = json.loads((project / "results/vq/report/reuse.json").read_text())
    assert report["id"].tolist() == source.ids and summary["n"] == 6
    assert summary["psnr_mean"] == pytest.approx(report["psnr"].mean())
    assert summary["annotator_agreement_mean"] is None  # no reference annotator in this project
    side = json.loads((project / "results/vq/interpreter.json").read_text())
    assert side["interpreter"] == "conv" and side["generator_hash"] == vq.generator_hash
    manifest = pd.read_parquet(project / "results/vq/manifest.parquet")
    assert manifest.groupby("class").size().to_dict() == {0: 6, 1: 6}
    row = manifest.iloc[8]
    import h5py

    with h5py.File(project / row["shard"], "r") as f:
        codes = f["latents"][int(row["index"])]
    want = vq.sample_codes([int(row["seed"])], [int(row["class"])], top_k=50)  # the config's sampling
    np.testing.assert_array_equal(codes, want.reshape(-1))
    images, _ = read_samples(project / row["shard"], np.array([row["index"]]))
    again = images_to_uint8(__import__("torch").from_numpy(vq.render(want)))
    # decoded alone rather than in the shard's batch of 4: float sums may round differently
    assert np.abs(images[0].astype(int) - again[0]).max() <= 1
