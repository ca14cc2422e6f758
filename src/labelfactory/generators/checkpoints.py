"""Generator checkpoint formats: read the public layouts, write the canonical one.

Canonical: ``<name>.safetensors`` (the backend's tensors, strict key layout)
plus ``<name>.json`` (``arch``, ``arch_config``, ``generator_hash``,
``sha256`` of the safetensors file, ``source_url``, ``source_sha256``,
``converted_from``, free-form ``recipe``). Readers for public formats sit in a
registry; :func:`load_generator` accepts any of them, so users can render
straight from a downloaded file.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..io import atomic_path, atomic_write_json, sha256_file
from ..registry import Registry
from .base import GENERATORS, GeneratorBackend, content_hash
from .biggan import G_ARCH, BigGANConfig, BigGANGenerator
from .nvidia_pickle import PersistentObject, load_network_pickle
from .ops import make_kernel
from .stylegan2 import StyleGAN2Config, rosinality_channels


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


def _head(path: Path, n: int = 16) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def sidecar_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


# --- canonical safetensors ------------------------------------------------------
def _is_safetensors(path: Path) -> bool:
    head = _head(path, 9)
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


FORMATS.register("safetensors")(FormatReader(_is_safetensors, _read_safetensors))


# --- rosinality stylegan2-pytorch ----------------------------------------------------
def _is_torch_file(path: Path) -> bool:
    head = _head(path, 16)
    return head.startswith(b"PK\x03\x04") or head.startswith(_LEGACY_TORCH_PREFIX)


def _torch_load(path: Path, mmap: bool = False) -> dict:
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
    if not _is_torch_file(path):
        return frozenset()
    st = Path(path).stat()
    return _torch_keys(str(path), st.st_ino, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _torch_keys(path: str, inode: int, mtime_ns: int, size: int) -> frozenset:
    try:
        return frozenset(_torch_load(Path(path), mmap=_head(Path(path), 4) == b"PK\x03\x04"))
    except CheckpointError:
        return frozenset()


def stylegan2_config_from_rosinality(sd: dict[str, torch.Tensor]) -> StyleGAN2Config:
    """Infer size, style/z dims, mapping depth and per-resolution channels from a
    rosinality ``g_ema`` state dict."""
    try:
        n_mlp = len({k.split(".")[1] for k in sd if re.match(r"style\.\d+\.weight$", k)})
        style_dim, z_dim = sd["style.1.weight"].shape[0], sd["style.1.weight"].shape[1]
        channels = {4: sd["conv1.conv.weight"].shape[1]}
        n_up = len({k.split(".")[1] for k in sd if re.match(r"to_rgbs\.\d+\.conv\.weight$", k)})
        for i in range(n_up):
            channels[2 ** (i + 3)] = sd[f"convs.{2 * i}.conv.weight"].shape[1]
        blur = sd.get("convs.0.conv.blur.kernel")
    except KeyError as e:
        raise CheckpointError(f"not a rosinality StyleGAN2 state dict: missing {e}") from e
    size = 2 ** (n_up + 2)
    cfg = StyleGAN2Config(size=size, style_dim=style_dim, n_mlp=n_mlp, channels=channels, z_dim=z_dim)
    if blur is not None and not torch.allclose(blur, make_kernel(cfg.blur_kernel) * 4, atol=1e-6):
        raise CheckpointError("rosinality checkpoint uses a blur kernel other than [1,3,3,1]; not supported")
    return cfg


def _channel_multiplier(cfg: StyleGAN2Config) -> int | None:
    for cm in (1, 2, 4):
        if rosinality_channels(cfg.size, cm) == cfg.channels:
            return cm
    return None


def _read_rosinality(path: Path) -> RawCheckpoint:
    ckpt = _torch_load(path)
    if "g_ema" in ckpt:
        sd, latent_avg = ckpt["g_ema"], ckpt.get("latent_avg")
    elif "style.1.weight" in ckpt:
        sd, latent_avg = ckpt, None
    else:
        raise CheckpointError(f"{path}: torch checkpoint has neither 'g_ema' nor a StyleGAN2 state dict "
                              f"(keys: {sorted(ckpt)[:8]})")
    cfg = stylegan2_config_from_rosinality(sd)
    tensors = {k: v for k, v in sd.items()}
    notes = {"channel_multiplier": _channel_multiplier(cfg)}
    if latent_avg is None:
        from .stylegan2 import Generator

        g = Generator(cfg)
        g.load_state_dict({**tensors, "latent_avg": g.latent_avg}, strict=True)
        latent_avg = g.mean_latent(4096)
        notes["latent_avg"] = "mean w of 4096 z (seed 0): the checkpoint has none"
    tensors["latent_avg"] = latent_avg.reshape(-1).float()
    return RawCheckpoint("stylegan2", cfg.to_dict(), tensors, "rosinality", notes)


def _is_rosinality(path: Path) -> bool:
    """Every torch file that no other reader claims, so an unknown dict gets this reader's error."""
    return _is_torch_file(path) and not any(_claims(FORMATS.get(n), path) for n in FORMATS if n != "rosinality")


