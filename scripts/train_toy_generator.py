"""Train a toy-world StyleGAN2 (no labels) and write the shippable safetensors + sidecar.

Reproduces the shipped weights, e.g.:
    python scripts/train_toy_generator.py --cls car --out weights/toy/stylegan2-car-32.safetensors
Resumable: re-running with the same --work-dir continues from the last saved state.
"""

from labelfactory.generators.stylegan2 import StyleGAN2Backend
from labelfactory.core.runtime import setup_logging
from labelfactory.toybench.recipes.gan import GANTrainConfig, finalize, train
from labelfactory.toybench.recipes.recipe_cli import recipe_from_args, recipe_parser, work_dir, write_trained


def channels(spec: str) -> dict[int, int]:
    """"4:128,8:128,16:64,32:32" → {4: 128, ...}"""
    return {int(r): int(c) for r, c in (kv.split(":") for kv in spec.split(","))}


HELP = {"kimg": "thousands of real images shown to D", "channels": "G channels per resolution, e.g. 4:128,8:64",
        "d_channels": "D channels per resolution"}

if __name__ == "__main__":
    args = recipe_parser(__doc__, GANTrainConfig, HELP, {"channels": channels, "d_channels": channels}).parse_args()
    setup_logging()
    cfg, work = recipe_from_args(GANTrainConfig, args), work_dir(args)
    arch_config, tensors = finalize(cfg, train(cfg, work))
    write_trained(args.out, StyleGAN2Backend.from_tensors(arch_config, tensors), "labelfactory.toybench.recipes.gan", cfg,
                  work)
