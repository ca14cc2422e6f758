"""Train the toy-world VQGAN (no labels) and its class-conditional prior (class ids only)
and write the shippable safetensors + sidecar in taming-transformers' layout.

Reproduces the shipped weights:
    python scripts/train_toy_vqgan.py --threads 1 --out weights/toy/vqgan-32.safetensors
Re-running with the same --work-dir reuses a phase (VQGAN, prior) finished with the same recipe.
"""

import argparse
import logging
from pathlib import Path

from labelfactory.runtime import setup_logging
from labelfactory.training.state import trained_sidecar
from labelfactory.training.vqgan import VQGANTrainConfig, train


def main() -> None:
    d = VQGANTrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ch", type=int, default=d.ch, help="channel unit (taming's ddconfig.ch)")
    p.add_argument("--n-embed", type=int, default=d.n_embed, help="codebook size")
    p.add_argument("--embed-dim", type=int, default=d.embed_dim)
    p.add_argument("--steps", type=int, default=d.steps, help="VQGAN steps")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--prior-steps", type=int, default=d.prior_steps)
    p.add_argument("--prior-embd", type=int, default=d.prior_embd)
    p.add_argument("--prior-layers", type=int, default=d.prior_layers)
    p.add_argument("--prior-images-per-class", type=int, default=d.prior_images_per_class)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--work-dir", type=Path, default=None, help="history and each finished phase")
    p.add_argument("--out", type=Path, required=True, help="output .safetensors (sidecar .json beside it)")
    a = p.parse_args()
    setup_logging()

    cfg = VQGANTrainConfig(ch=a.ch, n_embed=a.n_embed, embed_dim=a.embed_dim, steps=a.steps, batch=a.batch,
                           lr=a.lr, prior_steps=a.prior_steps, prior_embd=a.prior_embd,
                           prior_layers=a.prior_layers, prior_images_per_class=a.prior_images_per_class,
                           seed=a.seed, threads=a.threads)
    work = a.work_dir or a.out.parent / f".train-{a.out.stem}"
    model = train(cfg, work)

    from labelfactory.generators.checkpoints import write_canonical
    from labelfactory.generators.vqgan import VQGANBackend

    backend = VQGANBackend(model, model.cfg.to_dict())
    meta = write_canonical(a.out, backend, trained_sidecar("labelfactory.training.vqgan", cfg, work))
    logging.getLogger("labelfactory").info("wrote %s (generator %s)", a.out, meta["generator_hash"][:12])


if __name__ == "__main__":
    main()
