"""A failed job says why on the console, in one line; the traceback stays in its log."""

import os
import subprocess
import sys

import pytest

from helpers import REPO, make_tiny_project, snakemake, update_config

# a Snakemake `script:` job in miniature: argv = log file, the statement the job fails with
JOB = """
import sys, types
from labelfactory.core.runtime import snakemake_job
smk = types.SimpleNamespace(log=[sys.argv[1]], threads=1, rule="fetch_checkpoint", wildcards={})
with snakemake_job(smk):
    exec(sys.argv[2])
"""


def run_job(tmp_path, statement: str) -> tuple[subprocess.CompletedProcess, str, str]:
    log = tmp_path / "job.log"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", JOB, str(log), statement], capture_output=True, text=True,
                          env=env, timeout=120)
    return proc, str(log), log.read_text()


@pytest.mark.parametrize("statement, reason", [
    ("from labelfactory.generators.checkpoints import CheckpointError\n"
     "raise CheckpointError('sha256 mismatch for weights/g.pt: expected 00, got 11')",
     "CheckpointError: sha256 mismatch for weights/g.pt: expected 00, got 11"),
    ("from labelfactory.annotations.labels import AnnotationError\n"
     "raise AnnotationError('ann', ['a.png: RGB, not an index mask', 'b.png: missing'])",
     "AnnotationError: 2 problems in ann:\n  a.png: RGB, not an index mask\n  b.png: missing"),
    ("1 / 0", "ZeroDivisionError: division by zero"),  # a bug, or a third-party library's error
    ("raise FloatingPointError('Predicted boxes or scores contain Inf/NaN. Training has diverged.')",
     "FloatingPointError: Predicted boxes or scores contain Inf/NaN. Training has diverged."),
])
def test_any_error_is_one_line_on_the_console_and_a_traceback_in_the_log(tmp_path, statement, reason):
    proc, log, text = run_job(tmp_path, statement)
    assert proc.returncode == 1
    console = proc.stdout + proc.stderr
    assert f"labelfactory: fetch_checkpoint failed: {reason} (log: {log})\n" in console
    assert "Traceback" not in console and "job failed" not in console
    assert "Traceback (most recent call last)" in text and reason.splitlines()[-1] in text


@pytest.mark.slow
def test_a_failing_rule_prints_its_reason_on_the_snakemake_console(tmp_path):
    from PIL import Image

    make_tiny_project(tmp_path)
    profile = ("--profile", str(REPO / "profiles" / "local"))  # as `make run` runs it
    update_config(tmp_path, {"checkpoints": {"tiny": {"sha256": "0" * 64}}})
    proc = snakemake(tmp_path, "resources/checkpoints/tiny.safetensors", *profile, check=False)
    console = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (f"labelfactory: fetch_checkpoint failed: FetchError: sha256 mismatch for gen.pt: expected "
            f"{'0' * 64}, got " in console)
    assert "(log: results/logs/fetch_checkpoint/tiny.log)" in console and "Traceback" not in console

    update_config(tmp_path, {"checkpoints": {"tiny": {"sha256": None}}})
    Image.new("RGB", (16, 16)).save(tmp_path / "ann" / "s00000001.png")
    proc = snakemake(tmp_path, "results/tiny/annotations.h5", check=False)
    console = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "labelfactory: import_annotations failed: AnnotationError: 1 problem in ann:\n  s00000001.png: " in console
    assert "(log: results/logs/import_annotations/tiny.log)" in console and "Traceback" not in console


@pytest.mark.slow
def test_a_third_party_error_is_one_line_on_the_snakemake_console(tmp_path):
    """A user's generator that fails inside numpy when it renders more than two samples at once
    (fetch_checkpoint's probe renders two): the job prints numpy's error in one line."""
    import torch
    from user_generators import DCGAN

    make_tiny_project(tmp_path)
    (tmp_path / "flaky.py").write_text(
        "import numpy as np\nfrom user_generators import DCGAN\n\n\nclass Flaky(DCGAN):\n"
        "    def forward(self, z):\n        if len(z) > 2:\n            np.linalg.inv(np.zeros((2, 2)))\n"
        "        return super().forward(z)\n")
    kwargs = {"nz": 16, "ngf": 8, "size": 16}
    torch.save(DCGAN(**kwargs).state_dict(), tmp_path / "netG.pth")
    update_config(tmp_path, {"checkpoints": {"tiny": {"url": "netG.pth", "sha256": None, "generator": {
        "class_path": "flaky:Flaky", "kwargs": kwargs, "latent_shape": [16, 1, 1], "tap_types": ["BatchNorm2d"]}}}})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(tmp_path)])}
    proc = snakemake(tmp_path, "results/tiny/for_annotation", "--profile", str(REPO / "profiles" / "local"),
                     check=False, env=env)
    console = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert ("labelfactory: sample_for_annotation failed: LinAlgError: Singular matrix "
            "(log: results/logs/sample_for_annotation/tiny.log)\n" in console)
    assert "Traceback" not in console
    assert "Traceback (most recent call last)" in (tmp_path / "results/logs/sample_for_annotation/tiny.log").read_text()
