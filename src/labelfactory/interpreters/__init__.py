"""Interpreters: networks that label every pixel of a generated image from its generator features.

``INTERPRETERS`` maps a name to an interpreter class offering ``config_class``,
``fit(store, masks, num_classes, cfg, **kwargs)``, ``load(path)``, ``save(path)``
and ``member_probabilities(features, classes=None)`` (``classes`` ``[B]`` for
class-conditional interpreters; others ignore it).
"""

from ..registry import Registry

INTERPRETERS: Registry[type] = Registry("interpreter")

from .mlp import (  # noqa: E402  (registers "mlp" in INTERPRETERS)
    MLPEnsemble,
    MLPEnsembleConfig,
    MemberHistory,
    PixelFeatures,
    build_member,
    fit_members,
    train_mlp_ensemble,
)
from .conv import (  # noqa: E402  (registers "conv" in INTERPRETERS)
    ConvEnsemble,
    ConvInterpreter,
    ConvInterpreterConfig,
    ConvMemberHistory,
    resolution_groups,
    train_conv_ensemble,
)

__all__ = ["INTERPRETERS", "MLPEnsemble", "MLPEnsembleConfig", "MemberHistory", "PixelFeatures", "build_member",
           "fit_members", "train_mlp_ensemble", "ConvEnsemble", "ConvInterpreter", "ConvInterpreterConfig",
           "ConvMemberHistory", "resolution_groups", "train_conv_ensemble"]
