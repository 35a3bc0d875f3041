"""Timing, memory and FLOP measurement, identical for every side of a comparison.

- Time: warm-up calls first, then the sides run interleaved (A, B, A, B, ...) and each side's median
  is reported. Other processes loading the machine slow both sides alike, so the RATIO of medians is
  the robust figure; absolute times are what this machine gave at that moment.
- On CUDA every timing is bracketed by torch.cuda.synchronize.
- Peak memory: on CUDA, torch.cuda.max_memory_allocated over the call (absolute: includes resident
  weights) and its excess over the allocation at the start; on CPU, the process RSS sampled by a
  thread every 2 ms (peak, and excess over the RSS at the start). The CPU figure is approximate:
  the allocator may keep freed pages, so a later config can reuse memory an earlier one grew.
- FLOPs: torch.utils.flop_counter.FlopCounterMode over one call (matmuls and convolutions, forward
  and backward), divided by the measured median time = achieved FLOP/s.
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from collections.abc import Callable

import torch

GIB = 2**30


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved(
    cases: dict[str, Callable[[], object]], device: torch.device, repeats: int = 5, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each case, measured A, B, A, B, ... after `warmup` untimed rounds."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(timed(fn, device))
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _RssSampler(threading.Thread):
    def __init__(self, interval: float = 0.002):
        super().__init__(daemon=True)
        self.interval, self.peak, self.stop = interval, _rss_bytes(), threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)


def peak_memory(fn: Callable[[], object], device: torch.device) -> dict[str, float]:
    """{"peak_gib", "delta_gib"} of one call of `fn` (see the module docstring for what each means)."""
    if device.type == "cuda":
        sync(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device)
    elif os.path.exists("/proc/self/statm"):
        start = _rss_bytes()
        sampler = _RssSampler()
        sampler.start()
        try:
            fn()
        finally:
            sampler.stop.set()
            sampler.join()
        peak = max(sampler.peak, _rss_bytes())
    else:  # no /proc (macOS): ru_maxrss is a lifetime high-water mark, so only its growth is usable
        import resource

        start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_gib": peak / GIB, "delta_gib": max(peak - start, 0) / GIB}


def resident_gib(modules: list[torch.nn.Module]) -> float:
    """Bytes of the modules' parameters and buffers, in GiB."""
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    return sum(t.numel() * t.element_size() for t in tensors) / GIB


def count_flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU: {model} ({torch.get_num_threads()} torch threads, {os.cpu_count()} cores)"


def default_peak_flops(device: torch.device) -> float | None:
    """Dense bf16 matmul peak used for utilisation: 800 TFLOP/s on H100/H200, None (unknown) on CPU."""
    if device.type == "cuda":
        return 800e12
    return None


def write_section(path, section: str, begin: str, end: str) -> None:
    """Put `section` (starting with the `begin` marker, ending with `end`) into the markdown file at `path`: in
    place of the block between those markers, or appended; the rest of the file is kept as it is."""
    from sweeper.store.atomic import write_text

    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    write_text(path, text)


def update_latest(path, **keys: object) -> dict:
    """Merge `keys` into the JSON file at `path` (benchmarks/latest.json), keeping its other keys; written
    atomically. Returns the merged object."""
    import json

    from sweeper.store.atomic import write_json

    latest = json.loads(path.read_text()) if path.exists() else {}
    latest.update(keys)
    write_json(path, latest)
    return latest
