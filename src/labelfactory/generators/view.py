"""A task's view of its generator: the truncation centre it needs, and the image the labels live on.

DatasetGAN's release does not label the generator's raw square output: car
renders 512² and keeps rows 64:448 (a 384x512 image), face's 1024² image and
feature taps are resized to 512², cat and bedroom stay 256². An
:class:`ImageView` says this per task (``image: {size, crop}`` in the config):

- ``size``: the square grid the image is resized to (bilinear,
  ``align_corners=False``, as the release's ``nn.Upsample``/``F.interpolate``).
  :class:`ViewedBackend` renders at that size and reports it as its
  ``resolution``, so the interpreters upsample (or downsample) every native tap
  to it, as the release does; the taps themselves stay at native resolution.
- ``crop``: the box ``[top, bottom, left, right]`` of that grid that is labelled.
  Masks and synthesised samples are the box; an annotation set keeps the whole
  grid with the pixels outside the box set to ``ignore_index``, so the
  interpreters train on exactly the box's pixels with features upsampled to the
  whole grid (the release's upsample-then-crop).

:func:`load_task_generator` is the one place the workflow loads a task's generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from labelfactory.generators.base import GeneratorBackend, Synthesis
from labelfactory.generators.loading import load_generator


@dataclass(frozen=True)
class ImageView:
    """Resize to ``size`` (None: the generator's resolution), then label the ``crop``
    box ``(top, bottom, left, right)`` of that grid (None: all of it)."""

    size: int | None = None
    crop: tuple[int, int, int, int] | None = None

    @classmethod
    def from_dict(cls, d: dict | None) -> "ImageView":
        d = d or {}
        crop = d.get("crop")
        return cls(d.get("size"), None if crop is None else tuple(int(v) for v in crop))

    def grid(self, resolution: int) -> int:
        """The side of the square grid rendered for a generator of ``resolution``."""
        return self.size or resolution

    def box(self, resolution: int) -> tuple[int, int, int, int]:
        s = self.grid(resolution)
        box = self.crop or (0, s, 0, s)
        top, bottom, left, right = box
        if not (0 <= top < bottom <= s and 0 <= left < right <= s):
            raise ValueError(f"image crop {list(box)} is not a box [top, bottom, left, right] inside the "
                             f"{s}x{s} image")
        return box

    def shape(self, resolution: int) -> tuple[int, int]:
        """(height, width) of the labelled image."""
        top, bottom, left, right = self.box(resolution)
        return bottom - top, right - left

    def cut(self, x, resolution: int, channels_last: bool = False):
        """The box of ``x`` (numpy or torch), whose last two axes (before a channel axis
        if ``channels_last``) are the grid's rows and columns."""
        top, bottom, left, right = self.box(resolution)
        return x[..., top:bottom, left:right, :] if channels_last else x[..., top:bottom, left:right]

    def pad(self, mask: np.ndarray, resolution: int, fill: int) -> np.ndarray:
        """A box-sized ``[H, W]`` mask placed on the whole grid, ``fill`` outside the box."""
        s = self.grid(resolution)
        top, bottom, left, right = self.box(resolution)
        out = np.full((s, s), fill, dtype=mask.dtype)
        out[top:bottom, left:right] = mask
        return out


def view_of(backend: GeneratorBackend) -> ImageView:
    """The view a backend renders (the identity for a plain backend)."""
    return getattr(backend, "view", None) or ImageView()


class ViewedBackend:
    """A backend that renders its images at the view's ``size``; everything else
    (latents, classes, taps, hash) is the wrapped backend's."""

    def __init__(self, inner: GeneratorBackend, view: ImageView):
        view.box(inner.resolution)  # a bad crop fails here, not mid-run
        self.inner, self.view = inner, view

    def __getattr__(self, name):
        return getattr(self.inner, name)

    @property
    def resolution(self) -> int:
        return self.view.grid(self.inner.resolution)

    def to(self, device) -> "ViewedBackend":
        self.inner.to(device)
        return self

    def synthesize(self, z, classes=None, truncation=1.0, noise="const", features=True, generator=None):
        out = self.inner.synthesize(z, classes, truncation, noise, features=features, generator=generator)
        images = out.images
        if images.shape[-1] != self.resolution:
            images = F.interpolate(images, size=self.resolution, mode="bilinear", align_corners=False)
        return Synthesis(images, out.features)

    # the base class's loops, bound here so that they call this synthesize
    _batches = GeneratorBackend._batches
    render = GeneratorBackend.render
    render_features = GeneratorBackend.render_features


def set_average_latent(backend: GeneratorBackend, path: str | Path, option: str) -> None:
    """Give ``backend`` the truncation centre in ``path`` (the release's ``avg_latent_stylegan1.npy``),
    refusing in one line naming ``option`` a checkpoint that holds its own."""
    if not hasattr(backend, "set_average_latent"):
        raise ValueError(f"{option} is for checkpoints that hold none (StyleGAN1 in DatasetGAN's layout); "
                         f"this {backend.arch} checkpoint has its own")
    backend.set_average_latent(np.load(path))


def set_truncation_cutoff(backend: GeneratorBackend, cutoff: int | None, option: str) -> None:
    """Truncate ``backend``'s layers below ``cutoff`` (StyleGAN1 in DatasetGAN's layout; None:
    its resolution's cut-off), refusing in one line naming ``option`` a generator without one."""
    if cutoff is None:
        return
    if not hasattr(backend, "set_truncation_cutoff"):
        raise ValueError(f"{option} is for StyleGAN1 checkpoints in DatasetGAN's layout; this {backend.arch} "
                         "checkpoint has no truncation cut-off")
    try:
        backend.set_truncation_cutoff(cutoff)
    except ValueError as e:
        raise ValueError(f"{option}: {e}") from None


def set_class_prompts(backend: GeneratorBackend, prompts: list[str] | None, guidance_scale: float | None,
                      option: str) -> None:
    """Give a text-conditioned backend (Stable Diffusion) the prompt of each class and its guidance
    scale, refusing in one line naming ``option`` prompts for another generator, or none for one."""
    takes = hasattr(backend, "set_class_prompts")
    if takes and not prompts:
        raise ValueError(f"{option}: a {backend.arch} checkpoint needs class prompts, one text per class")
    if not takes and (prompts is not None or guidance_scale is not None):
        raise ValueError(f"{option}: class prompts and guidance scale are for Stable Diffusion checkpoints; "
                         f"this {backend.arch} checkpoint is not one")
    if takes:
        try:
            backend.set_class_prompts(prompts, guidance_scale)
        except ValueError as e:
            raise ValueError(f"{option}: {e}") from None


def set_diffusion(backend: GeneratorBackend, settings: dict | None, option: str) -> None:
    """Give a diffusion backend its sampler, feature steps and class prompts (a task's ``diffusion``),
    refusing in one line naming ``option`` a generator that is not one or settings it cannot take."""
    settings = settings or {}
    set_class_prompts(backend, settings.get("class_prompts"), settings.get("guidance_scale"),
                      f"{option}.class_prompts")
    if not settings:
        return
    if not hasattr(backend, "set_sampling"):
        raise ValueError(f"{option} is for diffusion generators; this {backend.arch} checkpoint is not one")
    try:
        backend.set_sampling(settings["sampler"], settings["sampling_steps"], settings["eta"])
        backend.set_feature_steps(settings["feature_steps"] or backend.feature_steps, settings["feature_noise_seed"])
    except ValueError as e:
        raise ValueError(f"{option}: {e}") from None


def load_task_generator(weights: str | Path, device: str | torch.device = "cpu", truncation: float = 1.0,
                        average_latent: str | Path | None = None, image: dict | None = None,
                        task: str = "task", truncation_cutoff: int | None = None,
                        diffusion: dict | None = None) -> GeneratorBackend | ViewedBackend:
    """A task's generator: the checkpoint, its average latent where it holds none, its
    truncation cut-off where it has one, and its image view.

    ``average_latent`` (the release's ``avg_latent_stylegan1.npy``) is for checkpoints
    without one; truncation below 1 on such a checkpoint without it is refused here,
    in one line naming ``tasks.<task>.average_latent``. ``truncation_cutoff`` (StyleGAN1:
    the layers below it are truncated; None = 8 from 512 px up, else 7) likewise names
    ``tasks.<task>.truncation_cutoff`` on a generator without one, and ``diffusion`` (sampler
    and feature steps) ``tasks.<task>.diffusion`` on one that is not a diffusion model; a Stable
    Diffusion checkpoint needs ``tasks.<task>.diffusion.class_prompts``."""
    backend = load_generator(weights, device)
    set_truncation_cutoff(backend, truncation_cutoff, f"tasks.{task}.truncation_cutoff")
    set_diffusion(backend, diffusion, f"tasks.{task}.diffusion")
    if average_latent is not None:
        set_average_latent(backend, average_latent, f"tasks.{task}.average_latent")
    elif hasattr(backend, "set_average_latent") and truncation < 1:
        raise ValueError(f"tasks.{task}.average_latent: truncation {truncation:g} needs the average latent, which "
                         f"this {backend.arch} checkpoint does not hold (give the release's avg_latent_stylegan1.npy)")
    view = ImageView.from_dict(image)
    return backend if view == ImageView() else ViewedBackend(backend, view)


__all__ = ["ImageView", "ViewedBackend", "load_task_generator", "set_average_latent", "set_class_prompts",
           "set_diffusion", "set_truncation_cutoff", "view_of"]

