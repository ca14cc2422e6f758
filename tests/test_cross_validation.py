"""DatasetGAN's cross-validated checkpoint selection, and the snapshots it chooses among."""

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from labelfactory.downstream.cross_validation import cross_validate, release_miou
from labelfactory.downstream.experiment import SettingInputs, evaluate_downstream, seg_config, train_downstream
from labelfactory.downstream.real import RealDataSpec, real_dataset
from labelfactory.downstream.segmentation import SegTrainConfig, evaluate_segmentation, load_model

from helpers import TINY_SEGMENTATION, make_real_folder
from test_experiment import annotation_set


def _conf(tp0, tp1, fp01=0, fp10=0):
    """A 3-class confusion (rows truth) with class 2 absent from truth and prediction."""
    return np.array([[tp0, fp01, 0], [fp10, tp1, 0], [0, 0, 0]])


def test_release_miou_counts_absent_classes_as_zero():
    # class 0: 3 / (3 + 1) = 0.75, class 1: 2 / (2 + 1) = 2/3, class 2 absent: 0
    assert release_miou(_conf(3, 2, fp01=1)) == pytest.approx((0.75 + 2 / 3 + 0) / 3)


def test_each_fold_takes_the_snapshot_best_on_it_and_scores_it_on_the_rest():
    # 2 snapshots x 4 images, 2 folds of 2: snapshot 0 is perfect on images 0-1, snapshot 1 on images 2-3
    good, bad = _conf(4, 4), _conf(0, 0, fp01=4, fp10=4)
    confusions = np.array([[good, good, bad, bad], [bad, bad, good, good]])
    cv = cross_validate(confusions, folds=2, steps=[50, 100])
    # fold 0 validates on images 0-1 -> snapshot 0, scored on 2-3 where it is all wrong: mIoU 0
    # fold 1 validates on images 2-3 -> snapshot 1, scored on 0-1: also 0
    assert cv["chosen_snapshot"] == [0, 1] and cv["chosen_step"] == [50, 100]
    assert cv["fold_miou"] == pytest.approx([0.0, 0.0])
    mixed = np.array([[good, good, good, bad], [bad, bad, good, good]])
    cv = cross_validate(mixed, folds=2)
    assert cv["chosen_snapshot"] == [0, 1]
    # fold 0 -> snapshot 0 on images 2-3: summed confusion good + bad = [[4,4,0],[4,4,0],[0,0,0]]
    want0 = (4 / 12 + 4 / 12 + 0) / 3
    assert cv["fold_miou"][0] == pytest.approx(want0) and cv["fold_miou"][1] == 0.0
    assert cv["mean"] == pytest.approx(want0 / 2) and cv["std"] == pytest.approx(want0 / 2)  # population sd


def test_leftover_images_are_always_tested_and_ties_take_the_first_snapshot():
    good = _conf(4, 4)
    confusions = np.array([[good] * 5, [good] * 5])  # 5 images, 2 folds of 2: image 4 is in no fold
    cv = cross_validate(confusions, folds=2)
    assert cv["images_per_fold"] == 2 and cv["chosen_snapshot"] == [0, 0]
    with pytest.raises(ValueError, match="cannot cut 3 test images into 5 folds"):
        cross_validate(confusions[:, :3], folds=5)
    with pytest.raises(ValueError, match=r"need per-image confusions"):
        cross_validate(np.zeros((2, 3, 3)))


def test_snapshot_steps_are_evenly_spaced_and_end_at_the_last_step():
    assert SegTrainConfig(steps=10, snapshots=3).snapshot_steps == [3, 6, 10]
    assert SegTrainConfig(steps=10).snapshot_steps == [10]
    with pytest.raises(ValueError, match="snapshots must lie in"):
        SegTrainConfig(steps=10, snapshots=11)


