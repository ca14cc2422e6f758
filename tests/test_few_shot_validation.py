"""The few-shot baseline of the interpreter's validation: the downstream model cross-validated on
the annotated images of the interpreter's own folds (issue 23, item 1)."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY_SEGMENTATION
from test_interpreter import NAMES, linear_labels, random_maps, write_store

import labelfactory.experiments.validation_report as report
from labelfactory.config.specs import ValidationSpec
from labelfactory.core.divergence import Diverged
from labelfactory.downstream.few_shot_validation import (
    cross_validate_few_shot,
    few_shot_config,
)
from labelfactory.experiments.validation_report import (
    FEW_SHOT_REASON,
    few_shot_flags,
    validate_interpreter,
)
from labelfactory.interpreters.validation import flagged_classes

torch.set_num_threads(1)
DOWNSTREAM = {"model": "deeplabv3_resnet18", "model_options": TINY_SEGMENTATION, "steps": 40, "batch_size": 2,
              "optimizer": "adamw", "lr": 3e-3, "warmup_steps": 10, "schedule": "cosine", "snapshots": 4,
              "annotation_share": 0.2}  # a setting option the few-shot model does not read
INTERPRETER = {"type": "mlp", "batch_size": 64, "eval_every": 20, "patience": 2, "max_epochs": 5}
PALETTE = np.array([[20, 20, 20], [200, 40, 40], [40, 40, 200]], np.uint8)


def _annotations(tmp_path, n=6):
    """Features in ``tmp_path`` and an annotation set whose images show their masks' classes."""
    maps = random_maps(n, seed=5)
    store = write_store(tmp_path / "features.h5", maps)
    masks = linear_labels(maps)
    images = np.clip(PALETTE[masks] + np.random.default_rng(0).integers(-20, 20, masks.shape + (3,)), 0, 255)
    return SimpleNamespace(images=images.astype(np.uint8), masks=masks, ids=store.ids,
                           labels=SimpleNamespace(names=NAMES, ignore_index=255), generator_hash=store.generator_hash,
                           classes=np.zeros(n, np.int32))


def test_few_shot_config_is_the_downstream_schedule_shortened():
    cfg = few_shot_config(DOWNSTREAM, threads=1)
    assert (cfg.steps, cfg.warmup_steps, cfg.snapshots, cfg.seed, cfg.threads) == (40, 10, 1, 0, 1)
    short = few_shot_config(DOWNSTREAM, steps=8)
    assert (short.steps, short.warmup_steps, short.model, short.lr) == (8, 2, "deeplabv3_resnet18", 3e-3)


def test_few_shot_cross_validation_scores_each_class_on_the_held_out_folds(tmp_path):
    ann = _annotations(tmp_path)
    scores = cross_validate_few_shot(ann.images, ann.masks, [[0, 1, 2], [3, 4, 5]], len(NAMES),
                                     few_shot_config(DOWNSTREAM, steps=4), class_names=NAMES)
    assert len(scores["iou"]) == len(NAMES) and all(0 <= v <= 1 for v in scores["iou"] if v is not None)
    assert int(np.sum(scores["confusion"])) == ann.masks.size  # every image held out once


def test_a_class_below_the_few_shot_model_is_flagged_with_its_reason():
    result = {"interpreter": {"iou": [0.7, 0.2, 0.5]}, "average_mask": {"iou": [0.5, 0.0, 0.6]},
              "few_shot": {"iou": [0.8, 0.4, None]}}
    flagged = few_shot_flags(flagged_classes(result, NAMES, min_iou=0.3), result, NAMES)
    by_class = {f["class"]: f for f in flagged}
    assert list(by_class) == NAMES
    assert by_class["bg"]["reason"] == FEW_SHOT_REASON.format(0.8) and by_class["bg"]["few_shot_iou"] == 0.8
    assert by_class["a"]["reason"].startswith("held-out IoU 0.20 < 0.30; ") and "few-shot model's 0.40" in \
        by_class["a"]["reason"]
    assert "few-shot" not in by_class["b"]["reason"] and by_class["b"]["few_shot_iou"] is None  # no score: not judged
    result["few_shot"]["iou"] = [0.6, 0.1, 0.4]  # the interpreter beats it everywhere: the flags stay as they were
    assert [f["reason"] for f in few_shot_flags(flagged_classes(result, NAMES, 0.3), result, NAMES)] == \
        [f["reason"] for f in flagged_classes(result, NAMES, 0.3)]


