"""A diverged training run through the workflow: recorded, the table still written (on_divergence:
record), or one line on the console (on_divergence: fail); an interpreter whose members all diverged
stops synthesis in one line."""

import pytest

from helpers import make_tiny_project, snakemake, update_config


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
def test_an_interpreter_whose_members_all_diverged_stops_synthesis_in_one_line(tmp_path):
    make_tiny_project(tmp_path)
    update_config(tmp_path, {"tasks": {"tiny": {"interpreter": {"lr": 1e30}}}})
    proc = snakemake(tmp_path, "results/tiny/shards/00000.h5", check=False)
    console = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in console
    assert (tmp_path / "results/tiny/interpreter.json").exists()  # the interpreter's job recorded it
    line = next(x for x in console.splitlines() if x.startswith("labelfactory: synthesize failed: ValueError: "))
    assert "every member of this interpreter diverged in training" in line
    assert "(log: results/logs/synthesize/tiny/00000.log)" in line
