"""Load any generator checkpoint: the public formats, the canonical one, a user's module.

:func:`load_generator` sniffs the format (:data:`~.checkpoints.FORMATS`), reads
it to canonical tensors and builds the registered backend; :func:`convert_checkpoint`
writes the canonical safetensors + sidecar, so users can render straight from
a downloaded file or convert it once.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from labelfactory.core.io import atomic_path, atomic_write_json, sha256_file
from labelfactory.generators.base import GENERATORS, GeneratorBackend
from labelfactory.generators.checkpoints import (
    FORMATS,
    CheckpointError,
    RawCheckpoint,
    claims,
    sidecar_path,
)
from labelfactory.generators.guided_diffusion import read_guided_diffusion
from labelfactory.generators.torch_module import read_torch_module


def read_checkpoint(path: str | Path, fmt: str = "auto", generator: dict | None = None,
                    model_flags: dict | None = None) -> RawCheckpoint:
    """Read any supported checkpoint file (or folder, e.g. config.json + pytorch_model.bin)
    into canonical tensors; with a ``generator`` spec, a state dict for a user's module
    class (:mod:`.torch_module`); with ``model_flags``, a guided-diffusion state dict."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    if model_flags is not None:
        if fmt not in ("auto", "guided-diffusion") or generator is not None:
            raise CheckpointError(f"{path}: model flags are for guided-diffusion state dicts, not format {fmt!r}"
                                  + (" with a generator spec" if generator is not None else ""))
        return read_guided_diffusion(path, model_flags)
    if generator is not None:
        if fmt != "auto":
            raise CheckpointError(f"{path}: format {fmt!r} with a generator spec (its weights are detected: "
                                  "leave format auto)")
        return read_torch_module(path, generator)
    if fmt == "auto":
        for name in FORMATS:
            if claims(FORMATS.get(name), path):
                fmt = name
                break
        else:
            raise CheckpointError(f"{path}: unknown checkpoint format (known: {', '.join(FORMATS)})")
    return FORMATS.get(fmt).read(path)


def backend_from_raw(raw: RawCheckpoint) -> GeneratorBackend:
    try:
        return GENERATORS.get(raw.arch).from_tensors(raw.arch_config, raw.tensors,
                                                     raw.notes.get("generator_hash"))
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{raw.converted_from} checkpoint does not fit {raw.arch}: {e}") from e


def load_generator(path: str | Path, device: str | torch.device = "cpu", fmt: str = "auto",
                   generator: dict | None = None, model_flags: dict | None = None) -> GeneratorBackend:
    """Load a generator from a canonical or public checkpoint file (or a user module's
    state dict with its ``generator`` spec, a guided-diffusion state dict with its ``model_flags``)."""
    return backend_from_raw(read_checkpoint(path, fmt, generator, model_flags)).to(device)


def write_canonical(path: str | Path, backend: GeneratorBackend, sidecar: dict) -> dict:
    """Write ``path`` (.safetensors) and its JSON sidecar atomically; returns the sidecar.

    The safetensors file is renamed into place first and the sidecar last, so
    a sidecar never describes a missing or partial weights file."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = backend.state_tensors()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"arch": backend.arch, "generator_hash": backend.generator_hash})
        file_sha = sha256_file(tmp)
    meta = {
        **sidecar,
        "arch": backend.arch,
        "arch_config": backend.arch_config,
        "generator_hash": backend.generator_hash,
        "sha256": file_sha,
        "num_parameters": int(sum(math.prod(v.shape) for v in tensors.values())),
    }
    atomic_write_json(sidecar_path(path), meta)
    return meta


def convert_checkpoint(src: str | Path, dest: str | Path, fmt: str = "auto", generator: dict | None = None,
                       model_flags: dict | None = None, **sidecar) -> dict:
    """Any supported file (with ``generator``: a user module's state dict; with ``model_flags``:
    a guided-diffusion state dict) → canonical safetensors + sidecar (verifying it loads)."""
    raw = read_checkpoint(src, fmt, generator, model_flags)
    backend = backend_from_raw(raw)
    return write_canonical(dest, backend, {"converted_from": raw.converted_from, "notes": raw.notes, **sidecar})
