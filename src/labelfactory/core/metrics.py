"""Segmentation scores from confusion matrices, and per-class loss weights: one implementation
for the interpreters (training and cross-validation), the downstream networks and the toy
bench's annotator."""

from __future__ import annotations

from typing import Sequence

import torch

IGNORE_INDEX = 255  # the mask value of pixels that take no part in loss or score


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``[C, C]`` int64 counts, rows the true class, columns the predicted one;
    pixels labelled ``ignore_index`` are left out, other out-of-range labels are an error."""
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    if t.numel() and (t.min() < 0 or t.max() >= num_classes or p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"labels or predictions outside 0..{num_classes - 1} (ignore index {ignore_index})")
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes).cpu()


def scores_from_confusion(confusion: torch.Tensor, class_names: Sequence[str] | None = None) -> dict:
    """Per-class IoU, mIoU and pixel accuracy from a confusion matrix.

    A class absent from both truth and prediction has no IoU (``None``) and is
    left out of the mean; a class only predicted, or only true, scores 0.
    ``foreground_iou`` is the class-agnostic IoU of "not class 0" (background).
    """
    conf = confusion.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = [float(tp[c] / union[c]) if union[c] > 0 else None for c in range(len(tp))]
    present = [v for v in iou if v is not None]
    total = float(conf.sum())
    fg_tp = float(conf[1:, 1:].sum())
    fg_union = fg_tp + float(conf[1:, 0].sum()) + float(conf[0, 1:].sum())
    out = {
        "iou": iou,
        "foreground_iou": fg_tp / fg_union if fg_union > 0 else None,
        "miou": sum(present) / len(present) if present else None,
        "pixel_accuracy": float(tp.sum()) / total if total else None,
        "confusion": confusion.tolist(),
    }
    if class_names is not None:
        if len(class_names) != len(iou):
            raise ValueError(f"{len(class_names)} class names for {len(iou)} classes")
        out["iou_by_class"] = dict(zip(class_names, iou))
    return out


def class_weights_from_counts(counts: torch.Tensor, balance: float) -> torch.Tensor | None:
    """Per-class loss weights that let small parts count: ``frequency ** -balance`` of each
    class, its frequency the share of its labelled pixels in ``counts`` ``[C]`` (0: uniform;
    1: every class weighs as much in total), scaled so that the mean weight per labelled pixel
    is 1; classes absent from ``counts`` get 0. Returns None for ``balance == 0`` (the
    unweighted loss, bit for bit)."""
    if balance == 0:
        return None
    counts = counts.double()
    freq = counts / counts.sum()
    weights = torch.where(counts > 0, freq.clamp_min(1e-12) ** -balance, torch.zeros_like(freq))
    return (weights / (freq * weights).sum()).float()


def class_weights(labels: torch.Tensor, num_classes: int, balance: float) -> torch.Tensor | None:
    """:func:`class_weights_from_counts` of the class ids in ``labels`` (ids outside
    ``0..num_classes-1``, e.g. :data:`IGNORE_INDEX`, are not counted)."""
    if balance == 0:
        return None
    labels = labels.long().flatten()
    counts = torch.bincount(labels[(labels >= 0) & (labels < num_classes)], minlength=num_classes)
    return class_weights_from_counts(counts, balance)
