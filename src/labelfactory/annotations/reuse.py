"""Reuse another task's annotations for a VQGAN (BigDatasetGAN's second generator) or a diffusion model.

BigDatasetGAN labels VQGAN samples with the annotations made on BigGAN samples:
each annotated image is encoded into VQGAN codes, and the codes become the
sample's latent, so the VQGAN's decoder features of the reconstruction stand in
for the BigGAN's. That holds only as far as the reconstruction is the annotated
image, so :func:`reuse_annotations` measures it per image: the PSNR of the
reconstruction against the original and, given a reference annotator (any
object with ``label(images, class_name)``: the toy bench's simulated one, or a
lab's own model), how well its labels of the two agree. Images below a PSNR threshold are named in a warning.

A diffusion generator needs no reconstruction: its features are computed from
images (ddpm-segmentation's recipe), so :func:`reuse_images` hands it the annotated
images themselves (``source: images``), resized to its resolution where they differ.

The result is an ordinary :class:`~labelfactory.annotations.annotation_set.AnnotationSet`
(latents: the int64 code grids flattened to ``[N, h*w]``, images: the
reconstructions, masks and classes: the BigGAN task's, the VQGAN's hash), so
:func:`labelfactory.features.extract_features` re-renders it like any other and the
interpreters train on its features unchanged.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Protocol, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from labelfactory.annotations.annotation_set import AnnotationSet, load_annotation_set
from labelfactory.core.io import atomic_path, atomic_write_json
from labelfactory.core.provenance import describe_device
from labelfactory.generators.base import GeneratorBackend
from labelfactory.generators.vqgan import reconstruct

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
    if h != w:
        raise ValueError(f"annotated images are {h}x{w}; the VQGAN works on square images")


def resize_annotations(images: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (area averaging down, bilinear up) and masks (nearest) at ``size`` x ``size``,
    e.g. BigGAN-512's annotations for the 256-pixel ImageNet VQGAN."""
    if images.shape[1] == size:
        return images, masks
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    mode = "area" if size < images.shape[1] else "bilinear"
    x = F.interpolate(x, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    m = F.interpolate(torch.from_numpy(masks)[:, None].float(), size=(size, size), mode="nearest")
    return (x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy(),
            m[:, 0].to(torch.uint8).numpy())


ClassNames = Sequence[str] | Mapping[int, str]


class ReferenceAnnotator(Protocol):
    """What the reuse check needs of an annotator: part masks ``[N,H,W]`` of uint8
    images ``[N,H,W,3]`` of one class, named as the annotator knows it."""

    def label(self, images: np.ndarray, cls: str) -> np.ndarray: ...


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 images ``[N,H,W,C]`` (peak 255; inf where identical)."""
    if a.shape != b.shape or a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"PSNR needs two uint8 image stacks of one shape, got {a.dtype} {list(a.shape)} "
                         f"and {b.dtype} {list(b.shape)}")
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0**2 / mse)


def annotator_agreement(annotator: ReferenceAnnotator, original: np.ndarray, reconstructed: np.ndarray,
                        classes: np.ndarray, annotator_classes: ClassNames) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the share of pixels whose part label the annotator gives both images
    alike, and the IoU of its two object masks (1 where both are empty). ``annotator_classes``
    names the annotator's class of each class id (a list indexed by id, or ``{id: name}``)."""
    names = (dict(annotator_classes) if isinstance(annotator_classes, Mapping)
             else dict(enumerate(annotator_classes)))
    agree, iou = np.empty(len(original)), np.empty(len(original))
    for c in np.unique(classes):
        if int(c) not in names:
            raise ValueError(f"class {c} has no class name for the annotator (known: {names})")
        idx = np.flatnonzero(classes == c)
        a, b = annotator.label(original[idx], names[int(c)]), annotator.label(reconstructed[idx], names[int(c)])
        agree[idx] = (a == b).reshape(len(idx), -1).mean(1)
        fa, fb = (a > 0).reshape(len(idx), -1), (b > 0).reshape(len(idx), -1)
        inter, union = (fa & fb).sum(1), (fa | fb).sum(1)
        iou[idx] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return agree, iou


def reuse_annotations(ann: AnnotationSet, backend: GeneratorBackend, annotator: ReferenceAnnotator | None = None,
                      min_psnr: float = DEFAULT_MIN_PSNR, annotator_classes: ClassNames = (),
                      batch_size: int = 64) -> tuple[AnnotationSet, pd.DataFrame]:
    """Encode every annotated image with the VQGAN ``backend`` and decode its codes;
    returns the annotation set of the reconstructions and a per-image report
    (``id``, ``class``, ``psnr`` in dB, ``annotator_agreement`` and
    ``annotator_object_iou``, NaN without an ``annotator``). ``annotator_classes``
    names the annotator's class of each class id; images with a PSNR
    below ``min_psnr`` are logged as a warning. Annotations at another resolution than the
    VQGAN's are resized first (:func:`resize_annotations`); PSNR and agreement are measured there."""
    _check_inputs(ann, backend)
    images, masks = resize_annotations(ann.images, ann.masks, backend.resolution)
    codes, recon = reconstruct(backend, images, batch_size)
    p = psnr(images, recon)
    agree = iou = np.full(len(ann), np.nan)
    if annotator is not None:
        agree, iou = annotator_agreement(annotator, images, recon, np.asarray(ann.classes), annotator_classes)
    low = [i for i, v in zip(ann.ids, p) if v < min_psnr]
    if low:
        log.warning("%d of %d reconstructions below %.1f dB PSNR: %s", len(low), len(ann), min_psnr, ", ".join(low))
    report = pd.DataFrame({"id": list(ann.ids), "class": np.asarray(ann.classes, dtype=np.int64), "psnr": p,
                           "annotator_agreement": agree, "annotator_object_iou": iou})
    reused = AnnotationSet(
        ids=list(ann.ids), seeds=ann.seeds.copy(), classes=ann.classes.copy(),
        latents=codes.reshape(len(codes), -1).astype(np.int64), images=recon, masks=masks.copy(),
        labels=ann.labels, generator_hash=backend.generator_hash, truncation=1.0, noise="const",
    )
    return reused, report


def reuse_images(ann: AnnotationSet, backend: GeneratorBackend) -> tuple[AnnotationSet, pd.DataFrame]:
    """A diffusion generator's reuse: the annotated images and masks as they are (resized to
    its resolution where they differ), ``source: images``, so its features are computed from
    them; the report has the ``id``, ``class`` and whether the image was ``resized``."""
    if not hasattr(backend, "image_taps"):
        raise ValueError(f"reusing annotated images as they are needs a diffusion generator, got {backend.arch}")
    images, masks = resize_annotations(ann.images, ann.masks, backend.resolution)
    reused = AnnotationSet(
        ids=list(ann.ids), seeds=np.full(len(ann), -1, dtype=np.int64), classes=ann.classes.copy(),
        latents=np.zeros((len(ann), 0), np.float32), images=images, masks=masks, labels=ann.labels,
        generator_hash=backend.generator_hash, truncation=1.0, noise="const", source="images",
    )
    report = pd.DataFrame({"id": list(ann.ids), "class": np.asarray(ann.classes, dtype=np.int64),
                           "resized": np.full(len(ann), ann.resolution != backend.resolution)})
    return reused, report


def reuse_summary(report: pd.DataFrame, min_psnr: float = DEFAULT_MIN_PSNR) -> dict:
    """The reconstruction check in numbers: PSNR (mean, median, min), the annotator's
    agreement and object IoU (means, None without an annotator), and the images below ``min_psnr``."""
    def mean(col):
        v = report[col].dropna()
        return float(v.mean()) if len(v) else None

    p = report["psnr"]
    return {"n": int(len(report)), "min_psnr": float(min_psnr), "psnr_mean": float(p.mean()),
            "psnr_median": float(p.median()), "psnr_min": float(p.min()),
            "annotator_agreement_mean": mean("annotator_agreement"),
            "annotator_object_iou_mean": mean("annotator_object_iou"),
            "below_min_psnr": report.loc[p < min_psnr, "id"].tolist()}


def reuse_annotation_file(source: str | os.PathLike, backend: GeneratorBackend, out_h5: str | os.PathLike,
                          report_csv: str | os.PathLike, summary_json: str | os.PathLike,
                          annotator: ReferenceAnnotator | None = None, min_psnr: float = DEFAULT_MIN_PSNR,
                          annotator_classes: ClassNames = (), image_class: int | None = None) -> dict:
    """The annotation set at ``source`` reused by ``backend``: a VQGAN's reconstructions
    (:func:`reuse_annotations`, summary :func:`reuse_summary`) or a diffusion model's images
    (:func:`reuse_images`). ``image_class`` gives every image that generator class (a
    single-class task reusing an unconditional task's annotations). Writes the annotation set,
    the per-image report and the summary with the backend's ``device``
    (:func:`~labelfactory.core.provenance.describe_device`), each atomically."""
    ann = load_annotation_set(source)
    if image_class is not None:
        ann.classes = np.full(len(ann), image_class, dtype=np.int32)
    if hasattr(backend, "image_taps"):
        reused, report = reuse_images(ann, backend)
        summary = {"n": len(report), "mode": "images", "resolution": backend.resolution,
                   "resized": bool(report["resized"].any())}
    else:
        reused, report = reuse_annotations(ann, backend, annotator, min_psnr, annotator_classes)
        summary = {"mode": "reconstructions", **reuse_summary(report, min_psnr)}
    summary["device"] = describe_device(backend.device)
    with atomic_path(report_csv) as tmp:
        report.to_csv(tmp, index=False)
    atomic_write_json(summary_json, summary)
    reused.save(out_h5)
    if summary["mode"] == "images":
        log.info("reused %d annotated images as a diffusion model's input", summary["n"])
    else:
        log.info("reused %d annotations: PSNR %.1f dB mean (min %.1f), annotator agreement %s", summary["n"],
                 summary["psnr_mean"], summary["psnr_min"], summary["annotator_agreement_mean"])
    return summary
