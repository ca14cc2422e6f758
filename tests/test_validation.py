"""Validation before synthesis: the interpreter cross-validated on its annotations, against the
average mask, with a warning per poorly learnt class (issue 23, item 1)."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from test_interpreter import NAMES, linear_labels, random_maps, write_store

import labelfactory.experiments.validation_report as report
from labelfactory.config.specs import ValidationSpec
from labelfactory.core.divergence import Diverged
from labelfactory.experiments.validation_report import validate_interpreter
from labelfactory.interpreters import TrainingData
from labelfactory.interpreters.mlp import MLPEnsembleConfig
from labelfactory.interpreters.validation import (
    ValidationError,
    average_mask,
    cross_validate_interpreter,
    flagged_classes,
    image_folds,
    require_validated,
)

torch.set_num_threads(1)
FAST = MLPEnsembleConfig(num_members=2, batch_size=64, eval_every=20, patience=2, max_epochs=5)


def test_folds_partition_the_images_and_are_seeded():
    folds = image_folds(10, 4, seed=3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(10)) and len(folds) == 4
    assert [f.tolist() for f in folds] == [f.tolist() for f in image_folds(10, 4, seed=3)]
    assert len(image_folds(3, 8)) == 3  # never more folds than images
    with pytest.raises(ValueError, match="at least 2 annotated images"):
        image_folds(1, 4)


def test_average_mask_is_the_per_pixel_majority_and_ignores_unannotated():
    masks = np.array([[[1, 255]], [[1, 2]], [[0, 2]]], dtype=np.uint8)
    assert average_mask(masks, 3).tolist() == [[1, 2]]
    assert average_mask(np.full((2, 1, 1), 255, np.uint8), 3).tolist() == [[0]]


def _data(tmp_path, n=6, masks=None):
    maps = random_maps(n, seed=5)
    store = write_store(tmp_path / "features.h5", maps)
    return TrainingData(store, linear_labels(maps) if masks is None else masks, len(NAMES), label_names=NAMES)


def test_learnable_labels_beat_the_average_mask(tmp_path):
    result = cross_validate_interpreter(_data(tmp_path), "mlp", FAST, ValidationSpec(folds=3, members=2))
    assert result["folds"] == 3 and result["images"] == 6 and result["members"] == 2
    assert result["interpreter"]["miou"] > result["average_mask"]["miou"] + 0.2
    assert flagged_classes(result, NAMES, min_iou=0.3) == []


def test_labels_the_features_do_not_carry_are_flagged(tmp_path):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 3, (6, 16, 16)).astype(np.uint8)  # no relation to the features
    result = cross_validate_interpreter(_data(tmp_path, masks=noise), "mlp", FAST, ValidationSpec(folds=3))
    flagged = flagged_classes(result, NAMES, min_iou=0.5)
    assert {f["class"] for f in flagged} == set(NAMES)
    assert all("held-out IoU" in f["reason"] for f in flagged)


def test_report_files_warning_and_the_stop_gate(tmp_path, caplog, monkeypatch):
    data = _data(tmp_path)
    ann = SimpleNamespace(masks=data.masks, labels=SimpleNamespace(names=NAMES, ignore_index=255), ids=data.ids,
                          generator_hash=data.store.generator_hash, classes=np.zeros(len(data.ids), np.int32),
                          images=np.zeros((*data.masks.shape, 3), np.uint8))
    monkeypatch.setattr(report, "load_annotation_set", lambda path: ann)  # this test's annotation set
    out = {k: tmp_path / f"validation.{k}" for k in ("csv", "json", "png")}
    spec = ValidationSpec(folds=2, members=1, min_iou=0.99, stop=True)  # nothing reaches 0.99: all flagged
    summary = validate_interpreter("toy", tmp_path / "features.h5", "ann.h5",
                                   {"type": "mlp", **{k: getattr(FAST, k) for k in ("batch_size", "eval_every",
                                                                                   "patience", "max_epochs")}},
                                   spec, out["csv"], out["json"], out["png"])
    table = pd.read_csv(out["csv"])
    assert table["class"].tolist() == NAMES and table["flagged"].all()
    assert json.loads(out["json"].read_text())["flagged"] == summary["flagged"]
    assert out["png"].stat().st_size > 1000
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == len(NAMES) and all("try: annotate more images" in w for w in warnings)
    with pytest.raises(ValidationError, match="synthesis waits"):
        require_validated(out["json"])
    summary["stop"] = False
    out["json"].write_text(json.dumps(summary))
    require_validated(out["json"])  # warned, not stopped


def test_folds_whose_interpreter_diverged_are_marked_not_scored(tmp_path, caplog, monkeypatch):
    """An absurd learning rate: every member of every fold diverges; the report says so in its files
    and in one warning line, instead of scoring NaN predictions or failing."""
    data = _data(tmp_path)
    ann = SimpleNamespace(masks=data.masks, labels=SimpleNamespace(names=NAMES, ignore_index=255), ids=data.ids,
                          generator_hash=data.store.generator_hash, classes=np.zeros(len(data.ids), np.int32),
                          images=np.zeros((*data.masks.shape, 3), np.uint8))
    monkeypatch.setattr(report, "load_annotation_set", lambda path: ann)
    out = {k: tmp_path / f"validation.{k}" for k in ("csv", "json", "png")}
    summary = validate_interpreter("toy", tmp_path / "features.h5", "ann.h5",
                                   {"type": "mlp", "lr": 1e30, "max_epochs": 2, "eval_every": 20},
                                   ValidationSpec(folds=2, members=2), out["csv"], out["json"], out["png"])
    assert summary["diverged_folds"] == [0, 1] and summary["dropped_members"] == [0, 0]  # all diverged: all kept
    assert summary["interpreter"]["miou"] is None and summary["average_mask"]["miou"] is None
    assert json.loads(out["json"].read_text())["diverged_folds"] == [0, 1]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name == report.log.name]
    assert warnings == ["toy: every interpreter member diverged in training on fold(s) 1, 2 of 2, left out of the "
                        "held-out scores; try a lower interpreter.lr"]
    with pytest.raises(Diverged, match="interpreter member 0: the loss became non-finite"):
        cross_validate_interpreter(data, "mlp", MLPEnsembleConfig(lr=1e30, max_epochs=2), ValidationSpec(folds=2),
                                   on_divergence="fail")
