"""Signals that end a trial early without it having failed: preemption, a time limit, `scancel`, Ctrl-C.

SLURM sends SIGTERM (preemption, `scancel`, the time limit; `--signal=USR1@N` sends SIGUSR1 first) and a
terminal sends SIGINT. Inside `interruptible()` the first two raise `TrialInterrupted` in the main thread,
so the trial's own code decides what to keep: the training loop writes a checkpoint and the run folder
says "interrupted" (not "failed"), so the sweep can requeue the trial and it resumes from that checkpoint.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if s is not None)


class TrialInterrupted(BaseException):
    """The trial was told to stop (a signal); it is not a failure of the configuration.

    A BaseException, like KeyboardInterrupt, so that `except Exception` in library code cannot swallow it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def is_interruption(err: BaseException) -> bool:
    """True for a signal (`TrialInterrupted`) or Ctrl-C: the run is resumable, not failed."""
    return isinstance(err, (TrialInterrupted, KeyboardInterrupt))


@contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGTERM/SIGUSR1 into `TrialInterrupted` while the block runs (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        raise TrialInterrupted(signum)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGTERM/SIGUSR1/SIGINT until the block ends, then deliver the first one to the handler that was
    in place (inside `interruptible()`: TrialInterrupted; Ctrl-C: KeyboardInterrupt). For short sections that
    must not stop half-way (an optimizer step and its record, a checkpoint). Main thread only; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum, frame):  # noqa: ARG001 - signal handler signature
        held.append(signum)

    previous = {s: signal.signal(s, hold) for s in (*SIGNALS, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if held:
            signal.raise_signal(held[0])