def test_a_run_keeps_its_snapshots_and_is_cross_validated(tmp_path):
    make_real_folder(tmp_path / "real", size=16, n_train=6, n_test=5)
    real = RealDataSpec(type="folder", path=str(tmp_path / "real"))
    inputs = SettingInputs(annotations=str(annotation_set(tmp_path / "ann.h5")), real=real)
    cfg = seg_config({"model": "deeplabv3_resnet18", "model_options": TINY_SEGMENTATION, "steps": 6,
                      "batch_size": 4, "optimizer": "adamw", "lr": 3e-3, "snapshots": 3}, seed=0, threads=1)
    model_path = tmp_path / "run" / "model.safetensors"
    train_downstream("fully_supervised", inputs, cfg, model_path)
    assert json.loads(model_path.with_suffix(".json").read_text())["snapshot_steps"] == [2, 4, 6]
    final, _ = load_model(model_path)
    last, _ = load_model(model_path, snapshot=6)
    first, _ = load_model(model_path, snapshot=2)
    tensors = load_file(str(model_path))
    key = next(k for k in final.state_dict() if k.endswith("weight"))
    assert (tensors[f"snapshot.6.{key}"] == tensors[key]).all()  # the last snapshot is the final model
    assert all((a == b).all() for a, b in zip(final.state_dict().values(), last.state_dict().values()))
    assert not all((a == b).all() for a, b in zip(final.state_dict().values(), first.state_dict().values()))
    with pytest.raises(ValueError, match="no snapshot of step 3"):
        load_model(model_path, snapshot=3)

    holdout = evaluate_downstream(model_path, inputs.annotations, real, tmp_path / "holdout.json")
    cv = evaluate_downstream(model_path, inputs.annotations, real, tmp_path / "cv.json",
                             protocol="cross_validation", folds=5)
    assert cv["protocol"] == "cross_validation" and cv["miou_final"] == pytest.approx(holdout["miou"])
    folds = cv["cross_validation"]
    assert folds["folds"] == 5 and folds["images_per_fold"] == 1 and set(folds["chosen_step"]) <= {2, 4, 6}
    assert cv["miou"] == pytest.approx(np.mean(folds["fold_miou"]))
    assert json.loads((tmp_path / "cv.json").read_text())["miou"] == pytest.approx(cv["miou"])
    # ddpm-segmentation's protocol: the snapshot best on the real train split, scored on the test split
    val = evaluate_downstream(model_path, inputs.annotations, real, tmp_path / "val.json", protocol="validation")
    chosen = val["validation"]
    assert chosen["steps"] == [2, 4, 6] and chosen["images"] == 6
    assert chosen["chosen_step"] == [2, 4, 6][int(np.argmax(chosen["miou"]))]
    labels = inputs.labels()
    for split, step, want in [("train", s, m) for s, m in zip([2, 4, 6], chosen["miou"])] + [
            ("test", chosen["chosen_step"], val["miou"])]:
        snapshot, _ = load_model(model_path, snapshot=step)
        got = evaluate_segmentation(snapshot, real_dataset(real, split, labels), len(labels.names), "cpu",
                                    ignore_index=labels.ignore_index)["miou"]
        assert got == pytest.approx(want)
    assert val["miou_final"] == pytest.approx(holdout["miou"])
    with pytest.raises(ValueError, match="protocol must be one of"):
        evaluate_downstream(model_path, inputs.annotations, real, tmp_path / "x.json", protocol="kfold")


def test_cross_validation_needs_snapshots(tmp_path):
    make_real_folder(tmp_path / "real", size=16, n_train=6, n_test=5)
    real = RealDataSpec(type="folder", path=str(tmp_path / "real"))
    inputs = SettingInputs(annotations=str(annotation_set(tmp_path / "ann.h5")), real=real)
    cfg = seg_config({"model": "deeplabv3_resnet18", "model_options": TINY_SEGMENTATION, "steps": 2,
                      "batch_size": 4}, seed=0, threads=1)
    train_downstream("fully_supervised", inputs, cfg, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"kept 0 \(set downstream.snapshots > 1\)"):
        evaluate_downstream(tmp_path / "model.safetensors", inputs.annotations, real, tmp_path / "cv.json",
                            protocol="cross_validation")
