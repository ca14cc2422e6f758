"""The rules' conda environment: one env file for every rule, an install script that carries the
digests of what it installs (so Snakemake rebuilds the environment when the pins change), a clean lint."""

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO

POST_DEPLOY = REPO / "envs" / "labelfactory.post-deploy.sh"


@pytest.mark.parametrize("installed", ["requirements.txt", "envs/install_detectron2.sh"])
def test_post_deploy_script_carries_the_digest_of_what_it_installs(installed):
    recorded = re.search(rf"^#\s+{re.escape(installed)} sha256 ([0-9a-f]{{64}})$", POST_DEPLOY.read_text(), re.M)
    assert recorded, f"{POST_DEPLOY.name} names no sha256 of {installed}"
    actual = hashlib.sha256((REPO / installed).read_bytes()).hexdigest()
    assert recorded.group(1) == actual, (f"{installed} changed: put sha256 {actual} into {POST_DEPLOY.name}, "
                                         "so Snakemake rebuilds the rules' conda environment")


def test_conda_environment_leaves_the_pins_to_requirements():
    env = yaml.safe_load((REPO / "envs" / "labelfactory.yaml").read_text())
    assert env["name"] == "labelfactory" and "pip" in env["dependencies"]
    assert all(isinstance(d, str) for d in env["dependencies"]), "pip packages belong in requirements.txt"


def test_every_rule_with_a_job_declares_the_environment():
    """Each rule that runs a script declares envs/labelfactory.yaml, by a path that resolves."""
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for name, body in re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)+)", smk.read_text(), re.M):
            if "script:" not in body and "shell:" not in body and "run:" not in body:
                continue
            env = re.search(r"conda:\s*\n?\s*\"([^\"]+)\"", body)
            assert env, f"rule {name} ({smk.name}) declares no conda environment"
            assert (smk.parent / env.group(1)).resolve() == (REPO / "envs" / "labelfactory.yaml").resolve()


@pytest.mark.slow
def test_snakemake_lint_is_clean():
    exe = Path(sys.executable).with_name("snakemake")
    proc = subprocess.run([str(exe), "--lint"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "Lints for" not in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0
