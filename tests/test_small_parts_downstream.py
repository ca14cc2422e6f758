"""Synthetic training that uses what it knows (issue 23, item 3): a class-balanced downstream
loss, the synthetic_plus_annotations setting, and ignoring the most uncertain pixels of the
kept samples. Each is off by default and leaves the default run's computation as it was."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from labelfactory.annotations.annotation_set import AnnotationSet, load_annotation_set
from labelfactory.annotations.labels import LabelSet
from labelfactory.config import ConfigError, validate_config
from labelfactory.core.metrics import class_weights, class_weights_from_counts
from labelfactory.downstream import segmentation
from labelfactory.downstream.class_aware import ClassAwareLabels
from labelfactory.downstream.data import (IGNORE_INDEX, ArraySegmentation, ShardGroupedSampler, ShardSegmentation,
                                          WithAnnotations)
from labelfactory.downstream.experiment import SETTINGS, SettingInputs, seg_config
from labelfactory.downstream.segmentation import (SegTrainConfig, dataset_class_weights, segmentation_loss,
                                                  train_segmentation)
from labelfactory.synthesis.dataset import SyntheticDataset
from labelfactory.synthesis.filtering import write_manifest
from labelfactory.synthesis.ignore import ignore_uncertain
from labelfactory.synthesis.shards import (ShardError, ShardSettings, read_samples_with_uncertainty,
                                           synthesize_shard)

from helpers import TINY_SEGMENTATION, tiny_generator

LABELS = LabelSet(("background", "a", "b"))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- the class-balanced loss ---

def _labels_dataset() -> ArraySegmentation:
    """Three 2×5 images: class 0 on 20 pixels, class 1 on 6, class 2 on 2, 2 pixels ignored."""
    labels = np.zeros((3, 2, 5), np.uint8)
    labels[0, 0, :3] = 1
    labels[1, 1, :3] = 1
    labels[2, 0, :2] = 2
    labels[2, 1, 3:] = IGNORE_INDEX
    return ArraySegmentation(np.zeros((3, 2, 5, 3), np.uint8), labels)


def test_class_weights_come_from_the_training_labels_without_the_ignored_pixels():
    data = _labels_dataset()
    w = dataset_class_weights(data, 4, 1.0, seed=0)
    freq = torch.tensor([20, 6, 2, 0], dtype=torch.float64) / 28
    expected = torch.tensor([1 / freq[0], 1 / freq[1], 1 / freq[2], 0.0], dtype=torch.float64)
    expected /= (freq * expected).sum()  # mean weight per labelled pixel 1
    assert torch.allclose(w.double(), expected, atol=1e-6)
    assert w[3] == 0  # absent from the training set
    assert torch.allclose((freq * w.double()).sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose((w.double() * freq)[:3], torch.full((3,), 1 / 3, dtype=torch.float64))  # equal totals
    assert dataset_class_weights(data, 4, 0.0, seed=0) is None
    half = dataset_class_weights(data, 4, 0.5, seed=0)
    assert w[2] > half[2] > 1 > half[0] > w[0]
    # the same helper the interpreters use, on the same labels
    flat = torch.cat([data[i][1].flatten() for i in range(3)])
    assert torch.equal(class_weights(flat, 4, 1.0), w)
    assert torch.equal(class_weights_from_counts(torch.tensor([20, 6, 2, 0]), 1.0), w)


def test_class_weights_count_at_most_max_items_drawn_with_the_seed():
    labels = np.repeat(np.arange(10, dtype=np.uint8) % 3, 4).reshape(10, 2, 2)  # item i is all class i % 3
    data = ArraySegmentation(np.zeros((10, 2, 2, 3), np.uint8), labels)
    picks = torch.randperm(10, generator=torch.Generator().manual_seed(5))[:4]
    counts = torch.bincount(picks % 3, minlength=3) * 4
    got = dataset_class_weights(data, 3, 1.0, seed=5, max_items=4)
    assert torch.equal(got, class_weights_from_counts(counts, 1.0))
    assert torch.equal(got, dataset_class_weights(data, 3, 1.0, seed=5, max_items=4))  # deterministic


def test_weighted_loss_on_a_hand_made_example():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 3.0], [1.0, 1.0, 1.0]])
    logits = logits.T.reshape(1, 3, 2, 2)  # pixels (0,0) (0,1) (1,0) (1,1)
    label = torch.tensor([[[0, 1], [2, IGNORE_INDEX]]])
    weight = torch.tensor([0.5, 2.0, 4.0])
    ce = -F.log_softmax(logits, 1)[0]  # [C, 2, 2]
    per_pixel = torch.stack([ce[0, 0, 0], ce[1, 0, 1], ce[2, 1, 0]])
    expected = (weight * per_pixel).sum() / weight.sum()  # labels 0, 1, 2 once each
    assert torch.allclose(segmentation_loss(logits, label, weight=weight), expected)
    # all-ignored batches and batches of weight-0 classes give 0, not NaN
    assert segmentation_loss(logits, torch.full_like(label, IGNORE_INDEX), weight=weight) == 0
    assert segmentation_loss(logits, torch.zeros_like(label), weight=torch.tensor([0.0, 1.0, 1.0])) == 0


def _old_segmentation_loss(logits, label, ignore_index=IGNORE_INDEX):
    """The loss before class_balance existed (segmentation.py at 88a9a3c)."""
    total = F.cross_entropy(logits, label, ignore_index=ignore_index, reduction="sum")
    return total / (label != ignore_index).sum().clamp(min=1)


def test_class_balance_0_is_the_old_loss_bit_for_bit(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, generator=gen)
    label = torch.randint(0, 3, (2, 4, 4), generator=gen)
    label[0, 0] = IGNORE_INDEX
    assert torch.equal(segmentation_loss(logits, label), _old_segmentation_loss(logits, label))

    rng = np.random.default_rng(0)
    data = ArraySegmentation(rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8),
                             rng.choice([0, 0, 0, 1, 2], (3, 16, 16)).astype(np.uint8))
    cfg = SegTrainConfig(model="deeplabv3_resnet18", model_options=TINY_SEGMENTATION, steps=2, batch_size=2,
                         optimizer="adamw", lr=3e-3, seed=1, threads=1)
    assert cfg.class_balance == 0
    _, today = train_segmentation(data, 3, cfg, progress=False)

    def old(logits, label, ignore_index=IGNORE_INDEX, weight=None):
        assert weight is None, "class_balance 0 passes no weights"
        return _old_segmentation_loss(logits, label, ignore_index)

    monkeypatch.setattr(segmentation, "segmentation_loss", old)
    _, before = train_segmentation(data, 3, cfg, progress=False)
    assert today["loss"] == before["loss"]
    monkeypatch.undo()
    _, balanced = train_segmentation(data, 3, SegTrainConfig(**{**cfg.to_dict(), "class_balance": 1.0}),
                                     progress=False)
    assert balanced["loss"] != today["loss"]


def test_seg_config_passes_class_balance():
    assert seg_config({"class_balance": 0.5, "annotation_share": 0.2}, seed=0, threads=1).class_balance == 0.5
    assert seg_config({}, seed=0, threads=1).class_balance == 0.0
    with pytest.raises(ValueError, match="class_balance must be at least 0"):
        SegTrainConfig(class_balance=-1)


# --- synthetic_plus_annotations ---

class _FakeReader:
    """Shard ``s<k>.h5`` sample ``i``: every pixel of the image ``10·k + i``, every label ``k``."""

    def __init__(self):
        self.calls = []

    def __call__(self, shard, indices):
        self.calls.append(shard)
        k = int(shard[1:-3])
        images = np.stack([np.full((2, 2, 3), 10 * k + i, np.uint8) for i in indices])
        return images, np.full((len(indices), 2, 2), k, np.uint8)


def _decode(x: torch.Tensor) -> int:
    return round(float(x[0, 0, 0] * 0.229 + 0.485) * 255)


def _with_annotations(n_synthetic=12, n_annotations=3, share=0.2, window=2, reader=None):
    manifest = pd.DataFrame({"shard": [f"s{k}.h5" for k in range(4)] * (n_synthetic // 4),
                             "index": np.arange(n_synthetic), "kept": True})
    synthetic = ShardSegmentation(SyntheticDataset(manifest, reader=reader or _FakeReader(), window=window))
    images = np.stack([np.full((2, 2, 3), 200 + a, np.uint8) for a in range(n_annotations)])
    annotations = ArraySegmentation(images, np.full((n_annotations, 2, 2), 9, np.uint8))
    return WithAnnotations(synthetic, annotations, share)


def test_with_annotations_has_the_share_and_order():
    ds = _with_annotations(n_synthetic=12, n_annotations=3, share=0.2)  # 0.2·12/0.8 = 3 annotation items
    assert len(ds) == 15
    codes = [_decode(ds[i][0]) for i in range(len(ds))]
    assert codes[:12] == [10 * (i % 4) + i for i in range(12)]  # the kept samples, in manifest order
    assert codes[12:] == [200, 201, 202]
    ds = _with_annotations(n_synthetic=40, n_annotations=3, share=0.5)  # 40 annotation items
    assert len(ds) == 80
    codes = [_decode(ds[i][0]) for i in range(len(ds))]
    assert codes[40:] == [200 + a % 3 for a in range(40)]  # in turn: 0, 1, 2, 0, 1, ...
    assert sum(c >= 200 for c in codes) / len(ds) == 0.5
    assert [_decode(ds[i][0]) for i in range(len(ds))] == codes  # deterministic
    assert list(ds.shards[40:]) == [None] * 40
    small = _with_annotations(n_synthetic=4, n_annotations=3, share=0.1)  # round(0.44) → at least once each
    assert len(small) == 7 and [_decode(small[i][0]) for i in range(4, 7)] == [200, 201, 202]
    with pytest.raises(ValueError, match=r"share .* must lie in \(0, 1\)"):
        _with_annotations(share=1.0)


def test_sampler_reads_each_shard_once_and_spreads_the_annotations():
    reader = _FakeReader()
    ds = _with_annotations(n_synthetic=24, n_annotations=3, share=0.5, window=2, reader=reader)  # 24 + 24
    it = iter(ShardGroupedSampler(ds, torch.Generator().manual_seed(0)))
    epoch = [next(it) for _ in range(len(ds))]
    assert sorted(epoch) == list(range(len(ds)))
    for i in epoch:
        ds[i]
    assert sorted(reader.calls) == ["s0.h5", "s1.h5", "s2.h5", "s3.h5"], "each shard read once per epoch"
    halves = [epoch[:24], epoch[24:]]  # two windows of 2 shards (12 samples) and 12 annotation items each
    assert [sum(i >= 24 for i in h) for h in halves] == [12, 12]
    assert len({ds.shards[i] for i in epoch[:24] if i < 24}) == 2
    again = iter(ShardGroupedSampler(ds, torch.Generator().manual_seed(0)))
    assert [next(again) for _ in range(len(ds))] == epoch  # deterministic
    empty = SyntheticDataset(pd.DataFrame({"shard": [], "index": [], "kept": []}), reader=_FakeReader())
    only = WithAnnotations(ShardSegmentation(empty),
                           ArraySegmentation(np.zeros((3, 2, 2, 3), np.uint8), np.zeros((3, 2, 2), np.uint8)), 0.5)
    it = iter(ShardGroupedSampler(only, torch.Generator()))
    assert len(only) == 3 and sorted(next(it) for _ in range(3)) == [0, 1, 2]  # no kept sample: annotations alone


def _old_epoch(shards, window, generator):
    """ShardGroupedSampler._epoch before in-memory items existed (data.py at 88a9a3c)."""
    names = list(dict.fromkeys(shards))
    shuffled = [names[s] for s in torch.randperm(len(names), generator=generator).tolist()]
    order = []
    for start in range(0, len(shuffled), window):
        members = np.flatnonzero(np.isin(shards, shuffled[start : start + window]))
        order.extend(members[torch.randperm(len(members), generator=generator).numpy()].tolist())
    return order


def test_sampler_order_is_unchanged_without_in_memory_items():
    manifest = pd.DataFrame({"shard": [f"s{k % 5}.h5" for k in range(23)], "index": range(23), "kept": True})
    ds = ShardSegmentation(SyntheticDataset(manifest, reader=_FakeReader(), window=2))
    it = iter(ShardGroupedSampler(ds, torch.Generator().manual_seed(7)))
    old_gen = torch.Generator().manual_seed(7)
    assert [next(it) for _ in range(46)] == _old_epoch(ds.shards, 2, old_gen) + _old_epoch(ds.shards, 2, old_gen)
    plain = ArraySegmentation(np.zeros((6, 2, 2, 3), np.uint8), np.zeros((6, 2, 2), np.uint8))
    it = iter(ShardGroupedSampler(plain, torch.Generator().manual_seed(7)))
    assert [next(it) for _ in range(6)] == _old_epoch(np.zeros(6, dtype=object), 1, torch.Generator().manual_seed(7))


class _Binary:
    """Two members that disagree on the left half: object (1) or background (0)."""

    num_classes = 2

    def member_probabilities(self, features, classes=None):
        b = next(iter(features.values())).shape[0]
        p = torch.zeros(2, b, 2, 16, 16)
        p[:, :, 1] = 1.0
        p[1, :, :, :, :8] = torch.tensor([1.0, 0.0])[:, None, None]
        return p


class _Varied:
    """Two members with random, disagreeing probabilities (the same for every call)."""

    num_classes = 3

    def member_probabilities(self, features, classes=None):
        b = next(iter(features.values())).shape[0]
        g = torch.Generator().manual_seed(b)
        return torch.softmax(3 * torch.randn(2, b, 3, 16, 16, generator=g), 2)


def _annotations(path, n=3, size=16, masks=None, classes=None, labels=LABELS):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    masks = rng.integers(0, 3, (n, size, size), dtype=np.uint8) if masks is None else masks
    AnnotationSet(ids=[f"s{i:08d}" for i in range(n)], seeds=np.arange(n),
                  classes=np.full(n, -1, np.int32) if classes is None else classes,
                  latents=np.zeros((n, 8), np.float32), images=images, masks=masks, labels=labels,
                  generator_hash="0" * 64, truncation=1.0, noise="const").save(path)
    return str(path)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two shards of 4 samples (with uncertainty), one without, one of object masks; manifests
    keeping 6 of the first two, 2 of the third and 2 of the fourth."""
    root = tmp_path_factory.mktemp("shards")
    backend = tiny_generator()
    paths = [root / "00000.h5", root / "00001.h5", root / "bare.h5", root / "binary.h5"]
    for k, p in enumerate(paths):
        settings = ShardSettings(batch_size=4, store_uncertainty=p.stem != "bare")
        synthesize_shard(backend, _Binary() if p.stem == "binary" else _Varied(), p, range(100 + 4 * k, 104 + 4 * k),
                         settings=settings, progress=False)
    manifest = pd.DataFrame({"shard": [str(paths[0])] * 4 + [str(paths[1])] * 4, "index": [0, 1, 2, 3] * 2,
                             "seed": np.arange(8), "class": -1, "score": np.zeros(8),
                             "kept": [True, False, True, True, True, True, False, True]})
    write_manifest(manifest, root / "manifest.parquet")
    bare = pd.DataFrame({"shard": str(paths[2]), "index": [0, 1], "seed": [0, 1], "class": -1, "score": 0.0,
                         "kept": True})
    write_manifest(bare, root / "bare.parquet")
    write_manifest(bare.assign(shard=str(paths[3]), index=[1, 3]), root / "binary.parquet")
    return root


