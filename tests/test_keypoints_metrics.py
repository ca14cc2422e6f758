"""PCK and COCO keypoint AP."""

import numpy as np
import pytest

from labelfactory.core.keypoint_metrics import COCO_SIGMAS, coco_keypoint_ap, keypoint_sigmas, object_scale, pck


def test_pck_by_hand():
    truth = np.array([[[0, 0, 2], [10, 0, 2], [0, 10, 1], [5, 5, 0]],
                      [[0, 0, 2], [20, 0, 2], [0, 20, 2], [9, 9, 2]]], dtype=float)
    assert object_scale(truth).tolist() == [10.0, 20.0]  # box sides of the labelled keypoints
    pred = truth[..., :2].copy()
    pred[0, 0] += (1.0, 0.0)  # 1 px off: within 0.1 · 10
    pred[0, 1] += (0.0, 1.5)  # 1.5 px off: not within 1
    pred[0, 3] += (50.0, 0.0)  # not labelled: not scored
    pred[1, 2] += (1.5, 1.5)  # 2.1 px off: not within 0.1 · 20 = 2
    out = pck(pred, truth)
    assert out["pck"] == pytest.approx(5 / 7)
    assert out["per_keypoint"] == [1.0, 0.5, 0.5, 1.0]
    assert pck(pred, truth, scale=100.0)["pck"] == 1.0  # a fixed scale: 10 px
    assert pck(pred, truth, alpha=0.2)["pck"] == 1.0
    assert pck(pred, truth, alpha=0.05)["pck"] == pytest.approx(4 / 7)
    assert pck(pred[:, :3], truth[:, :3, :] * [1, 1, 0])["pck"] is None
    with pytest.raises(ValueError, match="need predictions"):
        pck(pred[:, :2], truth)


def test_sigmas():
    assert keypoint_sigmas(["nose", "left_eye"]).tolist() == [COCO_SIGMAS["nose"], COCO_SIGMAS["left_eye"]]
    assert keypoint_sigmas(["nose", "wheel"], uniform=0.07).tolist() == [0.07, 0.07]


def test_coco_keypoint_ap_is_one_for_perfect_predictions_and_lower_for_shifted_ones():
    rng = np.random.default_rng(0)
    truth = np.concatenate([rng.uniform(10, 50, (12, 5, 2)), np.full((12, 5, 1), 2.0)], -1)
    areas = np.full(12, 900.0)
    names = ["a", "b", "c", "d", "e"]
    perfect = coco_keypoint_ap(truth, np.ones(12), truth, areas, names)
    assert perfect["ap"] == pytest.approx(1.0) and perfect["oks"] == pytest.approx([1.0] * 12)
    shifted = coco_keypoint_ap(truth[..., :2] + 1.5, np.ones(12), truth, areas, names)
    far = coco_keypoint_ap(truth[..., :2] + 6.0, np.ones(12), truth, areas, names)
    assert far["ap"] < shifted["ap"] < 1
    assert max(far["oks"]) < min(shifted["oks"]) < max(shifted["oks"]) < 1
    # a larger sigma forgives the same shift
    assert coco_keypoint_ap(truth[..., :2] + 1.5, np.ones(12), truth, areas, names, np.full(5, 0.2))["ap"] > \
        shifted["ap"]
