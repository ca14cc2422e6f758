"""The interpreter validation report (rule ``validate_interpreter``): a table, a figure and
one console warning per class that the interpreter labels poorly, before any sample is made.

See :mod:`labelfactory.interpreters.validation` for the protocol. With ``validation.few_shot`` the
task's downstream model cross-validated on the same folds
(:mod:`labelfactory.downstream.few_shot_validation`) is a second baseline, and a class the
interpreter labels worse than it is flagged too; a few-shot model whose training diverged has no
scores and flags nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from labelfactory.annotations.annotation_set import load_annotation_set
from labelfactory.core.io import atomic_path, atomic_write_json
from labelfactory.core.provenance import describe_device
from labelfactory.downstream.few_shot_validation import (
    cross_validate_few_shot,
    few_shot_config,
)
from labelfactory.experiments.reporting import pyplot, save_figure
from labelfactory.features import FeatureStore
from labelfactory.interpreters.base import INTERPRETERS, TrainingData
from labelfactory.interpreters.validation import (
    ValidationSpec,
    cross_validate_interpreter,
    diverged_fold_lines,
    flagged_classes,
    warning_lines,
)

log = logging.getLogger(__name__)

FEW_SHOT_REASON = ("below the few-shot model's {:.2f} (synthetic labels are unlikely to beat the "
                   "annotations themselves)")


def few_shot_flags(flagged: list[dict], result: dict, names: Sequence[str]) -> list[dict]:
    """``flagged`` (:func:`~labelfactory.interpreters.validation.flagged_classes`) and every class
    whose held-out interpreter IoU is below the few-shot model's (``result["few_shot"]``), with that
    reason added; in class order, each entry with its ``few_shot_iou``."""
    known = {f["class"]: f for f in flagged}
    out = []
    for c, name in enumerate(names):
        iou, few = result["interpreter"]["iou"][c], result["few_shot"]["iou"][c]
        entry = known.get(name)
        if iou is not None and few is not None and iou < few:
            entry = entry or {"class": name, "iou": iou, "average_mask_iou": result["average_mask"]["iou"][c],
                              "reason": ""}
            entry = {**entry, "reason": "; ".join(filter(None, (entry["reason"], FEW_SHOT_REASON.format(few))))}
        if entry is not None:
            out.append({**entry, "few_shot_iou": few})
    return out


def validation_table(result: dict, names: list[str], flagged: list[dict]) -> pd.DataFrame:
    """One row per class: held-out IoU of the interpreter, of the average mask and (when
    ``result`` has it) of the few-shot model, and the flag."""
    bad = {f["class"]: f["reason"] for f in flagged}
    few_shot = {"few_shot_iou": result["few_shot"]["iou"]} if "few_shot" in result else {}
    return pd.DataFrame({
        "class": names,
        "interpreter_iou": result["interpreter"]["iou"],
        "average_mask_iou": result["average_mask"]["iou"],
        **few_shot,
        "flagged": [n in bad for n in names],
        "reason": [bad.get(n, "") for n in names],
    })


BARS = {"interpreter_iou": ("interpreter (held out)", "#4c72b0"), "average_mask_iou": ("average mask", "#bbbbbb"),
        "few_shot_iou": ("few-shot model (held out)", "#55a868")}


def plot_validation(table: pd.DataFrame, min_iou: float, title: str, path: str | os.PathLike) -> None:
    """Bars per class: interpreter vs average mask (and few-shot model), with the ``min_iou`` line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(table), 3.2))
    x = np.arange(len(table))
    columns = [c for c in BARS if c in table]
    width = 0.8 / len(columns)
    offsets = (np.arange(len(columns)) - (len(columns) - 1) / 2) * width
    for column, offset in zip(columns, offsets):
        label, color = BARS[column]
        ax.bar(x + offset, table[column].fillna(0), width, label=label, color=color)
    ax.axhline(min_iou, color="#c44e52", lw=1, ls="--", label=f"min IoU {min_iou:g}")
    for i in np.flatnonzero(table["flagged"].to_numpy()):
        ax.annotate("!", (x[i] + offsets[0], 0.02), color="#c44e52", ha="center", fontweight="bold")
    ax.set_xticks(x, table["class"], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    save_figure(fig, path)


def validate_interpreter(task: str, features: str | os.PathLike, annotations: str | os.PathLike,
                         interpreter: dict, spec: ValidationSpec, out_csv: str | os.PathLike,
                         out_json: str | os.PathLike, out_png: str | os.PathLike,
                         class_embedding: torch.Tensor | None = None, device: torch.device | str = "cpu",
                         downstream: dict | None = None, threads: int | None = None,
                         on_divergence: str = "record") -> dict:
    """Cross-validate the task's interpreter (config block ``interpreter``, with its ``type``)
    on its annotations; write the table, the JSON summary and the figure (atomically), log one
    warning per flagged class. With ``spec.stop`` the summary says so, and synthesis refuses to
    start (:func:`~labelfactory.interpreters.validation.require_validated`). With ``spec.few_shot``
    the network of the task's ``downstream`` options, on ``threads`` threads, is cross-validated on
    the same folds (:func:`~labelfactory.downstream.few_shot_validation.cross_validate_few_shot`, under
    ``on_divergence``). The summary names the ``device``
    (:func:`~labelfactory.core.provenance.describe_device`)."""
    if spec.few_shot and downstream is None:
        raise ValueError(f"{task}: validation.few_shot needs the task's downstream options")
    options = dict(interpreter)
    kind = INTERPRETERS.get(options.pop("type"))
    ann = load_annotation_set(annotations)
    data = TrainingData.from_annotations(FeatureStore.open(features), ann,
                                         class_embedding=class_embedding if kind.class_conditional else None)
    result = cross_validate_interpreter(data, kind.name, kind.config_class(**options), spec, device, on_divergence)
    names = list(ann.labels.names)
    flagged = flagged_classes(result, names, spec.min_iou)
    prior = result["average_mask"]["miou"]  # None when no fold was scored
    baselines = "average mask " + ("not scored" if prior is None else f"{prior:.2f}")
    if spec.few_shot:
        cfg = few_shot_config(downstream, spec.few_shot_steps, threads)
        result["few_shot"] = {**cross_validate_few_shot(ann.images, ann.masks, result["held_out"], len(names), cfg,
                                                        device, ann.labels.ignore_index, names, on_divergence),
                              "steps": cfg.steps}
        flagged = few_shot_flags(flagged, result, names)
        few_shot = result["few_shot"]["miou"]
        baselines += ", few-shot diverged" if few_shot is None else f", few-shot {few_shot:.2f}"
    table = validation_table(result, names, flagged)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    miou = result["interpreter"]["miou"]
    scored = f"mIoU {miou:.2f}" if miou is not None else "every fold diverged"
    plot_validation(table, spec.min_iou, f"{task}: held-out IoU over {result['folds']} folds of {result['images']} "
                    f"annotations ({scored}, {baselines})", out_png)
    summary = {"task": task, **result, "min_iou": spec.min_iou, "stop": spec.stop, "flagged": flagged,
               "device": describe_device(device, threads)}
    atomic_write_json(out_json, summary)
    log.info("%s: held-out %s (%s) over %d folds", task, scored, baselines, result["folds"])
    lines = warning_lines(task, flagged) + diverged_fold_lines(task, result)
    for line in lines:
        log.warning("%s", line)
    return summary
