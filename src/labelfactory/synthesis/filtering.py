"""Uncertainty filtering (the workflow's `filter` rule): which synthesized samples make the dataset.

The manifest has one row per sample of every shard: ``shard`` (path), ``index``
(within the shard), ``seed``, ``class``, ``score`` and a boolean ``kept``. No
image is copied: consumers read the kept samples from their shards.

The filter drops exactly ``floor(ratio * N)`` samples, those with the highest
scores over the whole set (a quantile over all shards, not per shard):

- floor never drops more than asked for, and is defined at every N (a set with
  ``ratio * N < 1`` keeps everything);
- the ratio is taken as the decimal it is written as, so 0.29 of 100 drops 29
  (the float product 0.29 * 100 = 28.999... would floor to 28);
- equal scores are broken by ``(shard, index)``, the earlier sample being
  dropped first, so the manifest does not depend on the order shards were read;
- ``ratio`` must lie in [0, 1): 1 would drop every sample and leave no dataset.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path

import pandas as pd

from labelfactory.core.io import atomic_path

SCORE_COLUMNS = ["shard", "index", "seed", "class", "score"]
MANIFEST_COLUMNS = [*SCORE_COLUMNS, "kept"]
DTYPES = {"shard": "str", "index": "int64", "seed": "int64", "class": "int32", "score": "float32", "kept": "bool"}
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def num_dropped(n: int, ratio: float) -> int:
    """How many of ``n`` samples a filter ``ratio`` drops: ``floor(ratio * n)``,
    with ``ratio`` read as its decimal string."""
    if not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        hint = ": 1 would drop every sample and leave nothing" if ratio == 1 else ""
        raise ValueError(f"filter ratio must be in [0, 1), got {ratio!r}{hint}")
    return math.floor(Fraction(str(ratio)) * n)


def filter_manifest(scores: pd.DataFrame, ratio: float) -> pd.DataFrame:
    """Mark the ``floor(ratio * N)`` highest-scoring samples of ``scores`` (as from
    :func:`labelfactory.synthesis.shards.read_shard_scores`) as not kept. Returns the
    manifest sorted by ``(shard, index)``. Refuses NaN scores, repeated
    ``(shard, index)`` rows and repeated ``(seed, class)`` samples (overlapping
    seed ranges would put the same sample in the dataset twice). The ``attrs`` of ``scores`` (a
    diverged interpreter's record, ``labeller_diverged``) pass to the manifest, which keeps them
    as parquet."""
    missing = [c for c in SCORE_COLUMNS if c not in scores]
    if missing:
        raise ValueError(f"scores lack columns {missing}")
    df = scores[SCORE_COLUMNS].astype({c: DTYPES[c] for c in SCORE_COLUMNS}).reset_index(drop=True)
    for what, bad in (("have no score (NaN)", df["score"].isna()),
                      ("are listed twice", df.duplicated(["shard", "index"], keep=False)),
                      ("repeat a (seed, class) of another sample", df.duplicated(["seed", "class"], keep=False))):
        if bad.any():
            raise ValueError(f"{int(bad.sum())} samples {what}, e.g.\n{df[bad].head(5).to_string(index=False)}")
    drop = df.sort_values(["score", "shard", "index"], ascending=[False, True, True], kind="mergesort").index
    df["kept"] = True
    df.loc[drop[: num_dropped(len(df), ratio)], "kept"] = False
    manifest = df.sort_values(["shard", "index"], kind="mergesort").reset_index(drop=True)
    manifest.attrs = dict(scores.attrs)
    return manifest


def _format(path: Path) -> str:
    try:
        return _FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"{path}: manifest must end in one of {sorted(_FORMATS)}") from None


def write_manifest(manifest: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the manifest atomically as parquet (``.parquet``/``.pq``) or CSV (``.csv``)."""
    path = Path(path)
    fmt = _format(path)
    if list(manifest.columns) != MANIFEST_COLUMNS:
        raise ValueError(f"manifest columns must be {MANIFEST_COLUMNS}, got {list(manifest.columns)}")
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            manifest.to_parquet(tmp, index=False, engine="pyarrow")
        else:
            manifest.to_csv(tmp, index=False)


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest written by :func:`write_manifest`, with its column types."""
    path = Path(path)
    if _format(path) == "parquet":
        df = pd.read_parquet(path, engine="pyarrow")
    else:
        df = pd.read_csv(path, dtype=DTYPES, keep_default_na=False)
    if list(df.columns) != MANIFEST_COLUMNS:
        raise ValueError(f"{path}: manifest columns must be {MANIFEST_COLUMNS}, got {list(df.columns)}")
    return df.astype(DTYPES)
