"""One job of the `synthesize` rule: a shard labelled by the task's interpreter, or, when every
member of that interpreter diverged in training, the shard that records it.

Under ``on_divergence: record`` a diverged interpreter is a result like a diverged downstream run:
its shards hold no samples and carry its divergence record, so the filter, the downstream runs
and the tables (an ablation arm's rows included) show the runs built on it as diverged instead
of the DAG stopping here. Under ``fail`` it raises :class:`~labelfactory.core.divergence.Diverged`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from labelfactory.core.divergence import run_status
from labelfactory.core.io import sha256_file
from labelfactory.generators.base import GeneratorBackend
from labelfactory.interpreters.base import interpreter_divergence, load_interpreter
from labelfactory.synthesis.shards import ShardInfo, ShardSettings, synthesize_shard, write_diverged_shard


def synthesize_with_interpreter(backend: GeneratorBackend, interpreter_path: str | os.PathLike,
                                out_path: str | os.PathLike, seeds: Sequence[int] | np.ndarray,
                                classes: int | Sequence[int] | np.ndarray | None, settings: ShardSettings, *,
                                interpreter_type: str | None = None, precision: str = "float32",
                                on_divergence: str = "record", attrs: Mapping[str, Any] | None = None,
                                progress: bool = False) -> ShardInfo:
    """The shard of ``seeds`` labelled by the interpreter at ``interpreter_path`` (its file's
    sha256 in the ``labeller_hash`` attribute), or :func:`~labelfactory.synthesis.shards.write_diverged_shard`
    when it diverged and ``on_divergence`` is ``record``."""
    attrs = {**(attrs or {}), "labeller_hash": sha256_file(interpreter_path)}
    diverged = interpreter_divergence(interpreter_path)
    if diverged is not None:
        run_status(diverged, on_divergence, f"interpreter {interpreter_path}")  # raises under fail
        return write_diverged_shard(backend, out_path, seeds, classes, settings, diverged, attrs=attrs)
    interpreter = load_interpreter(interpreter_type, interpreter_path, backend.device, precision)
    return synthesize_shard(backend, interpreter, out_path, seeds, classes, settings, attrs=attrs, progress=progress)
