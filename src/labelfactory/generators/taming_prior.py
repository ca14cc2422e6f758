"""taming-transformers' transformer prior over VQGAN codes (``Net2NetTransformer``), pure PyTorch.

The prior is minGPT as in ``taming/modules/transformer/mingpt.py`` (``GPT``; the
parameter names are its own: ``tok_emb``, ``pos_emb``, ``blocks.{i}.{ln1,ln2}``,
``blocks.{i}.attn.{key,query,value,proj}`` with the causal ``mask`` buffer,
``blocks.{i}.mlp.{0,2}``, ``ln_f``, ``head``). One condition token comes before the
codes, from the cond stage of the config: the class label itself (``Labelator``, as
ImageNet's class-conditional ``cin_transformer``) or a fixed ``sos_token``
(``__is_unconditional__``, ``SOSProvider``).

:func:`sample` draws codes as ``mingpt.sample_with_past`` does (called so by the
release's ``scripts/sample_fast.py``): token by token with cached keys and values,
``logits / temperature``, filtered like ``top_k_top_p_filtering`` of transformers
4.3.1 (the release's pin; see :func:`filter_logits`), softmax, ``torch.multinomial``.
The draws come from one CPU ``torch.Generator`` per sample, so a sample depends only
on (weights, seed, condition), not on the batch or device it was drawn with.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

GPT_TARGET = "taming.modules.transformer.mingpt.GPT"
LABELATOR_TARGET = "taming.modules.util.Labelator"
IDENTITY_PERMUTER = "taming.modules.transformer.permuter.Identity"
# GPT's constructor arguments; the dropout rates do nothing in eval mode
_GPT_KEYS = {"vocab_size", "block_size", "n_layer", "n_head", "n_embd", "n_unmasked",
             "embd_pdrop", "resid_pdrop", "attn_pdrop"}


@dataclass
class PriorConfig:
    """minGPT's sizes and the condition: ``n_classes`` class tokens (0: unconditional,
    every sequence starts with ``sos_token``)."""

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    n_unmasked: int = 0
    n_classes: int = 0
    sos_token: int = 0

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"prior n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        if self.n_classes > self.vocab_size or not 0 <= self.sos_token < self.vocab_size:
            raise ValueError(f"prior condition tokens (n_classes {self.n_classes}, sos_token {self.sos_token}) "
                             f"must be token ids below vocab_size {self.vocab_size}")

    @classmethod
    def from_dict(cls, d: dict) -> "PriorConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"prior config: unknown {unknown}")
        return cls(**d)

    @classmethod
    def from_taming(cls, params: dict) -> "PriorConfig":
        """From the ``model.params`` of a Net2NetTransformer config (the cond stage resolved
        in taming's order: first stage, then unconditional, then a model)."""
        tc = params.get("transformer_config") or {}
        if tc.get("target") != GPT_TARGET:
            raise ValueError(f"transformer target {tc.get('target')!r} is not supported (only {GPT_TARGET})")
        gpt = dict(tc.get("params") or {})
        unknown = sorted(set(gpt) - _GPT_KEYS)
        if unknown:
            raise ValueError(f"transformer_config params: unknown {unknown}")
        permuter = (params.get("permuter_config") or {}).get("target", IDENTITY_PERMUTER)
        if permuter != IDENTITY_PERMUTER:
            raise ValueError(f"permuter {permuter!r} is not supported (only {IDENTITY_PERMUTER})")
        cond = params.get("cond_stage_config")
        sizes = {k: int(v) for k, v in gpt.items() if not k.endswith("_pdrop")}
        if cond == "__is_first_stage__":
            raise ValueError("cond stage __is_first_stage__ (image-conditioned) is not supported")
        if cond == "__is_unconditional__" or params.get("unconditional", False):
            return cls(**sizes, sos_token=int(params.get("sos_token", 0)))
        if not isinstance(cond, dict) or cond.get("target") != LABELATOR_TARGET:
            target = cond.get("target") if isinstance(cond, dict) else cond
            raise ValueError(f"cond stage {target!r} is not supported (only class labels via {LABELATOR_TARGET} "
                             "or __is_unconditional__)")
        return cls(**sizes, n_classes=int((cond.get("params") or {})["n_classes"]))

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.n_head = cfg.n_head
        for name in ("key", "query", "value", "proj"):
            self.add_module(name, nn.Linear(cfg.n_embd, cfg.n_embd))
        mask = torch.tril(torch.ones(cfg.block_size, cfg.block_size))
        mask[: cfg.n_unmasked, : cfg.n_unmasked] = 1
        self.register_buffer("mask", mask.view(1, 1, cfg.block_size, cfg.block_size))

    def forward(self, x, past: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Attend over ``past`` keys/values (then ``x`` is one new token) or causally within ``x``."""
        b, t, c = x.shape

        def heads(y):
            return y.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)

        k, q, v = heads(self.key(x)), heads(self.query(x)), heads(self.value(x))
        if past is not None:
            k, v = torch.cat((past[0], k), dim=-2), torch.cat((past[1], v), dim=-2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        if past is None:
            att = att.masked_fill(self.mask[:, :, :t, :t] == 0, float("-inf"))
        y = (F.softmax(att, dim=-1) @ v).transpose(1, 2).contiguous().view(b, t, c)
        return self.proj(y), (k, v)


class Block(nn.Module):
    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.n_embd), nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        c = cfg.n_embd
        self.mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c))

    def forward(self, x, past=None):
        a, present = self.attn(self.ln1(x), past)
        x = x + a
        return x + self.mlp(self.ln2(x)), present


class GPT(nn.Module):
    """minGPT; ``forward(idx, past, start)`` → logits ``[B, T, vocab]`` and the keys/values
    of every layer so far (``idx`` sits at positions ``start ..``)."""

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.block_size, cfg.n_embd))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor, past: list | None = None, start: int = 0):
        t = idx.shape[1]
        if start + t > self.cfg.block_size:
            raise ValueError(f"sequence of {start + t} tokens exceeds the prior's block_size {self.cfg.block_size}")
        x = self.tok_emb(idx) + self.pos_emb[:, start : start + t]
        presents = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, None if past is None else past[i])
            presents.append(present)
        return self.head(self.ln_f(x)), presents


def check_sampling(temperature: float, top_k: int | None, top_p: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float = 1.0) -> torch.Tensor:
    """``[B, V]`` logits with the tokens outside top-k, then outside the nucleus, at -inf.

    As ``sample_with_past`` filters when given ``top_k``: transformers 4.3.1 keeps the
    ``min(top_k, V)`` largest (ties at the k-th all stay), then always applies top-p:
    sorted descending, a token goes once the cumulative probability *before* it
    exceeds ``top_p`` (the first always stays) — even at ``top_p = 1`` that drops
    tokens whose cumulative sum rounds above 1. Without ``top_k`` the release does not
    filter; here ``top_p < 1`` alone still applies the nucleus."""
    if top_k is None and top_p >= 1.0:
        return logits
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]))[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    sorted_logits, order = torch.sort(logits, descending=True)
    remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) > top_p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = False
    return logits.masked_fill(remove.scatter(1, order, remove), float("-inf"))


@torch.no_grad()
def sample(gpt: GPT, cond: torch.Tensor, steps: int, generators: Sequence[torch.Generator],
           temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0) -> torch.Tensor:
    """``steps`` tokens ``[B, steps]`` after the condition tokens ``cond`` ``[B]``; row ``i``
    draws from ``generators[i]`` (CPU)."""
    check_sampling(temperature, top_k, top_p)
    x, past, out = cond[:, None], None, []
    for n in range(steps):
        logits, past = gpt(x, past, start=n)
        probs = F.softmax(filter_logits(logits[:, -1] / temperature, top_k, top_p), dim=-1).float().cpu()
        x = torch.cat([torch.multinomial(probs[i : i + 1], 1, generator=g) for i, g in enumerate(generators)])
        x = x.to(cond.device)
        out.append(x)
    return torch.cat(out, dim=1)


__all__ = ["PriorConfig", "GPT", "filter_logits", "sample", "check_sampling"]
