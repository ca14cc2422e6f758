"""Train the toy-world DCGAN (no labels) and write the shippable safetensors + sidecar.

Reproduces the shipped weights:
    python scripts/train_toy_dcgan.py --out weights/toy/dcgan-portrait-32.safetensors
Resumable: re-running with the same --work-dir continues from the last saved state.
"""

from labelfactory.core.runtime import setup_logging
from labelfactory.generators.torch_module import TorchModuleBackend
from labelfactory.toybench.recipes.dcgan import DCGANTrainConfig, finalize, train
from labelfactory.toybench.recipes.recipe_cli import recipe_from_args, recipe_parser, work_dir, write_trained

HELP = {"kimg": "thousands of real images shown to D", "cls": "toy-world class (default: the small-parts portrait)"}

if __name__ == "__main__":
    args = recipe_parser(__doc__, DCGANTrainConfig, HELP).parse_args()
    setup_logging()
    cfg, work = recipe_from_args(DCGANTrainConfig, args), work_dir(args)
    arch_config, tensors = finalize(cfg, train(cfg, work))
    write_trained(args.out, TorchModuleBackend.from_tensors(arch_config, tensors), "labelfactory.toybench.recipes.dcgan",
                  cfg, work)
