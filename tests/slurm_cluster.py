"""A real single-node SLURM cluster on 127.0.0.1 for the cluster-path tests.

Installs Debian's ``slurm-wlm`` and ``munge`` when missing (root and apt-get
needed), writes a private ``slurm.conf`` under a scratch folder, starts munged,
slurmctld and slurmd, waits for the node to be idle, and always shuts the
daemons down again. Facts behind the settings: ``../shared/SLURM.md``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be installed or started here (the test is skipped with this message)."""


def _run(cmd: list[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def ensure_installed() -> None:
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SlurmUnavailable("slurm-wlm is not installed and cannot be (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurm-wlm", "munge"]):
        proc = _run(cmd, timeout=600, env=env)
        if proc.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(cmd)} failed: {proc.stderr[-500:]}")
    if not shutil.which("slurmctld"):
        raise SlurmUnavailable("slurm-wlm installed but slurmctld is not on PATH")


def _start_munge() -> bool:
    """Start munged unless one runs; returns whether this call started it."""
    if _run(["bash", "-c", "munge -n | unmunge"], timeout=10).returncode == 0:
        return False
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.write_bytes(os.urandom(1024))
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
    _run(["install", "-d", "-o", "munge", "-g", "munge", "/run/munge"])
    proc = _run(["runuser", "-u", "munge", "--", "munged"], timeout=30)
    if proc.returncode != 0:
        raise SlurmUnavailable(f"munged failed to start: {proc.stderr[-300:]}")
    return True


SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
CLUSTER_NAME = "labelfactory-test"


def _write_conf(scratch: Path, host: str) -> Path:
    """Write the cluster's config to the system path, where job steps (``srun`` inside
    jobs) look for it; a config that is not ours is never overwritten."""
    if SYSTEM_CONF.exists() and f"ClusterName={CLUSTER_NAME}" not in SYSTEM_CONF.read_text():
        raise SlurmUnavailable(f"{SYSTEM_CONF} belongs to another cluster; not touching it")
    mem_kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
    for d in ("state", "spool"):
        (scratch / d).mkdir(parents=True, exist_ok=True)
    SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
    conf = SYSTEM_CONF
    conf.write_text(f"""\
ClusterName={CLUSTER_NAME}
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=300
StateSaveLocation={scratch}/state
SlurmdSpoolDir={scratch}/spool
SlurmctldPidFile={scratch}/slurmctld.pid
SlurmdPidFile={scratch}/slurmd.pid
SlurmctldLogFile={scratch}/slurmctld.log
SlurmdLogFile={scratch}/slurmd.log
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={int(mem_kb / 1024 * 0.8)} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def _stop(scratch: Path, env: dict) -> None:
    _run(["scontrol", "shutdown"], timeout=20, env=env)
    deadline = time.time() + 15
    for pidfile in ("slurmctld.pid", "slurmd.pid"):
        path = scratch / pidfile
        while path.exists() and time.time() < deadline:
            try:
                os.kill(int(path.read_text().strip() or 0), 0)
            except (ProcessLookupError, ValueError):
                break
            time.sleep(0.2)
        if path.exists():
            with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
                os.kill(int(path.read_text().strip()), 9)


@contextlib.contextmanager
def single_node_slurm(scratch: Path, start_timeout: float = 60) -> Iterator[dict]:
    """Run a private single-node cluster; yields the environment (``SLURM_CONF``) for
    ``sbatch``/``squeue``/snakemake. The daemons never outlive the block."""
    ensure_installed()
    started_munge = _start_munge()
    host = socket.gethostname().split(".")[0]
    conf = _write_conf(Path(scratch), host)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        for daemon in ("slurmctld", "slurmd"):
            proc = _run([daemon, "-c", "-f", str(conf)], timeout=30, env=env)
            if proc.returncode != 0:
                raise SlurmUnavailable(f"{daemon} failed to start: {proc.stderr[-300:]}")
        deadline = time.time() + start_timeout
        state = ""
        while time.time() < deadline:
            state = _run(["sinfo", "-h", "-N", "-o", "%T"], timeout=10, env=env).stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            raise SlurmUnavailable(f"node not idle after {start_timeout:.0f} s (state {state!r}); see {scratch}")
        yield env
    finally:
        _stop(Path(scratch), env)
        conf.unlink(missing_ok=True)
        if started_munge:
            _run(["pkill", "-x", "munged"], timeout=10)


def job_records(env: dict) -> list[dict[str, str]]:
    """Every job the controller still remembers (MinJobAge keeps finished ones), as
    ``scontrol show job -o`` key=value records."""
    out = _run(["scontrol", "show", "job", "-o"], timeout=20, env=env).stdout
    records = []
    for line in out.splitlines():
        if line.startswith("JobId="):
            records.append(dict(kv.split("=", 1) for kv in line.split() if "=" in kv))
    return records
