"""Stable Diffusion folders as a generator backend (arch ``"stable-diffusion"``): DatasetDM's setting.

A folder as ``StableDiffusionPipeline.save_pretrained`` writes it: ``unet/`` (a
``UNet2DConditionModel``), ``vae/`` (``AutoencoderKL``), ``text_encoder/`` (transformers'
``CLIPTextModel``), ``tokenizer/`` (``CLIPTokenizer``) and ``scheduler/``, named by the folder
or by its ``model_index.json``; nothing is downloaded. Every part is diffusers' or
transformers' own class, read with its own ``from_pretrained`` and rebuilt from the configs
the canonical sidecar keeps (the tokenizer's files too, as text); the canonical tensors are
the three networks' state dicts under ``unet.``, ``vae.`` and ``text_encoder.``.

- **Classes are text prompts**: a task gives one prompt per class id (``class_prompts``,
  :meth:`StableDiffusionBackend.set_class_prompts`); each is encoded once by the text
  encoder as the pipeline encodes a prompt, and the empty prompt likewise for
  classifier-free guidance (``guidance_scale`` > 1, the pipeline's 7.5 by default).
- **Sampling** as ``StableDiffusionPipeline`` does it from given ``latents`` x_T (the VAE
  latents ``[4, H/8, W/8]``): ``ddpm`` runs the folder's scheduler, ``ddim`` a
  ``DDIMScheduler`` from its config (with ``eta``), K steps; the image is the VAE decoding
  of the final latent divided by the VAE's ``scaling_factor``.
- **Features** (DatasetDM / ddpm-segmentation): the image VAE-encoded (the latent
  distribution's mean times ``scaling_factor``: deterministic), noised with the scheduler's
  ``add_noise`` at each chosen training step with one shared noise, the UNet run with the
  class's prompt embedding; forward hooks keep ``mid_block`` / ``up_blocks.N``, taps
  ``t{step}.{block}``.
"""

from __future__ import annotations

import inspect
import json
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from labelfactory.generators.base import GENERATORS, load_strict
from labelfactory.generators.checkpoints import FORMATS, CheckpointError, FormatReader, RawCheckpoint
from labelfactory.generators.diffusers_taps import DiffusersUNetTaps

ARCH = "stable-diffusion"
NETWORKS = ("unet", "vae", "text_encoder")
PARTS = (*NETWORKS, "tokenizer", "scheduler")
DEFAULT_GUIDANCE = 7.5  # StableDiffusionPipeline's guidance_scale
WEIGHTS = {"unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
           "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
           "text_encoder": ("model.safetensors", "pytorch_model.bin")}
CONFIGS = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
           "tokenizer": "tokenizer_config.json", "scheduler": "scheduler_config.json"}
VOLATILE = ("transformers_version", "architectures", "dtype", "torch_dtype")  # not the model's architecture


def plain_config(cfg: dict) -> dict:
    """A saved config without its bookkeeping (versions, names, dtype), the class name kept."""
    return {k: v for k, v in cfg.items() if (not k.startswith("_") or k == "_class_name") and k not in VOLATILE}


def build_networks(arch_config: dict) -> torch.nn.ModuleDict:
    """The UNet, VAE and text encoder from their configs (random weights, to be loaded)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    for part, cls in (("unet", "UNet2DConditionModel"), ("vae", "AutoencoderKL")):
        if arch_config[part].get("_class_name", cls) != cls:
            raise ValueError(f"{part} is a {arch_config[part]['_class_name']}, not a {cls}")
    return torch.nn.ModuleDict({"unet": UNet2DConditionModel.from_config(arch_config["unet"]),
                                "vae": AutoencoderKL.from_config(arch_config["vae"]),
                                "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(arch_config["text_encoder"]))})


def build_tokenizer(files: dict[str, str]):
    """transformers' ``CLIPTokenizer`` from the text of its folder's files."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
        return CLIPTokenizer.from_pretrained(tmp)


def build_scheduler(config: dict, ddim: bool):
    """The folder's scheduler (``ddim``: a ``DDIMScheduler`` from its config), corrected as
    ``StableDiffusionPipeline`` corrects older configs: ``steps_offset`` 1, ``clip_sample`` off."""
    import diffusers

    cls = diffusers.DDIMScheduler if ddim else getattr(diffusers, config.get("_class_name", ""), None)
    if cls is None or not hasattr(cls, "step"):
        raise ValueError(f"unknown diffusers scheduler {config.get('_class_name')!r}")
    scheduler = cls.from_config(config)
    fixes = {k: v for k, v in (("steps_offset", 1), ("clip_sample", False)) if scheduler.config.get(k, v) != v}
    return cls.from_config({**plain_config(dict(scheduler.config)), **fixes}) if fixes else scheduler


