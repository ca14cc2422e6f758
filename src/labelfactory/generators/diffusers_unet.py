"""diffusers ``UNet2DModel`` pipeline folders as a generator backend (arch ``"diffusers-unet"``).

A folder as ``DDPMPipeline.save_pretrained`` writes it: ``unet/`` (``config.json`` +
``diffusion_pytorch_model.safetensors`` or ``.bin``) and ``scheduler/``
(``scheduler_config.json``), named by the folder or by its ``model_index.json`` (the
file a config's ``url`` names, as the workflow fetches files); nothing is downloaded. The model and schedulers are
diffusers' own classes, built from the configs the canonical sidecar keeps.

- **Sampling** as diffusers' pipelines do it, from a given x_T: ``ddpm`` runs the
  folder's scheduler (``DDPMPipeline``), ``ddim`` a ``DDIMScheduler`` from its config
  (``DDIMPipeline``, with ``eta``), each for K inference steps; class-conditional
  UNets (``num_class_embeds``) get the class as ``class_labels``. Stochastic steps
  draw from one generator per sample (seeded by a digest of its x_T, or by the
  run's seed), as the pipelines do with a list of generators.
- **Features** (the ddpm-segmentation recipe on a diffusers UNet): the image is
  noised with the scheduler's ``add_noise`` at each chosen training step with one
  noise for every step, the UNet runs once per step and forward hooks keep the
  outputs of the named blocks (``mid_block``, ``up_blocks.N``); taps are named
  ``t{step}.{block}``, for each step, for each block in the UNet's order.

The Stable Diffusion layout (``UNet2DConditionModel`` + VAE + text encoder) is read by
:mod:`.stable_diffusion`: this format does not claim such a folder, and refuses it when named.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Sequence

import torch

from labelfactory.generators.base import GENERATORS, load_strict
from labelfactory.generators.checkpoints import FORMATS, CheckpointError, FormatReader, RawCheckpoint
from labelfactory.generators.diffusers_taps import DiffusersUNetTaps
from labelfactory.generators.stable_diffusion import is_stable_diffusion_folder

ARCH = "diffusers-unet"
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def _config(cfg: dict) -> dict:
    """A diffusers config without its bookkeeping (``_diffusers_version``…), the class name kept."""
    return {k: v for k, v in cfg.items() if not k.startswith("_") or k == "_class_name"}


def _scheduler(config: dict, ddim: bool):
    import diffusers

    cls = diffusers.DDIMScheduler if ddim else getattr(diffusers, config.get("_class_name", ""), None)
    if cls is None or not hasattr(cls, "step"):
        raise ValueError(f"unknown diffusers scheduler {config.get('_class_name')!r}")
    return cls.from_config(config)


@GENERATORS.register(ARCH)
class DiffusersUNetBackend(DiffusersUNetTaps):
    """A diffusers ``UNet2DModel`` with its scheduler."""

    arch = ARCH

    def __init__(self, module, arch_config: dict, generator_hash: str | None = None):
        super().__init__(module, arch_config, generator_hash)
        if module.config.class_embed_type is not None:
            raise ValueError(f"class_embed_type {module.config.class_embed_type!r}: only num_class_embeds classes "
                             "are supported")
        self.setup_unet(arch_config)
        self.set_sampling("ddpm", self.train_steps)

    @classmethod
    def from_tensors(cls, arch_config, tensors, generator_hash=None):
        from diffusers import UNet2DModel

        if set(arch_config) != {"unet", "scheduler"}:
            raise ValueError(f"diffusers-unet config needs unet and scheduler, got {sorted(arch_config)}")
        if arch_config["unet"].get("_class_name", "UNet2DModel") != "UNet2DModel":
            raise ValueError(f"unet is a {arch_config['unet']['_class_name']}, not a UNet2DModel")
        _scheduler(arch_config["scheduler"], ddim=False)
        module = UNet2DModel.from_config(arch_config["unet"])
        return cls(load_strict(module, tensors, "diffusers UNet2DModel"), arch_config, generator_hash)

    # -- properties ---------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return self.size

    @property
    def num_classes(self) -> int:
        return int(self.module.config.num_class_embeds or 0)

    # -- computation ----------------------------------------------------------------------
    def _unet(self, x, t, y):
        return self.module(x, t, class_labels=y).sample

    def sample(self, x_t: torch.Tensor, y: torch.Tensor | None, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """The pipeline's loop from x_T, one generator per sample for stochastic steps."""
        scheduler = _scheduler(self.arch_config["scheduler"], ddim=self.sampler == "ddim")
        scheduler.set_timesteps(self.sampling_steps)
        takes = inspect.signature(scheduler.step).parameters  # deterministic schedulers (PNDM) take no generator
        extra = {k: v for k, v in (("generator", list(generators)), ("eta", self.eta)) if k in takes}
        x = x_t
        for t in scheduler.timesteps:
            x = scheduler.step(self._unet(x, t, y), t, x, **extra).prev_sample
        return x

    def image_features(self, images: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None,
                       steps: Sequence[int], blocks: Sequence[str]) -> dict[str, torch.Tensor]:
        """Taps of given images ``[N,C,H,W]`` in [-1, 1] noised with ``noise`` (``[N or 1, ...]``) at each step."""
        steps, blocks = self.check_steps(steps), self.check_blocks(blocks)
        if tuple(images.shape[1:]) != self.latent_shape or noise.shape[1:] != images.shape[1:] \
                or noise.shape[0] not in (1, images.shape[0]):
            raise ValueError(f"images must be [N, {', '.join(map(str, self.latent_shape))}] and noise [N or 1, "
                             f"...] of the same size, got {list(images.shape)} and {list(noise.shape)}")
        scheduler = _scheduler(self.arch_config["scheduler"], ddim=False)
        return self.noised_taps(images, noise, steps, blocks, scheduler, lambda x_t, t: self._unet(x_t, t, y))


