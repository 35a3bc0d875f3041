"""Atomic file writes: a reader (or a killed process) never sees half a file.

Every writer goes to a temporary file in the same folder, fsyncs it and renames it over the target;
rename within one filesystem is atomic on POSIX.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Lazy imports: torch and safetensors are imported where used: analysis and Hydra plugins import this module, and
# must not pay for torch.


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_via(path: Path, write: Callable[[Path], object]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a results store is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    return _write_via(Path(path), lambda tmp: tmp.write_bytes(data))


def write_text(path: str | Path, text: str) -> Path:
    return _write_via(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def save_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return _write_via(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def torch_save(obj: Any, path: str | Path) -> Path:
    import torch

    return _write_via(Path(path), lambda tmp: torch.save(obj, tmp))


def save_figure(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    path = Path(path)
    fmt = kwargs.pop("format", path.suffix.lstrip(".") or "png")
    return _write_via(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))


@contextmanager
def directory(path: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name; it appears at `path` whole, or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
