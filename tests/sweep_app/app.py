"""A small real Hydra app for the sweeper tests: a two-objective function of (x, n) with a run folder.

Like a trial, it writes status.json, keeps a checkpoint it resumes from when its run folder is reused,
reports intermediate values for pruning, and fails when asked to (x < fail_below).
"""

import json
import math
import os
import socket
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: sweeper/
from sweeper.search import current_trial_number, report_hook  # noqa: E402
from sweeper.store.atomic import write_json  # noqa: E402


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> tuple[float, float]:
    run_dir = Path(cfg.run_dir)
    with open(run_dir / "events.log", "a") as f:
        f.write(
            f"start pid={os.getpid()} trial={current_trial_number()} device={cfg.device} t={time.time()} "
            f"slurm={os.environ.get('SLURM_JOB_ID', '-')}\n"
        )
    write_json(
        run_dir / "status.json",
        {
            "status": "running",
            "error": None,
            "trial_number": current_trial_number(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        },
    )
    if cfg.lr_scale is not None:  # a trial's config.yaml, as far as the learning rate goes
        lr = {"inversion": {"lr": cfg.x}, "derived": {"effective_lr": cfg.x * cfg.lr_scale}}
        (run_dir / "config.yaml").write_text(json.dumps(lr))
    ckpt = run_dir / "checkpoint.json"
    step = json.loads(ckpt.read_text())["step"] if ckpt.exists() else 0
    if step:
        with open(run_dir / "events.log", "a") as f:
            f.write(f"resumed step={step}\n")
    report = report_hook()
    if cfg.x < cfg.fail_below:
        write_json(
            run_dir / "status.json", {"status": "failed", "error": f"x={cfg.x} below {cfg.fail_below}"}
        )
        raise FloatingPointError(f"NaN loss (x={cfg.x})")
    if cfg.wait_for:  # hold this trial until another one has finished (tests of asynchronous slots)
        deadline = time.time() + 180
        while not Path(cfg.wait_for).exists():
            if time.time() > deadline:
                raise TimeoutError(f"{cfg.wait_for} never appeared")
            time.sleep(0.1)
    while step < cfg.steps:
        time.sleep(cfg.step_time)
        step += 1
        write_json(ckpt, {"step": step})
        if report is not None:
            report(step, -((cfg.x - 0.3) ** 2) * step)
    a, b = -((cfg.x - 0.2) ** 2) - 0.01 * cfg.n, -((cfg.x - 0.8) ** 2) + 0.01 * cfg.n
    write_json(run_dir / "metrics.json", {"image_similarity": a, "text_similarity": b})
    write_json(
        run_dir / "status.json",
        {"status": "completed", "error": None, "trial_number": current_trial_number()},
    )
    with open(run_dir / "events.log", "a") as f:
        f.write(f"completed t={time.time()}\n")
    return (math.nan, math.nan) if cfg.return_nan else (a, b)


if __name__ == "__main__":
    main()
