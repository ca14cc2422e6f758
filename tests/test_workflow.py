"""The workflow spine end to end on a tiny project (real Snakemake, real jobs)."""

import json

import h5py
import pandas as pd
import pytest

from labelfactory.annotations.annotation_set import load_annotation_set
from labelfactory.features import FeatureStore

from helpers import config_changed, job_counts, make_tiny_project, snakemake, update_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf")
    make_tiny_project(root, downstream=True)
    return root


def test_dry_run_shows_the_dag(project):
    out = snakemake(project, "-n", "--quiet", "rules").stdout
    for rule in ("fetch_checkpoint", "sample_for_annotation", "import_annotations", "extract_features",
                 "train_interpreter", "synthesize", "filter", "train_downstream", "evaluate_downstream",
                 "main_table", "sample_grid", "all"):
        assert rule in out


def test_runs_end_to_end_and_reruns_nothing(project):
    snakemake(project)
    meta = json.loads((project / "resources/checkpoints/tiny.json").read_text())
    assert meta["arch"] == "stylegan2" and meta["converted_from"] == "rosinality"
    ann = load_annotation_set(project / "results/tiny/annotations.h5")
    assert len(ann) == 4 and ann.generator_hash == meta["generator_hash"]
    store = FeatureStore.open(project / "results/tiny/features.h5")

    manifest = pd.read_parquet(project / "results/tiny/manifest.parquet")
    assert len(manifest) == 12 and int(manifest["kept"].sum()) == 9
    assert store.ids == ann.ids and store.generator_hash == meta["generator_hash"]
    assert store.shapes["b16.conv1"] == (8, 16, 16)
    assert len(list((project / "results/tiny/for_annotation").glob("*.image.png"))) == 4
    for rule in ("fetch_checkpoint", "sample_for_annotation", "import_annotations", "extract_features",
                 "train_interpreter", "filter"):
        assert (project / "results/logs" / rule / "tiny.log").stat().st_size > 0
    assert "Nothing to be done" in snakemake(project, "-n").stdout + snakemake(project, "-n").stderr


def test_main_table_gathers_every_setting_and_seed(project):
    snakemake(project)
    runs = pd.read_csv(project / "results/tiny/report/runs.csv")
    assert sorted(runs["setting"].unique()) == ["few_shot", "fully_supervised", "synthetic", "synthetic_filtered"]
    assert set(runs["seed"]) == {0, 1} and len(runs) == 8
    sizes = runs.groupby("setting")["num_train_images"].first()
    assert (sizes["few_shot"], sizes["synthetic"], sizes["synthetic_filtered"], sizes["fully_supervised"]) == \
        (4, 12, 9, 6)
    table = pd.read_csv(project / "results/tiny/report/main_table.csv", index_col=0)
    few_shot_mean = 100 * runs[runs["setting"] == "few_shot"]["miou"].mean()
    assert table.loc["few_shot", "miou_mean"] == pytest.approx(few_shot_mean, abs=1e-3)  # the table's 3 decimals
    assert "synthetic, filtered" in (project / "results/tiny/report/main_table.md").read_text()
    for fig in ("per_class_iou.png", "samples.png"):
        assert (project / "results/tiny/report" / fig).stat().st_size > 1000
    scores = json.loads((project / "results/tiny/downstream/few_shot/seed1/scores.json").read_text())
    assert scores["num_images"] == 4 and scores["seed"] == 1


def test_editing_the_schedule_reruns_only_the_downstream_rules(project):
    snakemake(project)
    with config_changed(project, {"tasks": {"tiny": {"downstream": {"steps": 7}}}}):
        out = snakemake(project, "-n", "--quiet", "rules").stdout
        for rule in ("train_downstream", "evaluate_downstream", "main_table"):
            assert rule in out
        for rule in ("train_interpreter", "synthesize", "filter", "sample_grid"):
            assert rule not in out


