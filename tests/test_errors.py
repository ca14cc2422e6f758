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
     "sha256 mismatch for weights/g.pt: expected 00, got 11"),
    ("from labelfactory.annotations.labels import AnnotationError\n"
     "raise AnnotationError('ann', ['a.png: RGB, not an index mask', 'b.png: missing'])",
     "2 problems in ann:\n  a.png: RGB, not an index mask\n  b.png: missing"),
])
def test_a_library_error_is_one_line_on_the_console_and_a_traceback_in_the_log(tmp_path, statement, reason):
    proc, log, text = run_job(tmp_path, statement)
    assert proc.returncode == 1
    console = proc.stdout + proc.stderr
    assert f"labelfactory: fetch_checkpoint failed: {reason} (log: {log})\n" in console
    assert "Traceback" not in console and "job failed" not in console
    assert "Traceback (most recent call last)" in text and reason.splitlines()[-1] in text


def test_an_unexpected_error_keeps_its_traceback_on_the_console(tmp_path):
    proc, log, text = run_job(tmp_path, "1 / 0")
    assert proc.returncode == 1
    assert f"labelfactory: fetch_checkpoint failed: ZeroDivisionError: division by zero (log: {log})" in proc.stderr
    assert "Traceback" in proc.stderr and "Traceback" in text


@pytest.mark.slow
def test_a_failing_rule_prints_its_reason_on_the_snakemake_console(tmp_path):
    from PIL import Image

    make_tiny_project(tmp_path)
    update_config(tmp_path, {"checkpoints": {"tiny": {"sha256": "0" * 64}}})
    proc = snakemake(tmp_path, "resources/checkpoints/tiny.safetensors", check=False)
    console = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (f"labelfactory: fetch_checkpoint failed: sha256 mismatch for gen.pt: expected {'0' * 64}, got "
            in console)
    assert "(log: results/logs/fetch_checkpoint/tiny.log)" in console and "Traceback" not in console

    update_config(tmp_path, {"checkpoints": {"tiny": {"sha256": None}}})
    Image.new("RGB", (16, 16)).save(tmp_path / "ann" / "s00000001.png")
    proc = snakemake(tmp_path, "results/tiny/annotations.h5", check=False)
    console = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "labelfactory: import_annotations failed: 1 problem in ann:\n  s00000001.png: " in console
    assert "(log: results/logs/import_annotations/tiny.log)" in console and "Traceback" not in console
