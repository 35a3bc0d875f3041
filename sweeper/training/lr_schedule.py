"""`inversion.lr_schedule`: the learning rate at each optimizer step, as the diffusers example's
`--lr_scheduler` / `--lr_warmup_steps` give it (diffusers.optimization's formulas, without torch's
LambdaLR: the rate is a function of the step alone, so a resumed run needs no scheduler state).

    factor(schedule, warmup, steps, step)   # lr at optimizer step `step` (0-based) = effective lr * factor

- constant: 1 (after the warm-up);
- linear: from 1 after the warm-up down to 0 at `steps`;
- cosine: half a cosine from 1 after the warm-up down to 0 at `steps`.

The warm-up rises linearly from 0 at step 0 to 1 at step `warmup`. linear and cosine depend on
`inversion.steps`, so the schema fingerprints `steps` when the schedule is not constant
(sweeper/config/schema.py: `fingerprints_with`).
"""

from __future__ import annotations

import math

from sweeper.config.schema import LR_SCHEDULES as SCHEDULES


def factor(schedule: str, warmup: int, steps: int, step: int) -> float:
    """The learning-rate multiplier at optimizer step `step` (0-based) of a `steps`-step run."""
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, steps - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"inversion.lr_schedule={schedule!r}: choose one of {', '.join(SCHEDULES)}")
