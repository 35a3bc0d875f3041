"""`hydra/launcher=joblib_gpus`: Hydra's joblib launcher with one GPU per worker.

Jobs go to joblib in chunks of at most `gpus`, each job with `device=cuda:<k>` for a GPU no running job
holds, so no two jobs share a GPU however unevenly they finish, also when the Optuna sweeper's
asynchronous slots call `launch` from several threads at once (each call takes free GPUs from a pool). `device=cuda:<k>` rather than CUDA_VISIBLE_DEVICES because
joblib reuses worker processes, and CUDA reads that variable only once per process.
"""

import threading
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

# Lazy imports: torch is imported where GPUs are counted: Hydra imports every plugin on every command.


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


class JoblibGpusLauncher(JoblibLauncher):
    def __init__(self, gpus: int | None = None, **kwargs: Any) -> None:
        self.gpus = int(gpus) if gpus else visible_gpus()
        if self.gpus < 1:
            raise ValueError(
                "hydra.launcher.gpus: no CUDA device visible; use the plain joblib launcher on CPU"
            )
        kwargs["n_jobs"] = self.gpus
        super().__init__(**kwargs)
        self.free = list(range(self.gpus))
        self.freed = threading.Condition()

    def _take(self, n: int) -> list[int]:
        with self.freed:
            self.freed.wait_for(lambda: len(self.free) >= n)
            taken, self.free = self.free[:n], self.free[n:]
            return taken

    def _give_back(self, gpus: list[int]) -> None:
        with self.freed:
            self.free = sorted(self.free + gpus)
            self.freed.notify_all()

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        returns: list = []
        for start in range(0, len(job_overrides), self.gpus):
            chunk = job_overrides[start : start + self.gpus]
            gpus = self._take(len(chunk))
            try:
                jobs = [list(o) + [f"device=cuda:{k}"] for k, o in zip(gpus, chunk)]
                returns.extend(super().launch(jobs, initial_job_idx=initial_job_idx + start))
            finally:
                self._give_back(gpus)
        return returns
