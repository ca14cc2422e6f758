"""Hand-out folders: generated samples written for a human to annotate.

:func:`sample_for_annotation` writes each sample's image, latent and a row of
``manifest.csv`` (``id``, ``seed``, ``class``, the render settings); for a
class-conditional generator the same seeds for each class. The annotator adds a
mask per sample (:mod:`labelfactory.annotations.importing` reads the folder back).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from labelfactory.generators.base import GeneratorBackend, images_to_uint8, sample_id
from labelfactory.generators.view import view_of

MANIFEST_FILE = "manifest.csv"


IMAGE_SUFFIX = ".image.png"


LATENT_SUFFIX = ".latent.npy"


def render_uint8(backend: GeneratorBackend, z: np.ndarray, classes: np.ndarray, truncation: float,
                  noise: str) -> np.ndarray:
    """uint8 ``[N,H,W,3]`` renders, exactly as written to and compared with ``<id>.image.png``."""
    return images_to_uint8(torch.from_numpy(backend.render(z, classes, truncation, noise)))


def sample_for_annotation(backend: GeneratorBackend, seeds: Sequence[int], out_dir: str | os.PathLike,
                          truncation: float = 1.0, noise: str = "const",
                          classes: Sequence[int] | None = None) -> pd.DataFrame:
    """Render the seeded samples into a fresh folder for a human to annotate:
    ``<id>.image.png``, ``<id>.latent.npy`` and ``manifest.csv`` (returned).

    A class-conditional generator renders every seed once for each of
    ``classes``, class by class (BigDatasetGAN annotates a few samples per
    class); an unconditional one takes no classes. The folder is built beside
    ``out_dir`` and renamed into place when complete, so an interrupted run never
    leaves a folder that looks ready. An existing non-empty ``out_dir`` is
    refused: it may hold a person's annotations.
    """
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; refusing to overwrite annotations")
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
    if classes is None:
        cls = backend.check_classes(None, len(seeds))
    else:
        per_class = np.asarray(classes, dtype=np.int64).reshape(-1)
        cls = backend.check_classes(np.repeat(per_class, len(seeds)), len(per_class) * len(seeds))
        seeds = np.tile(seeds, len(per_class))
    ids = [sample_id(s, c) for s, c in zip(seeds, cls)]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate (seed, class) pairs: " + ", ".join(sorted({i for i in ids if ids.count(i) > 1})))
    z = backend.draw_latents(seeds, cls if backend.num_classes else None, truncation)
    images = render_uint8(backend, z, cls, truncation, noise)
    manifest = pd.DataFrame({"id": ids, "seed": seeds, "class": cls, "truncation": float(truncation),
                             "noise": noise, "generator_hash": backend.generator_hash})
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        view = view_of(backend)  # the annotator sees the crop that the masks hold
        for i, sid in enumerate(ids):
            image = view.cut(images[i], backend.resolution, channels_last=True)
            Image.fromarray(image).save(tmp / f"{sid}{IMAGE_SUFFIX}")
            np.save(tmp / f"{sid}{LATENT_SUFFIX}", z[i])
        manifest.to_csv(tmp / MANIFEST_FILE, index=False)
        tmp.chmod(0o755)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return manifest
