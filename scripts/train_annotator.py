"""Train the simulated annotator, score it on fresh toy-world images, ship it.

Writes ``--out`` (safetensors weights) and its JSON sidecar: the exact command,
config, training history, metrics (per class mIoU and per part IoU), object
thresholds, code version, wall times and sha256 of the weights. Every
``AnnotatorConfig`` field is a flag (``--steps``, ``--threads``, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
import time

import torch

from labelfactory.core.provenance import code_version
from labelfactory.toybench import world as toyworld
from labelfactory.toybench.annotator import Annotator, AnnotatorConfig, config_to_dict, evaluate_annotator, train_annotator


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(AnnotatorConfig):
        if f.name == "classes":
            p.add_argument("--classes", nargs="+", choices=toyworld.ALL_CLASSES, default=list(f.default))
        else:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    p.add_argument("--out", default="weights/toy/annotator-32.safetensors")
    p.add_argument("--eval-per-class", type=int, default=500)
    p.add_argument("--log-every", type=int, default=100)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    cfg = AnnotatorConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AnnotatorConfig)})
    cfg.classes = tuple(cfg.classes)
    version = code_version()  # before training: the code that runs, not what HEAD is later

    t0 = time.time()
    model, history = train_annotator(cfg, log_every=args.log_every)
    train_s = time.time() - t0
    metrics = evaluate_annotator(model, cfg.size, args.eval_per_class, classes=cfg.classes)
    eval_s = time.time() - t0 - train_s
    for cls, m in metrics["classes"].items():
        logging.info("%-6s mIoU %.4f  %s", cls, m["miou"], "  ".join(f"{k} {v:.3f}" for k, v in m["iou"].items()))
    logging.info("mean mIoU %.4f  (train %.0f s, eval %.0f s, %d threads)", metrics["mean_miou"], train_s, eval_s,
                 cfg.threads)

    meta = Annotator(model, classes=cfg.classes).save(
        args.out,
        command=shlex.join(["python"] + sys.argv),
        config=config_to_dict(cfg),
        metrics=metrics,
        history=history,
        code_version=version,
        torch_version=torch.__version__,
        train_seconds=round(train_s, 1),
        eval_seconds=round(eval_s, 1),
    )
    logging.info("wrote %s (sha256 %s)", args.out, meta["sha256"])


if __name__ == "__main__":
    main()
