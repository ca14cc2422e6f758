import numpy as np
import pandas as pd
import pytest
import torch

from labelfactory.core.io import sha256_file
from labelfactory.synthesis.filtering import (MANIFEST_COLUMNS, filter_manifest, num_dropped, read_manifest,
                                   write_manifest)
from labelfactory.synthesis.shards import read_shard_scores, synthesize_shard

from helpers import tiny_generator
from test_synthesis import LinearEnsemble

torch.set_num_threads(1)


def scores(values, shards=None, classes=-1):
    """A scores frame as read_shard_scores returns it (index counts within each shard)."""
    shards = shards or ["s.h5"] * len(values)
    df = pd.DataFrame({"shard": shards, "seed": np.arange(len(values)), "class": classes,
                       "score": np.asarray(values, dtype=np.float32)})
    df.insert(1, "index", df.groupby("shard").cumcount())
    return df


@pytest.mark.parametrize("n, ratio, dropped", [
    (0, 0.5, 0), (1, 0.5, 0), (1, 0.99, 0), (7, 0.0, 0), (7, 0.3, 2), (7, 0.5, 3),
    (100, 0.0, 0), (100, 0.1, 10), (100, 0.29, 29), (100, 0.99, 99),
])
def test_drops_exactly_floor_ratio_n_of_the_highest_scores(n, ratio, dropped):
    assert num_dropped(n, ratio) == dropped
    values = np.random.default_rng(n).permutation(n).astype(np.float32) / 7
    m = filter_manifest(scores(values), ratio)
    assert list(m.columns) == MANIFEST_COLUMNS and len(m) == n and m["kept"].dtype == bool
    assert (~m["kept"]).sum() == dropped
    np.testing.assert_array_equal(m.loc[~m["kept"], "score"].sort_values(), np.sort(values)[n - dropped:])


def test_quantile_is_over_all_shards_not_per_shard():
    m = filter_manifest(scores([0.9, 0.8, 0.7, 0.1, 0.2, 0.3], shards=["a.h5"] * 3 + ["b.h5"] * 3), 0.5)
    assert m.loc[~m["kept"], "shard"].tolist() == ["a.h5"] * 3


def test_ties_are_broken_by_shard_and_index_whatever_the_input_order():
    df = scores([1.0] * 6, shards=["b.h5", "a.h5"] * 3)
    m = filter_manifest(df, 0.5)
    assert m[["shard", "index"]].values.tolist() == [["a.h5", 0], ["a.h5", 1], ["a.h5", 2],
                                                    ["b.h5", 0], ["b.h5", 1], ["b.h5", 2]]
    assert m["kept"].tolist() == [False] * 3 + [True] * 3
    shuffled = df.sample(frac=1, random_state=0)
    pd.testing.assert_frame_equal(filter_manifest(shuffled, 0.5), m)

    m = filter_manifest(scores([2.0, 3.0, 2.0, 1.0, 2.0]), 0.4)  # the cut falls inside a tie
    assert m["kept"].tolist() == [False, False, True, True, True]


@pytest.mark.parametrize("ratio", [1, 1.0, 1.5, -0.1, float("nan"), "0.1"])
def test_ratios_outside_zero_to_one_are_refused(ratio):
    with pytest.raises(ValueError, match="ratio must be in \\[0, 1\\)" + (".*every sample" if ratio == 1 else "")):
        filter_manifest(scores([0.1, 0.2]), ratio)


def test_bad_score_tables_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        filter_manifest(scores([0.1, float("nan")]), 0.1)
    with pytest.raises(ValueError, match="listed twice"):
        filter_manifest(pd.concat([scores([0.1, 0.2]), scores([0.1])]), 0.1)
    with pytest.raises(ValueError, match=r"repeat a \(seed, class\)"):
        filter_manifest(scores([0.1, 0.2], shards=["a.h5", "b.h5"]).assign(seed=5), 0.1)
    filter_manifest(scores([0.1, 0.2], classes=[0, 1]).assign(seed=5), 0.1)  # same seed, other class: fine
    with pytest.raises(ValueError, match=r"lack columns \['score'\]"):
        filter_manifest(scores([0.1]).drop(columns="score"), 0.1)


@pytest.mark.parametrize("name", ["manifest.parquet", "manifest.csv"])
def test_write_read_round_trip_is_atomic_and_deterministic(tmp_path, name):
    m = filter_manifest(scores(np.linspace(0, 1, 9) / 3, shards=["x/a.h5"] * 4 + ["NA"] * 5), 0.3)
    write_manifest(m, tmp_path / "a" / name)
    write_manifest(m, tmp_path / "b" / name)
    assert [p.name for p in (tmp_path / "a").iterdir()] == [name]
    assert sha256_file(tmp_path / "a" / name) == sha256_file(tmp_path / "b" / name)
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "a" / name), m)


def test_write_manifest_refuses_unknown_formats_and_columns(tmp_path):
    m = filter_manifest(scores([0.1]), 0)
    with pytest.raises(ValueError, match="must end in one of"):
        write_manifest(m, tmp_path / "manifest.json")
    with pytest.raises(ValueError, match="columns"):
        write_manifest(m.drop(columns="kept"), tmp_path / "manifest.csv")
    assert list(tmp_path.iterdir()) == []


def test_filtering_real_shards_copies_no_image(tmp_path):
    b = tiny_generator()
    interpreter = LinearEnsemble(b.feature_shapes())
    shards = [tmp_path / "shards" / f"{i}.h5" for i in range(2)]
    for i, path in enumerate(shards):
        synthesize_shard(b, interpreter, path, range(5 * i, 5 * i + 5), progress=False)
    before = [sha256_file(p) for p in shards]
    out = tmp_path / "manifest.parquet"
    write_manifest(filter_manifest(read_shard_scores(shards), 0.2), out)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["0.h5", "1.h5", "manifest.parquet"]
    assert [sha256_file(p) for p in shards] == before
    m = read_manifest(out)
    assert len(m) == 10 and (~m["kept"]).sum() == 2 and m["seed"].tolist() == list(range(10))
    assert out.stat().st_size < min(p.stat().st_size for p in shards) / 4
