"""The simulated human of the toy world: label the samples chosen for annotation.

Run once after `snakemake results/toy-car/for_annotation` to (re)make the shipped folder:
    python scripts/simulate_annotation.py --samples results/toy-car/for_annotation \
        --cls car --out config/annotations/toy-car
For a class-conditional task, name the toy class of every generator class in order
(binary object masks, BigDatasetGAN's labels):
    python scripts/simulate_annotation.py --samples results/toy-objects/for_annotation \
        --cls car face house tree --out config/annotations/toy-objects
"""

import argparse
from pathlib import Path

import pandas as pd

from labelfactory.toybench.annotator import Annotator, simulate_annotation
from labelfactory.core.runtime import setup_logging


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=Path, required=True, help="a sample_for_annotation output folder")
    p.add_argument("--annotator", type=Path, default=Path("weights/toy/annotator-32.safetensors"))
    p.add_argument("--cls", nargs="+", default=["car"],
                   help="toy class (parts), or one per generator class (object masks)")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    setup_logging()
    conditional = pd.read_csv(a.samples / "manifest.csv")["class"].max() >= 0
    cls = dict(enumerate(a.cls)) if conditional else a.cls[0]
    n = simulate_annotation(a.samples, a.out, Annotator.load(a.annotator), cls)
    print(f"annotated {n} samples into {a.out}")


if __name__ == "__main__":
    main()
