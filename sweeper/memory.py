"""Peak memory of one phase of this process (training, evaluation), for the run record and `make bench`.

    reset_peak(device); ...phase...; peak_gib(device)   # -> GiB, or None where it cannot be measured

CUDA: the caching allocator's peak (torch.cuda.max_memory_allocated, weights included). CPU: the process's
peak resident set (VmHWM), which Linux resets to the current RSS when "5" is written to
/proc/self/clear_refs; on other systems there is no per-phase peak and the figure is None. A phase starts by
handing the heap's free memory back to the system (glibc's malloc_trim): what the last phase freed would
otherwise stay resident and be counted in the next phase's peak (and held by the process for nothing).
Weights loaded from safetensors are memory-mapped: they count once a phase touches them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

import torch

GIB = 2**30
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def measured_by(device: torch.device | str) -> str | None:
    """What peak_gib measures on `device`: "cuda allocator", "process RSS", or None (not measurable)."""
    if torch.device(device).type == "cuda":
        return "cuda allocator"
    return "process RSS" if _STATUS.is_file() and _CLEAR_REFS.exists() else None


def trim_heap() -> None:
    """Return the C heap's free pages to the system (glibc; elsewhere nothing to do)."""
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): no malloc_trim
        pass


def reset_peak(device: torch.device | str) -> None:
    """Start a phase: the next peak_gib(device) is the peak from now on."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif measured_by(device):
        trim_heap()
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:  # a kernel or sandbox that refuses it: the figure becomes the process's peak so far
            pass


def peak_gib(device: torch.device | str) -> float | None:
    """The peak since reset_peak(device), in GiB (None where it cannot be measured)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    if not measured_by(device):
        return None
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GIB
    return None
