"""Per-job setup shared by every workflow script: logging, threads, device."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

import torch

log = logging.getLogger("labelfactory")


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` → the first visible GPU, else the CPU; ``cuda`` without a GPU is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} requested but no CUDA GPU is visible (use device: auto or cpu)")
    return dev


def setup_logging(log_path: str | None = None, level: int = logging.INFO) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)


@contextlib.contextmanager
def snakemake_job(smk) -> Iterator[None]:
    """Set up a Snakemake ``script:`` job: log to its log file, use its threads,
    and record any failure with its traceback in the log before re-raising."""
    setup_logging(smk.log[0] if len(smk.log) else None)
    torch.set_num_threads(max(1, int(smk.threads)))
    log.info("rule %s, wildcards %s, threads %s", smk.rule, dict(smk.wildcards), smk.threads)
    try:
        yield
    except BaseException:
        log.exception("job failed")
        raise
