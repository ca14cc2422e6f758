"""The simulated keypoint annotator labels an annotation folder's images: a keypoint-only folder.

Copies the manifest, images and latents of ``--source`` (not its masks), writes ``labels.yaml``
(its names and ignore index, plus the toy class's keypoints) and one ``<id>.keypoints.json``
per image, clicked by the annotator ``--annotator``:
    python scripts/make_toy_keypoint_annotations.py --source config/annotations/toy-car \
        --out config/annotations/toy-car-keypoints
"""

import argparse
from pathlib import Path

from labelfactory.core.runtime import setup_logging
from labelfactory.downstream.keypoint_detector import load_keypoint_detector
from labelfactory.toybench.keypoint_annotator import make_keypoint_folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=Path("config/annotations/toy-car"))
    p.add_argument("--annotator", type=Path, default=Path("weights/toy/keypoint-annotator-car-32.safetensors"))
    p.add_argument("--cls", default="car")
    p.add_argument("--out", type=Path, default=Path("config/annotations/toy-car-keypoints"))
    a = p.parse_args()
    setup_logging()
    model, meta = load_keypoint_detector(a.annotator)
    who = f"the simulated keypoint annotator ({meta['sha256'][:12]})"
    n = make_keypoint_folder(a.source, a.out, model, a.cls, who)
    print(f"clicked the keypoints of {n} images into {a.out}")


if __name__ == "__main__":
    main()
