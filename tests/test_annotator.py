import hashlib
import json

import numpy as np
import pytest
import torch

from labelfactory.generators.checkpoints import CheckpointError, sidecar_path
from labelfactory.toybench import world as toyworld
from labelfactory.toybench.annotator import (
    Annotator,
    AnnotatorConfig,
    UNet,
    augment,
    class_label_ids,
    evaluate_annotator,
    iou_from_confusion,
    score_parts,
    solid_object_share,
    train_annotator,
)

N_LABELS = len(toyworld.global_part_labels())


def small_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(N_LABELS, width=8).eval()


def test_unet_output_shape_and_label_space():
    net = small_unet()
    assert N_LABELS == 1 + sum(len(toyworld.PARTS[c]) for c in toyworld.CLASSES)
    assert AnnotatorConfig().model().head.out_channels == N_LABELS
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, N_LABELS, 32, 32)
        assert net(torch.zeros(1, 3, 16, 24)).shape == (1, N_LABELS, 16, 24)
        with pytest.raises(ValueError, match="divisible by 8"):
            net(torch.zeros(1, 3, 20, 20))


def test_shipped_size_network_is_compact():
    n = sum(p.numel() for p in AnnotatorConfig().model().parameters())
    assert 300_000 <= n <= 1_000_000


def test_label_restricts_argmax_to_the_class_labels():
    net = small_unet()
    with torch.no_grad():
        net.head.bias.zero_()
        net.head.bias[class_label_ids("car")[1:]] = 100.0  # the net "sees" car parts everywhere
        net.head.bias[class_label_ids("house")[4]] = 50.0  # and house windows second
    ann = Annotator(net)
    images = toyworld.render_batch(range(3), "tree", 32)[0]
    tree = ann.label(images, "tree")
    assert tree.dtype == np.uint8 and tree.shape == (3, 32, 32)
    assert set(np.unique(tree)) <= set(range(len(toyworld.PARTS["tree"]) + 1))
    assert np.all(ann.label(images, "house") == 4)
    assert set(np.unique(ann.label(images, toyworld.CLASSES.index("car")))) <= {1, 2, 3, 4}
    with pytest.raises(ValueError, match="uint8"):
        ann.label(images.astype(np.float32), "tree")


def test_iou_from_confusion_handles_absent_labels():
    cm = np.array([[3, 1, 0], [1, 5, 0], [0, 0, 0]])
    iou, valid = iou_from_confusion(cm)
    assert np.allclose(iou, [3 / 5, 5 / 7, 0.0]) and valid.tolist() == [True, True, False]
    assert not np.isnan(iou).any()
    pred = np.array([[0, 1], [2, 2]])
    target = np.array([[0, 1], [1, 2]])
    assert score_parts(pred.astype(np.uint8), target.astype(np.uint8), "car")["pixel_accuracy"] == 0.75


def test_ground_truth_as_prediction_scores_one():
    _, parts, _ = toyworld.render_batch(range(20), "car", 32)
    s = score_parts(parts, parts, "car")
    assert s["miou"] == 1.0 and s["pixel_accuracy"] == 1.0
    assert all(v == 1.0 for v in s["iou"].values())
    assert s["iou"].keys() == set(toyworld.part_labels("car"))
    # a prediction that misses every light pixel: that part's IoU drops to 0, others stay ≤ 1
    missed = np.where(parts == 4, 1, parts)
    s = score_parts(missed, parts, "car")
    assert s["iou"]["light"] == 0.0 and s["iou"]["background"] == 1.0 and s["miou"] < 0.8


