"""The downstream experiment: what a labelled dataset is worth.

One segmentation network and schedule is trained per *setting* (where its
training images come from) and seed, then scored on held-out real images:

- ``few_shot``: the annotated generated images alone (the human's labels);
- ``synthetic``: every generated sample with the interpreter's labels;
- ``synthetic_filtered``: only the samples the uncertainty filter kept;
- ``synthetic_combined``: the kept samples of this task and of others with the
  same labels together (BigDatasetGAN's "BigGAN + VQGAN synthetic");
- ``synthetic_plus_annotations``: the kept samples and the annotated images,
  these repeated to make up ``annotation_share`` of the training items;
- ``synthetic_soft``: the kept samples with soft targets, the interpreter members'
  mean class probabilities (stored with ``synthesis.store_probabilities``), instead
  of their hard labels;
- ``fully_supervised``: real labelled images (the upper bound).

Real images come from a registered source (:mod:`labelfactory.downstream.real`).
With ``uncertain_pixels`` > 0 the synthetic settings ignore that fraction of each
generated image's pixels, the most uncertain ones (the shards' per-pixel JS divergence).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from labelfactory.annotations.annotation_set import load_annotation_set
from labelfactory.annotations.labels import LabelSet
from labelfactory.core.divergence import run_status
from labelfactory.core.io import atomic_write_json
from labelfactory.core.provenance import describe_device
from labelfactory.synthesis.filtering import read_manifest
from labelfactory.downstream.models import build_segmentation_model
from labelfactory.core.registry import Registry
from labelfactory.synthesis.dataset import SyntheticDataset
from labelfactory.synthesis.ignore import ignore_uncertain
from labelfactory.synthesis.shards import (
    LABELLER_DIVERGED,
    read_samples_with_probabilities,
    read_samples_with_probabilities_and_uncertainty,
    require_probabilities,
    require_uncertainty,
)
from labelfactory.downstream.class_aware import ClassAwareLabels
from labelfactory.downstream.cross_validation import cross_validate
from labelfactory.downstream import datasets  # noqa: F401  (registers the public datasets' readers)
from labelfactory.downstream.data import ArraySegmentation, ShardSegmentation, WithAnnotations
from labelfactory.downstream.real import RealDataSpec, real_dataset
from labelfactory.downstream.segmentation import (SegTrainConfig, evaluate_segmentation, load_model, load_snapshots, per_image_confusions,
                           run_record, save_model, train_segmentation)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SettingInputs:
    """Everything a setting may read; each setting uses its own part (``combined``: the
    manifests of other tasks whose kept samples join the task's in ``synthetic_combined``;
    ``annotation_share``: the annotations' share of the items of ``synthetic_plus_annotations``;
    ``uncertain_pixels``: the fraction of each generated image's pixels, the most uncertain,
    that the synthetic settings ignore, 0 none)."""

    annotations: str
    real: RealDataSpec | None = None
    manifest: str | None = None
    class_aware: ClassAwareLabels | None = None
    combined: tuple[str, ...] = ()
    annotation_share: float = 0.1
    uncertain_pixels: float = 0.0

    def __post_init__(self):
        if not 0 < self.annotation_share < 1:
            raise ValueError(f"annotation_share must lie in (0, 1), got {self.annotation_share}")
        if not 0 <= self.uncertain_pixels < 1:
            raise ValueError(f"uncertain_pixels must lie in [0, 1), got {self.uncertain_pixels}")

    def labels(self) -> LabelSet:
        """The label set the network learns: the annotations' own, or the class-aware one."""
        if self.class_aware is not None:
            return self.class_aware.label_set
        return load_annotation_set(self.annotations).labels


# The one list of setting names: the schema's enum (downstream.settings) is tested against it, and
# the order of registration below (weakest to strongest supervision) is the reports' row order.
SETTINGS: Registry[Callable[[SettingInputs, LabelSet], Dataset]] = Registry("downstream setting")


@SETTINGS.register("few_shot")
def few_shot(inputs: SettingInputs, labels: LabelSet) -> Dataset:
    ann = load_annotation_set(inputs.annotations)
    masks = ann.masks if inputs.class_aware is None else inputs.class_aware.apply(ann.masks, ann.classes)
    return ArraySegmentation(ann.images, masks)


