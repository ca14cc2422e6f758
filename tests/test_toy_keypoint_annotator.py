"""The simulated keypoint annotator: the shipped weights and the keypoint-only folder they labelled."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labelfactory.annotations.keypoints import load_keypoints
from labelfactory.annotations.labels import load_labels
from labelfactory.downstream.keypoint_detector import keypoint_scores, load_keypoint_detector, predict_keypoints
from labelfactory.downstream.real import RealDataSpec
from labelfactory.downstream.real_keypoints import real_keypoint_images
from labelfactory.toybench import world as toyworld
from labelfactory.toybench.keypoint_annotator import (EVAL_SEED0, TRAIN_SEED0, KeypointAnnotatorRecipe,
                                                      clicked_keypoints, keypoint_spec, make_keypoint_folder)

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights/toy/keypoint-annotator-car-32.safetensors"
FOLDER = ROOT / "config/annotations/toy-car-keypoints"
SOURCE = ROOT / "config/annotations/toy-car"
CAR = toyworld.keypoint_names("car")
MIN_PCK = 0.95  # PCK@0.1 on real cars (shipped: 0.995 on its 1000 held-out, 0.990 on 500 downstream test cars)


@pytest.fixture(scope="module")
def annotator():
    return load_keypoint_detector(WEIGHTS)


def test_annotator_seeds_never_meet_the_downstream_real_images():
    real, recipe = RealDataSpec(), KeypointAnnotatorRecipe()
    for start, count in ((TRAIN_SEED0, recipe.train_images), (EVAL_SEED0, recipe.eval_images)):
        for other, n in ((real.train_seed_start, real.train_images), (real.test_seed_start, real.test_images)):
            assert start + count <= other or other + n <= start


def test_shipped_annotator_labels_real_toy_cars(annotator):
    model, meta = annotator
    assert meta["class_names"] == list(CAR) and meta["keypoint_detector"]["sigma"] > 0
    assert meta["metrics"]["held_out"]["pck@0.1"] >= MIN_PCK and meta["config"]["threads"] == 1
    cars = real_keypoint_images(RealDataSpec(cls="car", size=32, test_images=200), "test", CAR)
    scores = keypoint_scores(predict_keypoints(model, cars.images), cars.keypoints, cars.areas, CAR)
    assert scores["pck@0.1"] >= MIN_PCK, scores
    assert 0.9 < scores["pck@0.05"] <= scores["pck@0.1"] and scores["ap"] > 0.85


def test_clicked_keypoints_are_visible_inside_the_image(annotator):
    images = real_keypoint_images(RealDataSpec(test_images=20), "test", CAR).images
    clicked = clicked_keypoints(annotator[0], images)
    inside = clicked[..., 2] == 2
    assert set(np.unique(clicked[..., 2])) <= {0.0, 2.0} and inside.mean() > 0.95
    assert ((clicked[inside][:, :2] >= -0.5) & (clicked[inside][:, :2] < 31.5)).all()


def test_shipped_keypoint_folder_is_keypoints_only_and_reads_back():
    ids = list(pd.read_csv(FOLDER / "manifest.csv", dtype=str)["id"])
    assert ids == list(pd.read_csv(SOURCE / "manifest.csv", dtype=str)["id"])
    files = {p.name for p in FOLDER.iterdir()}
    assert {f"{i}.keypoints.json" for i in ids} | {f"{i}.image.png" for i in ids} | {f"{i}.latent.npy" for i in ids} \
        | {"manifest.csv", "labels.yaml"} == files  # no masks
    labels, source = load_labels(FOLDER / "labels.yaml"), load_labels(SOURCE / "labels.yaml")
    assert (labels.names, labels.ignore_index) == (source.names, source.ignore_index)
    assert labels.keypoints == keypoint_spec("car")
    assert "keypoint annotator" in (FOLDER / "labels.yaml").read_text().splitlines()[0]
    keypoints = load_keypoints(FOLDER, ids, labels.keypoints, 32)
    assert (keypoints.keypoints[..., 2] == 2).mean() > 0.9


def test_the_shipped_folder_is_what_the_annotator_makes(tmp_path, annotator):
    made = tmp_path / "made"
    assert make_keypoint_folder(SOURCE, made, annotator[0], "car", "the test") == 16
    ids = list(pd.read_csv(made / "manifest.csv", dtype=str)["id"])
    spec = keypoint_spec("car")
    np.testing.assert_allclose(load_keypoints(made, ids, spec, 32).keypoints,
                               load_keypoints(FOLDER, ids, spec, 32).keypoints, atol=1e-3)
    assert not list(made.glob("s????????.png"))