def test_synthetic_plus_annotations_setting(tmp_path, shards):
    ann = _annotations(tmp_path / "ann.h5")
    inputs = SettingInputs(annotations=ann, manifest=str(shards / "manifest.parquet"), annotation_share=0.25)
    ds = SETTINGS.get("synthetic_plus_annotations")(inputs, LABELS)
    kept = SETTINGS.get("synthetic_filtered")(inputs, LABELS)
    few = SETTINGS.get("few_shot")(inputs, LABELS)
    assert len(kept) == 6 and len(ds) == 6 + 3  # round(0.25·6/0.75) = 2 → each of the 3 once
    for i in range(6):
        assert all(torch.equal(a, b) for a, b in zip(ds[i], kept[i]))
    for j in range(3):
        assert all(torch.equal(a, b) for a, b in zip(ds[6 + j], few[j]))
    more = SETTINGS.get("synthetic_plus_annotations")(SettingInputs(annotations=ann, manifest=inputs.manifest,
                                                                     annotation_share=0.6), LABELS)
    assert len(more) == 6 + 9 and [int(i) for i in more.annotation_items] == [0, 1, 2] * 3
    names = list(SETTINGS.names())
    assert names.index("synthetic_combined") < names.index("synthetic_plus_annotations") < \
        names.index("fully_supervised")
    with pytest.raises(ValueError, match=r"annotation_share must lie in \(0, 1\)"):
        SettingInputs(annotations=ann, annotation_share=0)


