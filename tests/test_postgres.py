"""Two sweeper processes sharing one Optuna study on a real PostgreSQL server (loopback, started here):
they split the trials, each trial runs exactly once, all results are stored."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from conftest import require_binary, under_ci, write_concept_images
from optuna.trial import TrialState
from sweep_app.cli import start_sweeper, tiny_overrides

from sweeper.search import make_storage

pytestmark = pytest.mark.system  # needs a PostgreSQL server: `make test-system` (make postgres installs it)
N_TRIALS = 4


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL server on 127.0.0.1 (as user `postgres` when run as root: it refuses root)."""
    initdb = require_binary("initdb", *filter(None, [_pg_bin("initdb")]), install="make postgres")
    postgres = require_binary("postgres", *filter(None, [_pg_bin("postgres")]), install="make postgres")
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            reason = "running as root and there is no `postgres` user to run the server as (make postgres)"
            if under_ci():
                pytest.fail(f"CI=true: {reason}", pytrace=False)
            pytest.skip(reason)
    data = Path(tempfile.mkdtemp(prefix="ti-pg-"))
    if user is not None:
        os.chown(data, user.pw_uid, user.pw_gid)
    as_user = dict(user=user.pw_uid, group=user.pw_gid, extra_groups=[]) if user is not None else {}
    subprocess.run(
        [initdb, "-D", str(data / "db"), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        **as_user,
    )
    port = _free_port()
    server = subprocess.Popen(
        [
            postgres,
            "-D",
            str(data / "db"),
            "-p",
            str(port),
            "-k",
            str(data),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=50",
            "-c",
            "fsync=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(data / "server.log", "w"),
        start_new_session=True,
        **as_user,
    )
    import psycopg2

    deadline = time.time() + 60
    while True:
        try:
            conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
            break
        except psycopg2.OperationalError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError(
                    "PostgreSQL did not start:\n" + (data / "server.log").read_text()
                ) from None
            time.sleep(0.2)
    conn.autocommit = True
    conn.cursor().execute("CREATE DATABASE optuna")
    conn.close()
    yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    server.send_signal(signal.SIGINT)  # fast shutdown
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
    shutil.rmtree(data, ignore_errors=True)


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
