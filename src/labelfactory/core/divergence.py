"""A training run whose loss (or weights) turn non-finite: recorded as a result, or an error.

Float32 summation order differs between devices, so a schedule that stays finite on one
CPU can blow up on another. Every training loop stops at the first non-finite loss and
reports :func:`divergence`; the caller turns it into the run's status with
:func:`run_status` under the config's ``on_divergence``: ``record`` (default) writes the
run as ``status: diverged`` with the step and the last finite loss, and the tables show it
as diverged, out of their means; ``fail`` raises :class:`Diverged` (for debugging).
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

log = logging.getLogger(__name__)

ON_DIVERGENCE = ("record", "fail")


class Diverged(RuntimeError):
    """A training run's loss or weights became non-finite (``on_divergence: fail``)."""


def divergence(step: int, losses: Sequence[float], what: str = "loss") -> dict:
    """The record of a run that diverged at ``step`` (0-based) after ``losses``: its last
    finite loss (None if there was none) and what turned non-finite."""
    finite = [x for x in losses if math.isfinite(x)]
    return {"status": "diverged", "step": step, "last_finite_loss": finite[-1] if finite else None, "what": what}


def run_status(diverged: dict | None, on_divergence: str = "record", run: str = "run") -> dict:
    """``{"status": "ok"}``, or the divergence record of ``run`` (logged); under
    ``on_divergence: fail`` a divergence raises :class:`Diverged` instead."""
    if on_divergence not in ON_DIVERGENCE:
        raise ValueError(f"on_divergence must be one of {ON_DIVERGENCE}, got {on_divergence!r}")
    if diverged is None:
        return {"status": "ok"}
    reason = (f"{run}: the {diverged['what']} became non-finite at step {diverged['step']} (last finite loss "
              f"{diverged['last_finite_loss']})")
    if on_divergence == "fail":
        raise Diverged(reason)
    log.warning("%s; recorded as diverged (on_divergence: record)", reason)
    return diverged


def finite_weights(model) -> bool:
    """Whether every parameter and buffer of a ``torch.nn.Module`` is finite."""
    return all(bool(t.isfinite().all()) for t in (*model.parameters(), *model.buffers()) if t.is_floating_point())
