"""The interpreter itself scored on real test images: ddpm-segmentation's evaluation of its DDPM rows.

A diffusion model's features are features of images, so its interpreter can label a
real photo directly (``train_interpreter.py``'s ``evaluation``): the model's taps of
the image, noised with the task's shared feature noise, go through every member and
the members' majority vote is the label map. :class:`InterpreterSegmenter` makes that
a segmentation model, so it is scored exactly as the downstream networks are
(:func:`~labelfactory.downstream.segmentation.evaluate_segmentation`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from labelfactory.annotations.annotation_set import load_annotation_set
from labelfactory.core.io import atomic_write_json
from labelfactory.core.provenance import describe_device
from labelfactory.downstream.data import IMAGENET_MEAN, IMAGENET_STD
from labelfactory.downstream.real import RealDataSpec, real_dataset
from labelfactory.downstream.segmentation import evaluate_segmentation
from labelfactory.generators.base import GeneratorBackend
from labelfactory.interpreters import Interpreter, interpreter_features
from labelfactory.synthesis.uncertainty import vote_labels

log = logging.getLogger(__name__)


class InterpreterSegmenter(nn.Module):
    """A diffusion ``backend`` and an ``interpreter`` trained on its taps as a segmentation model:
    normalised images ``[B,3,H,W]`` (H = W = the model's resolution) → one-hot scores ``[B,C,H,W]``
    of the members' majority vote (ties to the lowest class, as ``torch.mode``). A class-conditional
    model takes every image as class ``cls`` (a single-class task's)."""

    def __init__(self, backend: GeneratorBackend, interpreter: Interpreter, cls: int | None = None):
        super().__init__()
        if not hasattr(backend, "image_taps") or (backend.num_classes and cls is None):
            raise ValueError(f"scoring the interpreter on real images needs a diffusion model (which computes "
                             f"the taps of any image), unconditional or with the images' class; this is a "
                             f"{backend.arch} generator"
                             + (f" with {backend.num_classes} classes and no class" if backend.num_classes else ""))
        self.backend, self.interpreter = backend, interpreter
        self.cls = cls if backend.num_classes else None
        self.module = backend.module  # moved with the segmenter
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = (x * self.std + self.mean) * 2 - 1
        if images.shape[-2:] != (self.backend.resolution,) * 2:
            raise ValueError(f"real images are {images.shape[-2]}x{images.shape[-1]}, the diffusion model takes "
                             f"{self.backend.resolution}x{self.backend.resolution}: set downstream.real.resize")
        classes = None if self.cls is None else torch.full((len(images),), self.cls, device=images.device)
        features = interpreter_features(self.interpreter, self.backend.image_taps(images, classes), images)
        votes = vote_labels(self.interpreter.member_probabilities(features))
        return F.one_hot(votes, self.interpreter.num_classes).permute(0, 3, 1, 2).float()


INTERPRETER_SETTING = "interpreter"  # the main table's row of the interpreter itself


def score_interpreter(backend: GeneratorBackend, interpreter: Interpreter, annotations: str | Path,
                      real: RealDataSpec, out_json: str | Path, batch_size: int = 4, cls: int | None = None) -> dict:
    """Score ``interpreter`` (with ``backend``'s taps) on the real test split, labelled as the
    annotations at ``annotations`` are; writes and returns the scores (per-class IoU, mIoU,
    pixel accuracy, confusion) with the device and ``protocol: interpreter``, as the main table's
    one-run row ``setting: interpreter`` (trained on the annotations alone). ``cls``: the real
    images' class for a class-conditional model (a single-class task's)."""
    annotated = load_annotation_set(annotations)
    labels = annotated.labels
    test = real_dataset(real, "test", labels)
    scores = evaluate_segmentation(InterpreterSegmenter(backend, interpreter, cls), test, len(labels.names),
                                   backend.device, batch_size=batch_size, ignore_index=labels.ignore_index,
                                   class_names=labels.names)
    result = {**scores, "class_names": list(labels.names), "protocol": "interpreter",
              "setting": INTERPRETER_SETTING, "seed": 0, "num_train_images": len(annotated),
              "device": describe_device(backend.device)}
    atomic_write_json(out_json, result)
    log.info("interpreter: mIoU %.4f on %d real test images", result["miou"], len(test))
    return result


__all__ = ["INTERPRETER_SETTING", "InterpreterSegmenter", "score_interpreter"]
