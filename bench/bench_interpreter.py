"""Peak memory and time of MLP-ensemble training: native-resolution features vs. the naive matrix.

``ours`` keeps the native-resolution maps (float16) and gathers each sampled
pixel's features with bilinear weights (:class:`PixelFeatures`); ``naive``
upsamples and concatenates every image's features into a float32
``[pixels, D]`` matrix in RAM first, as DatasetGAN's release does. Both train
the same members with the same loop (:func:`fit_members`) for a fixed number of
batches per member: this measures memory and per-batch cost, not convergence.
Each run is a fresh subprocess; its peak RSS is its own VmHWM. At the paper's
shape it also reports training wall time per member and in total: measured for
the batches run, and extrapolated (labelled so) to one epoch over all annotated
pixels per member. ``--quick``: 2 members × 50 batches.

The conv interpreter (BigDatasetGAN) gets the same measurement at its shape:
8 annotated images with every tap of a BigGAN-512 (random float16 features),
one member at the release widths (members train alike and one after another),
binary labels, class-conditional, batches of 4; peak RSS and seconds per
iteration, extrapolated (labelled so) to its 5000 iterations per member and to
3 members. ``--conv-iterations`` sets the measured iterations (one takes
minutes on a CPU thread at this shape).

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_interpreter.py [--batches 200] [--members 10] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from labelfactory.features import FeatureStore  # noqa: E402
from labelfactory.generators.biggan import BigGANConfig, BigGANGenerator  # noqa: E402
from labelfactory.interpreters.conv import ConvInterpreterConfig
from labelfactory.interpreters.mlp import MLPEnsembleConfig, PixelFeatures, fit_members  # noqa: E402
from labelfactory.interpreters import TrainingData  # noqa: E402
from labelfactory.interpreters.conv import train_conv_ensemble  # noqa: E402

CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32}  # StyleGAN, 2 layers each
NUM_CLASSES = 34  # DatasetGAN's car task: the wider (256/128) members


def stylegan_shapes(resolution: int) -> dict[str, tuple[int, int, int]]:
    return {f"b{r}.conv{i}": (c, r, r) for r, c in CHANNELS.items() if r <= resolution for i in (0, 1)}


def biggan_shapes(resolution: int) -> dict[str, tuple[int, int, int]]:
    with torch.device("meta"):  # shapes only, no weights
        return BigGANGenerator(BigGANConfig(resolution=resolution)).feature_shapes()


def write_store(path: Path, num_images: int, resolution: int, seed: int = 0,
                shapes: dict[str, tuple[int, int, int]] | None = None) -> None:
    """Random float16 features in the feature-file layout, one image at a time."""
    shapes = shapes or stylegan_shapes(resolution)
    ids = [f"s{i:08d}" for i in range(num_images)]
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.attrs.update(format_version=1, generator_hash="bench", layers=json.dumps(list(shapes)),
                       shapes=json.dumps({l: list(s) for l, s in shapes.items()}), resolution=resolution,
                       truncation=1.0, noise="const", ids=json.dumps(ids))
        for i in ids:
            for l, s in shapes.items():
                f.create_dataset(f"{i}/{l}", data=rng.standard_normal(s, dtype=np.float32).astype(np.float16))


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def _dense(store: FeatureStore) -> torch.Tensor:
    """The naive ``[pixels, D]`` float32 matrix of all images' upsampled, concatenated features."""
    r = store.resolution
    out = torch.empty(len(store.ids) * r * r, store.feature_dim)
    for n, image_id in enumerate(store.ids):
        maps = store.read(image_id)
        up = torch.cat([F.interpolate(torch.from_numpy(maps[l]).float()[None], size=(r, r), mode="bilinear",
                                      align_corners=False)[0] for l in store.layers])
        out[n * r * r : (n + 1) * r * r] = up.permute(1, 2, 0).reshape(r * r, -1)
    return out


def child(approach: str, store_path: str, members: int, batches: int) -> None:
    """One measured run; prints a JSON line. ``ms_per_batch`` is the median time between
    consecutive batches' feature requests (gather + step; held-out evaluations excluded)."""
    torch.set_num_threads(1)
    base = _rss_mb("VmRSS")
    store = FeatureStore.open(store_path)
    t0 = time.perf_counter()
    if approach == "ours":
        features = PixelFeatures.from_store(store, store.ids, store.layers)
    else:
        features = _dense(store).__getitem__
    t1 = time.perf_counter()
    stamps = []

    def timed(pixels: torch.Tensor) -> torch.Tensor:
        stamps.append(time.perf_counter())
        return features(pixels)

    n = len(store.ids) * store.resolution ** 2
    labels = torch.from_numpy(np.random.default_rng(1).integers(0, NUM_CLASSES, n, dtype=np.uint8))
    cfg = MLPEnsembleConfig(num_members=members, eval_every=batches, max_batches=batches)
    fit_members(timed, store.feature_dim, labels, torch.arange(n), NUM_CLASSES, cfg)
    t2 = time.perf_counter()
    print(json.dumps({"base_mb": base, "peak_mb": _rss_mb("VmHWM"), "setup_s": t1 - t0, "train_s": t2 - t1,
                      "ms_per_batch": 1000 * float(np.median(np.diff(stamps)))}))