def read_soft_targets(shard: str, indices: np.ndarray, fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Images and the members' mean class probabilities float16 ``[K,C,H,W]`` of the samples
    (:func:`~labelfactory.synthesis.shards.read_samples_with_probabilities`); with ``fraction``,
    the probabilities of each sample's most uncertain pixels set to 0, which the loss ignores
    (the pixels :func:`~labelfactory.synthesis.ignore.ignore_uncertain` picks)."""
    if not fraction:
        return read_samples_with_probabilities(shard, indices)
    images, probabilities, uncertainty = read_samples_with_probabilities_and_uncertainty(shard, indices)
    dropped = ignore_uncertain(np.zeros(uncertainty.shape, np.uint8), uncertainty, fraction, ignore_index=1)
    return images, np.where(dropped[:, None] == 1, np.float16(0), probabilities)


def _shards(inputs: SettingInputs, kept_only: bool, combined: tuple[str, ...] = (),
            soft: bool = False) -> ShardSegmentation:
    if inputs.manifest is None:
        raise ValueError("the synthetic settings need the filter's manifest")
    label_map = None if inputs.class_aware is None else inputs.class_aware.apply
    manifest = pd.concat([read_manifest(m) for m in (inputs.manifest, *combined)], ignore_index=True)
    if soft:
        if label_map is not None:
            raise ValueError("synthetic_soft trains on the interpreter's probabilities over the annotated "
                             "labels; it does not take class-aware labels (downstream.labels: class_aware)")
        samples = SyntheticDataset(manifest, kept_only=kept_only,
                                   reader=partial(read_soft_targets, fraction=inputs.uncertain_pixels))
        require_probabilities(list(dict.fromkeys(samples.shards)))  # fail now, not mid-training
        if inputs.uncertain_pixels:
            require_uncertainty(list(dict.fromkeys(samples.shards)))
    else:
        samples = SyntheticDataset(manifest, kept_only=kept_only, ignore_uncertain=inputs.uncertain_pixels)
    return ShardSegmentation(samples, label_map=label_map)


@SETTINGS.register("synthetic")
def synthetic(inputs: SettingInputs, labels: LabelSet) -> Dataset:
    return _shards(inputs, kept_only=False)


@SETTINGS.register("synthetic_filtered")
def synthetic_filtered(inputs: SettingInputs, labels: LabelSet) -> Dataset:
    return _shards(inputs, kept_only=True)


@SETTINGS.register("synthetic_combined")
def synthetic_combined(inputs: SettingInputs, labels: LabelSet) -> Dataset:
    if not inputs.combined:
        raise ValueError("synthetic_combined needs the manifests of the tasks to combine (downstream.combine)")
    return _shards(inputs, kept_only=True, combined=inputs.combined)


@SETTINGS.register("synthetic_plus_annotations")
def synthetic_plus_annotations(inputs: SettingInputs, labels: LabelSet) -> Dataset:
    return WithAnnotations(_shards(inputs, kept_only=True), few_shot(inputs, labels), inputs.annotation_share)


@SETTINGS.register("synthetic_soft")
def synthetic_soft(inputs: SettingInputs, labels: LabelSet) -> Dataset:
    return _shards(inputs, kept_only=True, soft=True)


@SETTINGS.register("fully_supervised")
def fully_supervised(inputs: SettingInputs, labels: LabelSet) -> Dataset:
    if inputs.real is None:
        raise ValueError("the fully supervised setting needs the real dataset's spec")
    return real_dataset(inputs.real, "train", labels)


def train_downstream(setting: str, inputs: SettingInputs, cfg: SegTrainConfig, out: str | Path,
                     device: str = "cpu", on_divergence: str = "record") -> dict:
    """Train one run of ``setting`` and save it (``out``: ``.safetensors`` plus
    its ``.json`` sidecar, which records the setting, training-set size, device and
    ``status``: ``ok``, or ``diverged`` with the step and last finite loss, see
    :func:`~labelfactory.core.divergence.run_status`)."""
    labels = inputs.labels()
    upstream = labeller_divergence(inputs)
    if upstream is not None:  # its synthetic data was never labelled: the run is recorded, not trained
        return record_unlabelled_run(setting, upstream, cfg, out, labels.names, device)
    dataset = SETTINGS.get(setting)(inputs, labels)
    log.info("%s: %d training images, seed %d", setting, len(dataset), cfg.seed)
    model, history = train_segmentation(dataset, len(labels.names), cfg, device)
    status = run_status(history["diverged"], on_divergence, f"{setting} seed {cfg.seed}")
    info = {**run_record(setting, cfg.seed, len(dataset), history, device), **status}
    save_model(model, out, cfg, len(labels.names), metrics=info, class_names=labels.names,
               snapshots=history["snapshots"])
    return info


def labeller_divergence(inputs: SettingInputs) -> dict | None:
    """The divergence record of the interpreter that should have labelled the run's synthetic data
    (its manifests' ``labeller_diverged``, see :func:`~labelfactory.synthesis.shards.write_diverged_shard`),
    else None."""
    for manifest in filter(None, (inputs.manifest, *inputs.combined)):
        record = read_manifest(manifest).attrs.get(LABELLER_DIVERGED)
        if record is not None:
            return record
    return None


def record_unlabelled_run(setting: str, upstream: dict, cfg: SegTrainConfig, out: str | Path,
                          class_names: Sequence[str], device: str = "cpu") -> dict:
    """Save a run whose interpreter diverged as ``status: diverged`` (``what: interpreter``, its
    step and last finite loss, the record under ``upstream``) with untrained weights, so the
    evaluation and the tables count it as diverged."""
    log.warning("%s seed %d: the interpreter that labels its data diverged in training; recorded as diverged, "
                "not trained", setting, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_segmentation_model(cfg.model, len(class_names), **cfg.model_options)
    info = {"setting": setting, "seed": cfg.seed, "num_train_images": 0, "wall_s": 0.0, "threads": cfg.threads,
            "final_loss": None, "device": describe_device(device, cfg.threads), "status": "diverged",
            "what": "interpreter", "step": upstream.get("step"), "last_finite_loss": upstream.get("last_finite_loss"),
            "upstream": upstream}
    save_model(model, out, cfg, len(class_names), metrics=info, class_names=class_names)
    return info


PROTOCOLS = ("holdout", "cross_validation", "validation")


def evaluate_downstream(model_path: str | Path, annotations: str | Path, real: RealDataSpec, out_json: str | Path,
                        device: str = "cpu", class_aware: ClassAwareLabels | None = None,
                        protocol: str = "holdout", folds: int = 5) -> dict:
    """Score a saved run on the real test split; writes and returns the scores
    (per-class IoU, mIoU, foreground IoU, pixel accuracy, confusion) with the run's
    setting and seed.

    ``protocol="cross_validation"`` is DatasetGAN's: the run's snapshot is chosen
    per fold of the test images (:func:`~labelfactory.downstream.cross_validation.cross_validate`);
    ``miou`` is then the mean over folds (``cross_validation`` has the folds,
    ``miou_final`` the final weights' holdout mIoU, the other scores are the final weights').
    ``protocol="validation"`` is ddpm-segmentation's (``train_deeplab.py``'s ``test``): the snapshot
    with the highest mIoU on the real *train* split (the first of equals) is scored on the test
    split; every score is that snapshot's (``validation``: each snapshot's step and train-split
    mIoU and the chosen step; ``miou_final``: the final weights' test mIoU)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    labels = SettingInputs(str(annotations), class_aware=class_aware).labels()
    model, meta = load_model(model_path, device)
    if meta["metrics"].get("status") == "diverged":  # nothing to score: the tables count it as diverged
        result = {**meta["metrics"], "class_aware": class_aware is not None, "protocol": protocol}
        atomic_write_json(out_json, result)
        log.warning("%s seed %s diverged in training: not scored", result["setting"], result["seed"])
        return result
    test = real_dataset(real, "test", labels)
    scores = evaluate_segmentation(model, test, len(labels.names), device, ignore_index=labels.ignore_index,
                                   class_names=labels.names)
    result = {**meta["metrics"], **scores, "class_names": list(labels.names), "class_aware": class_aware is not None,
              "protocol": protocol}
    steps = meta.get("snapshot_steps") or []
    if protocol != "holdout" and len(steps) < 2:
        raise ValueError(f"{model_path}: the {protocol} protocol chooses among snapshots, but the run kept "
                         f"{len(steps)} (set downstream.snapshots > 1)")
    if protocol == "validation":
        validation = real_dataset(real, "train", labels)
        val_miou = [evaluate_segmentation(snap, validation, len(labels.names), device,
                                          ignore_index=labels.ignore_index)["miou"]
                    for _, snap in load_snapshots(model_path, device)]
        chosen = steps[int(np.argmax(val_miou))]
        result["miou_final"] = result["miou"]
        result.update(evaluate_segmentation(load_model(model_path, device, snapshot=chosen)[0], test,
                                            len(labels.names), device, ignore_index=labels.ignore_index,
                                            class_names=labels.names))
        result["validation"] = {"steps": list(steps), "miou": val_miou, "chosen_step": chosen,
                                "images": len(validation)}
    if protocol == "cross_validation":
        confusions = torch.stack([per_image_confusions(snap, test, len(labels.names), device,
                                                       ignore_index=labels.ignore_index)
                                  for _, snap in load_snapshots(model_path, device)])
        result["cross_validation"] = cross_validate(confusions.numpy(), folds, steps)
        result["miou_final"], result["miou"] = result["miou"], result["cross_validation"]["mean"]
    atomic_write_json(out_json, result)
    log.info("%s seed %s: mIoU %.4f on %d real test images", result["setting"], result["seed"], result["miou"],
             len(test))
    return result


def seg_config(options: dict, seed: int, threads: int | None) -> SegTrainConfig:
    """The training config of one run from the config's ``downstream`` section."""
    keys = {"model", "model_options", "steps", "batch_size", "optimizer", "lr", "weight_decay", "schedule",
            "poly_power", "warmup_steps", "augment", "snapshots", "class_balance"}
    cfg = SegTrainConfig.from_dict({k: v for k, v in options.items() if k in keys})
    extra = {k: options[k] for k in ("weights", "backbone_weights") if options.get(k)}
    return replace(cfg, seed=seed, threads=threads, model_options={**cfg.model_options, **extra})
