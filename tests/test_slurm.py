"""The cluster path against a real scheduler: a single-node SLURM on 127.0.0.1.

Skipped, with the reason, only where SLURM cannot be installed or started.
"""

import re
import subprocess

import pytest
import yaml

from helpers import REPO, make_tiny_project, snakemake
from slurm_cluster import SlurmUnavailable, job_records, single_node_slurm

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

PROFILE = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
GPU_RULES = [rule for rule, res in PROFILE["set-resources"].items() if res.get("gpu")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        with single_node_slurm(tmp_path_factory.mktemp("slurm")) as env:
            yield env
    except SlurmUnavailable as e:
        pytest.skip(f"no SLURM here: {e}")


def slurm_args() -> list[str]:
    """The test's overrides of profiles/slurm: its partition, small jobs, no GPUs, and
    squeue for status (this cluster has no accounting database)."""
    return ["--profile", str(REPO / "profiles" / "slurm"), "--jobs", "4",
            "--default-resources", "slurm_partition=debug", "mem_mb=1000", "runtime=10",
            "--set-resources", *[f"{r}:gpu=0" for r in GPU_RULES], "fetch_checkpoint:slurm_partition=debug",
            "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
            "--latency-wait", "5", "--retries", "0"]


def test_workflow_runs_through_sbatch(cluster, tmp_path):
    make_tiny_project(tmp_path)
    before = {j["JobId"] for j in job_records(cluster)}
    proc = snakemake(tmp_path, *slurm_args(), env=cluster, timeout=900)
    jobs = [j for j in job_records(cluster) if j["JobId"] not in before]
    # every non-local job was an sbatch job that completed; local rules were not submitted
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", proc.stdout + proc.stderr)
    expected = {"fetch_checkpoint": 1, "sample_for_annotation": 1, "import_annotations": 1,
                "extract_features": 1, "train_interpreter": 1, "validate_interpreter": 1, "synthesize": 2}
    assert len(submitted) == sum(expected.values()) == len(jobs)
    assert {j["JobId"] for j in jobs} == set(submitted)
    assert all(j["JobState"] == "COMPLETED" for j in jobs), [(j["JobName"], j["JobState"]) for j in jobs]
    rules = [re.match(r"rule_(.+?)_wildcards", j["Comment"]).group(1) for j in jobs]
    assert {r: rules.count(r) for r in set(rules)} == expected
    manifest = tmp_path / "results/tiny/manifest.parquet"
    assert manifest.exists()
    import pandas as pd

    df = pd.read_parquet(manifest)
    assert len(df) == 12 and df["kept"].sum() == 9


def test_failing_job_is_reported_as_failed(cluster, tmp_path):
    from PIL import Image

    make_tiny_project(tmp_path)
    Image.new("RGB", (16, 16)).save(tmp_path / "ann" / "s00000002.png")  # an RGB mask: import must fail
    before = {j["JobId"] for j in job_records(cluster)}
    proc = snakemake(tmp_path, *slurm_args(), env=cluster, timeout=900, check=False)
    assert proc.returncode != 0
    assert "Error in rule import_annotations" in proc.stdout + proc.stderr
    states = {j["JobId"]: j["JobState"] for j in job_records(cluster) if j["JobId"] not in before}
    assert "FAILED" in states.values()
    log = (tmp_path / "results/logs/import_annotations/tiny.log").read_text()
    assert "s00000002.png" in log