def test_synthetic_plus_annotations_maps_the_annotations_to_class_aware_labels(tmp_path, shards):
    masks = np.random.default_rng(2).integers(0, 2, (3, 16, 16), dtype=np.uint8)
    ann = _annotations(tmp_path / "ann.h5", masks=masks, labels=LabelSet(("background", "object")))
    class_aware = ClassAwareLabels(classes=(5, -1), names=("five", "thing"))  # class -1 is label 2
    inputs = SettingInputs(annotations=ann, manifest=str(shards / "binary.parquet"), class_aware=class_aware,
                           annotation_share=0.6)
    ds = SETTINGS.get("synthetic_plus_annotations")(inputs, class_aware.label_set)
    assert len(ds) == 2 + 3  # round(0.6·2/0.4) = 3
    loaded = load_annotation_set(ann)
    expected = class_aware.apply(loaded.masks, loaded.classes)
    assert set(np.unique(expected)) == {0, 2}
    assert all(torch.equal(ds[2 + j][1], torch.from_numpy(expected[j])) for j in range(3))
    synthetic = SETTINGS.get("synthetic_filtered")(inputs, class_aware.label_set)
    assert all(torch.equal(ds[i][1], synthetic[i][1]) for i in range(2))
    assert set(torch.unique(ds[0][1]).tolist()) == {0, 2}


