"""Train the toy-world class-conditional DDPM (class ids only, no masks) and write the shippable
safetensors + sidecar as a guided-diffusion checkpoint (its model flags in the sidecar).

Reproduces the shipped weights:
    python scripts/train_toy_ddpm.py --out weights/toy/ddpm-32.safetensors
Resumable: re-running with the same --work-dir continues from the last saved state.
"""

from labelfactory.core.runtime import setup_logging
from labelfactory.toybench.recipes.ddpm import DDPMTrainConfig, finalize, train
from labelfactory.toybench.recipes.recipe_cli import recipe_from_args, recipe_parser, work_dir, write_trained

HELP = {"kimg": "thousands of real images shown", "channel_mult": "guided-diffusion's channel_mult flag",
        "attention_resolutions": "guided-diffusion's attention_resolutions flag"}

if __name__ == "__main__":
    p = recipe_parser(__doc__, DDPMTrainConfig, HELP)
    p.add_argument("--weights", choices=["ema", "unet"], default="ema",
                   help="ship the moving average of the weights (default) or the last iterate")
    args = p.parse_args()
    setup_logging()
    cfg, work = recipe_from_args(DDPMTrainConfig, args), work_dir(args)
    backend = finalize(cfg, train(cfg, work), args.weights)
    write_trained(args.out, backend, "labelfactory.toybench.recipes.ddpm", cfg, work)
