"""Downstream segmentation: models, datasets, training, scoring, persistence."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from helpers import REPO, TINY_SEGMENTATION
from labelfactory.config import WorkflowConfig, load_config
from labelfactory.downstream.data import (IGNORE_INDEX, ArraySegmentation, Augment, ShardGroupedSampler,
                                          ShardSegmentation, augment_pair)
from labelfactory.synthesis.dataset import SyntheticDataset
from labelfactory.toybench.datasets import ToyWorldSegmentation
from labelfactory.downstream.experiment import seg_config
from labelfactory.downstream.models import SEGMENTATION_MODELS, WeightsError, build_segmentation_model
from labelfactory.downstream.segmentation import (SegTrainConfig, confusion_matrix, evaluate_segmentation,
                                                  load_model, lr_factor, save_model, scores_from_confusion,
                                                  train_segmentation)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", list(SEGMENTATION_MODELS))
def test_every_model_gives_logits_at_input_size(name):
    model = build_segmentation_model(name, 5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5, 32, 32)


def test_default_config_model_keeps_resolution():
    """The embedded default's network (config/config.yaml) on its 32×32 images."""
    task = WorkflowConfig.from_dict(load_config(REPO / "config" / "config.yaml")).tasks["toy-car"]
    cfg = seg_config(task.downstream.train, seed=0, threads=1)
    model = build_segmentation_model(cfg.model, 5, **cfg.model_options).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5, 32, 32)
        side = round(32 * model.input_scale)
        feats = model.backbone(torch.randn(1, 3, side, side))["out"]
    assert feats.shape[-1] >= 8, "toy features must keep at least 8×8 cells for 2-px parts"


def test_resnet50_is_torchvision_deeplabv3():
    ours = build_segmentation_model("deeplabv3_resnet50", 3).eval()
    tv = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=3,
                                                            aux_loss=False).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x)["out"])


