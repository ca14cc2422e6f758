"""Active learning: choose the next generated samples to annotate by ensemble uncertainty.

A pool of candidate latents (seeded, so every pick is reproducible) is rendered
and labelled by the current interpreter ensemble; each candidate is scored by
the members' Jensen–Shannon divergence exactly as synthesis scores samples
(:func:`labelfactory.synthesis.uncertainty.image_scores`). The ``k`` most uncertain are
picked, or, with diversity, the ``oversample · k`` most uncertain are thinned to
``k`` spread-out ones by greedy k-center on their pooled generator features
(each layer's feature map averaged over space, standardised). ``random``
selection draws ``k`` candidates uniformly, the baseline active learning must
beat. The picks are handed out with :func:`labelfactory.annotations.annotation_set.sample_for_annotation`.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from labelfactory.annotations.annotation_set import load_annotation_set
from labelfactory.generators.base import GeneratorBackend
from labelfactory.interpreters import Interpreter, interpreter_features, load_interpreter
from labelfactory.synthesis.uncertainty import image_scores, js_divergence

SELECT_MODES = ("random", "uncertainty")
DIVERSITY_MODES = ("none", "kcenter")


def kcenter_greedy(points: np.ndarray, k: int, first: int = 0) -> np.ndarray:
    """Indices of ``k`` of ``points`` ``[N, D]``, starting at ``first``, each next one the
    point farthest (Euclidean) from those already chosen (Gonzalez's 2-approximation of
    k-center); ties go to the lowest index."""
    points = np.asarray(points, dtype=np.float64)
    if not 0 < k <= len(points):
        raise ValueError(f"cannot choose {k} of {len(points)} points")
    chosen = [first]
    dist = np.linalg.norm(points - points[first], axis=1)
    while len(chosen) < k:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(points - points[nxt], axis=1))
    return np.asarray(chosen, dtype=np.int64)


def select_uncertain(scores: np.ndarray, k: int, features: np.ndarray | None = None,
                     oversample: float = 1.0) -> np.ndarray:
    """Indices of the ``k`` highest ``scores`` (most uncertain first; ties: lowest index).
    With ``features`` ``[N, D]`` and ``oversample`` > 1, k-center thins the
    ``ceil(oversample · k)`` most uncertain to ``k``, starting at the most uncertain."""
    scores = np.asarray(scores, dtype=np.float64)
    if not 0 < k <= len(scores):
        raise ValueError(f"cannot choose {k} of {len(scores)} candidates")
    order = np.argsort(-scores, kind="stable")
    if features is None or oversample <= 1:
        return order[:k]
    top = order[: min(len(order), int(np.ceil(oversample * k)))]
    feats = np.asarray(features, dtype=np.float64)[top]
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-8)
    return top[kcenter_greedy(feats, k)]


@torch.no_grad()
def score_candidates(backend: GeneratorBackend, interpreter: Interpreter, seeds: Sequence[int], truncation: float = 1.0,
                     noise: str = "const", batch_size: int = 64, score_rule: str = "top10",
                     top_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Per-candidate uncertainty ``[N]`` (as synthesis scores samples) and pooled generator
    features ``[N, sum of layer channels]`` of an unconditional generator's seeds."""
    seeds = np.asarray(seeds, dtype=np.int64)
    scores, pooled = [], []
    for start in range(0, len(seeds), batch_size):
        batch = seeds[start : start + batch_size]
        z = torch.from_numpy(backend.draw_latents(batch, truncation=truncation)).to(backend.device)
        generator = None
        if noise == "random":  # seeded from the batch's seeds, as synthesis does
            state = int(np.random.SeedSequence(batch.tolist()).generate_state(1)[0])
            generator = torch.Generator(device=backend.device).manual_seed(state)
        out = backend.synthesize(z, None, truncation, noise, features=True, generator=generator)
        js = js_divergence(interpreter.member_probabilities(interpreter_features(interpreter, out.features, out.images)),
                           dim=2)
        scores.append(image_scores(js, score_rule, top_fraction).float().cpu().numpy())
        pooled.append(torch.cat([f.float().mean((2, 3)) for f in out.features.values()], 1).cpu().numpy())
    return np.concatenate(scores), np.concatenate(pooled)


def candidate_seeds(pool_start: int, pool_size: int, exclude: Sequence[int] = ()) -> np.ndarray:
    """The pool's seeds ``pool_start …`` less those already annotated."""
    pool = np.arange(pool_start, pool_start + pool_size, dtype=np.int64)
    return pool[~np.isin(pool, np.asarray(list(exclude), dtype=np.int64))]


def choose_seeds(select: str, pool: np.ndarray, k: int, *, backend: GeneratorBackend | None = None,
                 interpreter: Interpreter | None = None, diversity: str = "none", oversample: float = 1.0,
                 draw: int = 0, **score_options) -> np.ndarray:
    """The ``k`` seeds of ``pool`` to annotate next: ``random`` (a uniform draw, seeded by
    ``draw``) or ``uncertainty`` (the ensemble's most uncertain, k-center thinned with
    ``diversity="kcenter"``; ``score_options`` go to :func:`score_candidates`)."""
    if select not in SELECT_MODES:
        raise ValueError(f"select must be one of {SELECT_MODES}, got {select!r}")
    if diversity not in DIVERSITY_MODES:
        raise ValueError(f"diversity must be one of {DIVERSITY_MODES}, got {diversity!r}")
    if not 0 < k <= len(pool):
        raise ValueError(f"cannot choose {k} samples from a pool of {len(pool)} unannotated candidates")
    if select == "random":
        return np.sort(np.random.default_rng(draw).choice(pool, k, replace=False))
    if backend is None or interpreter is None:
        raise ValueError("uncertainty selection needs the generator and the current interpreter")
    scores, pooled = score_candidates(backend, interpreter, pool, **score_options)
    picked = select_uncertain(scores, k, pooled if diversity == "kcenter" else None, oversample)
    return pool[picked]


def next_round_seeds(selection: dict, backend: GeneratorBackend, annotated: Sequence[str | os.PathLike],
                     interpreter: str | os.PathLike | None = None, **score_options) -> np.ndarray:
    """One active-learning round: the seeds to hand out next.

    ``selection`` holds the round's settings (``select``, ``k``, ``pool_start``,
    ``pool_size``, ``diversity``, ``oversample``, ``draw``, ``interpreter_type``);
    ``annotated`` are the annotation sets whose seeds leave the pool, and
    ``interpreter`` the weights of the current ensemble (needed for ``uncertainty``)."""
    done = [seed for path in annotated for seed in load_annotation_set(path).seeds]
    current = None if interpreter is None else \
        load_interpreter(selection["interpreter_type"], interpreter, backend.device)
    return choose_seeds(selection["select"], candidate_seeds(selection["pool_start"], selection["pool_size"], done),
                        selection["k"], backend=backend, interpreter=current, diversity=selection["diversity"],
                        oversample=selection["oversample"], draw=selection["draw"], **score_options)