FORMATS.register("rosinality")(FormatReader(_is_rosinality, _read_rosinality))


# --- ajbrock BigGAN-PyTorch ------------------------------------------------------------
_BIGGAN_SIGNATURE = frozenset({"shared.weight", "linear.weight", "linear.u0", "blocks.0.0.conv1.weight"})

# Keys that a state dict written by BigGAN-PyTorch's ``TFHub/converter.py`` lacks:
# ``convert_from_v1`` maps only weights, biases, ``u0`` (TF's ``u0`` via ``weight_u``), BN statistics,
# ``gamma`` and ``shared``, never the ``sv0`` singular-value records, and loads with
# ``strict=False  # Ignore missing sv0 entries`` (so does BigDatasetGAN's release).
# ``layers.SN`` keeps ``sv0`` "just for logging", unused by the forward pass; they
# are filled with the constructor's value, ones.
_BIGGAN_CONVERTER_MISSING = re.compile(r".*\.sv0$")


def _is_biggan_pytorch(path: Path) -> bool:
    """A torch file whose dict has BigGAN-PyTorch ``Generator`` keys."""
    return _BIGGAN_SIGNATURE <= torch_keys(path)


def biggan_config_from_pytorch(sd: dict[str, torch.Tensor]) -> BigGANConfig:
    """Infer a BigGAN-PyTorch ``Generator``'s config (``G_shared``, one SV) from its state dict.

    Resolution from the number of blocks, ``ch`` from the first block's input
    channels, ``hier`` and the z chunk from the ccbn input width (shared dim + chunk)
    and the first linear layer, attention from which blocks carry one. What shapes
    cannot tell is set as in ``TFHub/converter.py:get_config``: BN and SN eps 1e-4
    and one power iteration (models trained with other eps need them edited in
    the sidecar after conversion)."""
    try:
        n_classes, shared_dim = sd["shared.weight"].shape
        n_blocks = len({k.split(".")[1] for k in sd if re.match(r"blocks\.\d+\.0\.conv1\.weight$", k)})
        in0 = sd["blocks.0.0.conv1.weight"].shape[1]
        lin_out, lin_in = sd["linear.weight"].shape
        cond = sd["blocks.0.0.bn1.gain.weight"].shape[1]
    except KeyError as e:
        raise CheckpointError(f"not a BigGAN-PyTorch generator state dict with G_shared: missing {e}") from e
    resolution = next((r for r, (cin, _) in G_ARCH.items() if len(cin) == n_blocks), None)
    if resolution is None:
        raise CheckpointError(f"BigGAN-PyTorch generator with {n_blocks} blocks: no known resolution")
    ch, bottom_width = in0 // G_ARCH[resolution][0][0], math.isqrt(lin_out // in0)
    hier = cond > shared_dim
    if hier and cond - shared_dim != lin_in:
        raise CheckpointError(f"ccbn input {cond} is not shared_dim {shared_dim} + z chunk {lin_in}")
    cfg = BigGANConfig(resolution=resolution, ch=int(ch), dim_z=int(lin_in * (n_blocks + 1) if hier else lin_in),
                       shared_dim=int(shared_dim), n_classes=int(n_classes), attention=(),
                       bottom_width=int(bottom_width), hier=bool(hier))
    attention = tuple(r for i, r in enumerate(cfg.block_resolutions) if any(k.startswith(f"blocks.{i}.1.") for k in sd))
    return dataclasses.replace(cfg, attention=attention)


