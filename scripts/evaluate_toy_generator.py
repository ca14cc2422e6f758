"""Measure a toy generator against its toy world and write the numbers docs/toybench.md reports.

    python scripts/evaluate_toy_generator.py --checkpoint weights/toy/stylegan2-car-32.safetensors \
        --cls car --out weights/toy/stylegan2-car-32.quality.json --grid docs/toy-car-samples.png
    python scripts/evaluate_toy_generator.py --checkpoint weights/toy/biggan-32.safetensors \
        --cls car face house tree --out weights/toy/biggan-32.quality.json --grid docs/toy-biggan-samples.png
    python scripts/evaluate_toy_generator.py --checkpoint weights/toy/vqgan-32.safetensors --n 500 \
        --cls car face house tree --out weights/toy/vqgan-32.quality.json --grid docs/toy-vqgan-samples.png
    python scripts/evaluate_toy_generator.py --checkpoint weights/toy/ddpm-32.safetensors --n 500 \
        --sampler ddim --sampling-steps 10 --cls car face house tree --out weights/toy/ddpm-32.quality.json \
        --grid docs/toy-ddpm-samples.png

For a class-conditional generator, ``--cls`` names the toy class of each generator
class in order (class i is the i-th name); each is measured on its own samples. A generator that
encodes images (VQGAN) also gets the reconstruction PSNR of ``--n`` real renders per class.
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from labelfactory.toybench.annotator import Annotator
from labelfactory.generators.loading import load_generator
from labelfactory.core.io import atomic_write_json
from labelfactory.core.provenance import code_version, command_line
from labelfactory.toybench.quality import generator_quality, generator_samples, reconstruction_quality
from labelfactory.core.runtime import setup_logging


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--annotator", type=Path, default=Path("weights/toy/annotator-32.safetensors"))
    p.add_argument("--cls", nargs="+", default=["car"])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--truncation", type=float, default=1.0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sampler", choices=["ddpm", "ddim"], help="diffusion models: the sampler (as a task's "
                   "diffusion.sampler; default: the checkpoint's)")
    p.add_argument("--sampling-steps", type=int, default=50, help="diffusion models: retained sampling steps")
    p.add_argument("--grid", type=Path, help="PNG grid of the first 64 samples (seeds 0..63), 2x upscaled")
    a = p.parse_args()
    setup_logging()
    backend = load_generator(a.checkpoint)
    if a.sampler:
        backend.set_sampling(a.sampler, a.sampling_steps)
    annotator = Annotator.load(a.annotator)
    conditional = backend.num_classes > 0
    if conditional:
        q = {"classes": {name: generator_quality(backend, annotator, name, a.n, a.truncation, gen_class=k)
                         for k, name in enumerate(a.cls)}}
    else:
        q = generator_quality(backend, annotator, a.cls[0], a.n, a.truncation)
    if hasattr(backend, "encode"):
        q["reconstruction"] = {name: reconstruction_quality(backend, name, a.n) for name in a.cls}
    if a.sampler:
        q["sampling"] = {"sampler": a.sampler, "sampling_steps": a.sampling_steps}
    atomic_write_json(a.out, {**q, "command": command_line(), "code_version": code_version()})
    print(json.dumps(q, indent=2))
    if a.grid:
        if conditional:  # one row of 12 seeds per class
            per_row = 12
            imgs = np.concatenate([generator_samples(backend, range(per_row), a.truncation, gen_class=k)
                                   for k in range(len(a.cls))])
        else:
            per_row, imgs = 8, generator_samples(backend, range(64), a.truncation)
        rows = [np.concatenate(list(imgs[r * per_row : (r + 1) * per_row]), 1) for r in range(len(imgs) // per_row)]
        grid = Image.fromarray(np.concatenate(rows, 0))
        grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST).save(a.grid)


if __name__ == "__main__":
    main()
