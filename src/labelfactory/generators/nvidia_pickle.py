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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


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
