"""Interpreters: networks that label every pixel of a generated image from its generator features.

:mod:`.base` holds the contract (:class:`~.base.Interpreter`, trained on a
:class:`~.base.TrainingData`) and the registry;
:mod:`.mlp` is DatasetGAN's MLP ensemble, :mod:`.conv` BigDatasetGAN's conv
interpreter. Importing this package registers both. :mod:`.keypoints` is the keypoint head
(heatmap regression on the same features), an entry point of its own outside the registry.
"""

from labelfactory.interpreters import conv, mlp  # noqa: F401  (register "conv" and "mlp")
from labelfactory.interpreters.base import (
    INTERPRETERS,
    PRECISIONS,
    Interpreter,
    TrainingData,
    interpreter_features,
    load_interpreter,
)

__all__ = ["INTERPRETERS", "PRECISIONS", "Interpreter", "TrainingData", "interpreter_features", "load_interpreter"]
