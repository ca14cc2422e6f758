"""Reuse a BigGAN task's annotations for a VQGAN (BigDatasetGAN's second generator).

BigDatasetGAN labels VQGAN samples with the annotations made on BigGAN samples:
each annotated image is encoded into VQGAN codes, and the codes become the
sample's latent, so the VQGAN's decoder features of the reconstruction stand in
for the BigGAN's. That holds only as far as the reconstruction is the annotated
image, so :func:`reuse_annotations` measures it per image: the PSNR of the
reconstruction against the original and, given the simulated annotator, how well
its labels of the two agree. Images below a PSNR threshold are named in a warning.

The result is an ordinary :class:`~labelfactory.annotations.AnnotationSet`
(latents: the int64 code grids flattened to ``[N, h*w]``, images: the
reconstructions, masks and classes: the BigGAN task's, the VQGAN's hash), so
:func:`labelfactory.features.extract_features` re-renders it like any other and the
interpreters train on its features unchanged.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd

from . import toyworld
from .annotations import AnnotationSet
from .annotator import Annotator
from .generators.base import GeneratorBackend
from .quality import psnr, reconstruct

log = logging.getLogger(__name__)

DEFAULT_MIN_PSNR = 20.0  # dB; below it a reconstruction no longer shows the annotated object faithfully


def _check_inputs(ann: AnnotationSet, backend: GeneratorBackend) -> None:
    if not hasattr(backend, "encode"):
        raise ValueError(f"annotation reuse needs a VQGAN (a generator that encodes images), got {backend.arch}")
    images, masks = ann.images, ann.masks
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"annotated images must be uint8 [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    if masks.shape != images.shape[:3]:
        raise ValueError(f"masks {list(masks.shape)} do not match the annotated images {list(images.shape)}")
    h, w = images.shape[1:3]
    if (h, w) != (backend.resolution,) * 2:
        raise ValueError(f"annotated images are {h}x{w} but the VQGAN works at "
                         f"{backend.resolution}x{backend.resolution}")


def annotator_agreement(annotator: Annotator, original: np.ndarray, reconstructed: np.ndarray,
                        classes: np.ndarray, toy_classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the share of pixels whose part label the annotator gives both images
    alike, and the IoU of its two object masks (1 where both are empty)."""
    agree, iou = np.empty(len(original)), np.empty(len(original))
    for c in np.unique(classes):
        if not 0 <= c < len(toy_classes):
            raise ValueError(f"class {c} has no toy-world class for the annotator (toy_classes: {list(toy_classes)})")
        idx = np.flatnonzero(classes == c)
        a, b = annotator.label(original[idx], toy_classes[c]), annotator.label(reconstructed[idx], toy_classes[c])
        agree[idx] = (a == b).reshape(len(idx), -1).mean(1)
        fa, fb = (a > 0).reshape(len(idx), -1), (b > 0).reshape(len(idx), -1)
        inter, union = (fa & fb).sum(1), (fa | fb).sum(1)
        iou[idx] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return agree, iou


def reuse_annotations(ann: AnnotationSet, backend: GeneratorBackend, annotator: Annotator | None = None,
                      min_psnr: float = DEFAULT_MIN_PSNR, toy_classes: Sequence[str] = toyworld.CLASSES,
                      batch_size: int = 64) -> tuple[AnnotationSet, pd.DataFrame]:
    """Encode every annotated image with the VQGAN ``backend`` and decode its codes;
    returns the annotation set of the reconstructions and a per-image report
    (``id``, ``class``, ``psnr`` in dB, ``annotator_agreement`` and
    ``annotator_object_iou``, NaN without an ``annotator``). ``toy_classes`` names
    the toy-world class of each class id (for the annotator); images with a PSNR
    below ``min_psnr`` are logged as a warning."""
    _check_inputs(ann, backend)
    codes, recon = reconstruct(backend, ann.images, batch_size)
    p = psnr(ann.images, recon)
    agree = iou = np.full(len(ann), np.nan)
    if annotator is not None:
        agree, iou = annotator_agreement(annotator, ann.images, recon, np.asarray(ann.classes), toy_classes)
    low = [i for i, v in zip(ann.ids, p) if v < min_psnr]
    if low:
        log.warning("%d of %d reconstructions below %.1f dB PSNR: %s", len(low), len(ann), min_psnr, ", ".join(low))
    report = pd.DataFrame({"id": list(ann.ids), "class": np.asarray(ann.classes, dtype=np.int64), "psnr": p,
                           "annotator_agreement": agree, "annotator_object_iou": iou})
    reused = AnnotationSet(
        ids=list(ann.ids), seeds=ann.seeds.copy(), classes=ann.classes.copy(),
        latents=codes.reshape(len(codes), -1).astype(np.int64), images=recon, masks=ann.masks.copy(),
        labels=ann.labels, generator_hash=backend.generator_hash, truncation=1.0, noise="const",
    )
    return reused, report
