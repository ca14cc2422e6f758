"""Generator checkpoint formats: the registry of readers and the canonical layout.

Canonical: ``<name>.safetensors`` (the backend's tensors, strict key layout)
plus ``<name>.json`` (``arch``, ``arch_config``, ``generator_hash``,
``sha256`` of the safetensors file, ``source_url``, ``source_sha256``,
``converted_from``, free-form ``recipe``). Each public format's reader sits
beside its backend and registers into :data:`FORMATS` (a sniffer and a reader
to canonical tensors); :mod:`.loading` reads any of them.
"""

from __future__ import annotations

import argparse
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from labelfactory.core.io import sha256_file
from labelfactory.core.registry import Registry


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or not in a layout we can load."""


@dataclass
class RawCheckpoint:
    """What a format reader returns: canonical tensors ready for a backend."""

    arch: str
    arch_config: dict
    tensors: dict[str, torch.Tensor]
    converted_from: str
    notes: dict = field(default_factory=dict)


@dataclass
class FormatReader:
    sniff: Callable[[Path], bool]
    read: Callable[[Path], RawCheckpoint]


FORMATS: Registry[FormatReader] = Registry("checkpoint format")

_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
_LEGACY_TORCH_PREFIX = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


def file_head(path: Path, n: int = 16) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def sidecar_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


# --- canonical safetensors ------------------------------------------------------
def is_safetensors(path: Path) -> bool:
    head = file_head(path, 9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < _SAFETENSORS_MAX_HEADER and head[8:9] == b"{"


def read_sidecar(path: Path) -> dict:
    side = sidecar_path(path)
    if not side.exists():
        raise CheckpointError(f"{path}: no sidecar {side.name} with the architecture beside it")
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{side}: corrupt sidecar JSON ({e})") from e
    for key in ("arch", "arch_config"):
        if key not in meta:
            raise CheckpointError(f"{side}: sidecar lacks {key!r}")
    return meta


def _read_safetensors(path: Path) -> RawCheckpoint:
    from safetensors.torch import load_file

    meta = read_sidecar(path)
    if "sha256" in meta and sha256_file(path) != meta["sha256"]:
        raise CheckpointError(f"{path}: sha256 differs from its sidecar: the file is corrupt or was replaced")
    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"{path}: corrupt safetensors file ({e})") from e
    return RawCheckpoint(meta["arch"], meta["arch_config"], tensors, meta.get("converted_from", "safetensors"),
                         {"generator_hash": meta.get("generator_hash")})


FORMATS.register("safetensors")(FormatReader(is_safetensors, _read_safetensors))


# --- torch files --------------------------------------------------------------------
def is_torch_file(path: Path) -> bool:
    head = file_head(path, 16)
    return head.startswith(b"PK\x03\x04") or head.startswith(_LEGACY_TORCH_PREFIX)


def torch_load(path: Path, mmap: bool = False) -> dict:
    """A torch file's dict, weights only (``mmap``: map tensor storage instead of reading it)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read torch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: torch checkpoint holds a {type(obj).__name__}, expected a dict")
    return obj


def torch_keys(path: Path) -> frozenset:
    """The keys of a torch file's dict (empty if it is not one), read once per file version for
    the sniffers (legacy files cannot be mapped and are read whole)."""
    if not is_torch_file(path):
        return frozenset()
    st = Path(path).stat()
    return _torch_keys(str(path), st.st_ino, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _torch_keys(path: str, inode: int, mtime_ns: int, size: int) -> frozenset:
    try:
        return frozenset(torch_load(Path(path), mmap=file_head(Path(path), 4) == b"PK\x03\x04"))
    except CheckpointError:
        return frozenset()


def claims(reader: FormatReader, path: Path) -> bool:
    """Whether ``reader`` sniffs ``path`` as its format; file sniffers do not claim folders."""
    try:
        return reader.sniff(path)
    except IsADirectoryError:
        return False