@pytest.mark.parametrize("small_stem,output_stride", [(False, 8), (False, 32), (True, 2), (True, 8)])
def test_output_stride(small_stem, output_stride):
    model = build_segmentation_model("deeplabv3_resnet18", 3, small_stem=small_stem, output_stride=output_stride,
                                     width=0.125)
    feats = model.backbone(torch.randn(2, 3, 32, 32))["out"]
    assert feats.shape[-2:] == (32 // output_stride, 32 // output_stride)


def test_impossible_output_stride_is_an_error():
    with pytest.raises(ValueError, match="output_stride 4 impossible"):
        build_segmentation_model("deeplabv3_resnet18", 3, output_stride=4)


def test_iou_against_hand_computed_confusion():
    target = torch.tensor([[0, 0, 1, IGNORE_INDEX], [1, 2, 2, 0]])
    pred = torch.tensor([[0, 1, 1, 3], [1, 2, 0, 0]])  # class 3 only where the truth is ignored
    conf = confusion_matrix(pred, target, 4)
    assert conf.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    s = scores_from_confusion(conf, ["bg", "a", "b", "c"])
    assert s["iou"][:3] == pytest.approx([2 / 4, 2 / 3, 1 / 2]) and s["iou"][3] is None
    assert s["iou_by_class"]["c"] is None
    assert s["miou"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert s["pixel_accuracy"] == pytest.approx(5 / 7)
    only_predicted = scores_from_confusion(torch.tensor([[1, 1], [0, 0]]))
    assert only_predicted["iou"] == [0.5, 0.0] and only_predicted["miou"] == 0.25
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(pred, torch.full_like(target, 7), 4)


class _Constant(torch.nn.Module):
    """Predicts class 1 everywhere."""

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 3, *x.shape[-2:])
        logits[:, 1] = 1.0
        return logits


def test_evaluation_sums_the_confusion_over_the_whole_set():
    labels = np.zeros((5, 4, 4), np.uint8)
    labels[0] = 1
    labels[1, 0] = 2
    labels[2, :, 0] = IGNORE_INDEX
    images = np.zeros((5, 4, 4, 3), np.uint8)
    res = evaluate_segmentation(_Constant(), ArraySegmentation(images, labels), 3, batch_size=2)
    assert res["confusion"] == [[0, 56, 0], [0, 16, 0], [0, 4, 0]]
    assert res["iou"] == [0.0, pytest.approx(16 / 76), 0.0]
    assert res["num_images"] == 5


def _tiny_cfg(**kw) -> SegTrainConfig:
    base = dict(model="deeplabv3_resnet18", model_options=TINY_SEGMENTATION, steps=30, batch_size=4, optimizer="adamw", lr=3e-3,
                schedule="cosine", warmup_steps=3, seed=3, threads=1)
    return SegTrainConfig(**{**base, **kw})


def test_training_lowers_the_loss_and_is_deterministic():
    data = ToyWorldSegmentation(range(8), "car", 16)
    cfg = _tiny_cfg()
    m1, h1 = train_segmentation(data, 5, cfg, progress=False)
    m2, h2 = train_segmentation(data, 5, cfg, progress=False)
    assert np.mean(h1["loss"][-5:]) < 0.7 * np.mean(h1["loss"][:5])
    assert h1["loss"] == h2["loss"]
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    _, h3 = train_segmentation(data, 5, _tiny_cfg(seed=4, steps=1, warmup_steps=0), progress=False)
    assert h3["loss"][0] != h1["loss"][0]


def test_lr_schedule_warms_up_and_decays_to_zero():
    for schedule in ("poly", "cosine"):
        cfg = SegTrainConfig(steps=100, warmup_steps=10, schedule=schedule)
        f = [lr_factor(s, cfg) for s in range(101)]
        assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and f[10] == 1.0
        assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[100] == pytest.approx(0.0)
    f = [lr_factor(s, SegTrainConfig(steps=100, warmup_steps=10, schedule="constant")) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[10:] == [1.0] * 90


def test_config_round_trips_through_json():
    cfg = SegTrainConfig(model_options={"output_stride": 4}, augment=Augment(scale=(0.8, 1.2)), seed=7)
    again = SegTrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.augment == cfg.augment and again.seed == 7 and again.model_options["output_stride"] == 4
    with pytest.raises(ValueError, match="unknown"):
        SegTrainConfig.from_dict({"stepz": 3})


def test_flip_moves_image_and_label_together():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    label = (image[..., 0] > 127).astype(np.uint8)
    x, y = ArraySegmentation(image[None], label[None])[0]
    torch.manual_seed(0)
    flipped = 0
    for _ in range(20):
        xa, ya = augment_pair(x, y, Augment(hflip=True))
        flipped += torch.equal(xa, x.flip(-1))
        assert torch.equal(xa, x) or torch.equal(xa, x.flip(-1))
        assert torch.equal(ya, y.flip(-1) if torch.equal(xa, x.flip(-1)) else y)
    assert 0 < flipped < 20


def test_scale_jitter_keeps_size_and_pads_label_with_ignore():
    x, y = ArraySegmentation(np.full((1, 8, 8, 3), 200, np.uint8), np.ones((1, 8, 8), np.uint8))[0]
    torch.manual_seed(0)
    xa, ya = augment_pair(x, y, Augment(hflip=False, scale=(0.5, 0.5)))
    assert xa.shape == x.shape and ya.shape == y.shape
    assert (ya == 1).sum() == 16 and (ya == IGNORE_INDEX).sum() == 48
    assert torch.equal((xa[0] != 0), ya == 1), "padding of image and label must coincide"


def test_toyworld_dataset_is_deterministic():
    a, b = ToyWorldSegmentation([5, 9], "car", 16), ToyWorldSegmentation([5, 9], "car", 16)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a[0][1].dtype == torch.long and a[0][0].shape == (3, 16, 16)


class _FakeReader:
    """Samples whose pixels encode (shard, index); records every call."""

    def __init__(self):
        self.calls: list[tuple[str, list[int]]] = []

    def __call__(self, shard, indices):
        self.calls.append((shard, list(indices)))
        code = 100 * int(shard[1:-3])
        images = np.stack([np.full((4, 4, 3), code + i, np.uint8) for i in indices])
        labels = np.stack([np.full((4, 4), i % 3, np.uint8) for i in indices])
        return images, labels


def _decode(x: torch.Tensor) -> int:
    return round(float(x[0, 0, 0] * 0.229 + 0.485) * 255)


def test_shard_dataset_returns_kept_samples_in_manifest_order():
    manifest = pd.DataFrame({
        "shard": ["s1.h5", "s0.h5", "s0.h5", "s1.h5", "s0.h5", "s1.h5"],
        "index": [4, 2, 0, 1, 5, 3],
        "kept": [True, True, False, True, True, False],
    })
    reader = _FakeReader()
    ds = ShardSegmentation(SyntheticDataset(manifest, reader=reader))
    assert [_decode(ds[i][0]) for i in range(len(ds))] == [104, 2, 101, 5]
    assert ds[3][1].tolist() == [[2] * 4] * 4
    assert ("s0.h5", [2, 5]) in reader.calls and ("s1.h5", [1, 4]) in reader.calls
    assert all(len(ids) <= 2 for _, ids in reader.calls), "only kept samples are read"
    everything = ShardSegmentation(SyntheticDataset(manifest, reader=_FakeReader(), kept_only=False))
    assert [_decode(everything[i][0]) for i in range(6)] == [104, 2, 0, 101, 5, 103]


def test_grouped_sampler_reads_each_shard_once_per_epoch_and_mixes_a_window_of_shards():
    n = 24
    manifest = pd.DataFrame({"shard": ["s0.h5", "s1.h5", "s2.h5", "s3.h5"] * (n // 4), "index": range(n),
                             "kept": True})
    reader = _FakeReader()
    ds = ShardSegmentation(SyntheticDataset(manifest, reader=reader, window=2))
    it = iter(ShardGroupedSampler(ds, torch.Generator().manual_seed(0)))
    epoch = [next(it) for _ in range(n)]
    assert sorted(epoch) == list(range(n))
    for i in epoch:
        ds[i]
    assert len(reader.calls) == 4, "each shard read once per epoch"
    halves = [{ds.shards[i] for i in epoch[:12]}, {ds.shards[i] for i in epoch[12:]}]
    assert [len(h) for h in halves] == [2, 2] and not halves[0] & halves[1]
    first_batch = {ds.shards[i] for i in epoch[:4]}
    assert len(first_batch) == 2, "a batch mixes the shards of its window"
    plain = iter(ShardGroupedSampler(ArraySegmentation(np.zeros((5, 2, 2, 3), np.uint8),
                                                       np.zeros((5, 2, 2), np.uint8)), torch.Generator()))
    assert sorted(next(plain) for _ in range(5)) == list(range(5))


def test_save_load_round_trip(tmp_path):
    cfg = _tiny_cfg(steps=2, warmup_steps=0)
    model, _ = train_segmentation(ToyWorldSegmentation(range(4), "car", 16), 5, cfg, progress=False)
    path = tmp_path / "seg.safetensors"
    save_model(model, path, cfg, 5, metrics={"miou": 0.5}, class_names=list("abcde"))
    again, meta = load_model(path)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert meta["metrics"] == {"miou": 0.5} and meta["config"]["seed"] == 3 and meta["class_names"] == list("abcde")
    same = build_segmentation_model(cfg.model, 5, weights=path, **cfg.model_options).eval()
    with torch.no_grad():
        assert torch.equal(model(x), same(x))


def test_weights_that_do_not_fit_are_a_clear_error(tmp_path):
    sd = build_segmentation_model("deeplabv3_resnet18", 5, **TINY_SEGMENTATION).state_dict()
    renamed = {("trunk." + k if k.startswith("backbone.conv1") else k): v for k, v in sd.items()}
    torch.save(renamed, tmp_path / "renamed.pt")
    with pytest.raises(WeightsError, match=r"missing keys \(1\): backbone.conv1.weight.*unexpected keys"):
        build_segmentation_model("deeplabv3_resnet18", 5, weights=tmp_path / "renamed.pt", **TINY_SEGMENTATION)
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "five.safetensors"))
    with pytest.raises(WeightsError, match=r"shape mismatches.*classifier.4.weight: file \(5, 16, 1, 1\)"):
        build_segmentation_model("deeplabv3_resnet18", 4, weights=tmp_path / "five.safetensors", **TINY_SEGMENTATION)
    with pytest.raises(WeightsError, match="does not exist"):
        build_segmentation_model("deeplabv3_resnet18", 5, weights=tmp_path / "nope.pt", **TINY_SEGMENTATION)


def test_backbone_weights_from_a_classification_state_dict(tmp_path):
    resnet = torchvision.models.resnet18(weights=None)
    torch.save(resnet.state_dict(), tmp_path / "r18.pt")
    model = build_segmentation_model("deeplabv3_resnet18", 3, backbone_weights=tmp_path / "r18.pt")
    assert torch.equal(model.backbone.layer3[0].conv1.weight, resnet.layer3[0].conv1.weight)
    with pytest.raises(WeightsError, match=r"conv1.weight: file \(64, 3, 7, 7\) vs model \(64, 3, 3, 3\)"):
        build_segmentation_model("deeplabv3_resnet18", 3, backbone_weights=tmp_path / "r18.pt", small_stem=True)
    mobilenet = torchvision.models.mobilenet_v3_large(weights=None)
    torch.save(mobilenet.state_dict(), tmp_path / "mbv3.pt")
    model = build_segmentation_model("deeplabv3_mobilenet_v3_large", 3, backbone_weights=tmp_path / "mbv3.pt")
    assert torch.equal(model.backbone["16"][0].weight, mobilenet.features[16][0].weight)
