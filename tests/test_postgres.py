"""Two sweeper processes sharing one Optuna study on a real PostgreSQL server (loopback, started here):
they split the trials, each trial runs exactly once, all results are stored."""

from __future__ import annotations

import json
import os
import signal

import optuna
import pytest
from conftest import under_ci, write_concept_images
from optuna.trial import TrialState
from sweep_app.cli import start_sweeper, tiny_overrides
from sweep_app.postgres_server import missing, postgres_server

from sweeper.search import make_storage

pytestmark = pytest.mark.system  # needs a PostgreSQL server: `make test-system` (make postgres installs it)
N_TRIALS = 4


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL server on 127.0.0.1 (tests/sweep_app/postgres_server.py)."""
    why = missing()
    if why:
        if under_ci():
            pytest.fail(f"CI=true: PostgreSQL unavailable: {why}", pytrace=False)
        pytest.skip(why)
    with postgres_server() as url:
        yield url


def test_two_workers_share_one_postgres_study(tmp_path, postgres_url, tiny_sd, tiny_judge):
    images = write_concept_images(tmp_path / "img", n=4)
    sweep = tmp_path / "sweeps" / "shared"
    args = [
        "-m",
        "search=pareto_random",
        "hydra.sweeper.study_name=shared",
        f"hydra.sweeper.storage={postgres_url}",
        f"hydra.sweep.dir={sweep}",
        f"hydra.sweeper.n_trials={N_TRIALS}",
        "data.n_images=2",
        "inversion.num_vectors=1",
        "inversion.per_image_tokens=false",
        *tiny_overrides(tiny_sd, tiny_judge, images, steps=12),
    ]
    workers = [start_sweeper(*args, log=tmp_path / f"worker{i}.log") for i in range(2)]
    try:
        for i, w in enumerate(workers):
            assert w.wait(timeout=400) == 0, (tmp_path / f"worker{i}.log").read_text()[-4000:]
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)

    study = optuna.load_study(study_name="shared", storage=make_storage(postgres_url))
    trials = study.trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == N_TRIALS
    assert all(
        t.state in (TrialState.COMPLETE, TrialState.WAITING) for t in trials
    )  # none failed or left running
    assert all(len(t.values) == 2 for t in complete)
    pids = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in complete}
    assert pids == {str(w.pid) for w in workers}  # both workers took trials

    folders = sorted(sweep.glob("trial_*"))
    assert [p.name for p in folders] == [f"trial_{t.number:04d}" for t in complete]
    for folder in folders:  # each trial ran exactly once, in one worker
        assert (folder / "__main__.log").read_text().count("trial done") == 1
        metrics = json.loads((folder / "metrics.json").read_text())
        trial = trials[int(folder.name.split("_")[1])]
        assert trial.values == pytest.approx([metrics["image_similarity"], metrics["text_similarity"]])
