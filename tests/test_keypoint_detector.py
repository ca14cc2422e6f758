"""The downstream keypoint detector: training, flips, prediction, scores, saving, real readers."""

import json

import numpy as np
import pytest

from labelfactory.core.keypoint_metrics import pck
from labelfactory.annotations.labels import KeypointSpec
from labelfactory.downstream.keypoint_detector import (flip_keypoints, keypoint_scores, load_keypoint_detector,
                                                       predict_keypoints, save_keypoint_detector,
                                                       train_keypoint_detector)
from labelfactory.downstream.models import build_segmentation_model
from labelfactory.downstream.real import DatasetError, RealDataSpec
from labelfactory.downstream.real_keypoints import real_keypoint_images
from labelfactory.downstream.segmentation import SegTrainConfig, save_model
from labelfactory.toybench import world as toyworld

CAR = toyworld.keypoint_names("car")
SPEC = RealDataSpec(cls="car", size=32, train_images=24, test_images=8)
TINY = SegTrainConfig(model="deeplabv3_resnet18", steps=300, batch_size=8, optimizer="adamw", lr=5e-3,
                      schedule="cosine", warmup_steps=10, threads=1, log_every=50,
                      model_options={"small_stem": True, "output_stride": 2, "width": 0.125,
                                     "atrous_rates": [1, 2, 3], "head_channels": 16})


@pytest.fixture(scope="module")
def cars():
    return real_keypoint_images(SPEC, "train", CAR)


@pytest.fixture(scope="module")
def trained(cars):
    return train_keypoint_detector(cars.images, cars.keypoints, TINY, sigma=1.5)


def test_toyworld_reader_gives_exact_keypoints_and_object_areas(cars):
    assert cars.images.shape == (24, 32, 32, 3) and cars.keypoints.shape == (24, len(CAR), 3)
    scene = toyworld.render(SPEC.train_seed_start + 3, "car", 32)
    np.testing.assert_array_equal(cars.keypoints[3], scene.keypoints)
    assert cars.areas[3] == scene.object.sum() > 0
    test = real_keypoint_images(SPEC, "test", CAR)
    np.testing.assert_array_equal(test.images[0], toyworld.render(SPEC.test_seed_start, "car", 32).image)


def test_real_keypoint_readers_refuse_unknown_types_and_names():
    with pytest.raises(KeyError, match="unknown real keypoint dataset 'nope'"):
        real_keypoint_images(RealDataSpec(type="nope"), "train", CAR)
    with pytest.raises(DatasetError, match="not the toy-world car keypoints"):
        real_keypoint_images(SPEC, "train", CAR[::-1])
    with pytest.raises(ValueError, match="split must be"):
        real_keypoint_images(SPEC, "val", CAR)


def test_training_lowers_the_loss_and_beats_the_mean_pose(cars, trained):
    model, history = trained
    assert history["diverged"] is None and len(history["loss"]) == TINY.steps and history["threads"] == 1
    assert np.mean(history["loss"][-20:]) < 0.5 * np.mean(history["loss"][:20])
    pred = predict_keypoints(model, cars.images)
    mean_pose = np.broadcast_to(cars.keypoints.mean(0), cars.keypoints.shape)  # the chance baseline
    learnt, chance = pck(pred, cars.keypoints, alpha=0.2)["pck"], pck(mean_pose, cars.keypoints, alpha=0.2)["pck"]
    assert learnt > chance + 0.2, (learnt, chance)


def test_predictions_are_positions_and_confidences(cars, trained):
    pred = predict_keypoints(trained[0], cars.images[:5], batch_size=2)
    assert pred.shape == (5, len(CAR), 3) and pred.dtype == np.float32
    assert (pred[..., :2] >= -0.5).all() and (pred[..., :2] <= 31.5).all()
    assert predict_keypoints(trained[0], cars.images[:0]).shape == (0, len(CAR), 3)
    wide = predict_keypoints(trained[0], cars.images[:5, 8:24])  # a 16 x 32 crop: rectangular images work
    assert wide.shape == (5, len(CAR), 3) and (wide[..., 1] <= 15.5).all() and (wide[..., 0] <= 31.5).all()
    with pytest.raises(ValueError, match="uint8 images"):
        predict_keypoints(trained[0], cars.images.astype(np.float32))


def test_flip_keypoints_mirrors_x_and_swaps_left_and_right():
    names = toyworld.keypoint_names("face")
    pairs = KeypointSpec(names, toyworld.KEYPOINT_FLIP_PAIRS["face"]).flip_permutation()
    scene = toyworld.render(5, "face", 32)
    flipped = flip_keypoints(scene.keypoints, 32, pairs)
    left, right = names.index("left_eye"), names.index("right_eye")
    np.testing.assert_allclose(flipped[left], [31 - scene.keypoints[right, 0], *scene.keypoints[right, 1:]])
    np.testing.assert_allclose(flipped[right], [31 - scene.keypoints[left, 0], *scene.keypoints[left, 1:]])
    nose = names.index("nose")
    np.testing.assert_allclose(flipped[nose, 0], 31 - scene.keypoints[nose, 0])
    # the subject's left eye of the mirrored face is still the one on the image's right of its nose
    assert (scene.keypoints[left, 0] > scene.keypoints[nose, 0]) == (flipped[left, 0] > flipped[nose, 0])
    eye = toyworld.PARTS["face"].index("eye") + 1
    mirrored_parts = scene.parts[:, ::-1]
    for k in (left, right):
        x, y = np.round(flipped[k, :2]).astype(int)
        assert mirrored_parts[y, x] == eye
    np.testing.assert_allclose(flip_keypoints(flipped, 32, pairs), scene.keypoints)


def test_keypoint_scores_of_perfect_predictions(cars):
    truth = cars.keypoints
    perfect = np.concatenate([truth[..., :2], np.ones_like(truth[..., :1])], -1)
    scores = keypoint_scores(perfect, truth, cars.areas, CAR)
    assert scores["pck@0.05"] == scores["pck@0.1"] == 1.0 and scores["ap"] == pytest.approx(1.0)
    assert scores["per_keypoint"] == dict.fromkeys(CAR, 1.0) and scores["num_images"] == len(truth)
    shifted = perfect + np.array([3.0, 0.0, 0.0])
    assert keypoint_scores(shifted, truth, cars.areas, CAR)["pck@0.1"] < 0.5


def test_save_and_load_give_identical_predictions(tmp_path, cars, trained):
    path = tmp_path / "kp.safetensors"
    save_keypoint_detector(trained[0], path, TINY, CAR, 1.5, metrics={"pck@0.1": 0.5})
    model, meta = load_keypoint_detector(path)
    assert meta["keypoint_detector"] == {"sigma": 1.5} and meta["class_names"] == list(CAR)
    assert meta["metrics"] == {"pck@0.1": 0.5}
    np.testing.assert_array_equal(predict_keypoints(model, cars.images[:6]),
                                  predict_keypoints(trained[0], cars.images[:6]))
    plain = tmp_path / "seg.safetensors"
    save_model(build_segmentation_model(TINY.model, 3, **TINY.model_options), plain, TINY, 3)
    with pytest.raises(ValueError, match=r"seg\.json: not a keypoint detector"):
        load_keypoint_detector(plain)
    assert "keypoint_detector" not in json.loads(plain.with_suffix(".json").read_text())
