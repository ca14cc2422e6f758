"""Resumable GAN training state and the recipe that ships with trained weights.

Both toy-generator recipes (StyleGAN2, BigGAN) save G, D, the EMA of G and both
optimisers with the step, elapsed time and torch RNG, atomically, so a killed
run continues where it was; and both record the same recipe in the sidecar of
the weights they ship.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from labelfactory.core.io import atomic_torch_save
from labelfactory.core.provenance import code_version, command_line

log = logging.getLogger(__name__)


def save_state(path: Path, nets: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
               step: int, elapsed: float, cfg) -> None:
    """Every network's and optimiser's state under its name, plus step, time, RNG and config."""
    atomic_torch_save({**{k: v.state_dict() for k, v in {**nets, **optimizers}.items()}, "step": step,
                       "torch_rng": torch.get_rng_state(), "config": json.dumps(asdict(cfg)), "elapsed": elapsed},
                      path)


def resume_state(path: Path, nets: dict[str, torch.nn.Module],
                 optimizers: dict[str, torch.optim.Optimizer]) -> tuple[int, float]:
    """Load what :func:`save_state` wrote, if it exists; returns ``(step, elapsed seconds)``."""
    if not path.exists():
        return 0, 0.0
    st = torch.load(path, map_location="cpu", weights_only=True)
    for k, v in {**nets, **optimizers}.items():
        v.load_state_dict(st[k])
    torch.set_rng_state(st["torch_rng"])
    log.info("resumed at step %d", int(st["step"]))
    return int(st["step"]), float(st.get("elapsed", 0.0))


def update_ema(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """``ema ← decay·ema + (1 − decay)·net`` for floating tensors (parameters and buffers); others copied."""
    with torch.no_grad():
        src = net.state_dict()
        for k, v in ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.lerp_(src[k], 1.0 - decay)
            else:
                v.copy_(src[k])


def trained_sidecar(source: str, cfg, work: Path) -> dict:
    """The sidecar entries of weights trained by a project recipe: the exact command,
    training config, code version and the final losses and time of ``work/history.jsonl``."""
    history = [json.loads(l) for l in (work / "history.jsonl").read_text().splitlines()]
    return {
        "converted_from": source,
        "source_url": None,
        "recipe": {
            "command": command_line(),
            "train_config": json.loads(json.dumps(asdict(cfg))),
            "code_version": code_version(),
            "final_losses": history[-1] if history else None,
            "train_seconds": history[-1]["elapsed_s"] if history else None,
        },
    }
