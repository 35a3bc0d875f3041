"""A metric that exists only in the tests, defined in ONE registration (tests/test_metric_registry.py): the
reconstruction samples' agreement, the mean cosine of each sample with the samples' mean direction.

`python tests/sweep_app/extra_metric.py ARGS` is `python -m sweeper ARGS` with the metric registered, as a
user's own module would register one before starting the sweeper."""

from __future__ import annotations

import numpy as np

from sweeper.evaluation.metrics import COSINE, Evidence, Measurement, Metric, Term


def _agreement(ev: Evidence) -> Measurement:
    samples = ev.reconstruction
    centre = samples.mean(0) / np.linalg.norm(samples.mean(0))
    per_sample = samples @ centre
    replicates = ev.resample("reconstruction", len(samples)) @ per_sample
    value = float(per_sample.mean())
    return Measurement(value, (Term(value, replicates, len(samples)),))


SAMPLE_AGREEMENT = Metric(
    name="sample_agreement",
    words="sample agreement",
    label="sample agreement (reconstruction samples)",
    short="agreement",
    direction="maximize",
    range=COSINE,
    compute=_agreement,
    role="reconstruction",
    description="mean cosine of each reconstruction sample with the samples' mean direction",
)

if __name__ == "__main__":
    from sweeper.evaluation.metrics import register

    register(SAMPLE_AGREEMENT)
    from sweeper.__main__ import main

    main()