def test_editing_a_param_reruns_exactly_its_rules(project):
    snakemake(project)
    with config_changed(project, {"tasks": {"tiny": {"features": {"layers": ["b16.conv1"]}}}}):
        out = snakemake(project, "-n", "--quiet", "rules").stdout
        assert "extract_features" in out
        assert "train_interpreter" in out and "synthesize" in out  # everything downstream of features
        for rule in ("fetch_checkpoint", "sample_for_annotation", "import_annotations"):
            assert rule not in out
        snakemake(project)
        with h5py.File(project / "results/tiny/features.h5") as f:
            assert json.loads(f.attrs["layers"]) == ["b16.conv1"]


def test_editing_the_filter_ratio_reruns_only_the_filter(project):
    snakemake(project)
    with config_changed(project, {"tasks": {"tiny": {"filter": {"ratio": 0.5}}}}):
        out = snakemake(project, "-n", "--quiet", "rules").stdout
        assert "filter" in out
        for rule in ("fetch_checkpoint", "sample_for_annotation", "import_annotations", "extract_features",
                     "train_interpreter", "synthesize"):
            assert rule not in out


def test_class_scattered_synthesis_is_one_job_per_class_and_shard(tmp_path):
    make_tiny_project(tmp_path)
    update_config(tmp_path, {"tasks": {"tiny": {"synthesis": {"classes": "0-199", "num_shards": 3}}}})
    counts = job_counts(snakemake(tmp_path, "-n", "--quiet", "rules").stdout)
    assert counts["synthesize"] == 600 and counts["filter"] == 1 and counts["train_interpreter"] == 1


def test_export_target_writes_the_configured_formats_outside_the_default_run(project):
    import tarfile

    from labelfactory.core.io import sha256_file
    from labelfactory.synthesis.export.journal import read_checksums

    snakemake(project)
    out = project / "results/tiny/export"
    with config_changed(project, {"tasks": {"tiny": {"export": {"formats": ["webdataset", "voc"]}}}}):
        dry = snakemake(project, "-n")
        assert "Nothing to be done" in dry.stdout + dry.stderr, "the default run exports nothing"
        snakemake(project, "export")
        for fmt in ("webdataset", "voc"):
            sums = read_checksums(out / fmt / "SHA256SUMS")
            assert sums and all(sha256_file(out / fmt / name) == sha for name, sha in sums.items())
        assert len((out / "voc/ImageSets/Segmentation/train.txt").read_text().split()) == 9
        with config_changed(project, {"tasks": {"tiny": {"export": {"include_dropped": True}}}}):
            assert "export_format" in snakemake(project, "export", "-n", "--quiet", "rules").stdout
            snakemake(project, "export")
            with tarfile.open(out / "webdataset/shards/data-000000.tar") as tar:
                assert len(tar.getnames()) == 3 * 12  # png, mask.png, json of every sample
            assert len((out / "voc/ImageSets/Segmentation/dropped.txt").read_text().split()) == 3


def test_bad_config_fails_before_any_job(tmp_path):
    make_tiny_project(tmp_path)
    update_config(tmp_path, {"tasks": {"tiny": {"truncation": 3}}})
    proc = snakemake(tmp_path, check=False)
    assert proc.returncode != 0
    assert "tasks.tiny.truncation: 3 is greater than the maximum of 1" in proc.stdout + proc.stderr
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()


def test_wrong_checksum_is_an_error_and_no_output(tmp_path):
    make_tiny_project(tmp_path)
    update_config(tmp_path, {"checkpoints": {"tiny": {"sha256": "0" * 64}}})
    proc = snakemake(tmp_path, check=False)
    assert proc.returncode != 0
    log = (tmp_path / "results/logs/fetch_checkpoint/tiny.log").read_text()
    assert "sha256" in log
    assert not (tmp_path / "resources/checkpoints/tiny.safetensors").exists()


def test_bad_annotation_is_reported_by_file(tmp_path):
    from PIL import Image

    make_tiny_project(tmp_path)
    Image.new("RGB", (16, 16)).save(tmp_path / "ann" / "s00000001.png")
    proc = snakemake(tmp_path, check=False)
    assert proc.returncode != 0
    log = (tmp_path / "results/logs/import_annotations/tiny.log").read_text()
    assert "s00000001.png" in log and "RGB" in log
    assert not (tmp_path / "results/tiny/annotations.h5").exists()
