"""Measure a toy generator against its toy world and write the numbers the README reports.

    python scripts/evaluate_toy_generator.py --checkpoint weights/toy/stylegan2-car-32.safetensors \
        --cls car --out weights/toy/stylegan2-car-32.quality.json --grid docs/toy-car-samples.png
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from labelfactory.annotator import Annotator
from labelfactory.generators.checkpoints import load_generator
from labelfactory.io import atomic_write_json
from labelfactory.provenance import code_version, command_line
from labelfactory.quality import generator_quality, generator_samples
from labelfactory.runtime import setup_logging


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--annotator", type=Path, default=Path("weights/toy/annotator-32.safetensors"))
    p.add_argument("--cls", default="car")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--truncation", type=float, default=1.0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--grid", type=Path, help="PNG grid of the first 64 samples (seeds 0..63), 2x upscaled")
    a = p.parse_args()
    setup_logging()
    backend = load_generator(a.checkpoint)
    q = generator_quality(backend, Annotator.load(a.annotator), a.cls, a.n, a.truncation)
    atomic_write_json(a.out, {**q, "command": command_line(), "code_version": code_version()})
    print(json.dumps(q, indent=2))
    if a.grid:
        imgs = generator_samples(backend, range(64), a.truncation)
        rows = [np.concatenate(list(imgs[r * 8 : (r + 1) * 8]), 1) for r in range(8)]
        grid = Image.fromarray(np.concatenate(rows, 0))
        grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST).save(a.grid)


if __name__ == "__main__":
    main()
