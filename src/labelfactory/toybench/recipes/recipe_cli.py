"""The toy recipes' command lines (``scripts/train_toy_*.py``): one flag per field of the
recipe's dataclass, and the shipped safetensors + sidecar written the same way by each."""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from labelfactory.generators.base import GeneratorBackend
from labelfactory.generators.loading import write_canonical
from labelfactory.toybench.recipes.state import trained_sidecar

log = logging.getLogger("labelfactory")


def recipe_parser(doc: str, recipe: type, helps: dict[str, str] | None = None,
                  parsers: dict[str, Callable[[str], Any]] | None = None) -> argparse.ArgumentParser:
    """``--<field-name>`` (underscores as dashes) for every int, float and str field of the
    ``recipe`` dataclass, or a field with its own parser in ``parsers``; defaults are the
    recipe's. Fields of other types (tuples such as the class list) stay as the recipe sets
    them. Adds ``--work-dir`` and the required ``--out``."""
    helps, parsers, default = helps or {}, parsers or {}, recipe()
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(recipe):
        value = getattr(default, f.name)
        kind = parsers.get(f.name) or (type(value) if type(value) in (int, float, str) else None)
        if kind is not None:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=value, help=helps.get(f.name))
    p.add_argument("--work-dir", type=Path, default=None,
                   help="training state and snapshots (default: .train-<out name> beside --out)")
    p.add_argument("--out", type=Path, required=True, help="output .safetensors (sidecar .json beside it)")
    return p


def recipe_from_args(recipe: type, args: argparse.Namespace):
    """The recipe with every field that has a flag taken from the parsed ``args``."""
    return recipe(**{f.name: getattr(args, f.name) for f in fields(recipe) if hasattr(args, f.name)})


def work_dir(args: argparse.Namespace) -> Path:
    return args.work_dir or args.out.parent / f".train-{args.out.stem}"


def write_trained(out: Path, backend: GeneratorBackend, source: str, recipe, work: Path) -> dict:
    """Write the trained generator as canonical safetensors with its recipe in the sidecar."""
    meta = write_canonical(out, backend, trained_sidecar(source, recipe, work))
    log.info("wrote %s (generator %s)", out, meta["generator_hash"][:12])
    return meta


__all__ = ["recipe_parser", "recipe_from_args", "work_dir", "write_trained"]
