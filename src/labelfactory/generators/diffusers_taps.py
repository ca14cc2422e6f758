"""What the diffusers backends share (:mod:`.diffusers_unet`'s ``UNet2DModel`` and
:mod:`.stable_diffusion`'s ``UNet2DConditionModel``): the tappable blocks of a diffusers UNet,
their shapes, and the checks of steps, blocks and sampling settings."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from labelfactory.generators.diffusion import PAPER_STEP_FRACTIONS, DiffusionBackend

SAMPLERS = ("ddpm", "ddim")


class DiffusersUNetTaps(DiffusionBackend):
    """A backend on a square diffusers UNet (:attr:`unet`) whose ``mid_block`` and ``up_blocks.N``
    are the tappable blocks, with the training steps of its scheduler config and K-step sampling."""

    @property
    def unet(self):
        return self.module

    def setup_unet(self, arch_config: dict) -> None:
        """Size, training steps, blocks and the default feature steps from the UNet and scheduler configs."""
        cfg = self.unet.config
        if isinstance(cfg.sample_size, (list, tuple)) and cfg.sample_size[0] != cfg.sample_size[1]:
            raise ValueError(f"only square UNets are supported, got sample_size {cfg.sample_size}")
        self.size = int(cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0])
        self.train_steps = int(arch_config["scheduler"].get("num_train_timesteps", 1000))
        self.blocks = ["mid_block"] + [f"up_blocks.{i}" for i in range(len(self.unet.up_blocks))]
        self.feature_steps = [min(self.train_steps - 1, round(f * self.train_steps)) for f in PAPER_STEP_FRACTIONS]
        self.feature_noise_seed = 0

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.unet.config.in_channels, self.size, self.size)

    def block_shapes(self) -> dict[str, tuple[int, int, int]]:
        """``(C, h, w)`` of each tappable block's output (on the UNet's grid)."""
        n, last = len(self.unet.up_blocks), self.unet.config.block_out_channels[-1]
        shapes = {"mid_block": (last, self.size >> (n - 1), self.size >> (n - 1))}
        for i, block in enumerate(self.unet.up_blocks):
            r = (self.size >> (n - 1 - i)) * (2 if block.upsamplers else 1)
            shapes[f"up_blocks.{i}"] = (block.resnets[-1].out_channels, r, r)
        return shapes

    def feature_shapes(self) -> dict[str, tuple[int, int, int]]:
        shapes = self.block_shapes()
        return {f"t{t}.{b}": shapes[b] for t in self.feature_steps for b in self.blocks}

    # -- settings -------------------------------------------------------------------------
    def check_steps(self, steps: Sequence[int]) -> list[int]:
        bad = [int(t) for t in steps if not 0 <= int(t) < self.train_steps]
        if bad or not steps:
            raise ValueError(f"diffusion steps {bad or 'none'} are outside the schedule [0, {self.train_steps})")
        return [int(t) for t in steps]

    def check_blocks(self, blocks: Sequence[str]) -> list[str]:
        bad = [b for b in blocks if b not in self.blocks]
        if bad or not blocks:
            raise ValueError(f"unknown UNet blocks {bad or 'none'}; this UNet's are {', '.join(self.blocks)}")
        return [b for b in self.blocks if b in set(blocks)]

    def set_sampling(self, sampler: str, steps: int | str, eta: float = 0.0) -> None:
        """``ddpm`` (the folder's scheduler) or ``ddim`` (``DDIMScheduler`` from its config), K steps."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r} (one of {', '.join(SAMPLERS)})")
        if eta < 0 or (sampler == "ddpm" and eta):
            raise ValueError(f"eta must be >= 0 and only for ddim, got {eta} with {sampler}")
        if not str(steps).isdigit() or not 1 <= int(steps) <= self.train_steps:
            raise ValueError(f"sampling steps must be a count K in [1, {self.train_steps}], got {steps!r}")
        self.sampler, self.sampling_steps, self.eta = sampler, int(steps), float(eta)


    def noised_taps(self, x0: torch.Tensor, noise: torch.Tensor, steps: Sequence[int], blocks: Sequence[str],
                    scheduler, run: Callable[[torch.Tensor, torch.Tensor], object]) -> dict[str, torch.Tensor]:
        """``t{step}.{block}``: the outputs of ``blocks`` (forward hooks on :attr:`unet`) when ``run(x_t, t)``
        runs the UNet on ``x0`` noised with ``noise`` by ``scheduler.add_noise``, for each step in turn."""
        kept: dict[str, torch.Tensor] = {}
        hooks = [self.unet.get_submodule(b).register_forward_hook(
            lambda _m, _i, out, b=b: kept.__setitem__(b, out)) for b in blocks]
        out = {}
        try:
            for step in steps:
                t = torch.full((x0.shape[0],), step, dtype=torch.long, device=x0.device)
                run(scheduler.add_noise(x0, noise.expand_as(x0), t), t)
                out.update({f"t{step}.{b}": kept[b] for b in blocks})
        finally:
            for h in hooks:
                h.remove()
        return out


__all__ = ["DiffusersUNetTaps", "SAMPLERS"]