# --- ignoring the most uncertain pixels ---

def test_ignore_uncertain_marks_exactly_the_top_fraction_of_each_image():
    rng = np.random.default_rng(0)
    unc = rng.random((3, 8, 10)).astype(np.float16)
    labels = rng.integers(0, 3, (3, 8, 10)).astype(np.uint8)
    out = ignore_uncertain(labels, unc, 0.1)
    assert out.dtype == labels.dtype and not np.shares_memory(out, labels)
    for n in range(3):
        ignored = out[n] == IGNORE_INDEX
        assert ignored.sum() == 8  # round(0.1 · 80)
        assert unc[n][ignored].min() >= unc[n][~ignored].max()
        assert np.array_equal(out[n][~ignored], labels[n][~ignored])
    ties = np.zeros((1, 2, 3), np.float16)
    ties[0, 1, 2] = 1.0
    assert (ignore_uncertain(np.zeros((1, 2, 3), np.uint8), ties, 0.5) == IGNORE_INDEX).tolist() == \
        [[[True, True, False], [False, False, True]]]  # the top pixel, then ties in row-major order
    assert np.array_equal(ignore_uncertain(labels, unc, 0.0), labels)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\)"):
        ignore_uncertain(labels, unc, 1.0)


def test_synthetic_settings_ignore_the_most_uncertain_pixels(tmp_path, shards):
    ann = _annotations(tmp_path / "ann.h5")
    plain = SettingInputs(annotations=ann, manifest=str(shards / "manifest.parquet"))
    inputs = SettingInputs(annotations=ann, manifest=plain.manifest, uncertain_pixels=0.25)
    for setting, n in (("synthetic", 8), ("synthetic_filtered", 6), ("synthetic_plus_annotations", 6)):
        before, after = SETTINGS.get(setting)(plain, LABELS), SETTINGS.get(setting)(inputs, LABELS)
        assert len(after) == len(before)
        for i in range(n):
            label, old = after[i][1], before[i][1]
            assert torch.equal(after[i][0], before[i][0]) and (old != IGNORE_INDEX).all()
            ignored = label == IGNORE_INDEX
            assert int(ignored.sum()) == 64  # a quarter of 16 × 16
            assert torch.equal(label[~ignored], old[~ignored])
    kept = SETTINGS.get("synthetic_filtered")(inputs, LABELS)
    _, _, unc = read_samples_with_uncertainty(kept.shards[0], [kept.samples.indices[0]])
    ignored = (kept[0][1] == IGNORE_INDEX).numpy()
    assert unc[0][ignored].min() >= unc[0][~ignored].max() and unc[0].max() > unc[0].min()
    few = SETTINGS.get("synthetic_plus_annotations")(inputs, LABELS)
    assert all((few[i][1] != IGNORE_INDEX).all() for i in range(6, len(few)))  # annotations keep every pixel


