"""Per-phase peak memory (sweeper/memory.py): the figure status.json and `make bench` report."""

from __future__ import annotations

import pytest
import torch

from sweeper import memory

pytestmark = pytest.mark.skipif(
    memory.measured_by("cpu") is None, reason="no per-phase peak RSS on this system (Linux /proc only)"
)


def test_a_phase_peak_sees_its_own_allocation_and_a_reset_forgets_it():
    memory.reset_peak("cpu")
    before = memory.peak_gib("cpu")
    big = torch.ones(64, 2**20)  # 256 MiB, every page touched
    during = memory.peak_gib("cpu")
    assert during - before > 0.2
    del big  # a large block goes back to the system (mmap), so the resident set falls again
    memory.reset_peak("cpu")
    after = memory.peak_gib("cpu")
    assert after < during - 0.2
    assert memory.measured_by("cpu") == "process RSS"
