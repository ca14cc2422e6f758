"""Labelled vs. bare-generator synthesis throughput, where the labelling time goes, and shard memory.

DatasetGAN's shape: a random-weight StyleGAN2 (rosinality's channel table) and
a 10-member ensemble of DatasetGAN's MLPs over every synthesis layer (20
classes) at 128², 256² and 512². BigDatasetGAN's shape: a random-weight
BigGAN (BigGAN-PyTorch's ``get_config``, 1000 classes) and the class-conditional
conv interpreter (3 members, release widths 128/64/32, binary labels) over
every block and attention tap, at 512² (``--biggan-sizes``). ddpm-segmentation's
shape (``--ddpm``, 256²): a random-weight guided-diffusion UNet from flags, small
enough for a CPU (``DDPM_FLAGS``), DDIM sampling, the taps of decoder blocks
``DDPM_BLOCKS`` at its steps 50/150/250 and the 10-member MLP ensemble. In one run,
interleaved round by round:

- ``bare``: the generator alone (``backend.synthesize``);
- ``labelled``: :func:`synthesize_shard` of the same samples (generator,
  interpreter, JS divergence, score, vote, HDF5 writing);
- ``reference`` (StyleGAN2 only; not at 512² unless ``--reference``): the same
  with the per-member reference interpreter (:meth:`MLPEnsemble.member_probabilities_reference`).

For the UNet, ``bare`` is sampling alone, ``features`` adds the feature passes
(one UNet pass per feature step), ``labelled`` is the whole shard; with
``--ddpm-steps K`` < 50 it samples K DDIM steps and scales to DDIM-50 by the
measured per-step cost (sampling is K identical UNet passes; the per-step cost
and the feature pass cost are printed side by side to show it).

Prints labelled/bare throughput ratios (medians over rounds), the share of
labelled time in generator / interpreter / uncertainty (JS, score, vote) /
writing and the rest, and the peak memory of whole shards of two sizes (fresh
subprocesses: peak RSS, and peak device memory on a GPU). Uses the GPU when
there is one (``--batch`` images per batch, matmuls in bfloat16 there).

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_synthesis.py [--quick] [--sizes 128 256 512] [--ddpm 256]
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from labelfactory.generators.biggan import BigGANBackend, BigGANConfig, BigGANGenerator  # noqa: E402
from labelfactory.generators.guided_diffusion import GuidedDiffusionBackend  # noqa: E402
from labelfactory.generators.guided_unet import GuidedUNet, normalise_flags  # noqa: E402
from labelfactory.generators.stylegan2 import Generator, StyleGAN2Backend, StyleGAN2Config  # noqa: E402
from labelfactory.interpreters import conv  # noqa: E402
from labelfactory.interpreters.mlp import MemberHistory, MLPEnsemble, MLPEnsembleConfig, build_member  # noqa: E402
from labelfactory.synthesis.shards import ShardSettings, synthesize_shard  # noqa: E402
from labelfactory.synthesis.uncertainty import image_scores, js_divergence, vote_labels  # noqa: E402

MEMBERS, CLASSES = 10, 20
CONV_MEMBERS = 3
# ddpm-segmentation's FFHQ-256 flags, narrowed for a CPU (it has num_channels 256, num_res_blocks 2,
# attention at 32,16,8): 12 output blocks at 8..256 px instead of 18
DDPM_FLAGS = {"image_size": 256, "num_channels": 32, "num_res_blocks": 1, "attention_resolutions": "16",
              "num_head_channels": 32, "learn_sigma": True, "resblock_updown": True, "use_scale_shift_norm": True}
# its blocks 5, 6/7, 8, 12 (outputs at 32, 32, 64, 128 px) are blocks 3, 4, 5, 7 of this UNet
DDPM_BLOCKS, DDIM_STEPS = [3, 4, 5, 7], 50


def setup(size: int, device: str, seed: int = 0) -> tuple[StyleGAN2Backend, MLPEnsemble]:
    """A random-weight generator and a random ensemble over all its layers."""
    torch.manual_seed(seed)
    module = Generator(StyleGAN2Config(size=size))
    backend = StyleGAN2Backend(module, module.cfg.to_dict(), generator_hash=f"bench-{size}").to(device)
    return backend, random_ensemble(backend.feature_shapes(), size, backend.generator_hash, device, seed)


def random_ensemble(shapes: dict, size: int, generator_hash: str, device: str, seed: int = 0) -> MLPEnsemble:
    """A random MLP ensemble over ``shapes`` (BatchNorm statistics randomised too, so that no member
    is degenerate)."""
    dim = sum(c for c, _, _ in shapes.values())
    gen = torch.Generator().manual_seed(seed)
    members = [build_member(dim, CLASSES, gen) for _ in range(MEMBERS)]
    for net in members:
        for bn in net[2::3]:
            bn.running_mean.normal_(0, 0.5, generator=gen)
            bn.running_var.uniform_(0.5, 2.0, generator=gen)
    ens = MLPEnsemble(members, MLPEnsembleConfig(num_members=MEMBERS), list(shapes),
                      [c for c, _, _ in shapes.values()], CLASSES, size, generator_hash,
                      [MemberHistory(seed=0, train_pixels=0, holdout_pixels=0)] * MEMBERS).to(device)
    if device != "cpu":
        ens.compute_dtype = torch.bfloat16
    return ens


def setup_biggan(size: int, device: str, seed: int = 0) -> tuple[BigGANBackend, conv.ConvEnsemble]:
    """A random-weight BigGAN and a random conv ensemble over all its taps (class-conditional, binary)."""
    torch.manual_seed(seed)
    module = BigGANGenerator(BigGANConfig(resolution=size)).eval()
    backend = BigGANBackend(module, module.cfg.to_dict(), generator_hash=f"bench-biggan-{size}").to(device)
    shapes = backend.feature_shapes()
    cfg = conv.ConvInterpreterConfig(num_members=CONV_MEMBERS)
    emb = backend.class_embedding()
    members = [conv.build_member(list(shapes.values()), 2, size, cfg, emb.shape[1], seed=m) for m in range(CONV_MEMBERS)]
    ens = conv.ConvEnsemble(members, cfg, list(shapes), list(shapes.values()), 2, size, backend.generator_hash,
                            [conv.ConvMemberHistory(seed=m) for m in range(CONV_MEMBERS)], None, emb.cpu()).to(device)
    if device != "cpu":
        ens.compute_dtype = torch.float16
    return backend, ens.eval()


def setup_ddpm(size: int, device: str, seed: int = 0) -> tuple[GuidedDiffusionBackend, MLPEnsemble]:
    """A random-weight guided-diffusion UNet (``DDPM_FLAGS``) with taps ``DDPM_BLOCKS`` at steps
    50/150/250, and a random MLP ensemble over them (as :func:`setup`)."""
    torch.manual_seed(seed)
    flags = normalise_flags({**DDPM_FLAGS, "image_size": size})
    backend = GuidedDiffusionBackend(GuidedUNet(flags).eval(), flags, generator_hash=f"bench-ddpm-{size}").to(device)
    backend.blocks = DDPM_BLOCKS
    shapes = {k: v for k, v in backend.feature_shapes().items() if int(k.rsplit(".", 1)[1]) in DDPM_BLOCKS}
    return backend, random_ensemble(shapes, size, backend.generator_hash, device, seed)


def measure_ddpm(size: int, steps: int, rounds: int, batch: int, device: str, tmp: Path) -> dict:
    """Per image: DDIM sampling (``steps`` steps), + features, + labelling (whole shard); scaled to
    DDIM-50 by the measured per-step cost."""
    backend, ens = setup_ddpm(size, device)
    backend.set_sampling("ddim", steps)
    times: dict[str, list[float]] = {v: [] for v in ("bare", "features", "labelled")}
    interp: list[float] = []
    for r in range(rounds + 1):  # round 0 warms up
        seeds = np.arange(r * batch, (r + 1) * batch)
        for v, vt in times.items():
            _sync(device)
            t = time.perf_counter()
            if v == "labelled":
                lab = Timed(ens, "member_probabilities", device)
                synthesize_shard(backend, lab, tmp / "ddpm.h5", seeds, None, ShardSettings(batch_size=batch),
                                 progress=False)
            else:
                with torch.no_grad():
                    backend.synthesize(torch.from_numpy(backend.draw_latents(seeds)).to(device),
                                       features=v == "features")
            _sync(device)
            if r:
                vt.append((time.perf_counter() - t) / batch)
                if v == "labelled":
                    interp.append(lab.seconds / batch)
    med = {v: float(np.median(t)) for v, t in times.items()}
    per_step = med["bare"] / steps
    full = {v: s + (DDIM_STEPS - steps) * per_step for v, s in med.items()}
    passes = len(backend.feature_steps)
    return {"steps": steps, "per_step": per_step, "feature_pass": (med["features"] - med["bare"]) / passes,
            "interpreter": float(np.median(interp)), "dim": ens.members[0][0].in_features, "measured": med,
            "full": full, "ratio": {v: full["bare"] / full[v] for v in ("features", "labelled")}}


def _sync(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize()


class Timed:
    """Wraps a generator backend or interpreter, adding the seconds spent in one method to ``seconds``."""

    def __init__(self, inner, method: str, device: str):
        self._inner, self._method, self._device, self.seconds = inner, method, device, 0.0

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name != self._method:
            return attr

        def timed(*args, **kwargs):
            _sync(self._device)
            t = time.perf_counter()
            out = attr(*args, **kwargs)
            _sync(self._device)
            self.seconds += time.perf_counter() - t
            return out
        return timed


class Reference:
    """The ensemble with its reference (per-member) inference path."""

    def __init__(self, ens: MLPEnsemble):
        self.num_classes, self.generator_hash = ens.num_classes, ens.generator_hash
        self._ens = ens

    def member_probabilities(self, features, classes=None):
        return self._ens.member_probabilities_reference(features)


def measure(model: str, size: int, rounds: int, batch: int, device: str, reference: bool, tmp: Path) -> dict:
    backend, ens = SETUPS[model](size, device)
    classes = np.arange(batch) % backend.num_classes if model == "biggan" else None
    cls = None if classes is None else torch.from_numpy(classes).to(device)
    variants = ["bare", "labelled"] + (["reference"] if reference else [])
    times: dict[str, list[float]] = {v: [] for v in variants}
    parts: dict[str, list[float]] = {k: [] for k in ("generator", "interpreter", "uncertainty", "writing+rest")}
    for r in range(rounds + 1):  # round 0 warms up
        seeds = np.arange(r * batch, (r + 1) * batch)
        for v in variants:
            _sync(device)
            t = time.perf_counter()
            if v == "bare":
                with torch.no_grad():
                    backend.synthesize(torch.from_numpy(backend.draw_latents(seeds)).to(device), cls, features=True)
                _sync(device)
            else:
                gen = Timed(backend, "synthesize", device)
                lab = Timed(ens if v == "labelled" else Reference(ens), "member_probabilities", device)
                synthesize_shard(gen, lab, tmp / f"{v}.h5", seeds, classes, ShardSettings(batch_size=batch),
                                 progress=False)
            elapsed = time.perf_counter() - t
            if r == 0:
                continue
            times[v].append(elapsed)
            if v == "labelled":
                with torch.no_grad():
                    probs = ens.member_probabilities(backend.synthesize(
                        torch.from_numpy(backend.draw_latents(seeds)).to(device), cls).features, cls)
                _sync(device)
                t = time.perf_counter()
                image_scores(js_divergence(probs, dim=2)).cpu()
                vote_labels(probs).cpu()
                _sync(device)
                unc = time.perf_counter() - t
                for k, s in zip(parts, (gen.seconds, lab.seconds, unc, elapsed - gen.seconds - lab.seconds - unc)):
                    parts[k].append(s / elapsed)
    med = {v: float(np.median(t)) for v, t in times.items()}
    dim = sum(s[0] for s in backend.feature_shapes().values())
    return {"model": model, "size": size, "dim": dim, "s_per_image": {v: s / batch for v, s in med.items()},
            "ratio": {v: med["bare"] / med[v] for v in variants if v != "bare"},
            "share": {k: float(np.median(s)) for k, s in parts.items()}}


SETUPS = {"stylegan2": setup, "biggan": setup_biggan}


def child(size: int, samples: int, batch: int, device: str) -> None:
    """One whole shard in this process; prints its peak memory as a JSON line."""
    torch.set_num_threads(1)
    backend, ens = setup(size, device)
    with tempfile.TemporaryDirectory() as tmp:
        synthesize_shard(backend, ens, Path(tmp) / "shard.h5", np.arange(samples),
                         settings=ShardSettings(batch_size=batch), progress=False)
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    dev = torch.cuda.max_memory_allocated() / 2**20 if device != "cpu" else 0.0
    print(json.dumps({"peak_rss_mb": peak, "peak_device_mb": dev}))


def shard_memory(size: int, samples: int, batch: int, device: str) -> dict:
    cmd = [sys.executable, __file__, "--child", str(size), "--samples", str(samples), "--batch", str(batch)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH":
                         os.pathsep.join(sys.path)}).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512], help="StyleGAN2 + MLP ensemble")
    ap.add_argument("--biggan-sizes", type=int, nargs="*", default=[512], help="BigGAN + conv interpreter")
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds per size (after one warm-up)")
    ap.add_argument("--batch", type=int, default=None, help="images per batch (default: 1 on CPU, 8 on GPU)")
    ap.add_argument("--reference", action="store_true", help="also time the reference path at 512²")
    ap.add_argument("--quick", action="store_true", help="2 rounds, StyleGAN2 at 128² and 256², BigGAN at 128²")
    ap.add_argument("--ddpm", type=int, nargs="*", default=[], metavar="SIZE",
                    help="guided-diffusion UNet + MLP ensemble at these sizes (256: ddpm-segmentation's); "
                         "only this case unless --sizes/--biggan-sizes are given too")
    ap.add_argument("--ddpm-steps", type=int, default=10, help="DDIM steps sampled; scaled to DDIM-50")
    ap.add_argument("--child", type=int)
    ap.add_argument("--samples", type=int)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = args.batch or (8 if device == "cuda" else 1)
    if args.child:
        return child(args.child, args.samples, batch, device)
    torch.set_num_threads(1)
    cases = [("stylegan2", n) for n in args.sizes] + [("biggan", n) for n in args.biggan_sizes]
    rounds = args.rounds
    if args.quick:
        cases, rounds = [("stylegan2", 128), ("stylegan2", 256), ("biggan", 128)], 2
    print(f"device {device}, {torch.get_num_threads()} thread(s), batch {batch}, {MEMBERS} members, {CLASSES} classes, "
          f"{rounds} rounds, medians")
    if args.ddpm:
        with tempfile.TemporaryDirectory() as tmp:
            for size in args.ddpm:
                r = measure_ddpm(size, args.ddpm_steps, rounds, batch, device, Path(tmp))
                m, f = r["measured"], r["full"]
                print(f"guided-diffusion {size}² ({DDPM_FLAGS['num_channels']} channels, blocks {DDPM_BLOCKS} at steps "
                      f"50/150/250, D {r['dim']}): sampled DDIM-{r['steps']}: {m['bare']:.2f} s/img bare, "
                      f"{m['features']:.2f} + features, {m['labelled']:.2f} labelled (interpreter {r['interpreter']:.2f}); "
                      f"per DDIM step {r['per_step']:.3f} s, per feature pass {r['feature_pass']:.3f} s")
                print(f"  scaled to DDIM-{DDIM_STEPS} (+{DDIM_STEPS - r['steps']} steps at the per-step cost): "
                      f"bare {f['bare']:.1f} s/img, + features {f['features']:.1f}, labelled {f['labelled']:.1f}; "
                      f"features/bare {r['ratio']['features']:.2f}, labelled/bare {r['ratio']['labelled']:.2f}")
        if "--sizes" not in sys.argv and "--biggan-sizes" not in sys.argv:
            return
    print(f"{'model':>9s} {'size':>5s} {'D':>5s} {'bare s/img':>10s} {'labelled/bare':>13s} {'reference/bare':>14s} "
          f"{'generator':>9s} {'interp.':>7s} {'uncert.':>7s} {'writing+rest':>12s}")
    with tempfile.TemporaryDirectory() as tmp:
        for model, size in cases:
            reference = model == "stylegan2" and (args.reference or size < 512)
            r = measure(model, size, rounds, batch, device, reference, Path(tmp))
            ref = r["ratio"].get("reference")
            print(f"{model:>9s} {size:5d} {r['dim']:5d} {r['s_per_image']['bare']:10.2f} {r['ratio']['labelled']:13.2f} "
                  f"{'-' if ref is None else f'{ref:.2f}':>14s} "
                  + " ".join(f"{r['share'][k]:{w}.0%}" for k, w in zip(r["share"], (9, 7, 7, 12))))
    small, large = 2 * batch, 6 * batch
    mem = {n: shard_memory(128, n, batch, device) for n in (small, large)}
    print(f"shard peak memory at 128² (fresh process each): {small} samples {mem[small]['peak_rss_mb']:.0f} MB RSS, "
          f"{large} samples {mem[large]['peak_rss_mb']:.0f} MB RSS "
          f"({mem[large]['peak_rss_mb'] / mem[small]['peak_rss_mb']:.2f}x)"
          + (f"; device {mem[small]['peak_device_mb']:.0f} / {mem[large]['peak_device_mb']:.0f} MB"
             if device != "cpu" else ""))


if __name__ == "__main__":
    main()
