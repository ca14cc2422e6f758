"""The keypoint head: Gaussian targets, decoding, and training on toy cars."""

import json
import math

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelfactory.core.keypoint_metrics import coco_keypoint_ap, pck
from labelfactory.features import FeatureStore
from labelfactory.interpreters import TrainingData
from labelfactory.interpreters.keypoints import (
    KeypointHead,
    KeypointHeadConfig,
    decode_heatmaps,
    gaussian_heatmaps,
    train_keypoint_head,
)
from labelfactory.toybench import world as tw

RES = 64


def test_gaussian_heatmaps():
    kp = np.array([[[10, 20, 2], [3.5, 4, 1], [30, 30, 0]]], dtype=np.float32)
    heat = gaussian_heatmaps(kp, 32, sigma=2.0)
    assert heat.shape == (1, 3, 32, 32)
    assert heat[0, 0, 20, 10] == 1.0 and heat[0, 0].argmax() == 20 * 32 + 10  # row y, column x
    assert heat[0, 0, 20, 11] == pytest.approx(math.exp(-1 / 8))
    assert heat[0, 1, 4, 3] == heat[0, 1, 4, 4] == pytest.approx(math.exp(-0.25 / 8))  # between two pixels
    assert heat[0, 2].abs().max() == 0  # not labelled: no target


def test_decoding_finds_sub_pixel_peaks_and_the_members_disagreement():
    truth = np.array([[[10.3, 20.0, 2], [4.0, 5.6, 2]]], dtype=np.float32)
    one = gaussian_heatmaps(truth, 32, sigma=2.0)
    same = decode_heatmaps(torch.stack([one, one, one]))
    assert torch.allclose(same.positions[0], torch.as_tensor(truth[0, :, :2]), atol=0.1)
    assert torch.allclose(same.confidence, torch.ones(1, 2), atol=0.02) and same.spread.abs().max() == 0
    moved = truth.copy()
    moved[0, 0, 0] += 4  # one member puts the first keypoint 4 px to the right
    members = torch.stack([one, one, gaussian_heatmaps(moved, 32, 2.0)])
    out = decode_heatmaps(members)
    assert out.spread[0, 0] == pytest.approx(math.sqrt(2 * (4 / 3) ** 2 / 3 + (8 / 3) ** 2 / 3), abs=1e-4)
    assert out.spread[0, 1] == 0 and out.confidence[0, 0] < 0.8 < out.confidence[0, 1]
    assert out.as_coco().shape == (1, 2, 3)


def test_config_is_checked():
    with pytest.raises(ValueError, match="sigma=0.*peak_fraction=1"):
        KeypointHeadConfig(sigma=0, peak_fraction=1.0)


def toy_maps(scene):
    """Stand-in generator features of a toy scene: its part one-hot and RGB, average-pooled to
    8², 16², 32² and 64² (semantic, multi-scale maps, as a generator's are)."""
    x = torch.cat([F.one_hot(torch.as_tensor(scene.parts).long(), len(tw.PARTS["car"]) + 1).permute(2, 0, 1).float(),
                   torch.as_tensor(scene.image).permute(2, 0, 1).float() / 255])[None]
    return {f"f{s}": F.adaptive_avg_pool2d(x, s)[0].numpy().astype(np.float16) for s in (8, 16, 32, 64)}


def write_store(path, maps):
    ids = [f"s{i:04d}" for i in range(len(maps))]
    with h5py.File(path, "w") as f:
        f.attrs.update(format_version=1, generator_hash="toy", layers=json.dumps(list(maps[0])),
                       shapes=json.dumps({l: list(a.shape) for l, a in maps[0].items()}), resolution=RES,
                       truncation=1.0, noise="const", ids=json.dumps(ids))
        for i, m in zip(ids, maps):
            for l, a in m.items():
                f.create_dataset(f"{i}/{l}", data=a)
    return FeatureStore.open(path)


def test_head_trained_on_16_toy_cars_finds_keypoints_on_held_out_ones(tmp_path, one_torch_thread):
    """16 annotated toy cars train the head; on 32 held-out cars its keypoints are correct (PCK@0.1
    of the object's keypoint box) far more often than the mean keypoint position's, its COCO AP is
    well above zero, the members disagree more on wrong keypoints than on right ones, and the head
    saved and loaded predicts the same."""
    train = [tw.render(s, "car", RES) for s in range(16)]
    test = [tw.render(s, "car", RES) for s in range(1000, 1032)]
    store = write_store(tmp_path / "features.h5", [toy_maps(s) for s in train])
    keypoints = np.stack([s.keypoints for s in train])
    data = TrainingData(store, np.full((16, RES, RES), 255, np.uint8), 2)
    head = train_keypoint_head(data, keypoints, tw.keypoint_names("car"), KeypointHeadConfig(num_members=3, steps=500))
    maps = [toy_maps(s) for s in test]
    features = {l: torch.as_tensor(np.stack([m[l] for m in maps])) for l in maps[0]}
    decoded = head.predict(features)
    truth = np.stack([s.keypoints for s in test])
    score = pck(decoded.positions.numpy(), truth)["pck"]
    baseline = pck(np.broadcast_to(keypoints[..., :2].mean(0), truth[..., :2].shape), truth)["pck"]
    assert score > 0.6 and score > baseline + 0.4, (score, baseline)
    ap = coco_keypoint_ap(decoded.positions.numpy(), decoded.confidence.mean(1).numpy(), truth,
                          np.array([s.object.sum() for s in test]), tw.keypoint_names("car"))
    assert ap["ap"] > 0.1, ap
    dist = np.linalg.norm(decoded.positions.numpy() - truth[..., :2], axis=-1)
    wrong = dist > 0.1 * (truth[..., :2].max(1) - truth[..., :2].min(1)).max(-1)[:, None]
    assert decoded.spread.numpy()[wrong].mean() > decoded.spread.numpy()[~wrong].mean()

    head.save(tmp_path / "head.safetensors")
    loaded = KeypointHead.load(tmp_path / "head.safetensors")
    assert loaded.keypoint_names == list(tw.keypoint_names("car")) and loaded.cfg == head.cfg
    assert torch.equal(loaded.member_heatmaps(features), head.member_heatmaps(features))
    with pytest.raises(ValueError, match="keypoints must be"):
        train_keypoint_head(data, keypoints[:3], tw.keypoint_names("car"))


def test_rectangular_maps_decode_to_their_peaks():
    truth = np.array([[[13.2, 3.0, 2], [1.0, 5.4, 2]]], dtype=np.float32)  # a 6 x 16 (H x W) image
    heat = gaussian_heatmaps(truth, (6, 16), sigma=1.5)
    assert heat.shape == (1, 2, 6, 16) and heat[0, 0].argmax() == 3 * 16 + 13
    out = decode_heatmaps(heat[None])
    assert torch.allclose(out.positions[0], torch.as_tensor(truth[0, :, :2]), atol=0.15)
