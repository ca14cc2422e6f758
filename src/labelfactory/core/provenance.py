"""Where an artefact came from: code version, command line and device, for sidecars and results."""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from labelfactory import __version__

# CPU flags whose kernels change float32 summation order (and so the last bits of a result)
ISA_PREFIXES = ("avx512", "amx")


def code_version() -> str:
    """Package version plus the git commit (``+dirty`` when the tree has changes)."""
    root = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return __version__
    return f"{__version__}+g{commit[:12]}{'.dirty' if dirty else ''}"


def command_line() -> str:
    """The command that is running, as one could type it again."""
    return shlex.join(["python", *sys.argv])


def _cpu(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, list[str]]:
    """The CPU's model name and its flags (none known without /proc/cpuinfo)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return fields.get("model name", platform.machine()), fields.get("flags", "").split()


def describe_device(device: str | torch.device = "cpu", threads: int | None = None,
                    cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """The device a result was computed on, for result files and tables: ``kind`` (``cpu``,
    ``cuda``), ``name`` (the CPU model, or the GPU's name), ``cpu`` and its ``isa`` flags
    (AVX-512, AMX), torch's ``cpu_capability`` (the kernels it dispatches to), ``torch``
    (and ``cuda``) version, and ``threads`` (None: torch's current count). Results repeat bit for bit only on the
    same device and software."""
    device = torch.device(device)
    cpu, flags = _cpu(cpuinfo)
    desc = {"kind": device.type, "name": cpu, "cpu": cpu, "isa": sorted(f for f in flags if f.startswith(ISA_PREFIXES)),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "threads": threads or torch.get_num_threads()}
    if device.type == "cuda":
        desc.update(name=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    return desc


def device_line(desc: dict) -> str:
    """A :func:`describe_device` record in one line, e.g. ``AMD EPYC 7B13 (no AVX-512/AMX; torch
    kernels AVX2), torch 2.6.0, 2 threads``."""
    isa = " + ".join(name for prefix, name in zip(ISA_PREFIXES, ("AVX-512", "AMX"))
                     if any(f.startswith(prefix) for f in desc["isa"])) or "no AVX-512/AMX"
    cpu = f"{desc['cpu']} ({isa}; torch kernels {desc['cpu_capability']})"
    where = f"{desc['name']} (CUDA {desc.get('cuda')}) on {cpu}" if desc["kind"] == "cuda" else cpu
    return f"{where}, torch {desc['torch']}, {desc['threads']} thread{'s' if desc['threads'] != 1 else ''}"