@GENERATORS.register(ARCH)
class StableDiffusionBackend(DiffusersUNetTaps):
    """A ``UNet2DConditionModel`` on a VAE's latents, conditioned on the class's text prompt."""

    arch = ARCH

    def __init__(self, module: torch.nn.ModuleDict, arch_config: dict, generator_hash: str | None = None):
        super().__init__(module, arch_config, generator_hash)
        cfg = module["unet"].config
        if cfg.time_cond_proj_dim is not None or cfg.class_embed_type is not None or cfg.addition_embed_type:
            raise ValueError("only text-conditioned UNets are supported (no time_cond_proj_dim, class or "
                             "addition embeddings)")
        self.setup_unet(arch_config)
        self.vae_scale = 2 ** (len(module["vae"].config.block_out_channels) - 1)
        self.tokenizer = build_tokenizer(arch_config["tokenizer"])
        self.prompts: list[str] = []
        self.guidance_scale = DEFAULT_GUIDANCE
        self.set_sampling("ddpm", min(50, self.train_steps))  # the pipeline's 50 steps

    @classmethod
    def from_tensors(cls, arch_config, tensors, generator_hash=None):
        if set(arch_config) != set(PARTS):
            raise ValueError(f"stable-diffusion config needs {', '.join(PARTS)}, got {sorted(arch_config)}")
        build_scheduler(arch_config["scheduler"], ddim=False)
        module = load_strict(build_networks(arch_config), tensors, "Stable Diffusion")
        return cls(module, arch_config, generator_hash)

    # -- properties ---------------------------------------------------------------------
    @property
    def unet(self):
        return self.module["unet"]

    @property
    def vae(self):
        return self.module["vae"]

    @property
    def resolution(self) -> int:
        return self.size * self.vae_scale

    @property
    def num_classes(self) -> int:
        """One class per text prompt (0 until :meth:`set_class_prompts`)."""
        return len(self.prompts)

    # -- settings -------------------------------------------------------------------------
    def set_class_prompts(self, prompts: Sequence[str], guidance_scale: float | None = None) -> None:
        """The text prompt of each class id, and the classifier-free guidance scale (None: 7.5)."""
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("class prompts must be a non-empty list of strings, one per class")
        scale = DEFAULT_GUIDANCE if guidance_scale is None else float(guidance_scale)
        if scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {scale:g}")
        self.prompts, self.guidance_scale = list(prompts), scale

    # -- computation ----------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """``[N, 77, d]`` text embeddings, as the pipeline's ``encode_prompt`` makes them."""
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        encoder = self.module["text_encoder"]
        mask = tok.attention_mask.to(self.device) if getattr(encoder.config, "use_attention_mask", False) else None
        return encoder(tok.input_ids.to(self.device), attention_mask=mask)[0]

    def class_context(self, y: torch.Tensor | None) -> torch.Tensor:
        """The prompt embedding of each sample's class."""
        if not self.prompts:
            raise ValueError("a Stable Diffusion generator needs its class prompts (class_prompts / --prompts)")
        if y is None:
            raise ValueError("a Stable Diffusion generator needs each sample's class (its prompt)")
        return self.encode_prompts([self.prompts[i] for i in y.tolist()])

    def sample(self, x_t: torch.Tensor, y: torch.Tensor | None, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """The pipeline's loop from the latents x_T (classifier-free guidance above scale 1), VAE-decoded."""
        context = self.class_context(y)
        guided = self.guidance_scale > 1
        if guided:
            context = torch.cat([self.encode_prompts([""]).expand_as(context), context])
        scheduler = build_scheduler(self.arch_config["scheduler"], ddim=self.sampler == "ddim")
        scheduler.set_timesteps(self.sampling_steps, device=x_t.device)
        takes = inspect.signature(scheduler.step).parameters
        extra = {k: v for k, v in (("generator", list(generators)), ("eta", self.eta)) if k in takes}
        x = x_t * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(torch.cat([x, x]) if guided else x, t)
            eps = self.unet(x_in, t, encoder_hidden_states=context).sample
            if guided:
                uncond, cond = eps.chunk(2)
                eps = uncond + self.guidance_scale * (cond - uncond)
            x = scheduler.step(eps, t, x, **extra).prev_sample
        return self.vae.decode(x / self.vae.config.scaling_factor).sample

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[N, 3, H, W]`` in [-1, 1] → VAE latents (the distribution's mean × ``scaling_factor``)."""
        if tuple(images.shape[1:]) != (3, self.resolution, self.resolution):
            raise ValueError(f"images must be [N, 3, {self.resolution}, {self.resolution}], got {list(images.shape)}")
        return self.vae.encode(images).latent_dist.mean * self.vae.config.scaling_factor

    def image_features(self, images: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None,
                       steps: Sequence[int], blocks: Sequence[str]) -> dict[str, torch.Tensor]:
        """Taps of images ``[N,3,H,W]`` in [-1, 1], their VAE latents noised with ``noise``
        (``[N or 1, *latent_shape]``) at each step, the UNet given each image's class prompt."""
        steps, blocks = self.check_steps(steps), self.check_blocks(blocks)
        if tuple(noise.shape[1:]) != self.latent_shape or noise.shape[0] not in (1, images.shape[0]):
            raise ValueError(f"noise must be [N or 1, {', '.join(map(str, self.latent_shape))}] (the VAE latents' "
                             f"shape), got {list(noise.shape)}")
        context = self.class_context(y)
        latents = self.encode_images(images)
        scheduler = build_scheduler(self.arch_config["scheduler"], ddim=True)  # add_noise: the training schedule
        return self.noised_taps(latents, noise, steps, blocks, scheduler,
                                lambda x_t, t: self.unet(x_t, t, encoder_hidden_states=context))


# --- the folder format ------------------------------------------------------------------
def folder_of(path: Path) -> Path:
    """The pipeline folder of ``path`` (itself, or the folder of its ``model_index.json``)."""
    return path.parent if path.is_file() else path


def is_stable_diffusion_folder(path: Path) -> bool:
    """A folder (or its ``model_index.json``) whose index names a VAE or a text encoder, or a folder
    without an index that has ``vae/`` or ``text_encoder/``."""
    path = Path(path)
    if path.is_file() and path.name != "model_index.json":
        return False
    index = folder_of(path) / "model_index.json"
    if not index.is_file():
        return path.is_dir() and ((path / "vae").is_dir() or (path / "text_encoder").is_dir())
    try:
        kinds = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(kinds, dict) and ("vae" in kinds or "text_encoder" in kinds)


def missing_parts(path: Path) -> list[str]:
    """The configs and weights a Stable Diffusion folder lacks."""
    missing = [f"{part}/{name}" for part, name in CONFIGS.items() if not (path / part / name).is_file()]
    missing += [f"{part}/{' or '.join(names)}" for part, names in WEIGHTS.items()
                if not any((path / part / n).is_file() for n in names)]
    return missing


def read_stable_diffusion_folder(path: str | Path) -> RawCheckpoint:
    """A Stable Diffusion pipeline folder (or its ``model_index.json``) → the three networks'
    float32 tensors, with every part's config (and the tokenizer's files) as the architecture."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel
    from transformers.utils import logging as hf_logging

    path = folder_of(Path(path))
    missing = missing_parts(path)
    if missing:
        raise CheckpointError(f"{path}: Stable Diffusion layout lacks {', '.join(missing)}")
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a command's error output stays one line
    try:
        nets = {"unet": UNet2DConditionModel.from_pretrained(path / "unet", local_files_only=True),
                "vae": AutoencoderKL.from_pretrained(path / "vae", local_files_only=True),
                "text_encoder": CLIPTextModel.from_pretrained(path / "text_encoder", local_files_only=True)}
        config = {part: plain_config(json.loads((path / part / CONFIGS[part]).read_text()))
                  for part in (*NETWORKS, "scheduler")}
        config["tokenizer"] = {f.name: f.read_text() for f in sorted((path / "tokenizer").iterdir()) if f.is_file()}
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable Stable Diffusion folder ({type(e).__name__}: {e})") from e
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    tensors = {f"{part}.{k}": v.detach().float() if v.is_floating_point() else v.detach()
               for part, net in nets.items() for k, v in net.state_dict().items()}
    return RawCheckpoint(ARCH, config, tensors, "stable-diffusion")


FORMATS.register("stable-diffusion")(FormatReader(is_stable_diffusion_folder, read_stable_diffusion_folder))

__all__ = ["StableDiffusionBackend", "read_stable_diffusion_folder"]
