"""Kill-and-resume: SIGKILL a running synthesis job and Snakemake itself, re-run the
same command, and get exactly the manifest of an uninterrupted run."""

import hashlib
import os
import signal
import subprocess
import time

import pytest

from helpers import make_tiny_project, snakemake, snakemake_command, update_config

pytestmark = pytest.mark.slow


def project(root):
    make_tiny_project(root)
    update_config(root, {"tasks": {"tiny": {"synthesis": {"num_shards": 3, "samples_per_shard": 600,
                                                          "batch_size": 2}}}})
    return root


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_killed_run_resumes_to_the_identical_manifest(tmp_path):
    ref = project(tmp_path / "uninterrupted")
    snakemake(ref, "--cores", "1")

    run = project(tmp_path / "killed")
    snakemake(run, "--cores", "1", "--until", "train_interpreter")
    shards = run / "results/tiny/shards"
    cmd, env = snakemake_command(run, "--cores", "1")
    proc = subprocess.Popen(cmd, cwd=run, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not ((writing := list(shards.glob(".*.tmp"))) and (done := list(shards.glob("*.h5")))):
            assert proc.poll() is None and time.time() < deadline, "no shard was ever caught mid-write"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the synthesis job and Snakemake itself
        proc.wait()
    # the shard being written may have been renamed into place before the kill landed, but its job never
    # finished: Snakemake marks it incomplete, and the re-run (rerun-incomplete, as both profiles set) redoes it
    in_progress = {t.name[1:].rsplit(".", 2)[0] for t in writing}
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done if p.name not in in_progress}
    assert 1 <= len(finished) < 3

    out = snakemake(run, "--cores", "1", "--rerun-incomplete")  # the command the profiles give
    assert "removed the lock left by a killed Snakemake run" in out.stdout + out.stderr
    for name, stamp in finished.items():  # finished shards were kept, not redone
        p = shards / name
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp
    assert sorted(p.name for p in shards.iterdir()) == ["00000.h5", "00001.h5", "00002.h5"]  # no temp files
    assert sha(run / "results/tiny/manifest.parquet") == sha(ref / "results/tiny/manifest.parquet")
