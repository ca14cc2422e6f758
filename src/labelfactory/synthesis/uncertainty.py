"""Ensemble disagreement and labels from member probabilities, batched in torch.

DatasetGAN scores each generated image by the Jensen–Shannon divergence among
its interpreter's members, per pixel, summarised per image as the mean of the
most uncertain 10% of pixels; the most uncertain images are then dropped.
Everything here runs on whatever device the probabilities live on.
"""

from __future__ import annotations

import torch

SCORE_RULES = ("top10", "mean")


def entropy(probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy in nats along ``dim``, with 0·log 0 = 0."""
    return torch.special.entr(probs).sum(dim)


def js_divergence(probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Jensen–Shannon divergence among members, H(mean_m p_m) − mean_m H(p_m), in nats.

    ``probs`` holds the members along dim 0 and the classes along ``dim`` (e.g.
    ``[M, B, C, H, W]`` with ``dim=2``); both dims are reduced. The result lies
    in [0, ln M]; rounding below 0 is clipped.
    """
    d = dim % probs.ndim
    if d == 0:
        raise ValueError("dim 0 holds the ensemble members; give the class dim")
    return (entropy(probs.mean(0), d - 1) - entropy(probs, d).mean(0)).clamp_min(0)


def image_scores(js: torch.Tensor, rule: str = "top10", top_fraction: float = 0.1) -> torch.Tensor:
    """Per-image uncertainty ``[B]`` of per-pixel divergences ``[B, H, W]``.

    ``'top10'``: mean of the largest ``floor(top_fraction · H·W)`` pixels (at
    least one), DatasetGAN's released score; ``'mean'``: mean over all pixels.
    """
    flat = js.flatten(1)
    if rule == "mean":
        return flat.mean(1)
    if rule == "top10":
        if not 0 < top_fraction <= 1:
            raise ValueError(f"top_fraction must lie in (0, 1], got {top_fraction}")
        k = max(1, int(flat.shape[1] * top_fraction + 1e-9))  # 1e-9: n·f may round to just below an integer
        return flat.topk(k, dim=1).values.mean(1)
    raise ValueError(f"unknown score rule {rule!r}; known: {', '.join(SCORE_RULES)}")


def vote_labels(probs: torch.Tensor) -> torch.Tensor:
    """Majority vote ``[B, H, W]`` of the members' argmax maps from probabilities ``[M, B, C, H, W]``.

    Ties (within a member's probabilities and between vote counts) go to the
    lowest class id, as ``torch.argmax`` returns the first maximum.
    """
    m, b, c, h, w = probs.shape
    votes = probs.argmax(2).transpose(0, 1)  # [B, M, H, W]
    counts = torch.zeros(b, c, h, w, dtype=torch.int32, device=probs.device)
    counts.scatter_add_(1, votes, torch.ones(1, dtype=torch.int32, device=probs.device).expand(b, m, h, w))
    return counts.argmax(1)


def mean_labels(probs: torch.Tensor) -> torch.Tensor:
    """Argmax ``[B, H, W]`` of the members' mean probability ``[M, B, C, H, W]`` (ties: lowest class id)."""
    return probs.mean(0).argmax(1)
