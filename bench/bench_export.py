"""Exports stream: peak memory stays flat as the number of exported samples grows.

Writes a class-conditional task folder of N random 32 px samples (shards in the shard layout,
a manifest dropping 10 %, an interpreter sidecar) for each size, then exports it in each format,
every export in a fresh subprocess, and prints per format and size: the time, the peak RSS of
the process, the peak RSS right after the imports, and the ratio of the peaks of the largest and
smallest size (flat: ≈ 1). With ``--trace``, also the peak of the Python and numpy heap during
the export (tracemalloc; slows the export, so its times are not throughput).

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_export.py [--sizes 2000 20000] [--formats webdataset hf voc coco] [--trace]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import h5py  # noqa: E402
import numpy as np  # noqa: E402

from labelfactory.synthesis.filtering import filter_manifest, write_manifest  # noqa: E402
from labelfactory.synthesis.shards import FORMAT_VERSION, read_shard_scores, verify_shard  # noqa: E402

SIZE, PER_SHARD = 32, 1000


def write_task(root: Path, n: int, seed: int = 0) -> Path:
    """A task folder of ``n`` random samples (two classes, blob-shaped binary masks, random
    per-pixel uncertainty) in shards of up to PER_SHARD samples."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    paths = []
    for s, start in enumerate(range(0, n, PER_SHARD)):
        k = min(PER_SHARD, n - start)
        centre = rng.uniform(8, 24, (k, 2, 1, 1))
        labels = (((yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2) < rng.uniform(16, 64, (k, 1, 1))).astype(np.uint8)
        path = root / "shards" / f"{s:05d}.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            f.attrs.update({"format_version": FORMAT_VERSION, "num_samples": k, "generator_hash": "bench" * 8,
                            "config_hash": "0" * 64, "code_version": "bench", "label_rule": "vote",
                            "score_rule": "top10", "top_fraction": 0.1, "truncation": 1.0, "noise": "const"})
            for name, data in (("images", rng.integers(0, 256, (k, SIZE, SIZE, 3), dtype=np.uint8)),
                               ("labels", labels), ("uncertainty", rng.random((k, SIZE, SIZE)).astype(np.float16))):
                f.create_dataset(name, data=data, chunks=(1, *data.shape[1:]), fletcher32=True)
            for name, data in (("score", rng.random(k).astype(np.float32)),
                               ("seed", np.arange(start, start + k, dtype=np.int64)),
                               ("class", (np.arange(start, start + k) % 2).astype(np.int32))):
                f.create_dataset(name, data=data, chunks=(k,), fletcher32=True)
        verify_shard(path)
        paths.append(str(path))
    write_manifest(filter_manifest(read_shard_scores(paths), 0.1), root / "manifest.parquet")
    (root / "interpreter.json").write_text(json.dumps({"interpreter": "conv", "num_classes": 2,
                                                       "label_names": ["background", "object"]}))
    return root


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def export_once(task: str, fmt: str, out: str, trace: bool) -> None:
    """Child process: import, note the peak RSS, export, print both peaks and the time as JSON
    (with ``trace``, also the traced heap's peak)."""
    from labelfactory.downstream import coco_export  # noqa: F401  (registers coco)
    from labelfactory.synthesis.export import ExportOptions, export_task

    imported = _peak_mb()
    if trace:
        tracemalloc.start()
    t = time.perf_counter()
    summary = export_task(task, fmt, out, ExportOptions(class_names={0: "cat", 1: "dog"}))
    seconds = time.perf_counter() - t
    heap = tracemalloc.get_traced_memory()[1] / 2**20 if trace else None
    print(json.dumps({"seconds": seconds, "peak_mb": _peak_mb(), "imported_mb": imported, "heap_mb": heap,
                      "samples": summary["samples"], "files": summary["files"]}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    p.add_argument("--formats", nargs="+", default=["webdataset", "hf", "voc", "coco"])
    p.add_argument("--trace", action="store_true", help="also the Python/numpy heap's peak (slower exports)")
    p.add_argument("--child", nargs=3, metavar=("TASK", "FORMAT", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        export_once(*args.child, trace=args.trace)
        return
    results: dict[str, dict[int, dict]] = {f: {} for f in args.formats}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            t = time.perf_counter()
            task = write_task(Path(tmp) / f"task{n}", n)
            print(f"{n} samples written in {time.perf_counter() - t:.1f} s", flush=True)
            for fmt in args.formats:
                proc = subprocess.run([sys.executable, __file__, "--child", str(task), fmt, f"{tmp}/out{n}-{fmt}",
                                       *(["--trace"] if args.trace else [])], capture_output=True, text=True, check=True)
                r = results[fmt][n] = json.loads(proc.stdout.strip().splitlines()[-1])
                heap = f", heap peak {r['heap_mb']:.1f} MB" if args.trace else ""
                print(f"{fmt:>10} {n:>7} samples ({r['samples']} kept): {r['seconds']:7.1f} s, peak RSS "
                      f"{r['peak_mb']:6.0f} MB (after imports {r['imported_mb']:.0f} MB){heap}, {r['files']} files",
                      flush=True)
    lo, hi = min(args.sizes), max(args.sizes)
    for fmt, r in results.items():
        print(f"{fmt:>10}: peak RSS at {hi} / at {lo} samples = {r[hi]['peak_mb'] / r[lo]['peak_mb']:.3f}; "
              f"above the imports {r[hi]['peak_mb'] - r[hi]['imported_mb']:.0f} MB vs "
              f"{r[lo]['peak_mb'] - r[lo]['imported_mb']:.0f} MB; time per sample "
              f"{1e3 * r[hi]['seconds'] / r[hi]['samples']:.2f} vs {1e3 * r[lo]['seconds'] / r[lo]['samples']:.2f} ms")


if __name__ == "__main__":
    main()
