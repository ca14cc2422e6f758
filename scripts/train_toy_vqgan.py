"""Train the toy-world VQGAN (no labels) and its class-conditional prior (class ids only)
and write the shippable safetensors + sidecar in taming-transformers' layout.

Reproduces the shipped weights:
    python scripts/train_toy_vqgan.py --threads 1 --out weights/toy/vqgan-32.safetensors
Re-running with the same --work-dir reuses a phase (VQGAN, prior) finished with the same recipe.
"""

from labelfactory.generators.vqgan import VQGANBackend
from labelfactory.core.runtime import setup_logging
from labelfactory.toybench.recipes.recipe_cli import recipe_from_args, recipe_parser, work_dir, write_trained
from labelfactory.toybench.recipes.vqgan import VQGANTrainConfig, train

HELP = {"ch": "channel unit (taming's ddconfig.ch)", "n_embed": "codebook size", "steps": "VQGAN steps"}

if __name__ == "__main__":
    args = recipe_parser(__doc__, VQGANTrainConfig, HELP).parse_args()
    setup_logging()
    cfg, work = recipe_from_args(VQGANTrainConfig, args), work_dir(args)
    model = train(cfg, work)
    write_trained(args.out, VQGANBackend(model, model.cfg.to_dict()), "labelfactory.toybench.recipes.vqgan", cfg, work)