def test_uncertain_pixels_need_shards_with_uncertainty(tmp_path, shards):
    ann = _annotations(tmp_path / "ann.h5")
    bare = str(shards / "bare.parquet")
    assert len(SETTINGS.get("synthetic_filtered")(SettingInputs(annotations=ann, manifest=bare), LABELS)) == 2
    with pytest.raises(ShardError) as e:
        SETTINGS.get("synthetic_filtered")(SettingInputs(annotations=ann, manifest=bare, uncertain_pixels=0.1),
                                           LABELS)
    message = str(e.value)
    assert "\n" not in message and str(shards / "bare.h5") in message and "synthesis.store_uncertainty" in message
    with pytest.raises(ShardError, match="synthesis.store_uncertainty"):
        read_samples_with_uncertainty(shards / "bare.h5", [0])
    with pytest.raises(ValueError, match=r"uncertain_pixels must lie in \[0, 1\)"):
        SettingInputs(annotations=ann, uncertain_pixels=1.0)


def test_config_rejects_uncertain_pixels_without_stored_uncertainty(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "labels.yaml").write_text("names: [background, thing]\n")
    cfg = {"checkpoints": {"g": {"url": "g.pt"}},
           "tasks": {"t": {"checkpoint": "g", "annotations": str(ann), "synthesis": {"store_uncertainty": False},
                           "downstream": {"uncertain_pixels": 0.1,
                                          "settings": ["few_shot", "synthetic_plus_annotations"]}}}}
    with pytest.raises(ConfigError, match=r"tasks\.t\.downstream\.uncertain_pixels: .*store_uncertainty: false"):
        validate_config(cfg, base_dir=tmp_path, check_files=False)
    cfg["tasks"]["t"]["downstream"]["settings"] = ["few_shot"]
    filled = validate_config(cfg, base_dir=tmp_path, check_files=False)
    assert filled["tasks"]["t"]["downstream"]["annotation_share"] == 0.1
    assert filled["tasks"]["t"]["downstream"]["class_balance"] == 0
