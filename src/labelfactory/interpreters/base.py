"""The interpreter contract: what DatasetGAN's MLP ensemble and BigDatasetGAN's conv
interpreter both are, and what synthesis, active selection and the ablations rely on.

An interpreter labels every pixel of a generated image from the generator's
feature maps. It is an ensemble: :meth:`Interpreter.member_probabilities`
returns each member's class probabilities, from which synthesis takes the label
(vote or mean) and the uncertainty (the members' Jensen–Shannon divergence).

A new interpreter subclasses :class:`Interpreter`, fills the class attributes,
implements the abstract methods and registers with ``@INTERPRETERS.register(name)``
(the name is also the schema's ``interpreter.type`` and the sidecar's
``interpreter``); ``docs/extending.md`` walks through one.
"""

from __future__ import annotations

import json
from abc import ABCMeta, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from labelfactory.core.io import atomic_path, atomic_write_json
from labelfactory.core.provenance import describe_device
from labelfactory.core.registry import Registry
from labelfactory.features import FeatureStore, FeatureStoreError

# synthesis.precision: inference in float32 (exact), or bfloat16/float16 matmuls (for GPUs; labels
# equal float32's except at near ties, tests/test_fast_labelling.py); probabilities are float32
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

Progress = Callable[[int, int, float, float], None]  # (member, step, loss, pixel accuracy)


@dataclass(frozen=True, eq=False)
class TrainingData:
    """What an interpreter trains on: the features in ``store`` of the annotated images
    ``ids`` with their ``masks`` uint8 ``[N, H, W]`` (pixels equal to ``ignore_index``
    skipped, the rest labels ``0..num_classes - 1``).

    ``ids`` defaults to all the store's images, in store order; ``layers`` (default: all)
    is resolved to the chosen taps in the store's (generator) order. ``generator_hash``,
    when given, is the generator the masks were drawn on (features of another are refused);
    ``label_names`` one name per class. ``classes`` (one per image) and ``class_embedding``
    (the generator's ``[n_classes, d]`` table) are for class-conditional interpreters
    (``Interpreter.class_conditional``); the others ignore them. ``images`` (uint8
    ``[N, H, W, 3]``, the annotated images as rendered) are what the ``rgb`` extra input reads.

    Construction refuses features that do not belong to the masks and masks with unknown
    labels, so every ``TrainingData`` is consistent with its store.
    """

    store: FeatureStore
    masks: np.ndarray
    num_classes: int
    ignore_index: int = 255
    ids: Sequence[str] | None = None
    layers: Sequence[str] | None = None
    generator_hash: str | None = None
    label_names: Sequence[str] | None = None
    classes: np.ndarray | Sequence[int] | None = None
    class_embedding: torch.Tensor | None = None
    images: np.ndarray | None = None

    def __post_init__(self) -> None:
        def set_(name: str, value) -> None:  # frozen: normalise the fields once, here
            object.__setattr__(self, name, value)

        set_("masks", np.asarray(self.masks))
        set_("ids", list(self.store.ids) if self.ids is None else list(self.ids))
        set_("layers", self._checked_layers())

    @classmethod
    def from_annotations(cls, store: FeatureStore, annotation_set, class_embedding: torch.Tensor | None = None
                         ) -> "TrainingData":
        """The annotated samples of ``annotation_set`` (an ``AnnotationSet``, or any object with
        ``masks``, ``images``, ``labels.names``, ``labels.ignore_index``, ``ids``, ``generator_hash``
        and ``classes``) with their features in ``store``. Their ``classes`` are kept only with a
        ``class_embedding`` to condition on (an unconditional generator has none)."""
        names = list(annotation_set.labels.names)
        return cls(store, annotation_set.masks, len(names), ignore_index=annotation_set.labels.ignore_index,
                   ids=annotation_set.ids, generator_hash=annotation_set.generator_hash, label_names=names,
                   classes=None if class_embedding is None else annotation_set.classes,
                   class_embedding=class_embedding, images=annotation_set.images)

    def _checked_layers(self) -> list[str]:
        """Refuse features that do not belong to the masks, and masks with unknown labels; returns
        the chosen layers in the store's (generator) order."""
        store, masks, num_classes, ids = self.store, self.masks, self.num_classes, self.ids
        generator_hash, label_names, ignore_index = self.generator_hash, self.label_names, self.ignore_index
        if generator_hash is not None and generator_hash != store.generator_hash:
            raise FeatureStoreError(
                f"{store.path}: features come from generator {store.generator_hash[:16]} but the annotations were "
                f"made on generator {generator_hash[:16]}; re-extract the features with the annotated generator")
        if masks.ndim != 3:
            raise ValueError(f"masks must be [N, H, W], got shape {list(masks.shape)}")
        if masks.shape[1:] != (store.resolution, store.resolution):
            raise FeatureStoreError(
                f"{store.path}: resolution mismatch: features are for {store.resolution}x{store.resolution} images "
                f"but the masks are {masks.shape[1]}x{masks.shape[2]}")
        if len(ids) != len(masks):
            raise ValueError(f"{len(masks)} masks but {len(ids)} image ids")
        if self.images is not None and (self.images.dtype != np.uint8 or self.images.shape != (*masks.shape, 3)):
            raise ValueError(f"images must be uint8 {[*masks.shape, 3]} (one per mask), got "
                             f"{self.images.dtype} {list(self.images.shape)}")
        stored = set(store.ids)
        missing = [i for i in ids if i not in stored]
        if missing:
            raise FeatureStoreError(f"{store.path}: no features for annotated images {missing[:5]}")
        chosen = set(store.layers if self.layers is None else self.layers)
        unknown = sorted(chosen - set(store.layers))
        if unknown or not chosen:
            raise ValueError(f"unknown feature layers {unknown}; the store has {store.layers}")
        if num_classes < 2 or (label_names is not None and len(label_names) != num_classes):
            raise ValueError(f"need >= 2 classes and one name per class, got {num_classes} and {label_names}")
        annotated = masks != ignore_index
        bad = np.unique(masks[annotated & (masks >= num_classes)])
        if bad.size:
            raise ValueError(f"mask values {bad.tolist()} are neither labels 0..{num_classes - 1} "
                             f"nor ignore_index {ignore_index}")
        return [l for l in store.layers if l in chosen]


