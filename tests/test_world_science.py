"""Scientific directions of textual inversion on the embedded world (slow; CI runs it via make test-slow).

Each trial is a real one (run_trial: invert -> evaluate -> record) on the shipped world weights, with the
world's evaluation preset; the comparisons use the bootstrap CIs metrics.json records, two seeds a side.
"""

from __future__ import annotations

import json
import math

import pytest

STEPS = 300
BASE = [
    "model=toy",
    "data=toy_arrow",
    "evaluation=toy",
    "tracking=none",
    "device=cpu",
    f"inversion.steps={STEPS}",
    "inversion.batch_size=4",
    "inversion.grad_accum=1",
    "inversion.log_every=50",
    "inversion.checkpoint_every=0",
    "evaluation.references=false",
    "evaluation.progress=false",
    "evaluation.bootstrap=500",
]
SEEDS = (0, 1)


def _trial(root, name: str, *overrides: str) -> dict:
    from sweeper.config.compose import compose
    from sweeper.trial import run_trial

    run_dir = root / name
    run_trial(compose([*BASE, *overrides]), run_dir)
    return json.loads((run_dir / "metrics.json").read_text())


def _gap(better: list[dict], worse: list[dict], key: str) -> tuple[float, float]:
    """Mean difference better - worse over seeds, and its 95% half-width from the runs' own CIs."""

    def se(m: dict) -> float:
        lo, hi = m[f"{key}_ci"]
        return (hi - lo) / (2 * 1.96)

    diff = sum(m[key] for m in better) / len(better) - sum(m[key] for m in worse) / len(worse)
    var = (
        sum(se(m) ** 2 for m in better) / len(better) ** 2 + sum(se(m) ** 2 for m in worse) / len(worse) ** 2
    )
    return diff, 1.96 * math.sqrt(var)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_three_vectors_lose_text_similarity_and_more_steps_gain_image_similarity(tmp_path):
    one = [_trial(tmp_path, f"k1_s{s}", "inversion.num_vectors=1", f"inversion.seed={s}") for s in SEEDS]
    three = [_trial(tmp_path, f"k3_s{s}", "inversion.num_vectors=3", f"inversion.seed={s}") for s in SEEDS]
    short = [
        _trial(
            tmp_path,
            f"short_s{s}",
            "inversion.num_vectors=1",
            f"inversion.seed={s}",
            f"inversion.steps={STEPS // 10}",
        )
        for s in SEEDS
    ]
    text_gap, text_hw = _gap(one, three, "text_similarity")
    image_gap, image_hw = _gap(one, short, "image_similarity")
    print(f"text similarity 1 vector - 3 vectors: {text_gap:+.4f} +- {text_hw:.4f}")
    print(f"image similarity {STEPS} steps - {STEPS // 10} steps: {image_gap:+.4f} +- {image_hw:.4f}")
    assert text_gap - text_hw > 0, f"3 vectors did not lose text similarity: {text_gap:+.4f} +- {text_hw:.4f}"
    assert image_gap - image_hw > 0, (
        f"more steps did not gain image similarity: {image_gap:+.4f} +- {image_hw:.4f}"
    )
