"""openai/guided-diffusion's UNet, written from its description, with the same parameter names.

Its checkpoints (``ffhq.pt``, ``lsun_bedroom.pt``… as ddpm-segmentation uses
them) are plain ``state_dict`` files: the architecture comes from the command-line
flags of ``create_model_and_diffusion`` (:data:`MODEL_DEFAULTS`,
:data:`DIFFUSION_DEFAULTS`), which :func:`normalise_flags` completes as
guided-diffusion's argparse defaults do. The module tree here has the same
names (``input_blocks.N.M…``, ``middle_block``, ``output_blocks``, ``out``,
``time_embed``, ``label_emb``), so such a file loads with strict key matching
and a flag that does not fit names the tensor that disagrees.

What it computes: a sinusoidal timestep embedding (cos half first) through two
linear layers (plus a class embedding for ``class_cond``, 1000 classes);
residual blocks with GroupNorm(32) computed in float32, SiLU, and the embedding
added after the first conv or, with ``use_scale_shift_norm``, applied as
``norm(h) * (1 + scale) + shift``; attention at the chosen downsampling rates
(the "legacy" head split, or qkv split first with ``use_new_attention_order``;
scores scaled by ``ch^-1/4`` on both q and k, softmax in float32); nearest 2x
upsampling with a conv, strided-conv downsampling, or up/down residual blocks
with ``resblock_updown``. ``use_fp16`` is recorded, but the torso runs in
float32: the checkpoints hold float32 weights, and guided-diffusion's float16
torso differs from this only by float16 rounding. ``dropout`` and
``use_checkpoint`` do not change inference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 1000  # guided-diffusion's class-conditional models are ImageNet's

MODEL_DEFAULTS = dict(
    image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1, num_head_channels=-1,
    attention_resolutions="16,8", channel_mult="", dropout=0.0, class_cond=False, use_checkpoint=False,
    use_scale_shift_norm=True, resblock_updown=False, use_fp16=False, use_new_attention_order=False,
)
DIFFUSION_DEFAULTS = dict(
    learn_sigma=False, diffusion_steps=1000, noise_schedule="linear", timestep_respacing="", use_kl=False,
    predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False,
)
DEFAULT_CHANNEL_MULT = {512: "0.5,1,1,2,2,4,4", 256: "1,1,2,2,4,4", 128: "1,1,2,3,4", 64: "1,2,3,4"}


def _as_text(value) -> str:
    """A comma-separated flag given as a list in JSON, in the flag's own text form."""
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def normalise_flags(flags: dict) -> dict:
    """The full flag set of ``create_model_and_diffusion``: the given flags over its defaults,
    typed as its argparse types them; unknown flags are an error (a typo would go unnoticed)."""
    defaults = {**MODEL_DEFAULTS, **DIFFUSION_DEFAULTS}
    unknown = sorted(set(flags) - set(defaults))
    if unknown:
        raise ValueError(f"unknown guided-diffusion flags {unknown}; known: {sorted(defaults)}")
    out = {}
    for key, default in defaults.items():
        value = flags.get(key, default)
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "yes", "no", "1", "0", "t", "f", "y", "n"):
                    raise ValueError(f"guided-diffusion flag {key}={value!r} is not a boolean")
                value = value.lower() in ("true", "yes", "1", "t", "y")
            out[key] = bool(value)
        elif isinstance(default, str):
            out[key] = _as_text(value)
        else:
            out[key] = type(default)(value)
    if not out["channel_mult"] and out["image_size"] not in DEFAULT_CHANNEL_MULT:
        raise ValueError(f"guided-diffusion has no default channel_mult for image_size {out['image_size']}: "
                         "give channel_mult")
    if out["noise_schedule"] not in ("linear", "cosine"):
        raise ValueError(f"unknown noise_schedule {out['noise_schedule']!r} (linear or cosine)")
    return out


