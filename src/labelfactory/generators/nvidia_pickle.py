"""Read NVIDIA ``stylegan2-ada-pytorch`` network pickles without running their code.

Those pickles embed the source of ``training/networks.py`` and rebuild each
module with ``torch_utils.persistence._reconstruct_persistent_obj``, which
``exec``s that source. This unpickler resolves only an allow-list of globals
(tensor and storage rebuilders, ``OrderedDict``, ``EasyDict``, numpy scalars and
arrays under numpy 1.x's ``numpy.core`` and numpy 2's ``numpy._core`` names) and replaces the persistence hook by :class:`PersistentObject`, a plain
record of the class name and the module's ``__dict__``; nothing from the file
is executed. Any other global is refused with :class:`UntrustedPickleError`.
"""

from __future__ import annotations

import collections
import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelfactory.generators.checkpoints import (
    FORMATS,
    CheckpointError,
    FormatReader,
    RawCheckpoint,
    file_head,
    is_torch_file,
)
from labelfactory.generators.ops import make_kernel
from labelfactory.generators.stylegan2 import StyleGAN2Config


class UntrustedPickleError(pickle.UnpicklingError):
    """The pickle asks for something the restricted unpickler does not allow."""


@dataclass
class PersistentObject:
    """Stand-in for a ``persistent_class`` object: its class name and its state
    (``_parameters``, ``_buffers``, ``_modules``, ``_init_kwargs``...)."""

    class_name: str
    state: dict

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Parameters and buffers of this module tree, with dotted names."""
        out: dict[str, torch.Tensor] = {}
        for group in ("_parameters", "_buffers"):
            for name, t in (self.state.get(group) or {}).items():
                if t is not None:
                    out[prefix + name] = t.detach() if isinstance(t, torch.Tensor) else torch.as_tensor(t)
        for name, child in (self.state.get("_modules") or {}).items():
            if isinstance(child, PersistentObject):
                out.update(child.tensors(f"{prefix}{name}."))
        return out

    def child(self, path: str) -> "PersistentObject":
        obj = self
        for part in path.split("."):
            obj = obj.state["_modules"][part]
        return obj


class _EasyDict(dict):
    """Target for ``dnnlib.EasyDict``: a dict that tolerates BUILD state."""

    def __setstate__(self, state):
        if state:
            self.update(state)


def _reconstruct_persistent_obj(meta: dict) -> PersistentObject:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise UntrustedPickleError("unexpected persistent object record in network pickle")
    return PersistentObject(class_name=str(meta.get("class_name")), state=dict(meta.get("state") or {}))


def _load_storage_from_bytes(b: bytes):
    return torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in _ALLOWED_CALLABLES:
        raise UntrustedPickleError(f"refusing tensor rebuild through {func!r}")
    return func(*args)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch", "Tensor"): torch.Tensor,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "Size"): torch.Size,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "scalar")] = np._core.multiarray.scalar
    _ALLOWED[(_mod, "_reconstruct")] = np._core.multiarray._reconstruct
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_mod, "_frombuffer")] = np._core.numeric._frombuffer
_ALLOWED_CALLABLES = {torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter,
                      torch._utils._rebuild_parameter_with_state}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UntrustedPickleError(
                f"refusing to load {module}.{name} from an untrusted network pickle "
                "(only tensors, containers and persistent-module records are allowed)"
            ) from None

    def persistent_load(self, pid):
        raise UntrustedPickleError("network pickles with persistent ids are not supported")


def load_network_pickle(path) -> dict:
    """Unpickle an NVIDIA network pickle into plain records (``G``, ``D``, ``G_ema``...)."""
    with open(path, "rb") as f:
        try:
            data = RestrictedUnpickler(f).load()
        except UntrustedPickleError:
            raise
        except Exception as e:  # truncated or corrupt files surface here
            raise ValueError(f"{path}: not a readable network pickle ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: network pickle holds a {type(data).__name__}, expected a dict with 'G_ema'")
    return data


# --- the StyleGAN2 generator in a pickle, read to canonical tensors -------------------
def _is_pickle(path: Path) -> bool:
    head = file_head(path, 2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and not is_torch_file(path)


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
