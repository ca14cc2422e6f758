"""Train the toy-world class-conditional BigGAN (class ids only, no masks) and write the
shippable safetensors + sidecar in the BigGAN-PyTorch layout.

Reproduces the shipped weights:
    python scripts/train_toy_biggan.py --out weights/toy/biggan-32.safetensors
Resumable: re-running with the same --work-dir continues from the last saved state.
"""

from labelfactory.generators.biggan import BigGANBackend
from labelfactory.core.runtime import setup_logging
from labelfactory.toybench.recipes.biggan import BigGANTrainConfig, finalize, train
from labelfactory.toybench.recipes.recipe_cli import recipe_from_args, recipe_parser, work_dir, write_trained

HELP = {"ch": "G channel unit (BigGAN's G_ch)", "d_ch": "D channel unit (BigGAN's D_ch)",
        "kimg": "thousands of real images shown to D"}

if __name__ == "__main__":
    p = recipe_parser(__doc__, BigGANTrainConfig, HELP)
    p.add_argument("--weights", choices=["g_ema", "g"], default="g_ema",
                   help="ship the moving average of G (default) or its last iterate")
    args = p.parse_args()
    setup_logging()
    cfg, work = recipe_from_args(BigGANTrainConfig, args), work_dir(args)
    g = finalize(cfg, train(cfg, work), args.weights)
    backend = BigGANBackend(g, g.cfg.to_dict(), class_names=list(cfg.classes))
    write_trained(args.out, backend, "labelfactory.toybench.recipes.biggan", cfg, work)