def channel_mult(flags: dict) -> tuple[float, ...]:
    text = flags["channel_mult"] or DEFAULT_CHANNEL_MULT[flags["image_size"]]
    return tuple(float(m) for m in text.split(","))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``[N, dim]`` sinusoids of (possibly fractional) steps: cosines, then sines."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32) computed in float32, cast back."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x):
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep (and class) embedding."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None,
                 scale_shift: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels * (2 if scale_shift else 1)))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x, emb):
        if self.updown:
            h = self.in_layers[2](self.h_upd(self.in_layers[:2](x)))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all positions; ``legacy`` splits heads before q, k, v."""

    def __init__(self, channels: int, num_heads: int, num_head_channels: int, new_order: bool):
        super().__init__()
        if num_head_channels != -1 and channels % num_head_channels:
            raise ValueError(f"attention channels {channels} are not a multiple of num_head_channels "
                             f"{num_head_channels}")
        self.heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        self.new_order = new_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        b, c, hh, ww = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        n = qkv.shape[-1]
        ch = c // self.heads
        if self.new_order:
            q, k, v = (u.reshape(b * self.heads, ch, n) for u in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(b * self.heads, ch * 3, n).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        w = torch.softmax(w.float(), dim=-1).type(w.dtype)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, -1, n)
        return (x + self.proj_out(a)).reshape(b, c, hh, ww)


class Stage(nn.ModuleList):
    """One of the UNet's numbered blocks: its layers in order, the embedding to residual blocks."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class GuidedUNet(nn.Module):
    """guided-diffusion's ``UNetModel`` built from ``create_model``'s flags.

    :meth:`forward` returns the model output and the outputs of the requested
    ``output_blocks`` (the decoder blocks ddpm-segmentation taps)."""

    def __init__(self, flags: dict):
        super().__init__()
        f = normalise_flags(flags)
        mc, mults, nres = f["num_channels"], channel_mult(f), f["num_res_blocks"]
        attn_ds = {f["image_size"] // int(r) for r in f["attention_resolutions"].split(",")}
        heads_up = f["num_heads"] if f["num_heads_upsample"] == -1 else f["num_heads_upsample"]
        ss, updown, new_order, hc = (f["use_scale_shift_norm"], f["resblock_updown"], f["use_new_attention_order"],
                                     f["num_head_channels"])
        self.model_channels, self.image_size = mc, f["image_size"]
        self.num_classes = NUM_CLASSES if f["class_cond"] else 0
        emb = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        if self.num_classes:
            self.label_emb = nn.Embedding(self.num_classes, emb)
        ch = input_ch = int(mults[0] * mc)
        self.input_blocks = nn.ModuleList([Stage([nn.Conv2d(3, ch, 3, padding=1)])])
        skip_chans, ds = [ch], 1
        for level, mult in enumerate(mults):
            for _ in range(nres):
                layers = [ResBlock(ch, emb, int(mult * mc), ss)]
                ch = int(mult * mc)
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, f["num_heads"], hc, new_order))
                self.input_blocks.append(Stage(layers))
                skip_chans.append(ch)
            if level != len(mults) - 1:
                self.input_blocks.append(Stage([ResBlock(ch, emb, ch, ss, down=True) if updown
                                                else Downsample(ch, True)]))
                skip_chans.append(ch)
                ds *= 2
        self.middle_block = Stage([ResBlock(ch, emb, None, ss), AttentionBlock(ch, f["num_heads"], hc, new_order),
                                   ResBlock(ch, emb, None, ss)])
        self.output_blocks = nn.ModuleList()
        self.output_shapes: list[tuple[int, int, int]] = []  # (C, h, w) of each output block
        for level, mult in list(enumerate(mults))[::-1]:
            for i in range(nres + 1):
                layers = [ResBlock(ch + skip_chans.pop(), emb, int(mc * mult), ss)]
                ch = int(mc * mult)
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, heads_up, hc, new_order))
                if level and i == nres:
                    layers.append(ResBlock(ch, emb, ch, ss, up=True) if updown else Upsample(ch, True))
                    ds //= 2
                self.output_blocks.append(Stage(layers))
                self.output_shapes.append((ch, f["image_size"] // ds, f["image_size"] // ds))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(),
                                 nn.Conv2d(input_ch, 6 if f["learn_sigma"] else 3, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                taps: tuple[int, ...] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Model output ``[N, 3 or 6, H, W]`` for inputs ``x`` at steps ``t`` (classes ``y``),
        and ``{i: output of output_blocks[i]}`` for ``i`` in ``taps``."""
        if (y is not None) != bool(self.num_classes):
            raise ValueError("a class per sample is required by class-conditional models and only by them")
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        if y is not None:
            emb = emb + self.label_emb(y)
        skips, h = [], x
        for stage in self.input_blocks:
            h = stage(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        tapped = {}
        for i, stage in enumerate(self.output_blocks):
            h = stage(torch.cat([h, skips.pop()], dim=1), emb)
            if i in taps:
                tapped[i] = h
        return self.out(h), tapped
