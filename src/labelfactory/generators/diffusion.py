"""What the diffusion backends (:mod:`.guided_diffusion`, :mod:`.diffusers_unet`) share.

A sample's latent is its initial noise x_T, drawn per seed; stochastic sampling
steps draw from a generator of the sample's own, so a sample does not depend on
its batch. Features are ddpm-segmentation's recipe: an image noised to x_t with
one seeded noise shared by every step and image, the UNet's chosen blocks at each
chosen step. They are features of *images*, so :meth:`DiffusionBackend.image_taps`
gives them for any image (annotated real photos, another generator's samples) as
:meth:`DiffusionBackend.synthesize` gives them for the model's own samples.
"""

from __future__ import annotations

import abc
import hashlib
from typing import Sequence

import numpy as np
import torch

from labelfactory.generators.base import GeneratorBackend, Synthesis

PAPER_STEP_FRACTIONS = (0.05, 0.15, 0.25)  # ddpm-segmentation's steps 50, 150, 250 of T = 1000


def latent_digest_seed(x: torch.Tensor) -> int:
    """A 63-bit seed from one sample's x_T: its stochastic steps' noise, independent of its batch."""
    return int.from_bytes(hashlib.sha256(x.detach().float().cpu().numpy().tobytes()).digest()[:8], "little") >> 1


class DiffusionBackend(GeneratorBackend):
    """A denoising UNet as a generator. Subclasses give ``latent_shape``, ``blocks`` (every tappable
    block, in the UNet's order), ``check_steps``, :meth:`sample` and :meth:`image_features`, and set
    ``feature_steps`` and ``feature_noise_seed``."""

    blocks: list
    feature_steps: list[int]
    feature_noise_seed: int

    @property
    def z_dim(self) -> int:
        return int(np.prod(self.latent_shape))

    @abc.abstractmethod
    def check_steps(self, steps: Sequence[int]) -> list[int]:
        """The steps as ints, refused in one line where one is outside the schedule."""

    @abc.abstractmethod
    def sample(self, x_t: torch.Tensor, y: torch.Tensor | None, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """The samples reached from x_T with the sampler set, step noise from one generator per sample."""

    @abc.abstractmethod
    def image_features(self, images: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None,
                       steps: Sequence[int], blocks: Sequence) -> dict[str, torch.Tensor]:
        """Taps of given images ``[N,C,H,W]`` in [-1, 1] noised with ``noise`` (``[N or 1, ...]``) at each step."""

    def set_feature_steps(self, steps: Sequence[int], noise_seed: int = 0) -> None:
        """The steps whose taps :meth:`feature_shapes` offers, and the seed of the shared noise."""
        self.feature_steps = self.check_steps(steps)
        self.feature_noise_seed = int(noise_seed)

    def feature_noise(self) -> torch.Tensor:
        """The ``[1, *latent_shape]`` noise every image is noised with at every feature step
        (ddpm-segmentation's ``share_noise``), from the CPU generator seeded by ``feature_noise_seed``."""
        return torch.randn((1, *self.latent_shape), generator=torch.Generator().manual_seed(self.feature_noise_seed))

    def image_taps(self, images: torch.Tensor, classes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The taps of :meth:`feature_shapes` on given images ``[N,C,H,W]`` in [-1, 1], noised with
        :meth:`feature_noise`: what :meth:`synthesize` gives for a sample, for any image."""
        return self.image_features(images, self.feature_noise().to(images.device), classes, self.feature_steps,
                                   self.blocks)

    def draw_latents(self, seeds, classes=None, truncation: float = 1.0, sampling: dict | None = None) -> np.ndarray:
        """x_T per seed: ``torch.randn`` of ``torch.Generator().manual_seed(seed)`` (as guided-diffusion's
        sampler draws it after ``torch.manual_seed(seed)``, and a diffusers pipeline given that generator)."""
        if sampling or truncation != 1.0:
            raise ValueError("diffusion latents come from seeds alone (no truncation or prior sampling options)")
        return np.stack([torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(s))).numpy()
                         for s in seeds]).astype(np.float32)

    def check_latents(self, z) -> np.ndarray:
        """x_T ``[N, *latent_shape]``, or flattened ``[N, z_dim]`` (as annotation sets store latents)."""
        z = np.asarray(z, dtype=np.float32)
        if z.ndim == 2 and z.shape[1] == self.z_dim:
            z = z.reshape(len(z), *self.latent_shape)
        if z.ndim != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"latents (x_T) must have shape [N, {', '.join(map(str, self.latent_shape))}], "
                             f"got {list(z.shape)}")
        return z

    def synthesize(self, z, classes=None, truncation=1.0, noise="const", features=True, generator=None) -> Synthesis:
        """Sample from x_T ``z`` with the sampler set, and with ``features`` the sample's
        :meth:`image_taps` (as ddpm-segmentation's ``generate_dataset.py`` takes them)."""
        if truncation != 1.0:
            raise ValueError("diffusion models have no truncation")
        if noise == "const":
            gens = [torch.Generator().manual_seed(latent_digest_seed(x)) for x in z]
        elif noise == "random" and generator is not None:
            seeds = torch.randint(0, 2 ** 62, (len(z),), generator=generator, device=generator.device)
            gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        else:
            raise ValueError(f"noise {noise!r}: diffusion sampling takes const (per latent) or random (seeded)")
        images = self.sample(z, classes, gens)
        if not features:
            return Synthesis(images, {})
        return Synthesis(images, self.image_taps(images.clamp(-1, 1), classes))


__all__ = ["DiffusionBackend", "PAPER_STEP_FRACTIONS", "latent_digest_seed"]
