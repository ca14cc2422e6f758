"""The tap probe: every feature tap alone cross-validated, ranked by held-out mIoU
(``labelfactory probe-taps``, issue 23, item 2)."""

import numpy as np
import pandas as pd
import pytest
import torch
from test_interpreter import NAMES, SHAPES, random_maps, upsampled, write_store

from labelfactory.annotations.annotation_set import AnnotationSet
from labelfactory.annotations.labels import LabelSet
from labelfactory.cli import main
from labelfactory.interpreters import TrainingData
from labelfactory.interpreters.mlp import MLPEnsembleConfig
from labelfactory.interpreters.validation import rank_taps

torch.set_num_threads(1)
TAP = "b8.conv0"  # the one tap the masks depend on
NOISE = "b16.conv0"  # full resolution, but unrelated to the masks
FAST = MLPEnsembleConfig(num_members=3, batch_size=64, eval_every=20, patience=3, max_epochs=4)  # 1 member: forced


def one_tap_labels(maps, tap=TAP, seed=1):
    """Masks whose class is the argmax of a fixed linear function of one tap, upsampled."""
    x = upsampled([{tap: m[tap]} for m in maps])
    w = torch.randn(len(NAMES), x.shape[1], generator=torch.Generator().manual_seed(seed))
    return torch.einsum("cd,bdhw->bchw", w, x).argmax(1).numpy().astype(np.uint8)


def _store_and_masks(tmp_path, n):
    maps = random_maps(n, seed=7)
    return write_store(tmp_path / "features.h5", maps), one_tap_labels(maps)


def test_the_tap_that_carries_the_labels_ranks_first(tmp_path):
    store, masks = _store_and_masks(tmp_path, 8)
    table = rank_taps(TrainingData(store, masks, len(NAMES), label_names=NAMES), FAST, folds=4)
    assert list(table.columns) == (["tap", "channels", "resolution", "miou"] + [f"iou/{n}" for n in NAMES]
                                   + ["pixel_accuracy"])
    assert sorted(table["tap"]) == sorted([*SHAPES, "(all)"])
    assert table["miou"].is_monotonic_decreasing
    single = table[table["tap"] != "(all)"].set_index("tap")
    assert single.index[0] == TAP
    assert single.loc[TAP, "miou"] > single.loc[NOISE, "miou"] + 0.3
    assert single.loc[TAP, "channels"] == 5 and single.loc[TAP, "resolution"] == "8x8"
    everything = table.set_index("tap").loc["(all)"]
    assert everything["channels"] == sum(c for c, _, _ in SHAPES.values())
    assert everything["resolution"] == "4x4/8x8/16x16"
    assert table.attrs["folds"] == 4 and 0 <= table.attrs["average_mask_miou"] < single.loc[TAP, "miou"]
    with pytest.raises(ValueError, match="at least 2 folds"):
        rank_taps(TrainingData(store, masks, len(NAMES)), FAST, folds=1)


def test_the_command_prints_the_table_and_writes_the_csv(tmp_path, capsys):
    store, masks = _store_and_masks(tmp_path, 4)
    n = len(masks)
    AnnotationSet(ids=store.ids, seeds=np.arange(n), classes=np.full(n, -1, np.int32),
                  latents=np.zeros((n, 8), np.float32), images=np.zeros((n, 16, 16, 3), np.uint8), masks=masks,
                  labels=LabelSet(tuple(NAMES), 255), generator_hash=store.generator_hash, truncation=1.0,
                  noise="const").save(tmp_path / "annotations.h5")
    out = tmp_path / "report" / "taps.csv"
    args = ["probe-taps", "--features", str(tmp_path / "features.h5"), "--annotations",
            str(tmp_path / "annotations.h5"), "--folds", "2", "--max-epochs", "2", "--device", "cpu"]
    assert main([*args, "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert sorted(table["tap"]) == sorted([*SHAPES, "(all)"]) and "iou/bg" in table.columns
    printed = capsys.readouterr().out
    assert all(tap in printed for tap in SHAPES) and "average mask" in printed
    assert main([*args[:-2], "--max-epochs", "0"]) == 1  # a bad setting is one line, not a traceback
