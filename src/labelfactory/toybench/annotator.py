"""The simulated annotator: a segmentation network that stands in for the human.

In DatasetGAN a person labels a handful of generated images. Here a compact
UNet, trained on many labelled toy-world images, does it: it labels the
generated images chosen for annotation and later measures the label error of
synthetic data. One network serves every class it was trained on: it predicts
their joint part space :func:`toyworld.part_space` (the shipped annotator: the
four object classes'; the small-parts portrait has its own), and
:meth:`Annotator.label` restricts the argmax to background plus the asked
class's parts.

Training images are rendered on the fly from seeds ``TRAIN_SEED0 + i`` (class
``i mod len(classes)``); evaluation uses fresh seeds from ``EVAL_SEED0``, so the
two never meet each other or the GAN's training seeds.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labelfactory.core.io import atomic_path, atomic_write_json, sha256_file
from labelfactory.core.metrics import confusion_matrix
from labelfactory.generators.checkpoints import CheckpointError, read_sidecar, sidecar_path
from labelfactory.toybench import world as toyworld

log = logging.getLogger(__name__)

TRAIN_SEED0 = 2_000_000_000  # toy-world seeds of annotator training images start here
EVAL_SEED0 = 3_000_000_000  # toy-world seeds of annotator evaluation images start here
ARCH = "labelfactory.annotator.unet"  # the shipped weights' sidecar says so: a format name, not the module path


# --- network ---------------------------------------------------------------------
def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """UNet with ``levels`` 2× poolings; level ``i`` has ``width * min(i + 1, max_mult)``
    channels (linear growth keeps it under 1M parameters at width 32). Input
    ``[N,3,H,W]`` in [-1, 1] with H, W divisible by ``2**levels``; output logits
    ``[N,n_labels,H,W]``."""

    def __init__(self, n_labels: int, width: int = 32, levels: int = 3, max_mult: int = 4):
        super().__init__()
        self.arch_config = {"n_labels": n_labels, "width": width, "levels": levels, "max_mult": max_mult}
        w = [width * min(i + 1, max_mult) for i in range(levels + 1)]
        self.enc = nn.ModuleList([_block(3, w[0])] + [_block(w[i], w[i + 1]) for i in range(levels)])
        self.dec = nn.ModuleList([_block(w[i + 1] + w[i], w[i]) for i in reversed(range(levels))])
        self.head = nn.Conv2d(w[0], n_labels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = self.arch_config["levels"]
        if x.shape[-1] % 2**levels or x.shape[-2] % 2**levels:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not divisible by {2**levels}")
        skips = []
        for i, block in enumerate(self.enc):
            x = block(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        skips.pop()
        for block in self.dec:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skips.pop()], 1))
        return self.head(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled bottleneck features ``[N, C]`` (an image embedding
        that knows the toy world, used for KID of generators)."""
        for i, block in enumerate(self.enc):
            x = block(F.max_pool2d(x, 2) if i else x)
        return x.mean((2, 3))


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N,H,W,3]`` → float ``[N,3,H,W]`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def class_label_ids(cls: int | str, classes: tuple[str, ...] = toyworld.CLASSES) -> list[int]:
    """Ids in the joint space of ``classes`` of a class's own labels: background, then its
    parts in order."""
    name = toyworld.class_name(cls)
    if name not in classes:
        raise ValueError(f"toy-world class {name!r} is not one of this annotator's classes {list(classes)}")
    off = toyworld.part_offset(name, classes)
    return [0] + [off + 1 + p for p in range(len(toyworld.PARTS[name]))]


@torch.no_grad()
def predict_parts(model: UNet, images: np.ndarray, cls: int | str, batch: int = 256,
                  classes: tuple[str, ...] = toyworld.CLASSES) -> np.ndarray:
    """Part masks uint8 ``[N,H,W]`` in the class's own label space (0 = background,
    1..P), the argmax restricted to background and that class's parts (``classes``: the
    ones the model was trained on)."""
    model.eval()
    ids = torch.tensor(class_label_ids(cls, classes))
    out = [model(to_input(images[i : i + batch]))[:, ids].argmax(1).to(torch.uint8)
           for i in range(0, len(images), batch)]
    return torch.cat(out).numpy() if out else np.zeros(images.shape[:3], np.uint8)


# --- training ----------------------------------------------------------------------
@dataclass
class AnnotatorConfig:
    """Training recipe. Augmentation strengths are maxima of per-image random draws;
    each augmentation is applied to a share ``aug_prob`` of the images."""

    size: int = 32  # divisible by 8 (UNet poolings, 8×8 DCT blocks)
    classes: tuple[str, ...] = toyworld.CLASSES
    width: int = 32
    levels: int = 3
    max_mult: int = 4
    steps: int = 2000
    batch: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: float = 0.1  # share of steps spent ramping up the one-cycle learning rate
    dice_weight: float = 0.5
    seed: int = 0
    threads: int = 2
    aug_prob: float = 0.5
    brightness: float = 0.15  # additive, in [-1, 1] units
    contrast: float = 0.3  # log-scale factor about the image mean
    saturation: float = 0.4  # blend towards (<1) or away from (>1) grey
    channel_gain: float = 0.12  # log-scale per-channel gain (white balance / hue drift)
    blur_sigma: float = 0.9  # Gaussian blur sigma in pixels
    resample_min: float = 0.5  # downsample-upsample to at least this share of the size
    jpeg_step: float = 0.06  # 8×8 DCT quantisation step at DC, grows with frequency
    noise: float = 0.06  # Gaussian pixel noise sigma, in [-1, 1] units

    def model(self) -> UNet:
        return UNet(len(toyworld.part_space(self.classes)), self.width, self.levels, self.max_mult)


def training_batch(cfg: AnnotatorConfig, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[B,3,H,W]`` in [-1, 1] and joint-space labels ``[B,H,W]`` of ``step``."""
    images, labels = [], []
    for i in range(step * cfg.batch, (step + 1) * cfg.batch):
        cls = cfg.classes[i % len(cfg.classes)]
        scene = toyworld.render(TRAIN_SEED0 + i, cls, cfg.size)
        images.append(scene.image)
        labels.append(np.where(scene.parts > 0, scene.parts + toyworld.part_offset(cls, cfg.classes), 0))
    return to_input(np.stack(images)), torch.from_numpy(np.stack(labels).astype(np.int64))


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable blur of each image with its own sigma (reflect padding)."""
    n, c, h, w = x.shape
    r = max(1, math.ceil(3 * float(sigma.max())))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [n*c, 2r+1]
    y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def _dct_matrix(n: int = 8) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float32)
    m = torch.cos(math.pi * (2 * k[None] + 1) * k[:, None] / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


def _dct_quantise(x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """JPEG-like artefacts: quantise each 8×8 block's orthonormal DCT with a step
    ``step * (1 + (u + v) / 2)`` per image (coarser at high frequencies)."""
    n, c, h, w = x.shape
    d = _dct_matrix().to(x)
    blocks = x.reshape(n, c, h // 8, 8, w // 8, 8).transpose(3, 4)  # [n,c,bh,bw,8,8]
    coef = d @ blocks @ d.T
    f = torch.arange(8, dtype=x.dtype)
    q = step[:, None, None, None, None, None] * (1 + (f[:, None] + f[None]) / 2)
    blocks = d.T @ (torch.round(coef / q) * q) @ d
    return blocks.transpose(3, 4).reshape(n, c, h, w)


def _per_image(t: torch.Tensor) -> torch.Tensor:
    return t[:, None, None, None]


@torch.no_grad()
def augment(x: torch.Tensor, cfg: AnnotatorConfig, gen: torch.Generator) -> torch.Tensor:
    """Perturb images in [-1, 1] so the annotator tolerates GAN images that are
    slightly off the toy world. Each image independently gets, with probability
    ``cfg.aug_prob`` each and at a random strength up to the configured maximum:
    colour jitter (brightness, contrast, saturation, per-channel gain),
    downsample-upsample, Gaussian blur, 8×8 DCT quantisation (JPEG-like) and
    Gaussian pixel noise. Labels stay valid: no augmentation moves the geometry."""
    n, size = x.shape[0], x.shape[-1]

    def draw(scale: float, lo: float = 0.0) -> torch.Tensor:
        """Per-image strengths uniform in [lo, scale], zero where not chosen."""
        on = torch.rand(n, generator=gen) < cfg.aug_prob
        return torch.where(on, lo + (scale - lo) * torch.rand(n, generator=gen), torch.zeros(n))

    def sym(scale: float) -> torch.Tensor:
        return draw(1.0) * (2 * torch.rand(n, generator=gen) - 1) * scale

    grey = x.mean(1, keepdim=True)
    x = grey + (x - grey) * _per_image(torch.exp(sym(math.log1p(cfg.saturation))))
    gain = draw(1.0)[:, None] * (2 * torch.rand(n, 3, generator=gen) - 1) * cfg.channel_gain
    x = x * torch.exp(gain)[..., None, None]
    mean = x.mean((1, 2, 3), keepdim=True)
    x = mean + (x - mean) * _per_image(torch.exp(sym(cfg.contrast))) + _per_image(sym(cfg.brightness))

    scale = draw(1.0) * (1 - cfg.resample_min)
    for i in torch.nonzero(scale > 0).flatten().tolist():
        small = max(2, round(size * (1 - float(scale[i]))))
        y = F.interpolate(x[i : i + 1], size=small, mode="bilinear", antialias=True, align_corners=False)
        x[i] = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)[0]

    sigma = draw(cfg.blur_sigma, lo=0.3)
    if bool((sigma > 0).any()):
        x = torch.where(_per_image(sigma > 0), _gaussian_blur(x, sigma), x)
    step = draw(cfg.jpeg_step)
    if bool((step > 0).any()):
        x = torch.where(_per_image(step > 0), _dct_quantise(x, step.clamp_min(1e-6)), x)
    x = x + _per_image(draw(cfg.noise)) * torch.randn(x.shape, generator=gen)
    return x.clamp(-1.0, 1.0)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice, averaged over the labels present in ``target``."""
    prob = logits.softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(prob)
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    return 1 - (2 * inter[present] / denom[present]).mean()


def train_annotator(cfg: AnnotatorConfig, log_every: int = 100) -> tuple[UNet, list[dict]]:
    """Train a UNet on augmented toy-world images (AdamW, one-cycle learning rate,
    cross-entropy + ``dice_weight`` × Dice). Deterministic given ``cfg`` (and the
    thread count). Returns the model in eval mode and the logged history."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    model = cfg.model()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=cfg.warmup)
    history: list[dict] = []
    t0, sums = time.time(), np.zeros(3)
    model.train()
    for step in range(cfg.steps):
        x, y = training_batch(cfg, step)
        logits = model(augment(x, cfg, gen))
        ce = F.cross_entropy(logits, y)
        dice = dice_loss(logits, y)
        loss = ce + cfg.dice_weight * dice
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        sums += [loss.item(), ce.item(), dice.item()]
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            k = (step % log_every) + 1
            rec = {"step": step + 1, "loss": sums[0] / k, "ce": sums[1] / k, "dice": sums[2] / k,
                   "lr": sched.get_last_lr()[0], "seconds": time.time() - t0}
            history.append(rec)
            log.info("step %d/%d loss %.4f ce %.4f dice %.4f lr %.2e  %.1f s", rec["step"], cfg.steps,
                     rec["loss"], rec["ce"], rec["dice"], rec["lr"], rec["seconds"])
            sums[:] = 0
    return model.eval(), history


# --- evaluation --------------------------------------------------------------------
def iou_from_confusion(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-label IoU and a mask of the labels that occur (in target or prediction).
    Labels that never occur get IoU 0 and ``False``: leave them out of means."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    valid = union > 0
    return np.divide(tp, union, out=np.zeros_like(tp), where=valid), valid


def score_parts(pred: np.ndarray, target: np.ndarray, cls: int | str) -> dict:
    """IoU per label of the class (``None`` for labels absent from both), their
    mean ``miou`` and pixel accuracy, from the confusion matrix of the whole set."""
    labels = toyworld.part_labels(toyworld.class_name(cls))
    counts = confusion_matrix(torch.from_numpy(np.asarray(pred)), torch.from_numpy(np.asarray(target)), len(labels),
                              ignore_index=-1)  # every pixel counts: the toy world's masks have no ignore label
    iou, valid = iou_from_confusion(counts.numpy())
    return {
        "miou": float(iou[valid].mean()) if valid.any() else 0.0,
        "iou": {name: (float(v) if ok else None) for name, v, ok in zip(labels, iou, valid)},
        "pixel_accuracy": float((pred == target).mean()),
    }


def evaluate_annotator(model: UNet, size: int = 32, n_per_class: int = 500, seed0: int = EVAL_SEED0,
                       classes: tuple[str, ...] = toyworld.CLASSES) -> dict:
    """Score on fresh toy-world images of each class, in the class's own label
    space: per-label IoU from the confusion matrix summed over the set, its mean
    (``miou``), the mean over classes (``mean_miou``), and percentiles of the
    predicted solid-object and main-part shares (for :meth:`Annotator.object_found`)."""
    out: dict = {"size": size, "n_per_class": n_per_class, "seed0": seed0, "classes": {}}
    seeds = range(seed0, seed0 + n_per_class)
    for cls in classes:
        images, parts, _ = toyworld.render_batch(seeds, cls, size)
        pred = predict_parts(model, images, cls, classes=classes)
        out["classes"][cls] = {
            **score_parts(pred, parts, cls),
            "object_share": _percentiles(solid_object_share(pred)),
            "main_part_share": _percentiles((pred == 1).mean((1, 2))),
        }
    out["mean_miou"] = float(np.mean([c["miou"] for c in out["classes"].values()]))
    return out


def solid_object_share(masks: np.ndarray) -> np.ndarray:
    """Share of each image ``[N,H,W]`` that the object (labels > 0) covers after a
    3×3 morphological opening: scattered specks (a net labelling noise) drop out,
    a solid object keeps about its area."""
    m = torch.from_numpy(np.ascontiguousarray(masks > 0)).float()[:, None]
    opened = F.max_pool2d(-F.max_pool2d(-m, 3, 1, 1), 3, 1, 1)
    return opened.mean((1, 2, 3)).numpy()


def _percentiles(x: np.ndarray) -> dict[str, float]:
    return {f"p{q:02d}": float(np.percentile(x, q)) for q in (1, 5, 50)}


# --- the wrapper that ships ----------------------------------------------------------
@dataclass
class Annotator:
    """A trained annotator, the toy-world classes it was trained on (its label space is
    theirs, :func:`toyworld.part_space`) and its sidecar metadata (config, metrics,
    thresholds)."""

    model: UNet
    meta: dict = field(default_factory=dict)
    classes: tuple[str, ...] = toyworld.CLASSES

    def label(self, images: np.ndarray, cls: int | str) -> np.ndarray:
        """uint8 images ``[N,H,W,3]`` → uint8 part masks ``[N,H,W]`` (0 = background,
        1..P = the class's parts)."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images [N,H,W,3], got {images.dtype} {images.shape}")
        return predict_parts(self.model, images, cls, classes=self.classes)

    @torch.no_grad()
    def embed(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        """uint8 images ``[N,H,W,3]`` → float32 embeddings ``[N, C]`` (see :meth:`UNet.embed`)."""
        return np.concatenate([self.model.embed(to_input(images[i : i + batch])).numpy()
                               for i in range(0, len(images), batch)])

    @torch.no_grad()
    def dominant_class(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        """int64 ``[N]``: the index in :attr:`classes` of the class whose parts cover most
        pixels in the unrestricted (all classes) prediction, -1 where no part is predicted:
        which object it sees."""
        self.model.eval()
        owner = np.zeros(len(toyworld.part_space(self.classes)), dtype=np.int64)
        for k, name in enumerate(self.classes):
            owner[class_label_ids(name, self.classes)[1:]] = k + 1
        out = []
        for i in range(0, len(images), batch):
            pred = self.model(to_input(images[i : i + batch])).argmax(1).numpy()
            counts = np.stack([(owner[pred] == k + 1).sum((1, 2)) for k in range(len(self.classes))], 1)
            out.append(np.where(counts.max(1) > 0, counts.argmax(1), -1))
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def object_masks(self, images: np.ndarray, cls: int | str) -> np.ndarray:
        """uint8 binary object masks ``[N,H,W]`` of class ``cls`` (BigDatasetGAN's labels):
        every pixel of one of the class's parts."""
        return (self.label(images, cls) > 0).astype(np.uint8)

    def object_found(self, masks: np.ndarray, cls: int | str) -> np.ndarray:
        """Bool ``[N]``: the object is solid and large enough, and its main part
        (the class's first part) present. Both shares (:func:`solid_object_share`
        and the main part's share of the image) must reach what 99% of real toy
        images reach: the 1st percentiles of the annotator's own predictions on
        them, stored in the sidecar as ``object_thresholds``."""
        name = toyworld.class_name(cls)
        if "object_thresholds" not in self.meta:
            raise ValueError("this annotator has no object thresholds: save it with evaluation metrics first")
        th = self.meta["object_thresholds"][name]
        obj = solid_object_share(masks) >= th["object_share"]
        main = (masks == 1).mean((1, 2)) >= th["main_part_share"]
        return obj & main

    def save(self, path: str | Path, **sidecar) -> dict:
        """Write safetensors weights then the JSON sidecar (both atomically);
        ``sidecar`` entries (config, command, metrics, ...) join ``meta``. Object
        thresholds are taken from ``metrics`` when given."""
        from safetensors.torch import save_file

        path = Path(path)
        meta = {**self.meta, **sidecar}
        if "metrics" in sidecar:
            meta["object_thresholds"] = {
                c: {"object_share": m["object_share"]["p01"], "main_part_share": m["main_part_share"]["p01"]}
                for c, m in sidecar["metrics"]["classes"].items()
            }
        tensors = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))
            meta.update(arch=ARCH, arch_config=self.model.arch_config, labels=list(toyworld.part_space(self.classes)),
                        sha256=sha256_file(tmp))
        atomic_write_json(sidecar_path(path), meta)
        self.meta = meta
        return meta

    @classmethod
    def load(cls, path: str | Path) -> "Annotator":
        """Load weights verified against the sidecar's sha256; a corrupt, replaced
        or mismatched file raises :class:`CheckpointError`."""
        from safetensors.torch import load_file

        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"{path}: no such annotator weights file")
        meta = read_sidecar(path)
        if meta["arch"] != ARCH:
            raise CheckpointError(f"{path}: sidecar arch is {meta['arch']!r}, not an annotator ({ARCH!r})")
        if sha256_file(path) != meta.get("sha256"):
            raise CheckpointError(f"{path}: sha256 differs from its sidecar: the file is corrupt or was replaced")
        classes = tuple(meta.get("config", {}).get("classes", toyworld.CLASSES))
        if not set(classes) <= set(toyworld.ALL_CLASSES) or meta.get("labels") != list(toyworld.part_space(classes)):
            raise CheckpointError(f"{path}: trained for labels {meta.get('labels')}, not this toy world's")
        try:
            tensors = load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path}: corrupt safetensors file ({e})") from e
        model = UNet(**meta["arch_config"])
        try:
            model.load_state_dict(tensors)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weights do not fit the sidecar's architecture ({e})") from e
        return cls(model.eval(), meta, classes)


def config_to_dict(cfg: AnnotatorConfig) -> dict:
    """JSON-ready config (tuples as lists)."""
    return json.loads(json.dumps(asdict(cfg)))


def simulate_annotation(sample_dir: str | Path, out_dir: str | Path, annotator: Annotator,
                        cls: int | str | dict[int, str]) -> int:
    """The simulated human: label the images that ``sample_for_annotation`` wrote to
    ``sample_dir`` and write an annotation folder exactly as a user would hand one
    in (``labels.yaml``, ``manifest.csv``, ``<id>.png`` masks, latents, images).

    ``cls`` is the toy class of a part-labelled (DatasetGAN) task, or for a
    class-conditional (BigDatasetGAN) task the toy class of each generator class:
    every sample then gets the binary object mask of its own class.
    Returns the number of annotated samples."""
    import shutil

    import pandas as pd
    import yaml
    from PIL import Image

    sample_dir, out_dir = Path(sample_dir), Path(out_dir)
    manifest = pd.read_csv(sample_dir / "manifest.csv", dtype={"id": str})
    images = np.stack([np.asarray(Image.open(sample_dir / f"{i}.image.png").convert("RGB")) for i in manifest["id"]])
    out_dir.mkdir(parents=True, exist_ok=True)
    who = f"the simulated annotator ({annotator.meta.get('sha256', '?')[:12]})"
    if isinstance(cls, dict):
        masks = np.zeros(images.shape[:3], dtype=np.uint8)
        for c, name in cls.items():
            sel = manifest["class"].to_numpy() == c
            if sel.any():
                masks[sel] = annotator.object_masks(images[sel], name)
        header = f"# object masks of {', '.join(cls.values())} (BigDatasetGAN), labelled by {who}\n"
        names = ["background", "object"]
    else:
        masks = annotator.label(images, cls)
        name = toyworld.class_name(cls)
        header, names = f"# {name} parts, labelled by {who}\n", list(toyworld.part_labels(name))
    (out_dir / "labels.yaml").write_text(header + yaml.safe_dump({"names": names, "ignore_index": 255}))
    for i, mask in zip(manifest["id"], masks):
        Image.fromarray(mask).save(out_dir / f"{i}.png")
        for suffix in (".image.png", ".latent.npy"):
            shutil.copyfile(sample_dir / f"{i}{suffix}", out_dir / f"{i}{suffix}")
    shutil.copyfile(sample_dir / "manifest.csv", out_dir / "manifest.csv")
    return len(manifest)
