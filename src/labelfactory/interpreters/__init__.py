"""Interpreters: networks that label every pixel of a generated image from its generator features.

``INTERPRETERS`` maps a name to an interpreter class offering ``config_class``,
``fit(store, masks, num_classes, cfg, **kwargs)``, ``load(path, device)``,
``save(path)``, ``member_probabilities(features, classes=None)`` (``classes``
``[B]`` for class-conditional interpreters; others ignore it) and a
``compute_dtype`` attribute, the precision of inference (:data:`PRECISIONS`).
"""

import torch

from labelfactory.core.registry import Registry

INTERPRETERS: Registry[type] = Registry("interpreter")

# synthesis.precision: inference in float32 (exact), or bfloat16/float16 matmuls (for GPUs; labels
# equal float32's except at near ties, tests/test_fast_labelling.py); probabilities are float32
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_labeller(interpreter_type: str, path, device: torch.device | str = "cpu", precision: str = "float32"):
    """A trained interpreter of ``interpreter_type`` from ``path``, set to infer in ``precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    labeller = INTERPRETERS.get(interpreter_type).load(path, device)
    labeller.compute_dtype = PRECISIONS[precision]
    return labeller

from labelfactory.interpreters.mlp import (  # noqa: E402  (registers "mlp" in INTERPRETERS)
    MLPEnsemble,
    MLPEnsembleConfig,
    MemberHistory,
    PixelFeatures,
    build_member,
    fit_members,
    train_mlp_ensemble,
)
from labelfactory.interpreters.conv import (  # noqa: E402  (registers "conv" in INTERPRETERS)
    ConvEnsemble,
    ConvInterpreter,
    ConvInterpreterConfig,
    ConvMemberHistory,
    resolution_groups,
    train_conv_ensemble,
)

__all__ = ["INTERPRETERS", "PRECISIONS", "load_labeller", "MLPEnsemble", "MLPEnsembleConfig", "MemberHistory", "PixelFeatures", "build_member",
           "fit_members", "train_mlp_ensemble", "ConvEnsemble", "ConvInterpreter", "ConvInterpreterConfig",
           "ConvMemberHistory", "resolution_groups", "train_conv_ensemble"]