def _read_biggan_pytorch(path: Path) -> RawCheckpoint:
    """A ``torch.save(G.state_dict())`` of BigGAN-PyTorch's ``Generator`` (e.g. ``biggan-512.pth``
    from its TF-Hub converter), loaded strictly except for the converter's missing keys."""
    sd = _torch_load(path)
    cfg = biggan_config_from_pytorch(sd)
    with torch.device("meta"):
        expected = set(BigGANGenerator(cfg).state_dict())
    filled = sorted(k for k in expected - set(sd) if _BIGGAN_CONVERTER_MISSING.fullmatch(k))
    missing, unexpected = sorted(expected - set(sd) - set(filled)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{path}: BigGAN-PyTorch state dict does not fit {cfg}: "
                              f"missing {missing}, unexpected {unexpected}")
    tensors = {**sd, **{k: torch.ones(1) for k in filled}}
    notes = {"filled_with_ones": filled} if filled else {}
    return RawCheckpoint("biggan", cfg.to_dict(), tensors, "biggan-pytorch", notes)


FORMATS.register("biggan-pytorch")(FormatReader(_is_biggan_pytorch, _read_biggan_pytorch))


# --- NVIDIA stylegan2-ada-pytorch pickles -----------------------------------------
def _is_pickle(path: Path) -> bool:
    head = _head(path, 2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and not _is_torch_file(path)


def stylegan2_from_nvidia(g: PersistentObject) -> RawCheckpoint:
    """Rename an NVIDIA ``G_ema`` record into the rosinality layout (a conditional
    mapping's ``mapping.embed`` becomes ``embed``)."""
    t = g.tensors()
    blocks = sorted({int(m.group(1)) for k in t if (m := re.match(r"synthesis\.b(\d+)\.", k))})
    if not blocks or blocks[0] != 4:
        raise CheckpointError("G_ema has no synthesis.b4 block: not a StyleGAN2-ADA generator")
    if any(".skip." in k for k in t) or any(f"synthesis.b{r}.torgb.weight" not in t for r in blocks):
        raise CheckpointError("only the 'skip' StyleGAN2 architecture is supported (found 'resnet' or 'orig')")
    fcs = sorted(int(m.group(1)) for k in t if (m := re.match(r"mapping\.fc(\d+)\.weight$", k)))
    fc0 = g.child("mapping.fc0").state
    lr_mlp = float(fc0.get("bias_gain", 0.01))
    clamp = g.child("synthesis.b4.conv1").state.get("conv_clamp")
    channels = {r: int(t[f"synthesis.b{r}.conv1.weight"].shape[0]) for r in blocks}
    embed = t.get("mapping.embed.weight")
    embed_dim, c_dim = (0, 0) if embed is None else embed.shape
    w_dim, z_dim = t["mapping.fc0.weight"].shape[0], t["mapping.fc0.weight"].shape[1] - embed_dim
    cfg = StyleGAN2Config(size=blocks[-1], style_dim=int(t[f"mapping.fc{fcs[-1]}.weight"].shape[0]),
                          n_mlp=len(fcs), channels=channels, z_dim=int(z_dim), lr_mlp=lr_mlp,
                          conv_clamp=None if clamp is None else float(clamp),
                          c_dim=int(c_dim), embed_dim=int(embed_dim) if c_dim else None)
    if int(w_dim) != cfg.style_dim:
        raise CheckpointError("mapping layers of different widths are not supported")
    rf = t.get("synthesis.b8.resample_filter", t.get("synthesis.b4.resample_filter"))
    if rf is not None and not torch.allclose(rf.float(), make_kernel(cfg.blur_kernel), atol=1e-6):
        raise CheckpointError("resample filter other than [1,3,3,1] is not supported")

    out: dict[str, torch.Tensor] = {}
    if c_dim:
        out["embed.weight"], out["embed.bias"] = embed, t["mapping.embed.bias"]
    for i in fcs:
        out[f"style.{i + 1}.weight"] = t[f"mapping.fc{i}.weight"]
        out[f"style.{i + 1}.bias"] = t[f"mapping.fc{i}.bias"]
    out["latent_avg"] = t["mapping.w_avg"].reshape(-1)
    out["input.input"] = t["synthesis.b4.const"][None]
    kernel4 = make_kernel(cfg.blur_kernel) * 4

    def layer(src: str, dst: str, noise_idx: int, up: bool):
        out[f"{dst}.conv.weight"] = t[f"{src}.weight"][None]
        out[f"{dst}.conv.modulation.weight"] = t[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = t[f"{src}.affine.bias"]
        out[f"{dst}.noise.weight"] = t[f"{src}.noise_strength"].reshape(1)
        out[f"{dst}.activate.bias"] = t[f"{src}.bias"]
        out[f"noises.noise_{noise_idx}"] = t[f"{src}.noise_const"][None, None]
        if up:
            out[f"{dst}.conv.blur.kernel"] = kernel4.clone()

    def torgb(src: str, dst: str, up: bool):
        out[f"{dst}.conv.weight"] = t[f"{src}.weight"][None]
        out[f"{dst}.conv.modulation.weight"] = t[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = t[f"{src}.affine.bias"]
        out[f"{dst}.bias"] = t[f"{src}.bias"].reshape(1, -1, 1, 1)
        if up:
            out[f"{dst}.upsample.kernel"] = kernel4.clone()

    try:
        layer("synthesis.b4.conv1", "conv1", 0, False)
        torgb("synthesis.b4.torgb", "to_rgb1", False)
        for k, r in enumerate(blocks[1:]):
            layer(f"synthesis.b{r}.conv0", f"convs.{2 * k}", 2 * k + 1, True)
            layer(f"synthesis.b{r}.conv1", f"convs.{2 * k + 1}", 2 * k + 2, False)
            torgb(f"synthesis.b{r}.torgb", f"to_rgbs.{k}", True)
    except KeyError as e:
        raise CheckpointError(f"G_ema lacks {e}: not a StyleGAN2-ADA generator") from e
    return RawCheckpoint("stylegan2", cfg.to_dict(), {k: v.float().contiguous() for k, v in out.items()},
                         "stylegan2-ada-pickle", {"conv_clamp": cfg.conv_clamp})


def _read_nvidia_pickle(path: Path) -> RawCheckpoint:
    try:
        data = load_network_pickle(path)
    except ValueError as e:  # truncated or corrupt (UntrustedPickleError is not a ValueError and passes)
        raise CheckpointError(str(e)) from e
    g = data.get("G_ema")
    if not isinstance(g, PersistentObject):
        raise CheckpointError(f"{path}: network pickle has no G_ema module (keys: {sorted(data)})")
    return stylegan2_from_nvidia(g)


FORMATS.register("stylegan2-ada-pickle")(FormatReader(_is_pickle, _read_nvidia_pickle))


# --- entry points ---------------------------------------------------------------
def _claims(reader: FormatReader, path: Path) -> bool:
    """Whether ``reader`` sniffs ``path`` as its format; file sniffers do not claim folders."""
    try:
        return reader.sniff(path)
    except IsADirectoryError:
        return False


def read_checkpoint(path: str | Path, fmt: str = "auto", generator: dict | None = None) -> RawCheckpoint:
    """Read any supported checkpoint file (or folder, e.g. config.json + pytorch_model.bin)
    into canonical tensors; with a ``generator`` spec, a state dict for a user's module
    class (:mod:`.torch_module`)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    if generator is not None:
        from .torch_module import read_torch_module  # it builds on this module

        if fmt != "auto":
            raise CheckpointError(f"{path}: format {fmt!r} with a generator spec (its weights are detected: "
                                  "leave format auto)")
        return read_torch_module(path, generator)
    if fmt == "auto":
        for name in FORMATS:
            if _claims(FORMATS.get(name), path):
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
                   generator: dict | None = None) -> GeneratorBackend:
    """Load a generator from a canonical or public checkpoint file (or a user module's
    state dict with its ``generator`` spec)."""
    return backend_from_raw(read_checkpoint(path, fmt, generator)).to(device)


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
                       **sidecar) -> dict:
    """Any supported file (with ``generator``: a user module's state dict) → canonical
    safetensors + sidecar (verifying it loads)."""
    raw = read_checkpoint(src, fmt, generator)
    backend = backend_from_raw(raw)
    return write_canonical(dest, backend, {"converted_from": raw.converted_from, "notes": raw.notes, **sidecar})


__all__ = ["CheckpointError", "FORMATS", "RawCheckpoint", "read_checkpoint", "load_generator",
           "write_canonical", "convert_checkpoint", "content_hash", "read_sidecar", "sidecar_path"]
