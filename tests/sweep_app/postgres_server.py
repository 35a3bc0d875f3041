"""A throw-away PostgreSQL server on 127.0.0.1, for tests and benchmarks (Debian's postgresql package).

Private data folder, socket folder and port; as user `postgres` when run as root (the server refuses
root). Only the server started here is stopped here.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing() -> str | None:
    """Why no server can be started here, or None."""
    if not (_pg_bin("initdb") and _pg_bin("postgres")):
        return "no PostgreSQL server binaries (make postgres installs them)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run the server as (make postgres)"
    return None


@contextmanager
def postgres_server(max_connections: int = 50) -> Iterator[str]:
    """Start a server with an empty database `optuna`; yield its URL; stop the server and remove its data."""
    why = missing()
    if why:
        raise RuntimeError(why)
    initdb, postgres = _pg_bin("initdb"), _pg_bin("postgres")
    user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
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
            f"max_connections={max_connections}",
            "-c",
            "fsync=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(data / "server.log", "w"),
        start_new_session=True,
        **as_user,
    )
    try:
        import psycopg2

        deadline = time.time() + 60
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
                break
            except psycopg2.OperationalError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError(
                        "PostgreSQL did not start:\n" + (data / "server.log").read_text()
                    ) from None
                time.sleep(0.2)
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE optuna")
        conn.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        server.send_signal(signal.SIGINT)  # fast shutdown
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(data, ignore_errors=True)
