"""Validation before synthesis: how well the interpreter labels annotated images it did not see.

The annotations are split into ``folds`` folds of images; for each fold an
interpreter of the task's type and config (optionally with fewer members, to
keep the check cheap) is trained on the other folds and labels the held-out
images. The held-out confusion matrices, summed over folds, give each class's
IoU. The free baseline is scored on the same folds: the *average mask*, which
gives every held-out image, per pixel, the label most often annotated there in
the training folds (what a model learns from position alone). A class whose
interpreter IoU does not beat it has not been learnt from the features.

A class whose held-out IoU is below ``min_iou`` or below the average mask's is
*flagged*: synthesis would copy its errors into every sample. The report names it
with what to try.

:func:`rank_taps` runs the same protocol once per feature tap alone (a one-member,
short-schedule MLP), so a user of an unfamiliar generator can see which taps carry
the labels (``labelfactory probe-taps``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from labelfactory.config.specs import ValidationSpec
from labelfactory.core.metrics import confusion_matrix, scores_from_confusion
from labelfactory.interpreters.base import INTERPRETERS, TrainingData, interpreter_features
from labelfactory.interpreters.mlp import MLPEnsembleConfig

log = logging.getLogger(__name__)

REMEDIES = ("annotate more images showing this class", "try other feature taps (`labelfactory probe-taps`)",
            "label at a higher resolution (a tighter image view)")


class ValidationError(ValueError):
    """The interpreter failed validation and the task asks synthesis to stop (``validation.stop``)."""


def image_folds(n: int, folds: int, seed: int = 0) -> list[np.ndarray]:
    """``folds`` disjoint, seeded, near-equal sets of image indices covering ``0..n-1``."""
    if n < 2:
        raise ValueError(f"cross-validation needs at least 2 annotated images, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, min(folds, n)) if len(part)]


def average_mask(masks: np.ndarray, num_classes: int) -> np.ndarray:
    """Per pixel, the label annotated there most often (ties: the lower label; ignored
    pixels do not vote); never annotated: label 0. ``masks`` uint8 ``[N, H, W]`` → int64 ``[H, W]``."""
    counts = np.stack([(masks == c).sum(0) for c in range(num_classes)])
    return counts.argmax(0).astype(np.int64)


def _subset(data: TrainingData, index: np.ndarray) -> TrainingData:
    return dataclasses.replace(data, masks=data.masks[index], ids=[data.ids[i] for i in index],
                               classes=None if data.classes is None else np.asarray(data.classes)[index],
                               images=None if data.images is None else data.images[index])


@torch.no_grad()
def _predict(interpreter, data: TrainingData, index: np.ndarray, device: torch.device) -> torch.Tensor:
    """The interpreter's labels (argmax of the members' mean) of images ``index``, ``[n, R, R]``."""
    labels = []
    for i in index:
        maps = data.store.read(data.ids[i], interpreter.layers)
        features = {name: torch.from_numpy(m.astype(np.float32))[None].to(device) for name, m in maps.items()}
        if data.images is not None:
            features = interpreter_features(interpreter, features, torch.from_numpy(data.images[i : i + 1]))
        classes = None if data.classes is None else torch.tensor([int(np.asarray(data.classes)[i])], device=device)
        labels.append(interpreter.member_probabilities(features, classes).float().mean(0).argmax(1)[0].cpu())
    return torch.stack(labels)


def cross_validate_interpreter(data: TrainingData, interpreter_type: str, cfg, spec: ValidationSpec,
                               device: torch.device | str = "cpu", on_divergence: str = "record") -> dict:
    """Held-out scores of the interpreter and of the average mask, per class, over ``spec.folds``
    folds of the annotated images: ``{"interpreter": scores, "average_mask": scores, "folds": n,
    "held_out": [each fold's image indices], "diverged_folds": [...], "dropped_members": [...]}``
    with scores as :func:`~labelfactory.core.metrics.scores_from_confusion` gives them. A fold
    whose every member diverged in training (``on_divergence: record``) is left out of both scores
    and listed in ``diverged_folds``; ``dropped_members`` counts each fold's diverged members."""
    kind = INTERPRETERS.get(interpreter_type)
    cfg = kind.config_class() if cfg is None else cfg
    if spec.members is not None:
        cfg = dataclasses.replace(cfg, num_members=min(spec.members, cfg.num_members))
    device = torch.device(device)
    n, k = len(data.masks), data.num_classes
    held_out = torch.zeros(k, k, dtype=torch.int64)
    baseline = torch.zeros(k, k, dtype=torch.int64)
    folds = image_folds(n, spec.folds, seed=getattr(cfg, "seed", 0))
    diverged, dropped = [], []
    for f, test in enumerate(folds):
        train = np.setdiff1d(np.arange(n), test)
        log.info("validation fold %d/%d: training on %d images, scoring %d", f + 1, len(folds), len(train), len(test))
        interpreter = kind.fit(_subset(data, train), cfg, device=device, on_divergence=on_divergence)
        dropped.append(len(interpreter.run.get("dropped_members", [])))
        if interpreter.run["status"] == "diverged":
            log.warning("validation fold %d/%d: every member diverged in training; the fold is not scored",
                        f + 1, len(folds))
            diverged.append(f)
            continue
        target = torch.from_numpy(data.masks[test].astype(np.int64))
        held_out += confusion_matrix(_predict(interpreter, data, test, device), target, k, data.ignore_index)
        prior = torch.from_numpy(average_mask(data.masks[train], k)).expand_as(target)
        baseline += confusion_matrix(prior, target, k, data.ignore_index)
    names = data.label_names
    return {"folds": len(folds), "images": n, "members": cfg.num_members, "held_out": [t.tolist() for t in folds],
            "diverged_folds": diverged, "dropped_members": dropped,
            "interpreter": scores_from_confusion(held_out, names), "average_mask": scores_from_confusion(baseline, names)}


PROBE_EPOCHS = 5  # rank_taps' default schedule: a ranking, not a finished interpreter


def rank_taps(data: TrainingData, cfg: MLPEnsembleConfig | None = None, folds: int = 4,
              device: torch.device | str = "cpu") -> pd.DataFrame:
    """Held-out scores of a one-member MLP interpreter trained on each tap of ``data.layers``
    alone, and on all of them together (``tap = "(all)"``, when there are several), over the same ``folds`` image folds
    (:func:`cross_validate_interpreter`). ``cfg`` (default: the MLP's with ``max_epochs =
    PROBE_EPOCHS``) is used with ``num_members = 1``. One row per tap: ``tap``, ``channels``,
    ``resolution`` (``"<h>x<w>"``), ``miou``, ``iou/<class>`` per class, ``pixel_accuracy``;
    sorted by ``miou``, best first (ties and missing scores keep the taps' order); the
    ``cfg.extra_inputs``, if any, join every tap. The
    average mask's held-out mIoU (position alone) is in ``attrs["average_mask_miou"]``, the
    number of folds in ``attrs["folds"]``."""
    if folds < 2:
        raise ValueError(f"ranking the taps needs at least 2 folds, got {folds}")
    cfg = MLPEnsembleConfig(max_epochs=PROBE_EPOCHS) if cfg is None else cfg
    cfg = dataclasses.replace(cfg, num_members=1)
    spec = ValidationSpec(folds=folds, members=1)
    names = list(data.label_names or [str(c) for c in range(data.num_classes)])
    shapes = data.store.shapes
    candidates = [(layer, [layer]) for layer in data.layers]
    if len(data.layers) > 1:
        candidates.append(("(all)", list(data.layers)))
    rows, result = [], None
    for i, (tap, layers) in enumerate(candidates):
        log.info("tap %d/%d: %s", i + 1, len(candidates), tap)
        result = cross_validate_interpreter(dataclasses.replace(data, layers=layers), "mlp", cfg, spec, device)
        sizes = sorted({shapes[l][1:] for l in layers})
        scores = result["interpreter"]
        rows.append({"tap": tap, "channels": sum(shapes[l][0] for l in layers),
                     "resolution": "/".join(f"{h}x{w}" for h, w in sizes), "miou": scores["miou"],
                     **{f"iou/{n}": v for n, v in zip(names, scores["iou"])},
                     "pixel_accuracy": scores["pixel_accuracy"]})
    table = pd.DataFrame(rows).astype({"miou": float, "pixel_accuracy": float, **{f"iou/{n}": float for n in names}})
    table = table.sort_values("miou", ascending=False, kind="stable", na_position="last").reset_index(drop=True)
    table.attrs.update(average_mask_miou=result["average_mask"]["miou"], folds=result["folds"])
    return table


def flagged_classes(result: dict, names: Sequence[str], min_iou: float) -> list[dict]:
    """The classes whose held-out IoU is below ``min_iou`` or not above the average mask's,
    each ``{"class", "iou", "average_mask_iou", "reason"}`` (classes absent from the
    annotations are not judged)."""
    flagged = []
    for c, name in enumerate(names):
        iou, prior = result["interpreter"]["iou"][c], result["average_mask"]["iou"][c]
        if iou is None:
            continue
        reasons = []
        if iou < min_iou:
            reasons.append(f"held-out IoU {iou:.2f} < {min_iou:.2f}")
        if prior is not None and iou <= prior:
            reasons.append(f"not above the average mask's {prior:.2f}")
        if reasons:
            flagged.append({"class": name, "iou": iou, "average_mask_iou": prior, "reason": "; ".join(reasons)})
    return flagged


def warning_lines(task: str, flagged: list[dict]) -> list[str]:
    """One console line per flagged class, saying what to try."""
    return [f"{task}: class {f['class']!r}: {f['reason']}; try: {', '.join(REMEDIES)}" for f in flagged]


def diverged_fold_lines(task: str, result: dict) -> list[str]:
    """One console line when the interpreter diverged in training on some folds (they are not scored)."""
    folds = result.get("diverged_folds", [])
    if not folds:
        return []
    return [f"{task}: every interpreter member diverged in training on fold(s) {', '.join(str(f + 1) for f in folds)} "
            f"of {result['folds']}, left out of the held-out scores; try a lower interpreter.lr"]


def require_validated(summary_json: str | os.PathLike) -> None:
    """Refuse to go on when the validation summary flags classes and asks to stop."""
    summary = json.loads(open(summary_json).read())
    if summary.get("stop") and summary["flagged"]:
        classes = ", ".join(f"{f['class']} ({f['reason']})" for f in summary["flagged"])
        raise ValidationError(f"{summary['task']}: the interpreter fails validation for {classes}; see "
                              f"{summary_json} and its table and figure (tasks.{summary['task']}.validation.stop "
                              "is set, so synthesis waits)")
