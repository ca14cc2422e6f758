"""A diverged training run through the workflow: recorded, the table still written (on_divergence:
record), or one line on the console (on_divergence: fail); an interpreter whose members all diverged
is recorded in its shards, or stops synthesis in one line."""

import json

import pandas as pd
import pytest

from helpers import make_tiny_project, snakemake, update_config
from labelfactory.synthesis.shards import LABELLER_DIVERGED, verify_shard


@pytest.mark.slow
def test_a_diverged_run_is_a_row_of_the_table_not_a_failed_target(tmp_path):
    make_tiny_project(tmp_path, downstream=True)
    update_config(tmp_path, {"tasks": {"tiny": {"downstream": {
        "settings": ["few_shot", "fully_supervised"], "seeds": 1, "optimizer": "sgd", "lr": 1e30}}}})
    snakemake(tmp_path, "results/tiny/report/main_table.md")  # completes
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]]
            for line in (tmp_path / "results/tiny/report/main_table.md").read_text().splitlines()
            if line.startswith("| ") and "setting" not in line}
    assert rows == {"few-shot (annotations only)": ["0 + 1 diverged", "4", "diverged"],
                    "fully supervised (real)": ["0 + 1 diverged", "6", "diverged"]}

    update_config(tmp_path, {"on_divergence": "fail"})
    proc = snakemake(tmp_path, "results/tiny/downstream/few_shot/seed0/model.safetensors", "--forcerun",
                     "train_downstream", check=False)
    console = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in console
    assert ("labelfactory: train_downstream failed: Diverged: few_shot seed 0: the loss became non-finite at step "
            in console)
    assert "(log: results/logs/train_downstream/tiny/few_shot/seed0.log)" in console


@pytest.mark.slow
def test_an_interpreter_whose_members_all_diverged_is_recorded_or_stops_synthesis_in_one_line(tmp_path):
    """on_divergence: record (default): the whole default target completes; the shards record the
    diverged interpreter and hold no sample, the synthetic rows of the table are diverged runs, the
    sample figure says why it is empty; fail: one console line."""
    make_tiny_project(tmp_path, downstream=True)
    update_config(tmp_path, {"tasks": {"tiny": {"interpreter": {"lr": 1e30}}}})
    snakemake(tmp_path)
    shard = verify_shard(tmp_path / "results/tiny/shards/00000.h5")
    assert shard.num_samples == 0 and json.loads(shard.attrs[LABELLER_DIVERGED])["status"] == "diverged"
    table = pd.read_csv(tmp_path / "results/tiny/report/main_table.csv")
    synthetic = table[table["setting"].str.startswith("synthetic")]
    assert len(synthetic) == 2 and (synthetic["diverged"] == 2).all() and synthetic["miou_mean"].isna().all()
    assert (table.loc[~table.index.isin(synthetic.index), "miou_mean"] > 0).all()
    assert (tmp_path / "results/tiny/report/samples.png").stat().st_size > 1000
    update_config(tmp_path, {"on_divergence": "fail"})
    (tmp_path / "results/tiny/shards/00001.h5").unlink()
    proc = snakemake(tmp_path, "results/tiny/shards/00001.h5", check=False)
    console = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in console
    line = next(x for x in console.splitlines() if x.startswith("labelfactory: synthesize failed: Diverged: "))
    assert "the loss became non-finite at step" in line
    assert "(log: results/logs/synthesize/tiny/00001.log)" in line
