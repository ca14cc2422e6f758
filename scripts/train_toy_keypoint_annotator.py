"""Train the simulated keypoint annotator, score it on fresh toy-world scenes, ship it.

Writes ``--out`` (safetensors) and its JSON sidecar: the training config, the heatmaps' sigma,
and as metrics the held-out scores (PCK@0.05, PCK@0.1, per keypoint, COCO AP), the data
(classes, seeds, image counts), training seconds, threads, the command and code version.
    python scripts/train_toy_keypoint_annotator.py --cls car \
        --out weights/toy/keypoint-annotator-car-32.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys

import numpy as np

from labelfactory.core.provenance import code_version
from labelfactory.downstream.keypoint_detector import keypoint_scores, predict_keypoints, save_keypoint_detector
from labelfactory.toybench import world as toyworld
from labelfactory.toybench.keypoint_annotator import (EVAL_SEED0, TRAIN_SEED0, KeypointAnnotatorRecipe,
                                                      train_keypoint_annotator)


def main(argv: list[str] | None = None) -> None:
    recipe = KeypointAnnotatorRecipe()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cls", default=recipe.cls, choices=[c for c in toyworld.ALL_CLASSES if toyworld.keypoint_names(c)])
    for name in ("size", "train_images", "eval_images"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(recipe, name))
    p.add_argument("--sigma", type=float, default=recipe.sigma)
    p.add_argument("--steps", type=int, default=recipe.train.steps)
    p.add_argument("--threads", type=int, default=recipe.train.threads)
    p.add_argument("--out", default="weights/toy/keypoint-annotator-car-32.safetensors")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    recipe = KeypointAnnotatorRecipe(a.cls, a.size, a.train_images, a.eval_images, a.sigma,
                                     dataclasses.replace(recipe.train, steps=a.steps, threads=a.threads))
    version = code_version()  # before training: the code that runs, not what HEAD is later

    model, history = train_keypoint_annotator(recipe)
    if history["diverged"]:
        raise SystemExit(f"training diverged: {history['diverged']}")
    test = recipe.images("test")
    names = toyworld.keypoint_names(a.cls)
    scores = keypoint_scores(predict_keypoints(model, test.images), test.keypoints, test.areas, names)
    logging.info("held-out %s: PCK@0.05 %.4f PCK@0.1 %.4f AP %.4f (%d images; trained %.0f s on %d threads)",
                 a.cls, scores["pck@0.05"], scores["pck@0.1"], scores["ap"], len(test), history["wall_s"],
                 history["threads"])
    metrics = {
        "held_out": {**scores, "seed0": EVAL_SEED0},
        "training": {"cls": a.cls, "size": a.size, "images": a.train_images, "seed0": TRAIN_SEED0,
                     "wall_s": round(history["wall_s"], 1), "threads": history["threads"],
                     "final_loss": float(np.mean(history["loss"][-100:])),
                     "command": shlex.join(["python"] + sys.argv), "code_version": version},
    }
    save_keypoint_detector(model, a.out, recipe.train, names, recipe.sigma, metrics)
    logging.info("wrote %s", a.out)


if __name__ == "__main__":
    main()
