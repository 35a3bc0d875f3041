"""`hydra/launcher=joblib_gpus`: Hydra's joblib launcher with one GPU per worker.

Jobs go to joblib in chunks of `gpus`, the k-th job of a chunk with `device=cuda:<k>`, so no two jobs
share a GPU however unevenly they finish. `device=cuda:<k>` rather than CUDA_VISIBLE_DEVICES because
joblib reuses worker processes, and CUDA reads that variable only once per process.
"""

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher


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

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        returns: list = []
        for start in range(0, len(job_overrides), self.gpus):
            chunk = [
                list(o) + [f"device=cuda:{k}"] for k, o in enumerate(job_overrides[start : start + self.gpus])
            ]
            returns.extend(super().launch(chunk, initial_job_idx=initial_job_idx + start))
        return returns
