"""Train a toy-world StyleGAN2 (no labels) and write the shippable safetensors + sidecar.

Reproduces the shipped weights, e.g.:
    python scripts/train_toy_generator.py --cls car --out weights/toy/stylegan2-car-32.safetensors
Resumable: re-running with the same --work-dir continues from the last saved state.
"""

import argparse
import logging
from pathlib import Path

from labelfactory.generators.checkpoints import write_canonical
from labelfactory.generators.stylegan2 import StyleGAN2Backend
from labelfactory.runtime import setup_logging
from labelfactory.training.gan import GANTrainConfig, finalize, train
from labelfactory.training.state import trained_sidecar


def channels(spec: str) -> dict[int, int]:
    """"4:128,8:128,16:64,32:32" → {4: 128, ...}"""
    return {int(r): int(c) for r, c in (kv.split(":") for kv in spec.split(","))}


def main() -> None:
    d = GANTrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cls", default=d.cls)
    p.add_argument("--size", type=int, default=d.size)
    p.add_argument("--kimg", type=float, default=d.kimg, help="thousands of real images shown to D")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--channels", type=channels, default=d.channels, help="G channels per resolution")
    p.add_argument("--d-channels", type=channels, default=d.d_channels, help="D channels per resolution")
    p.add_argument("--style-dim", type=int, default=d.style_dim)
    p.add_argument("--n-mlp", type=int, default=d.n_mlp)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--r1-gamma", type=float, default=d.r1_gamma)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--work-dir", type=Path, default=None, help="training state and snapshots")
    p.add_argument("--out", type=Path, required=True, help="output .safetensors (sidecar .json beside it)")
    a = p.parse_args()
    setup_logging()

    cfg = GANTrainConfig(cls=a.cls, size=a.size, kimg=a.kimg, batch=a.batch, channels=a.channels,
                         d_channels=a.d_channels, style_dim=a.style_dim, n_mlp=a.n_mlp, lr=a.lr,
                         r1_gamma=a.r1_gamma, seed=a.seed, threads=a.threads)
    work = a.work_dir or a.out.parent / f".train-{a.out.stem}"
    state = train(cfg, work)
    arch_config, tensors = finalize(cfg, state)
    backend = StyleGAN2Backend.from_tensors(arch_config, tensors)
    meta = write_canonical(a.out, backend, trained_sidecar("labelfactory.training.gan", cfg, work))
    logging.getLogger("labelfactory").info("wrote %s (generator %s)", a.out, meta["generator_hash"][:12])


if __name__ == "__main__":
    main()
