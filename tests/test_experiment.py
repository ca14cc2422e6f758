"""The downstream experiment: settings, real datasets, training and scoring runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from labelfactory.toybench import world as toyworld
from labelfactory.annotations.annotation_set import AnnotationSet
from labelfactory.annotations.labels import LabelSet
from labelfactory.downstream.experiment import SETTINGS, SettingInputs, evaluate_downstream, seg_config, train_downstream
from labelfactory.downstream.real import DatasetError, RealDataSpec, real_dataset
from labelfactory.core.io import sha256_file
from labelfactory.core.divergence import Diverged
from labelfactory.core.provenance import describe_device
from labelfactory.synthesis.filtering import write_manifest
from labelfactory.synthesis.shards import ShardSettings, synthesize_shard

from helpers import TINY_SEGMENTATION, make_real_folder, tiny_generator, tiny_mask

LABELS = LabelSet(("background", "a", "b"))
CAR = LabelSet(toyworld.part_labels("car"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def annotation_set(path, n=4, size=16, labels=LABELS):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    AnnotationSet(ids=[f"s{i:08d}" for i in range(n)], seeds=np.arange(n), classes=np.full(n, -1, np.int32),
                  latents=np.zeros((n, 8), np.float32), images=images,
                  masks=np.stack([tiny_mask(im) for im in images]), labels=labels, generator_hash="0" * 64,
                  truncation=1.0, noise="const").save(path)
    return path


def test_folder_dataset_reads_pairs(tmp_path):
    make_real_folder(tmp_path / "real", size=16, n_train=3, n_test=2)
    spec = RealDataSpec(type="folder", path=str(tmp_path / "real"))
    train, test = real_dataset(spec, "train", LABELS), real_dataset(spec, "test", LABELS)
    assert len(train) == 3 and len(test) == 2
    image, label = train[1]
    raw = np.asarray(Image.open(tmp_path / "real/train/images/001.png"))
    assert image.shape == (3, 16, 16) and torch.equal(label, torch.from_numpy(tiny_mask(raw).astype(np.int64)))


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "train/masks/001.png").unlink(), "no mask for"),
    (lambda r: Image.fromarray(np.zeros((16, 16), np.uint8)).save(r / "train/masks/999.png"), "mask without image"),
    (lambda r: Image.fromarray(np.full((16, 16), 7, np.uint8)).save(r / "train/masks/002.png"),
     "label id 7 outside 0..2"),
    (lambda r: Image.fromarray(np.zeros((8, 16), np.uint8)).save(r / "train/masks/000.png"), r"mask \(8, 16\)"),
])
def test_folder_dataset_errors_name_the_file(tmp_path, damage, message):
    make_real_folder(tmp_path / "real", size=16, n_train=3, n_test=2)
    damage(tmp_path / "real")
    with pytest.raises(DatasetError, match=message):
        real_dataset(RealDataSpec(type="folder", path=str(tmp_path / "real")), "train", LABELS)


def test_ignore_pixels_pass_the_folder_check(tmp_path):
    make_real_folder(tmp_path / "real", size=16, n_train=2, n_test=1)
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / "real/train/masks/000.png")
    _, label = real_dataset(RealDataSpec(type="folder", path=str(tmp_path / "real")), "train", LABELS)[0]
    assert (label == 255).all()


def test_toyworld_split_is_disjoint_and_checks_labels():
    spec = RealDataSpec(cls="car", size=16, train_images=3, test_images=2)
    train, test = real_dataset(spec, "train", CAR), real_dataset(spec, "test", CAR)
    assert train.seeds == [spec.train_seed_start + i for i in range(3)]
    assert not set(train.seeds) & set(test.seeds)
    scene = toyworld.render(test.seeds[0], "car", 16)
    assert torch.equal(test[0][1], torch.from_numpy(scene.parts.astype(np.int64)))
    with pytest.raises(DatasetError, match="not the toy-world car parts"):
        real_dataset(spec, "test", LABELS)


def test_synthetic_settings_differ_only_by_the_filter(tmp_path):
    backend = tiny_generator()

    class Constant:  # two members that agree on one label everywhere
        num_classes = 3

        def member_probabilities(self, features, classes=None):
            x = next(iter(features.values()))
            p = torch.zeros(2, x.shape[0], 3, 16, 16)
            p[:, :, 1] = 1.0
            return p

    shard = tmp_path / "00000.h5"
    synthesize_shard(backend, Constant(), shard, range(100, 106), settings=ShardSettings(batch_size=3), progress=False)
    manifest = pd.DataFrame({"shard": str(shard), "index": np.arange(6), "seed": np.arange(100, 106),
                             "class": -1, "score": np.linspace(0, 1, 6), "kept": [True] * 4 + [False] * 2})
    write_manifest(manifest, tmp_path / "manifest.parquet")
    inputs = SettingInputs(annotations=str(annotation_set(tmp_path / "ann.h5")), real=RealDataSpec(),
                           manifest=str(tmp_path / "manifest.parquet"))
    assert len(SETTINGS.get("synthetic")(inputs, LABELS)) == 6
    kept = SETTINGS.get("synthetic_filtered")(inputs, LABELS)
    assert len(kept) == 4 and (kept[0][1] == 1).all()
    assert len(SETTINGS.get("few_shot")(inputs, LABELS)) == 4


def test_synthetic_combined_trains_on_the_kept_samples_of_every_task(tmp_path):
    """BigDatasetGAN's "BigGAN + VQGAN" row: the kept samples of the task and of the
    combined tasks together, in that order."""
    backend = tiny_generator()

    class Constant:
        num_classes = 3

        def __init__(self, label):
            self.label = label

        def member_probabilities(self, features, classes=None):
            x = next(iter(features.values()))
            p = torch.zeros(2, x.shape[0], 3, 16, 16)
            p[:, :, self.label] = 1.0
            return p

    manifests = []
    for label, kept in ((1, [True, True, False]), (2, [False, True, True])):
        shard = tmp_path / f"{label}.h5"
        synthesize_shard(backend, Constant(label), shard, range(10 * label, 10 * label + 3), progress=False)
        manifests.append(tmp_path / f"manifest{label}.parquet")
        write_manifest(pd.DataFrame({"shard": str(shard), "index": np.arange(3), "seed": np.arange(3), "class": -1,
                                     "score": np.zeros(3), "kept": kept}), manifests[-1])
    inputs = SettingInputs(annotations=str(annotation_set(tmp_path / "ann.h5")), manifest=str(manifests[0]),
                           combined=(str(manifests[1]),))
    both = SETTINGS.get("synthetic_combined")(inputs, LABELS)
    assert len(both) == 4
    assert [int(np.unique(both[i][1])[0]) for i in range(4)] == [1, 1, 2, 2]
    with pytest.raises(ValueError, match="synthetic_combined needs the manifests of the tasks to combine"):
        SETTINGS.get("synthetic_combined")(SettingInputs(annotations=inputs.annotations, manifest=inputs.manifest),
                                           LABELS)


def test_seg_config_takes_the_schedule_and_local_weights():
    cfg = seg_config({"model": "deeplabv3_resnet18", "model_options": {"width": 0.5}, "steps": 7, "batch_size": 4,
                      "backbone_weights": "b.safetensors", "weights": None, "augment": {"hflip": False,
                                                                                         "scale": [0.9, 1.1]}},
                     seed=3, threads=2)
    assert (cfg.steps, cfg.batch_size, cfg.seed, cfg.threads) == (7, 4, 3, 2)
    assert cfg.model_options == {"width": 0.5, "backbone_weights": "b.safetensors"}
    assert cfg.augment.scale == (0.9, 1.1) and cfg.augment.hflip is False


def test_train_and_evaluate_a_run_reproducibly(tmp_path):
    make_real_folder(tmp_path / "real", size=16, n_train=6, n_test=4)
    real = RealDataSpec(type="folder", path=str(tmp_path / "real"))
    inputs = SettingInputs(annotations=str(annotation_set(tmp_path / "ann.h5")), real=real)
    cfg = seg_config({"model": "deeplabv3_resnet18", "model_options": TINY_SEGMENTATION, "steps": 10,
                      "batch_size": 4, "optimizer": "adamw", "lr": 3e-3}, seed=0, threads=1)
    runs = []
    for name in ("a", "b"):
        info = train_downstream("fully_supervised", inputs, cfg, tmp_path / name / "model.safetensors")
        assert info["num_train_images"] == 6 and info["setting"] == "fully_supervised"
        scores = evaluate_downstream(tmp_path / name / "model.safetensors", inputs.annotations, real,
                                     tmp_path / name / "scores.json")
        on_disk = json.loads((tmp_path / name / "scores.json").read_text())
        assert on_disk["miou"] == pytest.approx(scores["miou"]) and on_disk["seed"] == 0
        assert set(on_disk["iou_by_class"]) == {"background", "a", "b"}
        assert on_disk["class_names"] == ["background", "a", "b"]  # labels.yaml order, for the table's columns
        assert np.sum(on_disk["confusion"]) == 4 * 16 * 16
        assert on_disk["device"] == describe_device("cpu", 1)  # where it was trained
        runs.append((sha256_file(tmp_path / name / "model.safetensors"), on_disk["confusion"]))
    assert runs[0] == runs[1], "same seed and config must give the same weights and scores"


def test_a_diverging_run_is_recorded_unscored_or_fails(tmp_path):
    """An absurd learning rate: the run stops at its first non-finite loss and says so."""
    make_real_folder(tmp_path / "real", size=16, n_train=6, n_test=4)
    real = RealDataSpec(type="folder", path=str(tmp_path / "real"))
    inputs = SettingInputs(annotations=str(annotation_set(tmp_path / "ann.h5")), real=real)
    cfg = seg_config({"model": "deeplabv3_resnet18", "model_options": TINY_SEGMENTATION, "steps": 10,
                      "batch_size": 4, "optimizer": "sgd", "lr": 1e30}, seed=0, threads=1)
    info = train_downstream("fully_supervised", inputs, cfg, tmp_path / "model.safetensors")
    assert info["status"] == "diverged" and info["what"] == "loss" and 0 < info["step"] < 10
    assert np.isfinite(info["last_finite_loss"]) and info["num_train_images"] == 6
    scores = evaluate_downstream(tmp_path / "model.safetensors", inputs.annotations, real, tmp_path / "scores.json")
    assert json.loads((tmp_path / "scores.json").read_text()) == scores
    assert scores["status"] == "diverged" and "miou" not in scores and scores["step"] == info["step"]
    with pytest.raises(Diverged, match=r"fully_supervised seed 0: the loss became non-finite at step \d"):
        train_downstream("fully_supervised", inputs, cfg, tmp_path / "fail.safetensors", on_divergence="fail")
    assert not (tmp_path / "fail.safetensors").exists()
