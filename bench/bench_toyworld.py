"""Toy-world rendering throughput on one core, per class and size.

Prints images/s and the ratio to the 500 images/s target (64×64, one core),
measured in this one run:
    python bench/bench_toyworld.py
"""

import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from labelfactory.toybench import world as toyworld  # noqa: E402

TARGET = 500.0


def rate(cls: str, size: int, n: int) -> float:
    toyworld.render(0, cls, size)  # warm caches
    t = time.perf_counter()
    for seed in range(n):
        toyworld.render(seed, cls, size)
    return n / (time.perf_counter() - t)


def main(n: int = 1000) -> None:
    print(f"{'class':8s} {'size':>5s} {'img/s':>8s} {'x target':>9s}")
    for size in (32, 64, 128):
        for cls in toyworld.CLASSES:
            r = rate(cls, size, n if size <= 64 else n // 4)
            print(f"{cls:8s} {size:5d} {r:8.0f} {r / TARGET:9.2f}")


if __name__ == "__main__":
    main()
