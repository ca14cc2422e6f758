"""The simulated keypoint annotator: a keypoint detector that stands in for the human who clicks keypoints.

As :mod:`labelfactory.toybench.annotator` plays the person who paints part masks, a downstream
keypoint detector (:mod:`labelfactory.downstream.keypoint_detector`) trained on many toy-world
images of one class with exact keypoints clicks the keypoints of the generated images chosen
for annotation (:func:`annotate_folder`, :func:`make_keypoint_folder`).

Training scenes are rendered from seeds ``TRAIN_SEED0`` on and evaluation scenes from
``EVAL_SEED0`` on: inside the simulated annotator's ranges but a million seeds past their
starts, so they never meet the downstream experiment's real train and test images (the first
seeds of those ranges) nor the generators' training seeds.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from labelfactory.annotations.handout import IMAGE_SUFFIX, LATENT_SUFFIX, MANIFEST_FILE
from labelfactory.annotations.keypoints import KeypointSet, write_keypoints
from labelfactory.annotations.label_studio import read_manifest
from labelfactory.annotations.labels import KeypointSpec, load_labels
from labelfactory.downstream.keypoint_detector import predict_keypoints, train_keypoint_detector
from labelfactory.downstream.models import SegmentationNet
from labelfactory.downstream.real import RealDataSpec
from labelfactory.downstream.real_keypoints import KeypointImages, real_keypoint_images
from labelfactory.downstream.segmentation import SegTrainConfig
from labelfactory.toybench import annotator
from labelfactory.toybench import world as toyworld

TRAIN_SEED0 = annotator.TRAIN_SEED0 + 1_000_000  # toy-world seeds of keypoint annotator training images
EVAL_SEED0 = annotator.EVAL_SEED0 + 1_000_000  # toy-world seeds of its evaluation images


def keypoint_spec(cls: str) -> KeypointSpec:
    """The toy-world class's keypoints: names, flip pairs and skeleton."""
    return KeypointSpec(toyworld.keypoint_names(cls), toyworld.KEYPOINT_FLIP_PAIRS.get(cls, ()),
                        toyworld.KEYPOINT_SKELETON.get(cls, ()))


def _shipped_training() -> SegTrainConfig:
    """The shipped annotator's network and schedule (about 10 minutes on one CPU thread)."""
    return SegTrainConfig(model="deeplabv3_resnet18", steps=2000, batch_size=16, optimizer="adamw", lr=2e-3,
                          schedule="cosine", warmup_steps=100, threads=1, log_every=100,
                          model_options={"small_stem": True, "output_stride": 2, "width": 0.25,
                                         "atrous_rates": [1, 2, 3], "head_channels": 64})


@dataclass
class KeypointAnnotatorRecipe:
    """What the annotator learns from (``train_images`` scenes of ``cls`` at ``size`` pixels,
    heatmaps of ``sigma`` pixels), how (``train``), and on how many fresh scenes it is scored."""

    cls: str = "car"
    size: int = 32
    train_images: int = 20_000
    eval_images: int = 1000
    sigma: float = 1.5
    train: SegTrainConfig = field(default_factory=_shipped_training)

    def data(self) -> RealDataSpec:
        """The toy-world scenes of training (``train``) and evaluation (``test``)."""
        return RealDataSpec(type="toyworld", cls=self.cls, size=self.size, train_images=self.train_images,
                            train_seed_start=TRAIN_SEED0, test_images=self.eval_images, test_seed_start=EVAL_SEED0)

    def images(self, split: str) -> KeypointImages:
        return real_keypoint_images(self.data(), split, toyworld.keypoint_names(self.cls))


def train_keypoint_annotator(recipe: KeypointAnnotatorRecipe) -> tuple[SegmentationNet, dict]:
    """:func:`train_keypoint_detector` on the recipe's training scenes (flips swap the class's flip pairs)."""
    data = recipe.images("train")
    return train_keypoint_detector(data.images, data.keypoints, recipe.train, recipe.sigma,
                                   keypoint_spec(recipe.cls).flip_permutation())


def clicked_keypoints(model: SegmentationNet, images: np.ndarray) -> np.ndarray:
    """What the annotator clicks on ``images`` ``[N, S, S, 3]``: ``[N, K, 3]`` (x, y, v), each
    predicted point visible (v = 2) where it lies inside the image, else not labelled (v = 0: a
    peak refined onto the far edge, outside by COCO's pixel convention)."""
    pred = predict_keypoints(model, images)
    size = images.shape[1]
    inside = ((pred[..., :2] >= -0.5) & (pred[..., :2] < size - 0.5)).all(-1)
    return np.concatenate([pred[..., :2] * inside[..., None], 2.0 * inside[..., None]], -1).astype(np.float32)


def annotate_folder(samples_dir: str | Path, out_dir: str | Path, model: SegmentationNet,
                    spec: KeypointSpec) -> list[Path]:
    """Click the keypoints of every image ``<id>.image.png`` the manifest of ``samples_dir`` (a
    ``sample_for_annotation`` or annotation folder) lists; write ``<id>.keypoints.json`` to
    ``out_dir``. Returns the written paths."""
    samples_dir = Path(samples_dir)
    ids = list(read_manifest(samples_dir)["id"])
    images = np.stack([np.asarray(Image.open(samples_dir / f"{i}{IMAGE_SUFFIX}").convert("RGB")) for i in ids])
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return write_keypoints(out_dir, KeypointSet(ids, clicked_keypoints(model, images), spec))


def make_keypoint_folder(source: str | Path, out_dir: str | Path, model: SegmentationNet, cls: str,
                         who: str) -> int:
    """A keypoint-only annotation folder from the annotation folder ``source``: its manifest,
    images and latents (no masks), its ``labels.yaml``'s names and ignore index with the class's
    keypoints added (a comment says ``who`` labelled them), and one keypoints file per image.
    Returns the number of images."""
    source, out_dir = Path(source), Path(out_dir)
    labels, spec = load_labels(source / "labels.yaml"), keypoint_spec(cls)
    ids = list(read_manifest(source)["id"])
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / MANIFEST_FILE, out_dir / MANIFEST_FILE)
    for i in ids:
        for suffix in (IMAGE_SUFFIX, LATENT_SUFFIX):
            shutil.copyfile(source / f"{i}{suffix}", out_dir / f"{i}{suffix}")
    (out_dir / "labels.yaml").write_text(f"# {cls} keypoints (no masks), clicked by {who}\n"
                                         + yaml.safe_dump(replace(labels, keypoints=spec).as_dict(), sort_keys=False))
    annotate_folder(out_dir, out_dir, model, spec)
    return len(ids)
