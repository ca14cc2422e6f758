"""DatasetGAN's evaluation protocol: checkpoint selection by k-fold cross-validation on the real test set.

The release trains DeepLabV3 on the synthetic set, keeps a checkpoint per
epoch, and scores it with ``test_deeplab_cross_validation.py``: the test images
(in sorted order) are cut into ``folds`` consecutive folds of
``len // folds`` images; for each fold, the checkpoint with the highest mIoU
on that fold (first one on ties) is scored on all the other images; the
result is the mean and (population) standard deviation of those scores over
the folds. Its mIoU is the mean over *all* classes of intersection / union
summed over the images, a class with no pixels in truth or prediction
counting 0 (:func:`release_miou`); the project's holdout mIoU leaves such
classes out. Here the checkpoints are the run's evenly spaced snapshots
(``downstream.snapshots``) and the images the test split in its order.
"""

from __future__ import annotations

import numpy as np


def release_miou(confusion: np.ndarray) -> float:
    """mIoU as the release computes it: ``mean_c I_c / (U_c + 1e-8)`` over every class."""
    conf = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    return float(np.mean(tp / (union + 1e-8)))


def cross_validate(confusions: np.ndarray, folds: int = 5, steps: list[int] | None = None) -> dict:
    """The protocol on per-image confusion matrices ``[snapshots, images, C, C]``.

    Returns the per-fold test mIoU, the snapshot chosen on each fold (its index,
    and its training step when ``steps`` are given), their mean and std."""
    confusions = np.asarray(confusions)
    if confusions.ndim != 4 or confusions.shape[2] != confusions.shape[3]:
        raise ValueError(f"need per-image confusions [snapshots, images, C, C], got {list(confusions.shape)}")
    n = confusions.shape[1]
    per_fold = n // folds
    if folds < 2 or per_fold < 1:
        raise ValueError(f"cannot cut {n} test images into {folds} folds")
    fold_miou, chosen = [], []
    for i in range(folds):
        val = np.zeros(n, bool)
        val[per_fold * i : per_fold * (i + 1)] = True
        val_scores = [release_miou(c[val].sum(0)) for c in confusions]
        best = int(np.argmax(val_scores))
        chosen.append(best)
        fold_miou.append(release_miou(confusions[best][~val].sum(0)))
    out = {"folds": folds, "images_per_fold": per_fold, "fold_miou": fold_miou, "chosen_snapshot": chosen,
           "mean": float(np.mean(fold_miou)), "std": float(np.std(fold_miou))}
    if steps is not None:
        out["chosen_step"] = [int(steps[c]) for c in chosen]
    return out