def child_conv(store_path: str, members: int, iterations: int) -> None:
    """One conv-interpreter training run; prints a JSON line."""
    torch.set_num_threads(1)
    base = _rss_mb("VmRSS")
    store = FeatureStore.open(store_path)
    n, r = len(store.ids), store.resolution
    masks = np.random.default_rng(1).integers(0, 2, (n, r, r), dtype=np.uint8)
    cfg = ConvInterpreterConfig(num_members=members, iterations=iterations)
    emb = torch.randn(1000, 128)
    t = time.perf_counter()
    train_conv_ensemble(TrainingData(store, masks, 2, classes=np.arange(n), class_embedding=emb), cfg)
    train_s = time.perf_counter() - t
    print(json.dumps({"base_mb": base, "peak_mb": _rss_mb("VmHWM"), "train_s": train_s,
                      "s_per_iteration": train_s / (members * iterations)}))


def run(approach: str, store: Path, members: int, batches: int) -> dict:
    cmd = [sys.executable, __file__, "--child", approach, "--store", str(store), "--members", str(members),
           "--batches", str(batches)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=100, help="batches per member")
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="2 members x 50 batches")
    ap.add_argument("--conv-iterations", type=int, default=3, help="measured iterations of the conv member")
    ap.add_argument("--child", choices=("ours", "naive", "conv"))
    ap.add_argument("--store")
    args = ap.parse_args()
    if args.quick:
        args.members, args.batches, args.conv_iterations = 2, 50, 1
    if args.child == "conv":
        return child_conv(args.store, args.members, args.batches)
    if args.child:
        return child(args.child, args.store, args.members, args.batches)

    cases = [("paper", 16, 512, ("ours",)), ("small", 4, 128, ("naive", "ours"))]
    print(f"{args.members} members x {args.batches} batches of 64 pixels each, {NUM_CLASSES} classes, "
          f"random float16 features in HDF5, one core")
    print(f"{'case':6s} {'approach':8s} {'images':>10s} {'D':>5s} {'native MB':>9s} {'peak RSS MB':>11s} "
          f"{'at import':>9s} {'setup s':>7s} {'train s':>7s} {'ms/batch':>8s}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, n, res, approaches in cases:
            path = Path(tmp) / f"{name}.h5"
            write_store(path, n, res)
            shapes = stylegan_shapes(res)
            dim = sum(c for c, _, _ in shapes.values())
            native_mb = n * sum(c * h * w for c, h, w in shapes.values()) * 2 / 2**20
            for a in approaches:
                r = results[name, a] = run(a, path, args.members, args.batches)
                print(f"{name:6s} {a:8s} {f'{n}x{res}²':>10s} {dim:5d} {native_mb:9.0f} {r['peak_mb']:11.0f} "
                      f"{r['base_mb']:9.0f} {r['setup_s']:7.1f} {r['train_s']:7.1f} {r['ms_per_batch']:8.1f}")
            path.unlink()
    naive, ours = results["small", "naive"], results["small", "ours"]
    print(f"small shape, naive/ours: peak RSS {naive['peak_mb'] / ours['peak_mb']:.1f}x, "
          f"RSS above import {(naive['peak_mb'] - naive['base_mb']) / (ours['peak_mb'] - ours['base_mb']):.1f}x, "
          f"setup+training time {(naive['setup_s'] + naive['train_s']) / (ours['setup_s'] + ours['train_s']):.2f}x, "
          f"per batch {naive['ms_per_batch'] / ours['ms_per_batch']:.2f}x")
    paper_dense_gb = 16 * 512 * 512 * sum(c for c, _, _ in stylegan_shapes(512).values()) * 4 / 2**30
    paper = results["paper", "ours"]
    print(f"paper shape: ours peaks at {paper['peak_mb'] / 1024:.2f} GiB (goal <= 4 GB); the naive float32 matrix "
          f"alone would be {paper_dense_gb:.0f} GiB")
    per_member = paper["train_s"] / args.members
    epoch = 16 * 512 * 512 // 64  # batches in one pass over every pixel of the 16 annotated images
    epoch_s = epoch * paper["ms_per_batch"] / 1000
    print(f"paper shape training wall time (measured): {per_member:.1f} s per member for {args.batches} batches "
          f"(with its held-out evaluation), {paper['train_s']:.1f} s for {args.members} members")
    print(f"paper shape training wall time (EXTRAPOLATED from {paper['ms_per_batch']:.1f} ms/batch): one epoch of "
          f"{epoch} batches {epoch_s / 60:.0f} min per member, {10 * epoch_s / 3600:.1f} h for 10 members")
    conv_case(args.conv_iterations)


def conv_case(iterations: int, images: int = 8, members: int = 1, resolution: int = 512, ensemble: int = 3) -> None:
    """The conv interpreter at BigDatasetGAN's shape (see the module docstring)."""
    shapes = biggan_shapes(resolution)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "biggan.h5"
        write_store(path, images, resolution, shapes=shapes)
        cmd = [sys.executable, __file__, "--child", "conv", "--store", str(path), "--members", str(members),
               "--batches", str(iterations)]
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    native_mb = images * sum(c * h * w for c, h, w in shapes.values()) * 2 / 2**20
    release = ConvInterpreterConfig().iterations
    print(f"conv interpreter, BigGAN-{resolution} taps ({len(shapes)}, {sum(c for c, _, _ in shapes.values())} "
          f"channels), {images} images ({native_mb:.0f} MB native float16), {members} members x {iterations} "
          f"iterations of {ConvInterpreterConfig().batch_size} images: peak RSS {r['peak_mb']:.0f} MB "
          f"({r['base_mb']:.0f} at import), {r['s_per_iteration']:.2f} s per iteration (measured)")
    print(f"conv interpreter training wall time (EXTRAPOLATED to the release's {release} iterations): "
          f"{release * r['s_per_iteration'] / 3600:.1f} h per member, "
          f"{ensemble * release * r['s_per_iteration'] / 3600:.1f} h for {ensemble} members on one thread")


if __name__ == "__main__":
    main()
