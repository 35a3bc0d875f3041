"""`hydra/launcher=slurm` / `slurm_cpu`: Hydra's submitit SLURM launcher that never waits blind.

Differences from hydra-submitit-launcher's SlurmLauncher (whose submission code this keeps):
- sbatch refusing a job (a GPU request on a partition without GPUs, more memory than any node) is one
  error line naming the launcher keys to change;
- after submission the queue is watched with `squeue`: a job PENDING for a reason that never clears by
  waiting (PartitionConfig, PartitionTimeLimit, ...) is cancelled and reported at once, not waited on;
- a job that leaves the queue without a result (scancel, preemption, time limit, node failure) is handed
  back as `sweeper.search.JobEndedWithoutResult`, which the Optuna sweeper re-queues so the trial resumes
  from its checkpoint in the same run folder. This needs only `squeue`, not `sacct` (no slurmdbd).
Jobs that SLURM itself requeues (submitit's checkpoint on its preemption signal) stay in the queue and
are simply waited for.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from omegaconf import OmegaConf

# Hydra imports every hydra_plugins module on every command: only sweeper modules that need nothing heavier
# than the standard library and Hydra are imported here; anything that pulls in torch is imported lazily.
from sweeper.console import progress_after_trial
from sweeper.interrupt import TrialInterrupted
from sweeper.search import JobEndedWithoutResult

log = logging.getLogger(__name__)

# PENDING reasons that waiting does not clear: the job asks what the partition (or account) never grants.
UNSCHEDULABLE = {
    "PartitionConfig",
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "BadConstraints",
    "InvalidAccount",
    "InvalidQOS",
    "QOSMaxCpuPerJobLimit",
    "QOSMaxMemoryPerJob",
    "QOSMaxGRESPerJob",
    "QOSMaxWallDurationPerJobLimit",
    "ReqNodeNotAvail, UnavailableNodes:",
}
# Final states of a job that was stopped from outside: the trial is resumable, not failed.
STOPPED = {"CANCELLED", "PREEMPTED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
FIX = (
    "set hydra.launcher.partition, gpus_per_node (null on a partition without GPUs, or hydra/launcher="
    "slurm_cpu), cpus_per_task, mem_gb and timeout_min to what `sinfo -o '%P %l %c %m %G'` shows"
)


class SlurmLauncher(SubmititSlurmLauncher):
    def __init__(self, poll_s: float = 2.0, **params: Any) -> None:
        self.poll_s = float(poll_s)
        self.live: set[str] = set()  # ids of submitted jobs not finished yet (all launch calls)
        self.live_lock = threading.Lock()
        super().__init__(**params)

    def __getstate__(self) -> dict:
        """The launcher travels to each job (submitit pickles it); the job needs none of this bookkeeping."""
        state = dict(self.__dict__)
        state.pop("live_lock", None)
        state["live"] = set()
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.live_lock = threading.Lock()

    def cancel_running(self) -> list[str]:
        """scancel every job this launcher submitted that has not finished (the sweeper is stopping)."""
        with self.live_lock:
            ids = sorted(self.live)
        if ids:
            scancel(ids)
        return ids

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        jobs = self._submit(job_overrides, initial_job_idx)
        ids = {j.job_id for j in jobs}
        with self.live_lock:
            self.live |= ids
        try:
            results = self._wait(jobs, job_overrides)
        except TrialInterrupted:  # the sweeper was told to stop: its jobs stay listed for cancel_running
            raise
        except BaseException:
            self._forget(ids)
            raise
        self._forget(ids)
        return results

    def _forget(self, ids: set[str]) -> None:
        with self.live_lock:
            self.live -= ids

    def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        """hydra-submitit-launcher's submission, with sbatch's refusal turned into one clear error."""
        import submitit  # lazy: Hydra imports every plugin at start-up

        assert self.config is not None and len(job_overrides) > 0
        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(
            cluster="slurm",
            folder=self.params["submitit_folder"],
            slurm_max_num_timeout=self.params.get("max_num_timeout", 0),
        )
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                k if k in baseparams else f"slurm_{k}": v
                for k, v in self.params.items()
                if k not in init_keys
            }
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        job_params = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            job_params.append(
                (list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())
            )
        try:
            return list(executor.map_array(self, *zip(*job_params)))
        except Exception as e:  # submitit raises on sbatch's non-zero exit with sbatch's message
            if "sbatch" not in str(e):
                raise
            message = " ".join(str(e).split())[-600:]
            raise RuntimeError(f"hydra.launcher: sbatch refused the job: {message}. {FIX}") from None

    def _wait(self, jobs: list, job_overrides: Sequence[Sequence[str]]) -> list[JobReturn]:
        """Poll the queue until every job has a result or has left the queue; see the module docstring."""
        results: dict[int, JobReturn] = {}
        left_queue: dict[int, float] = {}
        while len(results) < len(jobs):
            queue = squeue([j.job_id for j in jobs])
            if queue is None:  # squeue did not answer this time (controller busy): ask again
                time.sleep(self.poll_s)
                continue
            for k, job in enumerate(jobs):
                if k in results:
                    continue
                if job.paths.result_pickle.exists():
                    results[k] = self._result(job, job_overrides[k])
                    progress_after_trial(str(self.config.hydra.sweep.dir))
                    continue
                state, reason = queue.get(job.job_id, ("", ""))
                if state == "PENDING" and _never_scheduled(reason):
                    scancel([j.job_id for j in jobs])
                    raise RuntimeError(
                        f"hydra.launcher: SLURM cannot schedule job {job.job_id}: PENDING ({reason}); "
                        f"cancelled. {FIX}"
                    )
                if state in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "SUSPENDED"):
                    left_queue.pop(k, None)
                    continue
                # Gone from the active states: the result file may lag behind on a shared file system.
                first_seen = left_queue.setdefault(k, time.monotonic())
                if time.monotonic() - first_seen < max(10.0, 3 * self.poll_s):
                    continue
                log_file = job.paths.stderr
                if state in STOPPED or not state:
                    error: BaseException = JobEndedWithoutResult(
                        f"SLURM job {job.job_id} ended {state or 'and left the queue'} without a result "
                        f"(cancelled, preempted or out of time); log: {log_file}"
                    )
                else:
                    error = RuntimeError(
                        f"SLURM job {job.job_id} ended {state} without a result (killed?); log: {log_file}"
                    )
                results[k] = JobReturn(
                    overrides=list(job_overrides[k]), status=JobStatus.FAILED, _return_value=error
                )
            if len(results) < len(jobs):
                time.sleep(self.poll_s)
        return [results[k] for k in range(len(jobs))]

    @staticmethod
    def _result(job: Any, overrides: Sequence[str]) -> JobReturn:
        try:
            return job.results()[0]
        except Exception as e:  # noqa: BLE001 - the job itself raised outside the task (pickled by submitit)
            return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=e)


def _never_scheduled(reason: str) -> bool:
    return any(reason.startswith(r) for r in UNSCHEDULABLE)


def squeue(job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """job id -> (state, pending reason) for the jobs SLURM still knows (finished ones for MinJobAge);
    None when squeue failed for another reason than jobs it no longer knows."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%r"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SLURM_TIME_FORMAT": "standard"},
    )
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        log.warning("squeue failed: %s", out.stderr.strip()[-300:])
        return None
    states = {}
    for line in out.stdout.splitlines():
        job_id, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        states[job_id] = (state, reason)
    return states


def scancel(job_ids: list[str]) -> None:
    subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60)