class Interpreter(nn.Module, metaclass=ABCMeta):
    """A trained ensemble of per-pixel classifiers on generator features.

    Class attributes: ``name`` (registry and sidecar name), ``config_class`` (the
    dataclass of its ``interpreter`` config block), ``format_version`` (of what
    :meth:`save` writes) and ``class_conditional`` (whether :meth:`fit` takes the
    annotated samples' ``classes`` and the generator's ``class_embedding`` from its
    :class:`TrainingData`; the others ignore them).
    Instance attributes every implementation sets: ``layers`` (the feature taps it
    reads, in the store's order), ``num_classes``, ``resolution`` (of its labels),
    ``generator_hash`` (the generator it was trained on), ``label_names`` and
    ``compute_dtype`` (the precision of inference, one of :data:`PRECISIONS`).
    ``extra_inputs`` names the per-pixel inputs it reads besides the taps
    (:data:`EXTRA_INPUTS`); with ``rgb`` its ``features`` carry the generated image
    under :data:`IMAGE` (:func:`interpreter_features` puts it there). ``run``
    (:func:`keep_finite_members`) says how its training ended and on what device; its
    :data:`RUN_KEYS` go into the sidecar as they are.

    Synthesis and active selection call only ``member_probabilities`` and read
    ``num_classes`` (and ``generator_hash`` and ``extra_inputs`` where present), so a
    test may hand them any object with those.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    format_version: ClassVar[int]
    class_conditional: ClassVar[bool] = False

    layers: list[str]
    num_classes: int
    resolution: int
    generator_hash: str
    label_names: list[str] | None
    compute_dtype: torch.dtype
    extra_inputs: tuple[str, ...] = ()
    run: dict

    @classmethod
    @abstractmethod
    def fit(cls, data: TrainingData, cfg=None, device: torch.device | str = "cpu",
            progress: Progress | None = None, on_divergence: str = "record") -> "Interpreter":
        """Train on ``data`` (checked when it was built: read ``data.layers``, resolved to the
        store's order); ``cfg`` is a ``config_class`` (None: its defaults).
        ``progress(member, step, loss, accuracy)`` reports the training curves. A member whose
        loss turns non-finite stops there; :func:`keep_finite_members` says what becomes of it
        under ``on_divergence: record``, ``fail`` raises
        :class:`~labelfactory.core.divergence.Diverged` at the first such member."""

    @abstractmethod
    def member_probabilities(self, features: Mapping[str, torch.Tensor], classes: torch.Tensor | None = None
                             ) -> torch.Tensor:
        """Probabilities ``[M, B, C, R, R]`` of every member for generator features
        ``{layer: [B, C_l, h, w]}`` (``classes`` ``[B]`` for a class-conditional
        interpreter, ignored otherwise); switches the ensemble to eval mode."""

    @abstractmethod
    def metadata(self) -> dict:
        """What the JSON sidecar records: at least ``interpreter`` (= ``name``),
        ``format_version``, ``config``, ``layers``, ``num_classes``, ``label_names``,
        ``resolution``, ``generator_hash``, the members' seeds and training history, and ``run``."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "Interpreter":
        """Read what :meth:`save` wrote (with :func:`read_interpreter`); in eval mode."""

    def save(self, path: str | Path) -> None:
        """Weights to ``path`` (safetensors) and :meth:`metadata` to its JSON sidecar, each atomically."""
        save_interpreter(self, path, self.metadata())


# -- members whose training diverged -------------------------------------------------
# the sidecar keys of Interpreter.run: how training ended (core.divergence) and the device it ran on
RUN_KEYS = ("status", "step", "last_finite_loss", "what", "dropped_members", "device")


def keep_finite_members(members: Sequence[nn.Module], histories: Sequence, device: torch.device | str
                        ) -> tuple[list[nn.Module], list, dict]:
    """The members to keep, their histories and the ensemble's ``run``, from members trained on
    ``device`` whose histories' ``diverged`` is None or the
    :func:`~labelfactory.core.divergence.divergence` record of a member stopped at a non-finite loss.

    While one member stayed finite the ensemble is those members, ``status: ok``, the others
    dropped (their histories under ``dropped_members``): fewer members, but every one finite.
    When every member diverged it keeps them all as they stopped, with ``status: diverged`` and
    the first member's step and last finite loss: :func:`load_interpreter` refuses it, so
    synthesis and labelling stop there in one line. ``run["device"]``:
    :func:`~labelfactory.core.provenance.describe_device`."""
    finite = [h.diverged is None for h in histories]
    run = {"dropped_members": [asdict(h) for h, ok in zip(histories, finite) if not ok],
           "device": describe_device(device)}
    if not any(finite):
        return list(members), list(histories), {**histories[0].diverged, **run, "dropped_members": []}
    return ([m for m, ok in zip(members, finite) if ok], [h for h, ok in zip(histories, finite) if ok],
            {"status": "ok", **run})


def run_record(meta: Mapping) -> dict:
    """An interpreter's ``run`` from its sidecar (``status: ok`` for sidecars written before it was recorded)."""
    return {"status": "ok", **{k: meta[k] for k in RUN_KEYS if k in meta}}


# -- per-channel normalisation of the taps (interpreter option `normalize`) ---------------
_STATS_CHUNK = 1 << 22  # values per float64 temporary of channel_statistics
STD_FLOOR = 1e-6  # tap channels spread less than this (constant ones) are divided by it, not by their std


def channel_statistics(images: Iterable[Sequence[torch.Tensor]], floor: float = STD_FLOOR
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 mean and standard deviation ``[D]`` of every channel over all pixels of all
    ``images``, each a sequence of ``[C_k, P_k]`` chunks (channels by pixels) whose channels,
    concatenated, are the ``D`` channels. Accumulated in float64, combining the centred moments
    of each chunk (Chan et al.), so offsets far beyond the spread lose no precision; the
    (population) standard deviation is floored at ``floor``."""
    count = mean = m2 = None
    for chunks in images:
        n_i, mean_i, m2_i = [], [], []
        for x in chunks:
            step = max(1, _STATS_CHUNK // max(1, x.shape[1]))
            for c in x.split(step):
                c = c.double()
                mu = c.mean(1)
                mean_i.append(mu)
                m2_i.append((c - mu[:, None]).square_().sum(1))
                n_i.append(torch.full_like(mu, c.shape[1]))
        n_i, mean_i, m2_i = torch.cat(n_i), torch.cat(mean_i), torch.cat(m2_i)
        if count is None:
            count, mean, m2 = n_i, mean_i, m2_i
            continue
        total = count + n_i
        delta = mean_i - mean
        mean = mean + delta * (n_i / total)
        m2 = m2 + m2_i + delta.square() * (count * n_i / total)
        count = total
    if count is None:
        raise ValueError("no images to compute channel statistics on")
    return mean.float(), (m2 / count).sqrt().clamp_min(floor).float()


def standardise_maps(maps: Sequence[torch.Tensor], mean: torch.Tensor, std: torch.Tensor) -> list[torch.Tensor]:
    """Float32 ``(x - mean) / std`` per channel of maps ``[B, C_k, h, w]`` whose channels,
    concatenated, are those of ``mean`` and ``std`` ``[D]``."""
    dims = [x.shape[1] for x in maps]
    return [(x.float() - m[:, None, None]) / s[:, None, None]
            for x, m, s in zip(maps, mean.split(dims), std.split(dims))]


def check_tap_statistics(normalize: bool, dim: int, mean: torch.Tensor | None, std: torch.Tensor | None) -> None:
    """Refuse tap statistics that do not go with ``normalize`` or with the ``dim`` tap channels."""
    if not normalize:
        if mean is not None or std is not None:
            raise ValueError("tap statistics given but normalize is off")
        return
    if mean is None or std is None or mean.shape != (dim,) or std.shape != (dim,):
        raise ValueError(f"normalize needs the tap channels' mean and std, each of shape [{dim}], got "
                         f"{None if mean is None else list(mean.shape)} and {None if std is None else list(std.shape)}")


# -- extra per-pixel inputs (interpreter option `extra_inputs`) ----------------------
# channels of each: the image's own RGB, and its pixel coordinates (row, column), each in [-1, 1]
EXTRA_INPUTS = {"rgb": 3, "coords": 2}
IMAGE = "<image>"  # the features key of the image `rgb` reads: float [B, 3, R, R] in [-1, 1], or uint8 [B, R, R, 3]


def check_extra_inputs(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple, refused unless each is one of :data:`EXTRA_INPUTS`, at most once."""
    names = tuple(names)
    unknown = [n for n in names if n not in EXTRA_INPUTS]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"extra_inputs must be distinct names of {sorted(EXTRA_INPUTS)}, got {list(names)}")
    return names


def rgb_channels(images: torch.Tensor) -> torch.Tensor:
    """Float32 ``[B, 3, H, W]`` in [-1, 1] of uint8 images ``[B, H, W, 3]`` (as stored), or of the
    generator's float output ``[B, 3, H, W]`` quantised first as the shards store it
    (:func:`~labelfactory.generators.base.images_to_uint8`), so training on stored images and
    labelling fresh ones see the same values."""
    if images.dtype == torch.uint8:
        pixels = images.permute(0, 3, 1, 2).float()
    else:
        pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5 + 0.5).floor_().clamp_(0, 255)
    return pixels / 127.5 - 1


