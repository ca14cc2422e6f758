"""Per-job setup shared by every workflow script: logging, threads, device."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
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
    """Log to stderr and, with ``log_path``, to that file; tracebacks then go to the file only."""
    console = logging.StreamHandler(sys.stderr)
    handlers: list[logging.Handler] = [console]
    if log_path:
        console.addFilter(lambda record: record.exc_info is None)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)


@contextlib.contextmanager
def snakemake_job(smk) -> Iterator[None]:
    """Set up a Snakemake ``script:`` job: log to its log file, use its threads.

    Any failure goes with its traceback to the log file, and as one line
    ``labelfactory: <rule> failed: <type>: <message> (log: <path>)`` to the
    console, whatever raised it (the library's own error types, whose message is
    the whole story, and any other); the job then exits with status 1. Without a
    log file the traceback goes to the console."""
    log_path = smk.log[0] if len(smk.log) else None
    setup_logging(log_path)
    torch.set_num_threads(max(1, int(smk.threads)))
    log.info("rule %s, wildcards %s, threads %s", smk.rule, dict(smk.wildcards), smk.threads)
    try:
        yield
    except Exception as e:
        log.exception("job failed")
        where = f" (log: {log_path})" if log_path else ""
        print(f"labelfactory: {smk.rule} failed: {type(e).__name__}: {e}{where}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def _snakemake_alive(pid: int) -> bool:
    try:
        return "snakemake" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def release_stale_lock(snakemake_dir: str | Path = ".snakemake") -> bool:
    """Let a killed run be resumed by the same command.

    Snakemake locks its working directory and a SIGKILLed run leaves the lock
    behind, so the next run refuses to start until ``--unlock``. The main
    Snakemake process records itself (host, pid) when it finds no lock; a lock
    whose recorded owner ran on this host and is gone is stale and removed
    (exactly what ``--unlock`` does). Locks of live runs, and of runs started on
    another host, are never touched. Returns whether a stale lock was removed."""
    import json
    import socket

    root = Path(snakemake_dir)
    owner, locks = root / "labelfactory-owner.json", root / "locks"
    held = sorted(locks.glob("*.lock")) if locks.is_dir() else []
    host = socket.gethostname()
    if held:
        try:
            info = json.loads(owner.read_text())
        except (OSError, ValueError):
            return False
        if info.get("host") != host or _snakemake_alive(int(info.get("pid", -1))):
            return False
        for f in held:
            f.unlink(missing_ok=True)
        log.warning("removed the lock left by a killed Snakemake run (pid %s on %s)", info.get("pid"), host)
    root.mkdir(exist_ok=True)
    owner.write_text(json.dumps({"host": host, "pid": os.getpid()}))
    return bool(held)
