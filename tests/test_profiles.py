"""The shipped profiles name only real rules and resources the rules use."""

import re

import yaml

from helpers import REPO

RULES = {m for f in (REPO / "workflow").rglob("*.smk") for m in re.findall(r"^rule (\w+):", f.read_text(), re.M)}
RULES |= set(re.findall(r"^rule (\w+):", (REPO / "workflow" / "Snakefile").read_text(), re.M))


def test_rules_are_found():
    assert {"train_interpreter", "synthesize", "train_downstream", "evaluate_downstream", "main_table"} <= RULES


def test_slurm_profile_sets_resources_of_existing_rules_only():
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    unknown = set(profile["set-resources"]) - RULES
    assert not unknown, f"set-resources for rules that do not exist: {sorted(unknown)}"
    gpu_rules = {r for r, res in profile["set-resources"].items() if res.get("gpu")}
    assert {"train_interpreter", "synthesize", "train_downstream", "evaluate_downstream"} <= gpu_rules
    assert profile["executor"] == "slurm" and "slurm_partition" in profile["default-resources"]


def test_local_profile_resumes_and_keeps_going():
    profile = yaml.safe_load((REPO / "profiles" / "local" / "config.yaml").read_text())
    assert profile["rerun-incomplete"] is True and profile["keep-going"] is True