# --- the folder format ------------------------------------------------------------------
def is_diffusers_folder(path: Path) -> bool:
    """A pipeline folder, or its ``model_index.json`` (a file, which a config's ``url`` can name),
    that is not a Stable Diffusion one (:mod:`.stable_diffusion` reads those)."""
    path = Path(path)
    if is_stable_diffusion_folder(path):
        return False
    if path.name == "model_index.json" and path.is_file():
        return True
    return path.is_dir() and any((path / p).exists() for p in ("model_index.json", "unet", "scheduler"))


def read_diffusers_folder(path: str | Path) -> RawCheckpoint:
    """A ``UNet2DModel`` pipeline folder (or its ``model_index.json``) → its UNet tensors, with both
    configs as the architecture."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    index = path / "model_index.json"
    if index.exists():
        kinds = json.loads(index.read_text())
        if "vae" in kinds or "text_encoder" in kinds:
            raise CheckpointError(f"{path}: a Stable Diffusion layout (UNet2DConditionModel + VAE + text encoder) "
                                  "is read as format stable-diffusion, not diffusers (a UNet2DModel pipeline folder)")
    unet_cfg, sched_cfg = path / "unet" / "config.json", path / "scheduler" / "scheduler_config.json"
    weights = [path / "unet" / w for w in WEIGHT_FILES if (path / "unet" / w).exists()]
    missing = [str(p.relative_to(path)) for p in (unet_cfg, sched_cfg) if not p.exists()]
    if not weights:
        missing.append("unet/" + " or unet/".join(WEIGHT_FILES))
    if missing:
        raise CheckpointError(f"{path}: diffusers folder lacks {', '.join(missing)}")
    try:
        if weights[0].suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(weights[0]))
        else:
            tensors = torch.load(weights[0], map_location="cpu", weights_only=True)
        config = {"unet": _config(json.loads(unet_cfg.read_text())),
                  "scheduler": _config(json.loads(sched_cfg.read_text()))}
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable diffusers folder ({type(e).__name__}: {e})") from e
    return RawCheckpoint(ARCH, config, tensors, "diffusers")


FORMATS.register("diffusers")(FormatReader(is_diffusers_folder, read_diffusers_folder))

__all__ = ["DiffusersUNetBackend", "read_diffusers_folder"]
