"""Train a toy VQGAN and its class-conditional transformer prior on toy-world images.

The recipe behind the shipped toy VQGAN, in two phases of one run:

1. **VQGAN** (taming's ``Encoder``/``Decoder``/``VectorQuantizer2`` layout, see
   :mod:`..generators.vqgan`) on images of every class **without labels**:
   reconstruction L1 + L2, the codebook loss ``||sg[z] − e||²`` plus the commitment
   loss ``β ||z − sg[e]||²`` (β 0.25, the VQ-VAE form that taming's
   ``legacy=False`` computes), the straight-through estimator for the decoder's
   input. No adversarial or perceptual term: no LPIPS weights exist offline, and
   the toy shapes reconstruct without one. Codes that no vector chose since the
   last check are restarted on random encoder outputs of the current batch during
   the first ``restart_until`` steps (taming has no restarts; without them a small
   codebook collapses to a few codes).
2. **Prior** (taming's ``Net2NetTransformer`` convention): a minGPT over the code
   indices in raster order, the class index as the start token (its
   ``Labelator``), trained with cross-entropy on the codes of fresh toy images and
   their class ids only.

Real images are rendered from toy-world seeds no test set uses, each step from new
seeds; everything is seeded and runs deterministically on the CPU. Each finished
phase is saved in the work folder, so an interrupted run repeats only the phase
it was in.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labelfactory.core.io import atomic_torch_save
from labelfactory.generators.taming_prior import GPT, PriorConfig
from labelfactory.generators.vqgan import VQGAN, DDConfig, VQGANConfig
from labelfactory.toybench import world as toyworld
from labelfactory.toybench.recipes.gan import TRAIN_SEED_OFFSET

log = logging.getLogger(__name__)


@dataclass
class VQGANTrainConfig:
    """Both phases' recipe (architecture, data, optimisation); recorded in the sidecar."""

    size: int = 32
    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 1, 1)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = ()
    z_channels: int = 64
    embed_dim: int = 32
    n_embed: int = 512
    classes: tuple[str, ...] = toyworld.CLASSES
    seed: int = 0
    threads: int = 1
    # phase 1: the VQGAN
    batch: int = 32
    steps: int = 2000
    lr: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.9)
    warmup: int = 50
    beta: float = 0.25
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    restart_every: int = 100
    restart_until: int = 1400
    # phase 2: the prior
    prior_layers: int = 4
    prior_heads: int = 4
    prior_embd: int = 96
    prior_images_per_class: int = 5000
    prior_batch: int = 64
    prior_steps: int = 1500
    prior_lr: float = 1e-3
    prior_warmup: int = 100
    prior_weight_decay: float = 0.01
    log_every: int = 50

    def __post_init__(self):
        self.ch_mult = tuple(self.ch_mult)
        self.attn_resolutions = tuple(self.attn_resolutions)
        self.classes = tuple(self.classes)
        self.betas = tuple(self.betas)

    def vqgan_config(self, prior: bool = True) -> VQGANConfig:
        dd = DDConfig(ch=self.ch, out_ch=3, ch_mult=self.ch_mult, num_res_blocks=self.num_res_blocks,
                      attn_resolutions=self.attn_resolutions, in_channels=3, resolution=self.size,
                      z_channels=self.z_channels, double_z=False)
        grid = self.size // 2 ** (len(self.ch_mult) - 1)
        pc = PriorConfig(vocab_size=self.n_embed, block_size=grid * grid, n_layer=self.prior_layers,
                         n_head=self.prior_heads, n_embd=self.prior_embd, n_classes=len(self.classes))
        return VQGANConfig(self.embed_dim, self.n_embed, dd, pc if prior else None)

    def phase_dict(self, phase: str) -> dict:
        """The fields a phase's result depends on (the prior's include the VQGAN's)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("threads", "log_every")}
        return d if phase == "prior" else {k: v for k, v in d.items() if not k.startswith("prior_")}


def learning_rate(step: int, total: int, warmup: int, lr: float) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to a tenth of ``lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))


def toy_images(seeds: np.ndarray, classes: np.ndarray, cfg: VQGANTrainConfig) -> torch.Tensor:
    """Toy-world renders of (seed, class) pairs as float ``[N, 3, H, W]`` in [-1, 1]."""
    imgs = np.empty((len(seeds), cfg.size, cfg.size, 3), dtype=np.uint8)
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        imgs[idx] = toyworld.render_batch(seeds[idx].tolist(), cfg.classes[c], cfg.size)[0]
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def training_batch(cfg: VQGANTrainConfig, step: int) -> torch.Tensor:
    """The VQGAN's images of ``step``: new seeds each step, classes drawn at random (and not returned)."""
    classes = np.random.default_rng([cfg.seed, step]).integers(0, len(cfg.classes), cfg.batch)
    return toy_images(TRAIN_SEED_OFFSET + step * cfg.batch + np.arange(cfg.batch), classes, cfg)