def coordinate_maps(resolution: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[1, 2, R, R]`` float32: every pixel's row and column, the first and last pixel centres at -1 and 1."""
    t = torch.linspace(-1, 1, resolution, device=device)
    return torch.stack(torch.meshgrid(t, t, indexing="ij"))[None]


def extra_input_maps(names: Sequence[str], batch: int, resolution: int, images: torch.Tensor | None,
                     device: torch.device | str) -> torch.Tensor | None:
    """The extra inputs ``names`` of ``batch`` images, float32 ``[B, E, R, R]`` on ``device``
    (channels in the order of ``names``; :func:`rgb_channels` of ``images`` for ``rgb``); None
    without names."""
    if not names:
        return None
    parts = []
    for name in names:
        if name == "coords":
            parts.append(coordinate_maps(resolution, device).expand(batch, -1, -1, -1))
            continue
        if images is None:
            raise ValueError("this interpreter reads the image's RGB (extra_inputs: rgb): give the generated "
                             f"images, e.g. as features[{IMAGE!r}] (interpreter_features)")
        x = rgb_channels(images).to(device)
        if x.shape != (batch, 3, resolution, resolution):
            raise ValueError(f"the rgb input needs {batch} images of {resolution}x{resolution} (the labels' "
                             f"resolution), got {list(images.shape)}")
        parts.append(x)
    return torch.cat(parts, 1)


def training_inputs(data: TrainingData, names: Sequence[str], device: torch.device | str
                    ) -> torch.Tensor | None:
    """The extra inputs ``names`` of the annotated images of ``data``, ``[N, E, R, R]`` (None without)."""
    if "rgb" in names and data.images is None:
        raise ValueError("extra_inputs: rgb trains on the annotated images, but the training data has none")
    images = None if data.images is None else torch.from_numpy(np.ascontiguousarray(data.images))
    return extra_input_maps(names, len(data.masks), data.store.resolution, images, device)


def interpreter_features(interpreter, features: Mapping[str, torch.Tensor], images: torch.Tensor
                         ) -> Mapping[str, torch.Tensor]:
    """``features`` with the generated ``images`` under :data:`IMAGE` when ``interpreter`` reads
    their RGB (its ``extra_inputs``), else as they are."""
    return {**features, IMAGE: images} if "rgb" in getattr(interpreter, "extra_inputs", ()) else features


INTERPRETERS: Registry[type[Interpreter]] = Registry("interpreter")


def interpreter_divergence(path) -> dict | None:
    """The divergence record of the interpreter at ``path`` (its sidecar's ``run``) when every
    member diverged in training, else None."""
    run = run_record(read_sidecar(path))
    return run if run["status"] == "diverged" else None


def load_interpreter(interpreter_type: str | None, path, device: torch.device | str = "cpu",
                     precision: str = "float32") -> Interpreter:
    """A trained interpreter of ``interpreter_type`` (None: the one its sidecar names) from
    ``path``, set to infer in ``precision``; refused if every member diverged in training."""
    meta = read_sidecar(path)
    diverged = interpreter_divergence(path)
    if diverged is not None:
        raise ValueError(f"{path}: every member of this interpreter diverged in training (its {diverged.get('what')} "
                         f"became non-finite at step {diverged.get('step')}, last finite loss "
                         f"{diverged.get('last_finite_loss')}): nothing to label with; retrain it, e.g. with a lower "
                         f"interpreter.lr")
    if interpreter_type is None:
        interpreter_type = meta.get("interpreter")
        if interpreter_type not in INTERPRETERS:
            raise ValueError(f"{sidecar_path(path)}: names no known interpreter type ({interpreter_type!r}; "
                             f"known: {', '.join(INTERPRETERS)})")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    interpreter = INTERPRETERS.get(interpreter_type).load(path, device)
    interpreter.compute_dtype = PRECISIONS[precision]
    return interpreter


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar beside a weights file: ``x.safetensors`` → ``x.json``."""
    return Path(path).with_suffix(".json")


def save_interpreter(module: nn.Module, path: str | Path, metadata: Mapping) -> None:
    """``module``'s weights to ``path`` (safetensors) and ``metadata`` to its JSON sidecar, each atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    atomic_write_json(sidecar_path(path), metadata)


def read_sidecar(path: str | Path) -> dict:
    """The JSON sidecar of the interpreter weights at ``path``."""
    meta_path = sidecar_path(path)
    try:
        return json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_path}: unreadable interpreter sidecar ({e})") from e


def read_interpreter(path: str | Path, interpreter: str, format_version: int) -> tuple[dict, dict]:
    """The sidecar and weights :func:`save_interpreter` wrote for an ``interpreter`` of ``format_version``."""
    meta_path, meta = sidecar_path(path), read_sidecar(path)
    if meta.get("interpreter") != interpreter or meta.get("format_version") != format_version:
        raise ValueError(f"{meta_path}: not a {interpreter!r} interpreter of format version {format_version}")
    return meta, load_file(str(path))
