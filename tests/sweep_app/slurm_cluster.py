"""A throw-away one-node SLURM cluster on loopback (Debian's slurm-wlm + munge), for tests and benchmarks.

Everything private: a munge daemon on its own socket and key, slurmctld and slurmd on free ports, state,
spool, logs and slurm.conf in one temporary folder; clients find it through SLURM_CONF. No cgroups
(proctrack/linuxproc, task/none) and no slurmdbd (no sacct: the launcher watches squeue). Runs as root
(slurmd starts jobs as the submitting user). Only the processes started here are stopped here.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo")


def missing() -> str | None:
    """Why no cluster can be started here, or None."""
    for name in DAEMONS:
        if shutil.which(name) is None and not Path(f"/usr/sbin/{name}").exists():
            return f"{name} is not installed (make slurm installs slurm-wlm and munge)"
    for name in CLIENTS:
        if shutil.which(name) is None:
            return f"{name} is not installed (make slurm)"
    if os.geteuid() != 0:
        return "a private slurmd must run as root"
    return None


def _bin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conf(folder: Path, cpus: int, memory_mb: int) -> str:
    return f"""ClusterName=ti-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=5
MinJobAge=600
SlurmdTimeout=60
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@contextmanager
def slurm_cluster(cpus: int = 2, memory_mb: int = 4096, timeout_s: float = 60.0) -> Iterator[dict]:
    """Start munged, slurmctld and slurmd; yield the environment clients need (SLURM_CONF); stop them."""
    folder = Path(tempfile.mkdtemp(prefix="ti-slurm-"))
    os.chmod(folder, 0o700)
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    conf = folder / "slurm.conf"
    conf.write_text(_conf(folder, cpus, memory_mb))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started: list[subprocess.Popen] = []

    def start(*cmd: str, log: str) -> None:
        started.append(
            subprocess.Popen(
                list(cmd),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(folder / log, "w"),
                start_new_session=True,
            )
        )

    try:
        start(
            _bin("munged"),
            "-F",
            "-f",
            f"--socket={folder}/munge.socket",
            f"--key-file={key}",
            f"--pid-file={folder}/munged.pid",
            f"--seed-file={folder}/munged.seed",
            f"--log-file={folder}/munged.log",
            log="munged.err",
        )
        _wait_for(lambda: (folder / "munge.socket").exists(), timeout_s, folder, "munged")
        start(_bin("slurmctld"), "-D", "-i", "-f", str(conf), log="slurmctld.err")
        start(_bin("slurmd"), "-D", "-N", "localhost", "-f", str(conf), log="slurmd.err")

        def node_idle() -> bool:
            out = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True, timeout=30
            )
            return out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated")

        _wait_for(node_idle, timeout_s, folder, "the node")
        yield env | {"SLURM_TEST_FOLDER": str(folder)}
    finally:
        if started:
            subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True, timeout=30)
        for proc in reversed(started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for(ready, timeout_s: float, folder: Path, what: str) -> None:
    deadline = time.time() + timeout_s
    while not ready():
        if time.time() > deadline:
            logs = "\n".join(
                f"--- {p.name}\n{p.read_text()[-1500:]}"
                for p in sorted(folder.glob("*.log")) + sorted(folder.glob("*.err"))
            )
            raise RuntimeError(f"{what} did not come up in {timeout_s:.0f} s:\n{logs}")
        time.sleep(0.3)