def test_augment_is_seeded_bounded_and_label_preserving_in_shape():
    cfg = AnnotatorConfig(aug_prob=1.0)
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    a = augment(x.clone(), cfg, torch.Generator().manual_seed(1))
    b = augment(x.clone(), cfg, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1 and not torch.allclose(a, x)
    assert torch.allclose(augment(x.clone(), AnnotatorConfig(aug_prob=0.0), torch.Generator()), x, atol=1e-6)


def test_tiny_training_lowers_loss_and_is_deterministic():
    cfg = AnnotatorConfig(size=16, width=8, steps=30, batch=8, lr=1e-2, threads=1, seed=3)
    model, hist = train_annotator(cfg, log_every=10)
    assert [h["step"] for h in hist] == [10, 20, 30]
    assert hist[-1]["loss"] < 0.8 * hist[0]["loss"]
    _, hist2 = train_annotator(cfg, log_every=10)
    assert [h["loss"] for h in hist] == [h["loss"] for h in hist2]
    res = evaluate_annotator(model, size=16, n_per_class=4, classes=("car", "tree"))
    assert set(res["classes"]) == {"car", "tree"}
    assert 0.0 <= res["classes"]["car"]["miou"] <= 1.0
    assert res["mean_miou"] == pytest.approx(np.mean([c["miou"] for c in res["classes"].values()]))


def _metrics(object_share: float, main_share: float) -> dict:
    share = lambda v: {"p01": v, "p05": v, "p50": v}  # noqa: E731
    return {"classes": {c: {"object_share": share(object_share), "main_part_share": share(main_share)}
                        for c in toyworld.CLASSES}}


def test_save_load_round_trip_gives_identical_predictions(tmp_path):
    net = small_unet(1).train()
    with torch.no_grad():
        net(torch.randn(4, 3, 32, 32))  # move BatchNorm running statistics off their defaults
    ann = Annotator(net.eval())
    path = tmp_path / "ann.safetensors"
    meta = ann.save(path, command="test", metrics=_metrics(0.2, 0.1))
    side = json.loads(sidecar_path(path).read_text())
    assert side["sha256"] == meta["sha256"] and side["command"] == "test"
    assert side["object_thresholds"]["car"] == {"object_share": 0.2, "main_part_share": 0.1}

    loaded = Annotator.load(path)
    images = toyworld.render_batch(range(5), "face", 32)[0]
    for cls in ("face", "car"):
        assert np.array_equal(loaded.label(images, cls), ann.label(images, cls))


def test_object_found_uses_stored_thresholds(tmp_path):
    path = tmp_path / "ann.safetensors"
    Annotator(small_unet()).save(path, metrics=_metrics(0.25, 0.125))
    ann = Annotator.load(path)
    masks = np.zeros((5, 8, 8), np.uint8)
    masks[0, :4] = 1  # half the image, all main part
    masks[1, :4] = 2  # half the image, no main part
    masks[2, :1] = 1  # a one-pixel line of main part: too thin to count as an object
    masks[3, :2, :] = 2
    masks[3, 2:3, :] = 1  # object 3/8, main part 1/8
    masks[4, ::2, ::2] = 1  # main-part specks over a quarter of the image: not solid
    assert solid_object_share(masks).tolist() == [0.5, 0.5, 0.0, 0.375, 0.0]
    assert ann.object_found(masks, "car").tolist() == [True, False, False, True, False]


def test_corrupt_or_missing_weights_raise_clear_errors(tmp_path):
    path = tmp_path / "ann.safetensors"
    Annotator(small_unet()).save(path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 differs"):
        Annotator.load(path)

    path.write_bytes(b"not a safetensors file")  # garbage whose hash the sidecar vouches for
    side = json.loads(sidecar_path(path).read_text())
    side["sha256"] = hashlib.sha256(b"not a safetensors file").hexdigest()
    sidecar_path(path).write_text(json.dumps(side))
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        Annotator.load(path)

    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match="sidecar"):
        Annotator.load(path)
    with pytest.raises(CheckpointError, match="no such"):
        Annotator.load(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("name", ["annotator-32"])
def test_the_shipped_annotator_loads(name):
    """The sidecar's arch is a format name: renaming modules must not orphan the shipped weights."""
    from pathlib import Path

    annotator = Annotator.load(Path(__file__).resolve().parents[1] / "weights" / "toy" / f"{name}.safetensors")
    masks = annotator.label(np.zeros((1, 32, 32, 3), np.uint8), "car")
    assert masks.shape == (1, 32, 32)
