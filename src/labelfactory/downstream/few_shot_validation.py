"""The few-shot baseline of the interpreter's validation (rule ``validate_interpreter``).

Over the interpreter's image folds
(:func:`~labelfactory.interpreters.validation.cross_validate_interpreter`'s ``held_out``), the
task's downstream network is trained on the annotated images of the other folds, as the
``few_shot`` setting trains on all of them, and labels the held-out images; the held-out
confusion matrices, summed over folds, give each class's IoU. Where the interpreter's held-out
IoU is below it, a downstream model trained on synthetic labels is unlikely to beat one trained
on the annotations themselves. Masks stay in the annotations' label space, the interpreter's.
A fold whose training diverges leaves the baseline unscored (``status: diverged``), so it flags nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from labelfactory.core.divergence import run_status
from labelfactory.core.metrics import IGNORE_INDEX, scores_from_confusion
from labelfactory.downstream.data import ArraySegmentation
from labelfactory.downstream.experiment import seg_config
from labelfactory.downstream.segmentation import (
    SegTrainConfig,
    per_image_confusions,
    train_segmentation,
)

log = logging.getLogger(__name__)


def few_shot_config(options: dict, steps: int | None = None, threads: int | None = None) -> SegTrainConfig:
    """The task's downstream training config (its ``downstream`` options, seed 0, no snapshots),
    with ``steps`` training steps (None: the options') and the warm-up shortened in proportion."""
    cfg = replace(seg_config(options, seed=0, threads=threads), snapshots=1)
    if steps is None:
        return cfg
    return replace(cfg, steps=steps, warmup_steps=cfg.warmup_steps * steps // cfg.steps)


def cross_validate_few_shot(images: np.ndarray, masks: np.ndarray, held_out: Sequence[Sequence[int]],
                            num_classes: int, cfg: SegTrainConfig, device: torch.device | str = "cpu",
                            ignore_index: int = IGNORE_INDEX, class_names: Sequence[str] | None = None,
                            on_divergence: str = "record") -> dict:
    """Held-out scores (:func:`~labelfactory.core.metrics.scores_from_confusion`) of ``cfg``'s
    network trained, per fold, on the images ``[N, H, W, 3]`` uint8 and ``masks`` ``[N, H, W]``
    outside the fold's indices ``held_out[f]``, and scored on those, with ``status: ok``; ``wall_s``:
    the training time. The first fold whose training diverges ends it
    (:func:`~labelfactory.core.divergence.run_status` under ``on_divergence``): ``status: diverged``,
    that ``fold``, its step and last finite loss, and no scores (every ``iou`` and ``miou`` None)."""
    conf, wall_s = torch.zeros(num_classes, num_classes, dtype=torch.int64), 0.0
    for f, test in enumerate(held_out):
        test = np.asarray(test, dtype=np.int64)
        train = np.setdiff1d(np.arange(len(images)), test)
        log.info("few-shot fold %d/%d: training on %d images for %d steps, scoring %d", f + 1, len(held_out),
                 len(train), cfg.steps, len(test))
        model, history = train_segmentation(ArraySegmentation(images[train], masks[train]), num_classes, cfg, device,
                                      progress=False)
        wall_s += history["wall_s"]
        status = run_status(history["diverged"], on_divergence, f"few-shot validation fold {f + 1}")
        if status["status"] == "diverged":
            return {**status, "fold": f, "iou": [None] * num_classes, "miou": None, "wall_s": wall_s}
        conf += per_image_confusions(model, ArraySegmentation(images[test], masks[test]), num_classes, device,
                                     ignore_index=ignore_index).sum(0).cpu()
    return {**scores_from_confusion(conf, class_names), "status": "ok", "wall_s": wall_s}