def prior_data(cfg: VQGANTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Seeds and classes of the prior's images: ``prior_images_per_class`` of each class,
    seeds after every seed the VQGAN saw."""
    n = cfg.prior_images_per_class
    seeds = TRAIN_SEED_OFFSET + cfg.steps * cfg.batch + np.arange(n * len(cfg.classes))
    return seeds, np.repeat(np.arange(len(cfg.classes)), n)


def vq_forward(model: VQGAN, x: torch.Tensor):
    """Reconstruction (straight-through), encoder output ``z`` and its codes ``e``: ``(x̂, z, e, codes)``."""
    z = model.quant_conv(model.encoder(x))
    codes = model.quantize.codes(z)
    e = model.quantize.lookup(codes)
    x_hat, _ = model.decoder(model.post_quant_conv(z + (e - z).detach()))
    return x_hat, z, e, codes


def vq_loss(model: VQGAN, x: torch.Tensor, cfg: VQGANTrainConfig) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """The phase-1 objective on a batch; also its parts and the codes ``[B, h, w]``."""
    x_hat, z, e, codes = vq_forward(model, x)
    l1, l2 = (x_hat - x).abs().mean(), F.mse_loss(x_hat, x)
    codebook, commit = F.mse_loss(e, z.detach()), F.mse_loss(z, e.detach())  # equal values, other gradients
    loss = cfg.l1_weight * l1 + cfg.l2_weight * l2 + codebook + cfg.beta * commit
    psnr = 10 * math.log10(4.0 / max(F.mse_loss(x_hat.detach().clamp(-1, 1), x).item(), 1e-12))
    parts = {"l1": l1.item(), "l2": l2.item(), "quantization_mse": codebook.item(), "psnr": psnr}
    return loss, parts, codes


@torch.no_grad()
def restart_dead_codes(model: VQGAN, used: torch.Tensor, x: torch.Tensor, gen: torch.Generator) -> int:
    """Move every code not in ``used`` (bool ``[n_embed]``) onto a random encoder output
    vector of ``x``; returns how many moved."""
    dead = torch.nonzero(~used).flatten()
    if len(dead) == 0:
        return 0
    z = model.quant_conv(model.encoder(x))
    vectors = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    pick = torch.randint(0, len(vectors), (len(dead),), generator=gen)
    model.quantize.embedding.weight[dead] = vectors[pick]
    return len(dead)


def _record(history: Path, rec: dict) -> None:
    with open(history, "a") as f:
        f.write(json.dumps(rec) + "\n")


def train_vqgan(cfg: VQGANTrainConfig, history: Path) -> VQGAN:
    """Phase 1: the VQGAN without a prior (codebook initialised as taming's, U(−1/n, 1/n))."""
    torch.manual_seed(cfg.seed)
    model = VQGAN(cfg.vqgan_config(prior=False))
    nn.init.uniform_(model.quantize.embedding.weight, -1.0 / cfg.n_embed, 1.0 / cfg.n_embed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    gen = torch.Generator().manual_seed(cfg.seed)
    used = torch.zeros(cfg.n_embed, dtype=torch.bool)
    t0 = time.time()
    model.train()
    for step in range(cfg.steps):
        x = training_batch(cfg, step)
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, cfg.steps, cfg.warmup, cfg.lr)
        loss, parts, codes = vq_loss(model, x, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        used[codes.unique()] = True
        done = step + 1
        window = {}
        if done % cfg.restart_every == 0:
            window["codes_used_last_window"] = int(used.sum())
            if done <= cfg.restart_until:
                window["restarted"] = restart_dead_codes(model, used, x, gen)
            used.zero_()
        if done % cfg.log_every == 0 or done == cfg.steps or window:
            rec = {"phase": "vqgan", "step": done, "loss": loss.item(), **parts,
                   "codes_in_batch": int(codes.unique().numel()), **window,
                   "elapsed_s": time.time() - t0}
            _record(history, rec)
            log.info("vqgan step %d/%d loss %.4f psnr %.2f dB codes/batch %d", done, cfg.steps, rec["loss"],
                     parts["psnr"], rec["codes_in_batch"])
    return model.eval()


@torch.no_grad()
def encode_images(model: VQGAN, seeds: np.ndarray, classes: np.ndarray, cfg: VQGANTrainConfig,
                  batch: int = 256) -> np.ndarray:
    """int64 code sequences ``[N, h*w]`` (raster order) of the toy images of (seed, class)."""
    out = [model.encode(toy_images(seeds[i : i + batch], classes[i : i + batch], cfg)).flatten(1)
           for i in range(0, len(seeds), batch)]
    return torch.cat(out).numpy()


def init_gpt(gpt: GPT) -> None:
    """minGPT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorms."""
    for m in gpt.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.normal_(gpt.pos_emb, 0.0, 0.02)


def prior_loss(gpt: GPT, codes: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every code given the class token and the codes before it."""
    x = torch.cat([classes[:, None], codes[:, :-1]], dim=1)
    logits, _ = gpt(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))


def train_prior(cfg: VQGANTrainConfig, codes: np.ndarray, classes: np.ndarray, history: Path,
                elapsed0: float = 0.0) -> GPT:
    """Phase 2: the class-conditional minGPT on ``codes`` ``[N, h*w]`` with their ``classes``;
    a tenth of the sequences (every tenth) is held out to log the validation loss."""
    torch.manual_seed(cfg.seed)
    gpt = GPT(cfg.vqgan_config().prior)
    init_gpt(gpt)
    linear = {id(m.weight) for m in gpt.modules() if isinstance(m, nn.Linear)}  # minGPT decays these only
    decay = [p for p in gpt.parameters() if id(p) in linear]
    rest = [p for p in gpt.parameters() if id(p) not in linear]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.prior_weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.prior_lr, betas=(0.9, 0.95))
    codes_t, classes_t = torch.from_numpy(codes), torch.from_numpy(classes).long()
    val = torch.arange(len(codes)) % 10 == 0
    train_idx, val_idx = torch.nonzero(~val).flatten(), torch.nonzero(val).flatten()
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.time()
    for step in range(cfg.prior_steps):
        idx = train_idx[torch.randint(0, len(train_idx), (cfg.prior_batch,), generator=gen)]
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, cfg.prior_steps, cfg.prior_warmup, cfg.prior_lr)
        loss = prior_loss(gpt, codes_t[idx], classes_t[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gpt.parameters(), 1.0)
        opt.step()
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.prior_steps:
            rec = {"phase": "prior", "step": done, "loss": loss.item(), "elapsed_s": elapsed0 + time.time() - t0}
            if done % (4 * cfg.log_every) == 0 or done == cfg.prior_steps:
                with torch.no_grad():
                    rec["val_loss"] = float(np.mean([prior_loss(gpt, codes_t[v], classes_t[v]).item()
                                                     for v in val_idx.split(512)]))
            _record(history, rec)
            log.info("prior step %d/%d loss %.4f%s", done, cfg.prior_steps, rec["loss"],
                     f" val {rec['val_loss']:.4f}" if "val_loss" in rec else "")
    return gpt.eval()


def _load_phase(path: Path, cfg: VQGANTrainConfig, phase: str) -> dict | None:
    """A saved phase result if it was made with the same recipe (else None: train it again)."""
    if not path.exists():
        return None
    st = torch.load(path, map_location="cpu", weights_only=True)
    if json.loads(st["config"]) != json.loads(json.dumps(cfg.phase_dict(phase))):
        log.info("%s: made with another recipe, training %s again", path, phase)
        return None
    log.info("%s: reusing the finished %s phase", path, phase)
    return st


def train(cfg: VQGANTrainConfig, work: Path) -> VQGAN:
    """Both phases; returns the VQGAN with its prior (eval mode). ``work`` gets
    ``history.jsonl`` (``elapsed_s`` counts both phases' training) and each phase's result."""
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    history = work / "history.jsonl"
    vq_path, prior_path = work / "vqgan.pt", work / "prior.pt"
    st = _load_phase(vq_path, cfg, "vqgan")
    if st is None:
        history.unlink(missing_ok=True)
        prior_path.unlink(missing_ok=True)
        t0 = time.time()
        vq = train_vqgan(cfg, history)
        st = {"state": vq.state_dict(), "elapsed": time.time() - t0,
              "config": json.dumps(cfg.phase_dict("vqgan"))}
        atomic_torch_save(st, vq_path)
    model = VQGAN(cfg.vqgan_config())
    model.load_state_dict({**model.state_dict(), **st["state"]})
    elapsed = float(st["elapsed"])
    pst = _load_phase(prior_path, cfg, "prior")
    if pst is None:
        keep = [l for l in history.read_text().splitlines() if json.loads(l)["phase"] == "vqgan"]
        history.write_text("".join(l + "\n" for l in keep))
        t0 = time.time()
        seeds, classes = prior_data(cfg)
        codes = encode_images(model, seeds, classes, cfg)
        gpt = train_prior(cfg, codes, classes, history, elapsed + time.time() - t0)
        pst = {"state": gpt.state_dict(), "elapsed": time.time() - t0,
               "config": json.dumps(cfg.phase_dict("prior"))}
        atomic_torch_save(pst, prior_path)
    model.transformer.load_state_dict(pst["state"])
    return model.eval()
