"""The metric registry (sweeper/evaluation/metrics.py): one registration per metric, intervals inside the
metric's range and flagged below the sample count their coverage was measured at (tests/test_intervals.py)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from sweeper.evaluation import metrics
from sweeper.evaluation.metrics import (
    DEFAULT_OBJECTIVES,
    MEASURED_COVERAGE_FROM,
    Scores,
    directions,
    get,
    objective_values,
    score,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_todays_metrics_are_registered_once_with_direction_and_range():
    names = [m.name for m in metrics.all_metrics()]
    assert len(names) == len(set(names))
    for name in (
        "image_similarity",
        "text_similarity",
        "text_similarity_mean_embedding",
        "text_similarity_per_image",
    ):
        m = get(name)
        assert m.direction == "maximize" and m.range == (-1.0, 1.0) and m.compute is not None
        assert m.coverage_from == MEASURED_COVERAGE_FROM == 4
    assert get("denoising_objective").direction == "minimize" and get("denoising_objective").compute is None
    assert [m.name for m in metrics.summarised_metrics()] == list(DEFAULT_OBJECTIVES)
    with pytest.raises(ValueError, match="registered already"):
        metrics.register(get("image_similarity"))
    with pytest.raises(KeyError, match="no metric 'lpips'"):  # (dino is DreamBench's, registered)
        get("lpips")
    assert directions(["text_similarity", "denoising_objective"]) == ["maximize", "minimize"]


@pytest.mark.parametrize("n_samples", [2, 3])
def test_intervals_stay_inside_the_cosine_range_and_are_flagged_at_few_samples(n_samples):
    """At 2 samples the t quantile (1 df: 12.7) made text intervals like [-2.98, 4.10] (issue 25); clipped to
    [-1, 1] they are flagged: coverage was measured from 4 samples on."""
    rng = np.random.default_rng(0)
    left = 0
    for rep in range(50):
        spread = rng.uniform(0.3, 3.0)
        recon = _unit(rng.standard_normal((n_samples, 16)) * spread + 0.2)
        training = _unit(rng.standard_normal((3, 16)) + 0.2)
        prompts = [_unit(rng.standard_normal((n_samples, 16)) * spread + 0.2) for _ in range(3)]
        texts = _unit(rng.standard_normal((3, 16)))
        out = score(recon, training, prompts, texts, n_boot=200, seed=rep)
        for m in metrics.evaluation_metrics():
            lo, hi = out[f"{m.name}_ci"]
            assert -1.0 <= lo <= hi <= 1.0, (m.name, lo, hi)
            left += lo == -1.0 or hi == 1.0
            assert out[f"{m.name}_ci_too_few_samples"] is True
    assert left > 0  # without the clip these intervals would have left the range


def test_intervals_at_the_measured_sample_count_are_not_flagged():
    rng = np.random.default_rng(1)
    recon = _unit(rng.standard_normal((4, 8)) + 1)
    out = score(recon, recon, [recon, recon], _unit(rng.standard_normal((2, 8))), n_boot=50)
    assert all(out[f"{m.name}_ci_too_few_samples"] is False for m in metrics.evaluation_metrics())


def test_scores_are_the_default_tuple_and_every_metric_by_name():
    recorded = {"image_similarity": 0.7, "text_similarity": 0.2, "text_similarity_per_image": 0.19}
    scores = Scores({**recorded, "num_samples": 4, "judge": "x"})
    assert scores == (0.7, 0.2) and scores.metrics == recorded  # unregistered keys are not metrics
    back = pickle.loads(pickle.dumps(scores))  # joblib workers pickle the return value
    assert back == scores and back.metrics == scores.metrics
    assert objective_values(scores, ["text_similarity_per_image", "image_similarity"]) == [0.19, 0.7]
    assert objective_values((0.7, 0.2), ["text_similarity"]) == [0.2]  # a plain task's tuple: by position
    with pytest.raises(KeyError, match="recorded no dino"):
        objective_values(scores, ["dino"])


def test_a_metric_over_another_encoders_embeddings_gets_them_through_the_evidence():
    """A metric that needs another embedding than the judge's (DINO's, say) reads it from Evidence.other,
    resampled with the same weights as the judge's features of the same samples."""

    def other_similarity(ev: metrics.Evidence) -> metrics.Measurement:
        recon, training = ev.other["enc"]["reconstruction"], ev.other["enc"]["training"]
        per_sample = (recon @ training.T).mean(1)
        reps = ev.resample("reconstruction", len(recon)) @ per_sample
        return metrics.Measurement(
            float(per_sample.mean()), (metrics.Term(float(per_sample.mean()), reps, len(recon)),)
        )

    metric = metrics.Metric(
        name="other_similarity",
        words="other similarity",
        label="other similarity",
        short="other",
        direction="maximize",
        range=metrics.COSINE,
        compute=other_similarity,
    )
    rng = np.random.default_rng(2)
    recon, training = _unit(rng.standard_normal((6, 8))), _unit(rng.standard_normal((3, 8)))
    enc = {
        "reconstruction": _unit(rng.standard_normal((6, 5)) + 1),
        "training": _unit(rng.standard_normal((3, 5)) + 1),
    }
    with metrics.registered_temporarily(metric):
        out = score(
            recon, training, [recon], _unit(rng.standard_normal((1, 8))), n_boot=100, other={"enc": enc}
        )
    assert out["other_similarity"] == pytest.approx(float((enc["reconstruction"] @ enc["training"].T).mean()))
    lo, hi = out["other_similarity_ci"]
    assert lo < out["other_similarity"] < hi and out["other_similarity_ci_too_few_samples"] is None
    assert "other_similarity" not in [m.name for m in metrics.all_metrics()]  # unregistered after the block