def test_report_gains_the_few_shot_column_and_is_unchanged_without_it(tmp_path, monkeypatch):
    ann = _annotations(tmp_path)
    monkeypatch.setattr(report, "load_annotation_set", lambda path: ann)  # this test's annotation set

    def run(name, spec, **kw):
        out = {k: tmp_path / f"{name}.{k}" for k in ("csv", "json", "png")}
        summary = validate_interpreter("toy", tmp_path / "features.h5", "ann.h5", INTERPRETER, spec,
                                       out["csv"], out["json"], out["png"], **kw)
        assert out["png"].stat().st_size > 1000
        return pd.read_csv(out["csv"]), json.loads(out["json"].read_text()), summary

    off, off_json, _ = run("off", ValidationSpec(folds=2, min_iou=0.0), downstream=DOWNSTREAM)
    assert off.columns.tolist() == ["class", "interpreter_iou", "average_mask_iou", "flagged", "reason"]
    assert "few_shot" not in off_json
    spec = ValidationSpec(folds=2, min_iou=0.0, few_shot=True, few_shot_steps=4)
    on, on_json, summary = run("on", spec, downstream=DOWNSTREAM, threads=1)
    assert on.columns.tolist() == ["class", "interpreter_iou", "average_mask_iou", "few_shot_iou", "flagged", "reason"]
    assert on["few_shot_iou"].between(0, 1).all() and on_json["few_shot"]["steps"] == 4
    pd.testing.assert_frame_equal(on[["class", "interpreter_iou", "average_mask_iou"]],
                                  off[["class", "interpreter_iou", "average_mask_iou"]])  # same folds, same seeds
    below = on["interpreter_iou"] < on["few_shot_iou"]
    reasons = on["reason"].astype("string").fillna("")
    assert on.loc[below, "flagged"].all() and reasons[below].str.contains("few-shot model's").all()
    assert not reasons[~below].str.contains("few-shot").any()
    assert on_json["flagged"] == summary["flagged"] and on_json["few_shot"]["status"] == "ok"
    assert on_json["device"]["kind"] == "cpu" and on_json["device"]["threads"] == 1
    with pytest.raises(ValueError, match="downstream options"):
        validate_interpreter("toy", tmp_path / "features.h5", "ann.h5", INTERPRETER, spec, *(tmp_path / "x.csv",) * 3)


DIVERGING = {**DOWNSTREAM, "optimizer": "sgd", "lr": 1e30}  # the loss overflows float32 within a few steps


def test_a_diverged_fold_leaves_the_few_shot_baseline_unscored(tmp_path):
    ann = _annotations(tmp_path)
    cfg = few_shot_config(DIVERGING, steps=4)
    scores = cross_validate_few_shot(ann.images, ann.masks, [[0, 1, 2], [3, 4, 5]], len(NAMES), cfg, class_names=NAMES)
    assert scores["status"] == "diverged" and scores["fold"] == 0 and scores["step"] >= 1
    assert scores["iou"] == [None] * len(NAMES) and scores["miou"] is None
    with pytest.raises(Diverged, match="few-shot validation fold 1: the loss became non-finite"):
        cross_validate_few_shot(ann.images, ann.masks, [[0, 1, 2], [3, 4, 5]], len(NAMES), cfg,
                                on_divergence="fail")


def test_a_diverged_few_shot_model_is_recorded_and_flags_nothing(tmp_path, monkeypatch):
    ann = _annotations(tmp_path)
    monkeypatch.setattr(report, "load_annotation_set", lambda path: ann)
    out = [tmp_path / f"v.{k}" for k in ("csv", "json", "png")]
    spec = ValidationSpec(folds=2, min_iou=0.0, few_shot=True, few_shot_steps=4)
    summary = validate_interpreter("toy", tmp_path / "features.h5", "ann.h5", INTERPRETER, spec, *out,
                                   downstream=DIVERGING, threads=1)
    assert json.loads(out[1].read_text())["few_shot"]["status"] == "diverged"
    assert summary["flagged"] == []  # min_iou 0 flags nothing, and a diverged few-shot model no class either
    assert pd.read_csv(out[0])["few_shot_iou"].isna().all()
