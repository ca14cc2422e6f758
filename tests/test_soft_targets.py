"""Soft targets for the downstream loss (issue 23, item 3): shards that keep the interpreter members'
mean class probabilities (synthesis.store_probabilities) and the synthetic_soft setting that trains
on them. Both off by default; the default shards and hard-label training stay as they were."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from labelfactory.annotations.annotation_set import AnnotationSet
from labelfactory.annotations.labels import LabelSet
from labelfactory.config import ConfigError, validate_config
from labelfactory.downstream.class_aware import ClassAwareLabels
from labelfactory.downstream.data import IGNORE_INDEX, ArraySegmentation, Augment, augment_pair
from labelfactory.downstream.experiment import SETTINGS, SettingInputs, train_downstream
from labelfactory.downstream.segmentation import SegTrainConfig, dataset_class_weights, segmentation_loss
from labelfactory.experiments.reporting import SETTING_TITLES
from labelfactory.synthesis.filtering import write_manifest
from labelfactory.synthesis.shards import (ShardError, ShardSettings, read_samples,
                                           read_samples_with_probabilities, synthesize_shard, verify_shard)

from helpers import TINY_SEGMENTATION, tiny_generator

LABELS = LabelSet(("background", "a", "b"))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Varied:
    """Two members with random, disagreeing probabilities (the same for every batch size)."""

    num_classes = 3

    def member_probabilities(self, features, classes=None):
        b = next(iter(features.values())).shape[0]
        g = torch.Generator().manual_seed(b)
        return torch.softmax(3 * torch.randn(2, b, 3, 16, 16, generator=g), 2)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """One shard of 4 samples with probabilities and uncertainty, one of the same seeds without
    probabilities; a manifest keeping 3 samples of each."""
    root = tmp_path_factory.mktemp("soft")
    backend = tiny_generator()
    for name, store in (("soft", True), ("hard", False)):
        synthesize_shard(backend, _Varied(), root / f"{name}.h5", range(100, 104),
                         settings=ShardSettings(batch_size=4, store_probabilities=store), progress=False)
        manifest = pd.DataFrame({"shard": str(root / f"{name}.h5"), "index": [0, 1, 2, 3], "seed": range(4),
                                 "class": -1, "score": 0.0, "kept": [True, False, True, True]})
        write_manifest(manifest, root / f"{name}.parquet")
    rng = np.random.default_rng(1)
    AnnotationSet(ids=[f"s{i:08d}" for i in range(2)], seeds=np.arange(2), classes=np.full(2, -1, np.int32),
                  latents=np.zeros((2, 8), np.float32), images=rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8),
                  masks=rng.integers(0, 3, (2, 16, 16), dtype=np.uint8), labels=LABELS, generator_hash="0" * 64,
                  truncation=1.0, noise="const").save(root / "ann.h5")
    return root


# --- the shards -------------------------------------------------------------------------------

def test_shards_keep_the_members_mean_probabilities_only_when_asked(shards):
    probs = _Varied().member_probabilities({"x": torch.zeros(4)}).mean(0)
    with h5py.File(shards / "soft.h5") as soft, h5py.File(shards / "hard.h5") as hard:
        stored = soft["probabilities"][()]
        assert stored.dtype == np.float16 and stored.shape == (4, 3, 16, 16) and soft["probabilities"].chunks[0] == 1
        np.testing.assert_allclose(stored.astype(np.float32), probs.numpy(), atol=1e-3)
        assert "probabilities" not in hard
        for name in ("images", "labels", "uncertainty", "score"):  # the rest is the same
            np.testing.assert_array_equal(soft[name][()], hard[name][()])
        assert soft.attrs["config_hash"] != hard.attrs["config_hash"]
    images, p = read_samples_with_probabilities(shards / "soft.h5", [3, 0])
    np.testing.assert_array_equal(images, read_samples(shards / "soft.h5", [3, 0])[0])
    np.testing.assert_array_equal(p, stored[[3, 0]])
    with pytest.raises(ShardError, match="synthesis.store_probabilities: false"):
        read_samples_with_probabilities(shards / "hard.h5", [0])
    verify_shard(shards / "soft.h5", full=True)


def test_default_shards_are_unchanged(shards, tmp_path):
    """No probabilities dataset and the same config hash as with the option explicitly off."""
    backend = tiny_generator()
    synthesize_shard(backend, _Varied(), tmp_path / "off.h5", range(100, 104),
                     settings=ShardSettings(batch_size=4), progress=False)
    with h5py.File(tmp_path / "off.h5") as off, h5py.File(shards / "hard.h5") as hard:
        assert sorted(off) == sorted(hard) and off.attrs["config_hash"] == hard.attrs["config_hash"]
    assert ShardSettings().store_probabilities is False


# --- the setting ------------------------------------------------------------------------------

def test_synthetic_soft_trains_on_the_kept_samples_probabilities(shards):
    inputs = SettingInputs(annotations=str(shards / "ann.h5"), manifest=str(shards / "soft.parquet"))
    soft = SETTINGS.get("synthetic_soft")(inputs, LABELS)
    hard = SETTINGS.get("synthetic_filtered")(inputs, LABELS)
    assert len(soft) == len(hard) == 3
    _, stored = read_samples_with_probabilities(shards / "soft.h5", [0, 2, 3])
    for i in range(3):
        image, target = soft[i]
        assert torch.equal(image, hard[i][0]) and target.dtype == torch.float32 and target.shape == (3, 16, 16)
        assert torch.equal(target, torch.from_numpy(stored[i].astype(np.float32)))
    names = list(SETTINGS.names())
    assert names.index("synthetic_plus_annotations") < names.index("synthetic_soft") < names.index("fully_supervised")
    assert SETTING_TITLES["synthetic_soft"] == "synthetic, filtered, soft targets"


def test_synthetic_soft_ignores_the_most_uncertain_pixels(shards):
    plain = SettingInputs(annotations=str(shards / "ann.h5"), manifest=str(shards / "soft.parquet"))
    inputs = SettingInputs(annotations=plain.annotations, manifest=plain.manifest, uncertain_pixels=0.25)
    before, after = SETTINGS.get("synthetic_soft")(plain, LABELS), SETTINGS.get("synthetic_soft")(inputs, LABELS)
    hard = SETTINGS.get("synthetic_filtered")(inputs, LABELS)
    for i in range(3):
        dropped = after[i][1].sum(0) == 0
        assert int(dropped.sum()) == 64  # a quarter of 16 × 16, all classes 0
        assert torch.equal(dropped, hard[i][1] == IGNORE_INDEX)  # the pixels the hard labels ignore
        assert torch.equal(after[i][1][:, ~dropped], before[i][1][:, ~dropped])


def test_synthetic_soft_needs_stored_probabilities_and_own_labels(shards):
    ann = str(shards / "ann.h5")
    with pytest.raises(ShardError) as e:
        SETTINGS.get("synthetic_soft")(SettingInputs(annotations=ann, manifest=str(shards / "hard.parquet")), LABELS)
    assert "\n" not in str(e.value) and "hard.h5" in str(e.value) and "store_probabilities" in str(e.value)
    class_aware = ClassAwareLabels(classes=(5,), names=("five",))
    with pytest.raises(ValueError, match="does not take class-aware labels"):
        SETTINGS.get("synthetic_soft")(SettingInputs(annotations=ann, manifest=str(shards / "soft.parquet"),
                                                     class_aware=class_aware), class_aware.label_set)


def test_a_run_of_synthetic_soft_trains_and_saves(shards, tmp_path):
    inputs = SettingInputs(annotations=str(shards / "ann.h5"), manifest=str(shards / "soft.parquet"))
    cfg = SegTrainConfig(model="deeplabv3_resnet18", model_options=TINY_SEGMENTATION, steps=3, batch_size=2,
                         optimizer="adamw", lr=1e-3, seed=0, threads=1, class_balance=0.5,
                         augment={"hflip": True, "scale": [0.75, 1.25]})
    info = train_downstream("synthetic_soft", inputs, cfg, tmp_path / "run.safetensors")
    assert info["setting"] == "synthetic_soft" and info["num_train_images"] == 3 and np.isfinite(info["final_loss"])
    assert (tmp_path / "run.safetensors").is_file()


# --- the loss, the class weights, the augmentation --------------------------------------------

def test_one_hot_soft_targets_give_the_hard_loss():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, generator=gen)
    label = torch.randint(0, 3, (2, 4, 4), generator=gen)
    label[0, 0] = IGNORE_INDEX
    one_hot = F.one_hot(label.clamp(max=2), 3).permute(0, 3, 1, 2).float() * (label != IGNORE_INDEX)[:, None]
    torch.testing.assert_close(segmentation_loss(logits, one_hot), segmentation_loss(logits, label))
    weight = torch.tensor([0.5, 1.0, 3.0])
    torch.testing.assert_close(segmentation_loss(logits, one_hot, weight=weight),
                               segmentation_loss(logits, label, weight=weight))
    assert segmentation_loss(logits, torch.zeros(2, 3, 4, 4)) == 0  # nothing labelled: 0, not NaN


def test_the_soft_loss_is_least_at_the_targets():
    """Minimising the soft loss over free logits gives the target probabilities (a hard label would
    push them to one class); the gradient is softmax - p per labelled pixel."""
    p = torch.tensor([0.7, 0.2, 0.1])[None, :, None, None].expand(1, 3, 2, 2).clone()
    p[..., 0, 0] = 0  # an ignored pixel
    logits = torch.zeros(1, 3, 2, 2, requires_grad=True)
    segmentation_loss(logits, p).backward()
    expected = (torch.full((3,), 1 / 3)[None, :, None, None] - p) / 3 * (p.sum(1, keepdim=True) > 0)
    torch.testing.assert_close(logits.grad, expected)
    opt = torch.optim.SGD([logits], lr=5.0)
    for _ in range(300):
        opt.zero_grad()
        segmentation_loss(logits, p).backward()
        opt.step()
    q = logits.softmax(1).detach()
    torch.testing.assert_close(q[..., 1, 1].flatten(), torch.tensor([0.7, 0.2, 0.1]), atol=1e-3, rtol=0)


def test_class_weights_of_soft_targets_count_probability_mass():
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 0, 0, 1, 2], (3, 4, 5)).astype(np.uint8)
    images = np.zeros((3, 4, 5, 3), np.uint8)
    one_hot = np.eye(3, dtype=np.float32)[labels].transpose(0, 3, 1, 2)
    hard, soft = ArraySegmentation(images, labels), ArraySegmentation(images, one_hot)
    assert torch.equal(dataset_class_weights(soft, 3, 0.5, seed=0), dataset_class_weights(hard, 3, 0.5, seed=0))
    half = ArraySegmentation(images, np.full((3, 3, 4, 5), 1 / 3, np.float32))
    assert torch.allclose(dataset_class_weights(half, 3, 1.0, seed=0), torch.ones(3))
    with pytest.raises(ValueError, match="soft targets for 3 classes, not 4"):
        dataset_class_weights(soft, 4, 0.5, seed=0)


def test_augmentation_moves_soft_targets_as_it_moves_labels():
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 3, (9, 11)))
    one_hot = F.one_hot(labels, 3).permute(2, 0, 1).float()
    image = torch.randn(3, 9, 11)
    aug = Augment(hflip=True, scale=(0.6, 1.4))
    for seed in range(6):
        torch.manual_seed(seed)
        im_hard, hard = augment_pair(image, labels, aug)
        torch.manual_seed(seed)
        im_soft, soft = augment_pair(image, one_hot, aug)
        assert torch.equal(im_hard, im_soft) and soft.shape == (3, 9, 11)
        padded = hard == IGNORE_INDEX
        assert torch.equal(soft.sum(0) == 0, padded)  # padding: all-zero probabilities, ignored
        assert torch.equal(soft.argmax(0)[~padded], hard[~padded])


# --- the config -------------------------------------------------------------------------------

def _config(tmp_path, **task):
    ann = tmp_path / "ann"
    ann.mkdir(exist_ok=True)
    (ann / "labels.yaml").write_text("names: [background, thing]\n")
    return {"checkpoints": {"g": {"url": "g.pt"}}, "tasks": {"t": {"checkpoint": "g", "annotations": str(ann), **task}}}


def test_config_requires_stored_probabilities_for_synthetic_soft(tmp_path):
    soft = {"settings": ["few_shot", "synthetic_soft"]}
    with pytest.raises(ConfigError) as e:
        validate_config(_config(tmp_path, downstream=soft), base_dir=tmp_path, check_files=False)
    assert "tasks.t.downstream.settings: synthetic_soft trains on the shards' class probabilities; set " \
           "tasks.t.synthesis.store_probabilities: true" in str(e.value)
    filled = validate_config(_config(tmp_path, downstream=soft, synthesis={"store_probabilities": True}),
                             base_dir=tmp_path, check_files=False)
    assert filled["tasks"]["t"]["synthesis"]["store_probabilities"] is True
    default = validate_config(_config(tmp_path), base_dir=tmp_path, check_files=False)
    assert default["tasks"]["t"]["synthesis"]["store_probabilities"] is False
    assert "synthetic_soft" not in default["tasks"]["t"]["downstream"]["settings"]
