"""Helpers shared by the tests (importable as ``helpers``; see pytest ``pythonpath``)."""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def tiny_generator(seed: int = 0, size: int = 16, noise_weight: float = 0.3):
    """A small random StyleGAN2 backend (non-zero noise so noise modes matter)."""
    from labelfactory.generators.stylegan2 import Generator, StyleGAN2Backend, StyleGAN2Config

    torch.manual_seed(seed)
    chans = {4: 16, 8: 12, 16: 8, 32: 8, 64: 8}
    g = Generator(StyleGAN2Config(size=size, style_dim=16, n_mlp=2,
                                  channels={r: c for r, c in chans.items() if r <= size}))
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(noise_weight)
        g.latent_avg.normal_()
    return StyleGAN2Backend(g, g.cfg.to_dict())


def load_script(path: Path):
    """Import a script file (e.g. a test-data recipe) as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TINY_SEGMENTATION = {"small_stem": True, "output_stride": 2, "width": 0.125, "atrous_rates": [1, 2],
                     "head_channels": 16}


def assert_float32_close(got, want, rel: float = 1e-4) -> None:
    """``got`` equals a stored reference ``want`` up to float32 summation-order noise.

    The references were made on one CPU; another CPU's kernels (AVX-512 or not, another
    thread count) add in another order, which moves float32 results by a few 1e-6 of their
    magnitude (seen: 9e-6 relative, StyleGAN1 on an Intel Xeon against an AMD EPYC). So
    the tolerance is relative, ``rel`` of each value plus ``rel`` of the reference's
    largest magnitude (its range; a value near zero is a sum of terms of that size): about
    ten times that noise, and far below what a wrong weight or op moves."""
    import numpy as np

    got, want = torch.as_tensor(np.asarray(got)), torch.as_tensor(np.asarray(want))
    torch.testing.assert_close(got, want, rtol=rel, atol=rel * float(want.abs().max()), check_dtype=False)


def tiny_mask(image):
    """A 3-label mask (0, 1, 2) computed from an image, as the tiny project's "annotator"."""
    import numpy as np

    img = image.astype(np.float32)
    return (img.mean(-1) > img.mean()).astype(np.uint8) + (img[..., 0] > img[..., 2]).astype(np.uint8)


