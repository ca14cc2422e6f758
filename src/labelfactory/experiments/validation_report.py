"""The interpreter validation report (rule ``validate_interpreter``): a table, a figure and
one console warning per class that the interpreter labels poorly, before any sample is made.

See :mod:`labelfactory.interpreters.validation` for the protocol.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import torch

from labelfactory.annotations.annotation_set import load_annotation_set
from labelfactory.core.io import atomic_path, atomic_write_json
from labelfactory.experiments.reporting import pyplot, save_figure
from labelfactory.features import FeatureStore
from labelfactory.interpreters.base import INTERPRETERS, TrainingData
from labelfactory.interpreters.validation import (
    ValidationSpec,
    cross_validate_interpreter,
    flagged_classes,
    warning_lines,
)

log = logging.getLogger(__name__)


def validation_table(result: dict, names: list[str], flagged: list[dict]) -> pd.DataFrame:
    """One row per class: held-out IoU of the interpreter and of the average mask, and the flag."""
    bad = {f["class"]: f["reason"] for f in flagged}
    return pd.DataFrame({
        "class": names,
        "interpreter_iou": result["interpreter"]["iou"],
        "average_mask_iou": result["average_mask"]["iou"],
        "flagged": [n in bad for n in names],
        "reason": [bad.get(n, "") for n in names],
    })


def plot_validation(table: pd.DataFrame, min_iou: float, title: str, path: str | os.PathLike) -> None:
    """Bars per class: interpreter vs average mask, with the ``min_iou`` line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(table), 3.2))
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["interpreter_iou"].fillna(0), 0.4, label="interpreter (held out)", color="#4c72b0")
    ax.bar(x + 0.2, table["average_mask_iou"].fillna(0), 0.4, label="average mask", color="#bbbbbb")
    ax.axhline(min_iou, color="#c44e52", lw=1, ls="--", label=f"min IoU {min_iou:g}")
    for i in np.flatnonzero(table["flagged"].to_numpy()):
        ax.annotate("!", (x[i] - 0.2, 0.02), color="#c44e52", ha="center", fontweight="bold")
    ax.set_xticks(x, table["class"], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    save_figure(fig, path)


def validate_interpreter(task: str, features: str | os.PathLike, annotations: str | os.PathLike,
                         interpreter: dict, spec: ValidationSpec, out_csv: str | os.PathLike,
                         out_json: str | os.PathLike, out_png: str | os.PathLike,
                         class_embedding: torch.Tensor | None = None, device: torch.device | str = "cpu") -> dict:
    """Cross-validate the task's interpreter (config block ``interpreter``, with its ``type``)
    on its annotations; write the table, the JSON summary and the figure (atomically), log one
    warning per flagged class. With ``spec.stop`` the summary says so, and synthesis refuses to
    start (:func:`~labelfactory.interpreters.validation.require_validated`)."""
    options = dict(interpreter)
    kind = INTERPRETERS.get(options.pop("type"))
    ann = load_annotation_set(annotations)
    data = TrainingData.from_annotations(FeatureStore.open(features), ann,
                                         class_embedding=class_embedding if kind.class_conditional else None)
    result = cross_validate_interpreter(data, kind.name, kind.config_class(**options), spec, device)
    names = list(ann.labels.names)
    flagged = flagged_classes(result, names, spec.min_iou)
    table = validation_table(result, names, flagged)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    miou, prior = result["interpreter"]["miou"], result["average_mask"]["miou"]
    plot_validation(table, spec.min_iou, f"{task}: held-out IoU over {result['folds']} folds of {result['images']} "
                    f"annotations (mIoU {miou:.2f}, average mask {prior:.2f})", out_png)
    summary = {"task": task, **result, "min_iou": spec.min_iou, "stop": spec.stop, "flagged": flagged}
    atomic_write_json(out_json, summary)
    log.info("%s: held-out mIoU %.3f (average mask %.3f) over %d folds", task, miou, prior, result["folds"])
    lines = warning_lines(task, flagged)
    for line in lines:
        log.warning("%s", line)
    return summary
