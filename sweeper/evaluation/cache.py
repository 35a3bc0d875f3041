"""The reference cache's two safeguards: what identifies a model or judge, and reading an entry without trusting it.

- `source_identity(name)`: a folder is its resolved path plus every file's relative path, size and mtime (replacing
  the UNet weights in the same folder changes it, not only model_index.json); a single file its path, size and
  mtime; a hub id the commit its cached snapshot resolves to (a moved revision changes it).
- `read_entry(path, parse)`: None when there is no entry; a damaged one (truncated, garbage, empty, the wrong
  layout) is warned about in one line and read as missing, so the caller recomputes and rewrites it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

log = logging.getLogger("sweeper.evaluation.protocol")
T = TypeVar("T")


def _files_identity(folder: Path) -> list[tuple[str, int, int]]:
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts):
            stat = path.stat()
            found.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return found


def _hub_revision(repo_id: str) -> str | None:
    """The commit hash of the locally cached snapshot of a hub repository, None when it is not cached."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True)).name
    except Exception:  # noqa: BLE001 - not cached / not a repo id: loading it reports that itself
        return None


def source_identity(name: str) -> dict:
    """What a cached value computed with model or judge `name` depends on (see the module doc)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return {"folder": str(path.resolve()), "files": _files_identity(path)}
    if path.is_file():
        stat = path.stat()
        return {"file": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {"hub": name, "revision": _hub_revision(name)}


def read_entry(path: Path, parse: Callable[[Path], T]) -> T | None:
    """`parse(path)` of an existing entry; None (after a one-line warning for a damaged entry) to recompute."""
    if not path.is_file():
        return None
    try:
        return parse(path)
    except Exception as err:  # noqa: BLE001 - any damage: the value is recomputed, never fails the trial
        reason = (str(err).splitlines() or [""])[0][:200]
        log.warning(
            "reference cache entry %s is damaged (%s: %s); recomputing and rewriting it",
            path,
            type(err).__name__,
            reason,
        )
        return None
