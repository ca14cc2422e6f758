"""Train the toy-world class-conditional BigGAN (class ids only, no masks) and write the
shippable safetensors + sidecar in the BigGAN-PyTorch layout.

Reproduces the shipped weights:
    python scripts/train_toy_biggan.py --out weights/toy/biggan-32.safetensors
Resumable: re-running with the same --work-dir continues from the last saved state.
"""

import argparse
import logging
from pathlib import Path

from labelfactory.runtime import setup_logging
from labelfactory.training.biggan import BigGANTrainConfig, finalize, train
from labelfactory.training.state import trained_sidecar


def main() -> None:
    d = BigGANTrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=d.size)
    p.add_argument("--ch", type=int, default=d.ch, help="G channel unit (BigGAN's G_ch)")
    p.add_argument("--d-ch", type=int, default=d.d_ch, help="D channel unit (BigGAN's D_ch)")
    p.add_argument("--dim-z", type=int, default=d.dim_z)
    p.add_argument("--shared-dim", type=int, default=d.shared_dim)
    p.add_argument("--kimg", type=float, default=d.kimg, help="thousands of real images shown to D")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--d-steps", type=int, default=d.d_steps)
    p.add_argument("--g-lr", type=float, default=d.g_lr)
    p.add_argument("--d-lr", type=float, default=d.d_lr)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--weights", choices=["g_ema", "g"], default="g_ema",
                   help="ship the moving average of G (default) or its last iterate")
    p.add_argument("--work-dir", type=Path, default=None, help="training state and snapshots")
    p.add_argument("--out", type=Path, required=True, help="output .safetensors (sidecar .json beside it)")
    a = p.parse_args()
    setup_logging()

    cfg = BigGANTrainConfig(size=a.size, ch=a.ch, d_ch=a.d_ch, dim_z=a.dim_z, shared_dim=a.shared_dim, kimg=a.kimg,
                            batch=a.batch, d_steps=a.d_steps, g_lr=a.g_lr, d_lr=a.d_lr, ema_decay=a.ema_decay,
                            seed=a.seed, threads=a.threads)
    work = a.work_dir or a.out.parent / f".train-{a.out.stem}"
    state = train(cfg, work)

    from labelfactory.generators.biggan import BigGANBackend
    from labelfactory.generators.checkpoints import write_canonical

    g = finalize(cfg, state, a.weights)
    backend = BigGANBackend(g, g.cfg.to_dict(), class_names=list(cfg.classes))
    meta = write_canonical(a.out, backend, trained_sidecar("labelfactory.training.biggan", cfg, work))
    logging.getLogger("labelfactory").info("wrote %s (generator %s)", a.out, meta["generator_hash"][:12])


if __name__ == "__main__":
    main()