def make_real_folder(root: Path, size: int = 16, n_train: int = 6, n_test: int = 4, seed: int = 0) -> None:
    """A `folder` real dataset: smooth random images and their :func:`tiny_mask` masks."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            image = np.asarray(Image.fromarray(small).resize((size, size), Image.BILINEAR))
            Image.fromarray(image).save(root / split / "images" / f"{i:03d}.png")
            Image.fromarray(tiny_mask(image)).save(root / split / "masks" / f"{i:03d}.png")


def make_tiny_project(root: Path, n_annotations: int = 4, size: int = 16, downstream: bool = False) -> dict:
    """A complete tiny workflow project under ``root``: a rosinality-format generator
    checkpoint, an annotation folder (sampled images, latents, manifest, masks derived
    from the images) and ``config.yaml``; with ``downstream`` also a real `folder`
    dataset and a tiny downstream experiment (2 seeds). Returns the config dict."""
    import argparse

    import numpy as np
    import yaml
    from PIL import Image

    from labelfactory.annotations.handout import sample_for_annotation
    from labelfactory.core.io import sha256_file

    root.mkdir(parents=True, exist_ok=True)
    b = tiny_generator(size=size)
    sd = {k: v for k, v in b.module.state_dict().items() if k != "latent_avg"}
    torch.save({"g_ema": sd, "latent_avg": b.module.latent_avg.clone(), "args": argparse.Namespace(size=size)},
               root / "gen.pt")
    df = sample_for_annotation(b, range(n_annotations), root / "ann")
    for i in df["id"]:
        Image.fromarray(tiny_mask(np.asarray(Image.open(root / "ann" / f"{i}.image.png")))).save(
            root / "ann" / f"{i}.png")
    (root / "ann" / "labels.yaml").write_text(yaml.safe_dump({"names": ["background", "a", "b"]}))
    cfg = {
        "device": "cpu",
        "checkpoints": {"tiny": {"url": "gen.pt", "sha256": sha256_file(root / "gen.pt")}},
        "tasks": {"tiny": {
            "checkpoint": "tiny", "annotations": "ann",
            "annotation": {"num_samples": n_annotations, "expected_count": n_annotations},
            "interpreter": {"num_members": 3, "eval_every": 10, "patience": 3, "max_epochs": 2,
                            "holdout_pixels": 64},
            "synthesis": {"num_shards": 2, "samples_per_shard": 6, "batch_size": 4},
            "filter": {"ratio": 0.25},
            "downstream": {"enabled": False},
        }},
    }
    if downstream:
        make_real_folder(root / "real", size=size)
        cfg["tasks"]["tiny"]["downstream"] = {
            "seeds": 2, "threads": 1, "model": "deeplabv3_resnet18", "model_options": TINY_SEGMENTATION,
            "steps": 6, "batch_size": 2, "optimizer": "adamw", "lr": 1e-3,
            "real": {"type": "folder", "path": "real"},
        }
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return cfg


def tiny_biggan(seed: int = 0, n_classes: int = 2):
    """A small random class-conditional BigGAN backend (BigGAN-PyTorch layout, 32 px)."""
    from labelfactory.generators.biggan import BigGANBackend, BigGANConfig, BigGANGenerator

    torch.manual_seed(seed)
    g = BigGANGenerator(BigGANConfig(resolution=32, ch=4, dim_z=16, shared_dim=8, n_classes=n_classes,
                                     attention=(16,)))
    with torch.no_grad():
        for name, b in g.named_buffers():
            if name.endswith("stored_var"):
                b.uniform_(0.5, 1.5)
        for blocklist in g.blocks:
            for m in blocklist[1:]:
                m.gamma.fill_(0.5)
    return BigGANBackend(g.eval(), g.cfg.to_dict())


def make_tiny_conditional_project(root: Path, n_per_class: int = 3, vqgan: bool = False) -> dict:
    """A tiny BigDatasetGAN project: a BigGAN-PyTorch ``.pth`` with two classes, binary
    object masks per class (derived from the images), the conv interpreter, class-aware
    downstream runs on toy-world cars and faces with object masks. With ``vqgan`` also
    BigDatasetGAN's second generator: a task ``vq`` on the shipped toy VQGAN (classes 0, 1
    of its prior are car and face) reusing the annotations, its rows and the combined
    ones in the table. Returns the config."""
    import numpy as np
    import yaml
    from PIL import Image

    from labelfactory.annotations.handout import sample_for_annotation
    from labelfactory.core.io import sha256_file

    root.mkdir(parents=True, exist_ok=True)
    b = tiny_biggan()
    torch.save(b.module.state_dict(), root / "gen.pth")
    df = sample_for_annotation(b, range(n_per_class), root / "ann", classes=[0, 1])
    for i in df["id"]:
        image = np.asarray(Image.open(root / "ann" / f"{i}.image.png"))
        Image.fromarray((tiny_mask(image) > 0).astype(np.uint8)).save(root / "ann" / f"{i}.png")
    (root / "ann" / "labels.yaml").write_text(yaml.safe_dump({"names": ["background", "object"]}))
    cfg = {
        "device": "cpu",
        "checkpoints": {"big": {"url": "gen.pth", "sha256": sha256_file(root / "gen.pth")}},
        "tasks": {"objects": {
            "checkpoint": "big", "annotations": "ann", "classes": [0, 1], "class_names": ["car", "face"],
            "annotation": {"num_samples": n_per_class, "expected_per_class": n_per_class},
            "interpreter": {"type": "conv", "num_members": 2, "iterations": 8, "batch_size": 2,
                            "channels": [8, 8, 8]},
            "synthesis": {"num_shards": 1, "samples_per_shard": 6, "batch_size": 4},
            "filter": {"ratio": 0.25},
            "downstream": {
                "labels": "class_aware", "seeds": 2, "threads": 1, "model": "deeplabv3_resnet18",
                "model_options": TINY_SEGMENTATION, "steps": 4, "batch_size": 2, "optimizer": "adamw",
                "lr": 1e-3,
                "real": {"type": "toyworld", "classes": ["car", "face"], "labels": "objects", "size": 32,
                         "train_images": 6, "test_images": 4},
            },
        }},
    }
    if vqgan:
        toy = REPO / "weights/toy/vqgan-32.safetensors"
        cfg["checkpoints"]["vq"] = {"url": str(toy), "sha256": sha256_file(toy)}
        objects = cfg["tasks"]["objects"]
        objects["downstream"].update(variant="BigGAN", compare=["vq"], combine=["vq"],
                                     settings=["few_shot", "synthetic", "synthetic_filtered", "synthetic_combined",
                                               "fully_supervised"])
        cfg["tasks"]["vq"] = {
            "checkpoint": "vq", "reuse": {"task": "objects"}, "classes": [0, 1], "class_names": ["car", "face"],
            "interpreter": objects["interpreter"],
            "synthesis": {**objects["synthesis"], "store_latents": True, "sampling": {"top_k": 50}},
            "filter": objects["filter"],
            # one run of one setting: the table's other VQGAN rows work alike (tests/test_reporting.py)
            "downstream": {**objects["downstream"], "enabled": False, "settings": ["synthetic_filtered"], "seeds": 1,
                           "variant": "VQGAN", "compare": [], "combine": []},
        }
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return cfg


def snakemake_command(root: Path, *args: str, env: dict | None = None) -> tuple[list[str], dict]:
    """The command line (and environment) that runs the project's workflow in ``root``."""
    import os
    import sys

    exe = Path(sys.executable).with_name("snakemake")
    env = dict(env or os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    cmd = [str(exe), "--snakefile", str(REPO / "workflow" / "Snakefile"), "--directory", str(root),
           "--configfile", str(root / "config.yaml"), "--cores", "2", *args]
    return cmd, env


def snakemake(root: Path, *args: str, timeout: float = 600, check: bool = True, env: dict | None = None):
    """Run the project's workflow in ``root`` with its config.yaml (bounded by ``timeout -k``)."""
    import subprocess

    cmd, env = snakemake_command(root, *args, env=env)
    proc = subprocess.run(["timeout", "-k", "10", str(int(timeout)), *cmd], capture_output=True, text=True,
                          timeout=timeout + 30, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def job_counts(dry_run_stdout: str) -> dict[str, int]:
    """Jobs per rule from the stats table of ``snakemake --dry-run --quiet rules`` (plus ``total``)."""
    import re

    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", dry_run_stdout, re.M)}


def _merge(base: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def update_config(root: Path, changes: dict) -> dict:
    """Deep-merge ``changes`` into ``root``/config.yaml and write it back; returns the new config."""
    import yaml

    path = root / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    _merge(cfg, changes)
    path.write_text(yaml.safe_dump(cfg))
    return cfg


@contextmanager
def config_changed(root: Path, changes: dict):
    """``update_config`` for the duration of the block; the original config.yaml is put back after it."""
    path = root / "config.yaml"
    original = path.read_text()
    try:
        yield update_config(root, changes)
    finally:
        path.write_text(original)


TINY_VQGAN_CODES = 32


def tiny_vqgan(resolution: int = 16, seed: int = 0):
    """A random VQGAN with an 8x8 code grid (at 16 px) of 32 codes and a prior over two classes."""
    from labelfactory.generators.taming_prior import PriorConfig
    from labelfactory.generators.vqgan import VQGAN, DDConfig, VQGANBackend, VQGANConfig

    torch.manual_seed(seed)
    dd = DDConfig(ch=32, out_ch=3, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), in_channels=3,
                  resolution=resolution, z_channels=32, double_z=False)
    grid = resolution // 2
    prior = PriorConfig(vocab_size=TINY_VQGAN_CODES, block_size=grid * grid, n_layer=1, n_head=1, n_embd=8,
                        n_classes=2)
    module = VQGAN(VQGANConfig(8, TINY_VQGAN_CODES, dd, prior))
    return VQGANBackend(module, module.cfg.to_dict())
