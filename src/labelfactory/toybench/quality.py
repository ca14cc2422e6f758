"""How good is a toy generator? Measured against the toy world it imitates.

Two figures, both from the simulated annotator (a network that knows the toy
world; no ImageNet Inception is available offline):

- **object-found rate**: share of samples in which the annotator finds a solid
  object of the class with its main part, next to the same rate on real renders;
- **reconstruction PSNR** (generators that encode images, VQGAN): how close
  decoding the codes of a real render comes to it;
- **KID** (kernel inception distance, Bińkowski et al. 2018: unbiased MMD² with
  the cubic polynomial kernel, averaged over random subsets) computed on the
  annotator's bottleneck embedding instead of Inception features — comparable
  between generators of this toy world, not with published KID values. The KID
  of two disjoint real sets is reported beside it as the noise floor.
"""

from __future__ import annotations

import numpy as np
import torch

from labelfactory.annotations.reuse import psnr
from labelfactory.generators.base import GeneratorBackend, images_to_uint8
from labelfactory.generators.vqgan import reconstruct
from labelfactory.toybench import world as toyworld
from labelfactory.toybench.annotator import Annotator

QUALITY_SEED0 = 4_000_000_000  # real renders used only for generator quality


def kid(x: np.ndarray, y: np.ndarray, subsets: int = 50, subset_size: int = 500, seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD² between feature sets ``x`` ``[n, d]`` and ``y`` ``[m, d]`` with
    k(a, b) = (a·b / d + 1)³; mean and standard deviation over random subsets."""
    rng = np.random.default_rng(seed)
    n = min(subset_size, len(x), len(y))
    if n < 2:
        raise ValueError("KID needs at least two samples per set")
    d = x.shape[1]
    vals = []
    for _ in range(subsets):
        a = x[rng.choice(len(x), n, replace=False)].astype(np.float64)
        b = y[rng.choice(len(y), n, replace=False)].astype(np.float64)
        kxx, kyy, kxy = ((a @ a.T) / d + 1) ** 3, ((b @ b.T) / d + 1) ** 3, ((a @ b.T) / d + 1) ** 3
        vals.append((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                    - 2 * kxy.mean())
    return float(np.mean(vals)), float(np.std(vals))


def reconstruction_quality(backend: GeneratorBackend, cls: str, n: int = 500, seed0: int = QUALITY_SEED0) -> dict:
    """PSNR of encoding and decoding ``n`` fresh real renders of ``cls``, and how many codes they use."""
    real, _, _ = toyworld.render_batch(range(seed0, seed0 + n), cls, backend.resolution)
    codes, rec = reconstruct(backend, real)
    p = psnr(real, rec)
    return {"n": n, "seed0": seed0, "psnr_mean": float(p.mean()), "psnr_median": float(np.median(p)),
            "psnr_p05": float(np.percentile(p, 5)), "codes_used": int(len(np.unique(codes)))}


@torch.no_grad()
def generator_samples(backend: GeneratorBackend, seeds, truncation: float = 1.0, batch_size: int = 64,
                      gen_class: int | None = None) -> np.ndarray:
    """uint8 images ``[N,H,W,3]`` of the given seeds (constant noise), all of generator
    class ``gen_class`` for class-conditional generators."""
    seeds = list(seeds)
    classes = None if gen_class is None else [gen_class] * len(seeds)
    if hasattr(backend, "sample_codes"):  # VQGAN: its prior draws the codes of each (seed, class)
        z = backend.sample_codes(seeds, classes)
    else:
        z = backend.draw_latents(seeds, truncation=truncation)
    return images_to_uint8(torch.from_numpy(backend.render(z, classes, truncation=truncation, batch_size=batch_size)))


def generator_quality(backend: GeneratorBackend, annotator: Annotator, cls: str, n: int = 2000,
                      truncation: float = 1.0, seed0: int = 0, gen_class: int | None = None) -> dict:
    """Object-found rates and annotator-space KID of ``n`` samples against ``n`` real
    renders (plus the real-vs-real KID floor from a second real set). For a class of a
    class-conditional generator (``gen_class``) also the share of samples in which the
    annotator sees the right object (its dominant class is ``cls``)."""
    fake = generator_samples(backend, range(seed0, seed0 + n), truncation, gen_class=gen_class)
    real_a, _, _ = toyworld.render_batch(range(QUALITY_SEED0, QUALITY_SEED0 + n), cls, backend.resolution)
    real_b, _, _ = toyworld.render_batch(range(QUALITY_SEED0 + n, QUALITY_SEED0 + 2 * n), cls, backend.resolution)
    found_fake = annotator.object_found(annotator.label(fake, cls), cls)
    found_real = annotator.object_found(annotator.label(real_a, cls), cls)
    e_fake, e_a, e_b = annotator.embed(fake), annotator.embed(real_a), annotator.embed(real_b)
    kid_fake, kid_fake_sd = kid(e_fake, e_a)
    kid_real, kid_real_sd = kid(e_b, e_a)
    return {
        "class": cls, "n": n, "truncation": truncation, "seed0": seed0, "real_seed0": QUALITY_SEED0,
        "object_found_generated": float(found_fake.mean()),
        "object_found_real": float(found_real.mean()),
        "kid_annotator_space": kid_fake, "kid_annotator_space_sd": kid_fake_sd,
        "kid_real_vs_real": kid_real, "kid_real_vs_real_sd": kid_real_sd,
        "right_class_generated": float((annotator.dominant_class(fake) == annotator.classes.index(cls)).mean()),
        "right_class_real": float((annotator.dominant_class(real_a) == annotator.classes.index(cls)).mean()),
        "generator_class": gen_class,
        "annotator_sha256": annotator.meta.get("sha256"),
        "generator_hash": backend.generator_hash,
    }
