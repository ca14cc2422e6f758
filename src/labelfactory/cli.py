"""Command-line entry points (``labelfactory <command>``): thin wrappers over the library."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger("labelfactory")


def _render(args) -> None:
    from PIL import Image

    from .generators.base import images_to_uint8
    from .generators.checkpoints import load_generator
    from .io import atomic_path
    from .runtime import resolve_device

    backend = load_generator(args.checkpoint, resolve_device(args.device), fmt=args.format)
    z = np.load(args.latents)
    if z.ndim == 1:
        z = z[None]
    classes = np.load(args.classes) if args.classes else None
    images = backend.render(z, classes, truncation=args.truncation, noise=args.noise,
                            batch_size=args.batch_size, noise_seed=args.noise_seed)
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, images.astype(np.float32))
    if args.png_dir:
        import torch

        out = Path(args.png_dir)
        out.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images_to_uint8(torch.from_numpy(images))):
            Image.fromarray(img).save(out / f"{i:06d}.png")
    log.info("rendered %d images %s with generator %s", len(images), list(images.shape[1:]),
             backend.generator_hash[:12])


def _latents(args) -> None:
    from .config import parse_range
    from .generators.checkpoints import load_generator

    backend = load_generator(args.checkpoint, fmt=args.format)
    np.save(args.out, backend.sample_latents(parse_range(args.seeds)))


def _convert(args) -> None:
    from .generators.checkpoints import convert_checkpoint

    meta = convert_checkpoint(args.src, args.dest, fmt=args.format, source_url=str(args.src))
    log.info("wrote %s (%s, generator %s)", args.dest, meta["arch"], meta["generator_hash"][:12])


def _toyworld_sheet(args) -> None:
    from .toyworld import sample_sheet

    sample_sheet(args.out, size=args.size, per_class=args.per_class, seed0=args.seed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labelfactory", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("render", help="render images from a checkpoint and latents")
    r.add_argument("--checkpoint", required=True, help="canonical .safetensors, rosinality .pt or NVIDIA .pkl")
    r.add_argument("--latents", required=True, help=".npy with z [N, z_dim] (or one [z_dim])")
    r.add_argument("--out", required=True, help=".npy for the raw float32 output [N,3,H,W]")
    r.add_argument("--truncation", type=float, default=1.0, help="psi, towards the checkpoint's average latent")
    r.add_argument("--noise", choices=["const", "random", "none"], default="const")
    r.add_argument("--noise-seed", type=int, default=0, help="seed of the noise when --noise random")
    r.add_argument("--classes", help=".npy with one class per latent (class-conditional generators)")
    r.add_argument("--png-dir", help="also write PNGs here")
    r.add_argument("--format", default="auto", help="checkpoint format (default: detect)")
    r.add_argument("--device", default="auto")
    r.add_argument("--batch-size", type=int, default=16)
    r.set_defaults(func=_render)

    l = sub.add_parser("latents", help="write the z of seeds (e.g. 0-15 or 3,7,9) to .npy")
    l.add_argument("--checkpoint", required=True)
    l.add_argument("--seeds", required=True)
    l.add_argument("--out", required=True)
    l.add_argument("--format", default="auto")
    l.set_defaults(func=_latents)

    c = sub.add_parser("convert", help="convert a public checkpoint to safetensors + JSON sidecar")
    c.add_argument("src")
    c.add_argument("dest")
    c.add_argument("--format", default="auto")
    c.set_defaults(func=_convert)

    t = sub.add_parser("toyworld-sheet", help="write a PNG sample sheet of the toy world")
    t.add_argument("--out", required=True)
    t.add_argument("--size", type=int, default=64)
    t.add_argument("--per-class", type=int, default=8)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_toyworld_sheet)
    return p


def main(argv: list[str] | None = None) -> int:
    from .runtime import setup_logging

    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
