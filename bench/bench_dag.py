"""DAG build time at ImageNet scale: 1,000 classes × several synthesis shards each.

Builds the tests' tiny project, sets ``synthesis.classes`` to ``0-(C-1)`` with
``--shards`` shards per class, and times ``snakemake --dry-run`` (config
validation, DAG of every job, no execution) against the same dry run at one
class, in one run. Prints the job counts and the ratio of times.

    PYTHONPATH=src:tests python bench/bench_dag.py [--classes 1000] [--shards 4]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import job_counts, make_tiny_project, snakemake_command, update_config  # noqa: E402


def dry_run(root: Path, classes: int, shards: int) -> tuple[int, int, float]:
    """(synthesize jobs, all jobs, seconds) of a dry run with ``classes`` × ``shards`` shards."""
    update_config(root, {"tasks": {"tiny": {"synthesis": {"num_shards": shards, "classes": f"0-{classes - 1}"}}}})
    cmd, env = snakemake_command(root, "--dry-run", "--quiet", "rules")
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(proc.stdout + proc.stderr)
    counts = job_counts(proc.stdout)
    return counts.get("synthesize", 0), counts["total"], seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--shards", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_tiny_project(root)
        small = dry_run(root, 1, args.shards)
        large = dry_run(root, args.classes, args.shards)
    print(f"{'classes':>8s} {'synthesize jobs':>16s} {'all jobs':>9s} {'dry run s':>10s}")
    for c, (syn, total, s) in ((1, small), (args.classes, large)):
        print(f"{c:8d} {syn:16d} {total:9d} {s:10.1f}")
    expected = args.classes * args.shards
    print(f"synthesize jobs as expected ({expected}): {large[0] == expected}; "
          f"time ratio {large[2] / small[2]:.1f}x for {large[1] / small[1]:.0f}x the jobs "
          f"({1000 * (large[2] - small[2]) / (large[1] - small[1]):.1f} ms per added job)")


if __name__ == "__main__":
    main()
