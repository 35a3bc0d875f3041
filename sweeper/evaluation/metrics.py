"""THE metric registry: every metric a run records is defined here once, and every view takes it by name.

    register(Metric(name="my_metric", words="my metric", label="my metric (what it says)", short="my m.",
                    direction="maximize", range=(-1.0, 1.0), role="reconstruction", compute=my_compute))

A registration says what the metric is called (`name`: its metrics.json key and CSV column; `words`,
`label`, `short`: how findings, plot axes and tables name it), which way is better (`direction`, Optuna's
spelling), the values it can take (`range`: every interval is clipped to it), how it is computed from the
judged samples (`compute`: Evidence -> Measurement, its value and the bootstrap terms its interval is made
of), how its interval is computed (`interval`, by default the bias-corrected bootstrap interval below) and
the samples per group from which that interval's coverage was measured (`coverage_from`; fewer: the interval
is flagged "too few samples"). `role` places it in the paper's two questions (reconstruction, editability):
analysis tests each claim of the paper on every metric of the claim's role. `summarised`: shown by the
views that summarise runs (configurations.csv, findings, the report, W&B); False for the text variants,
which `text_similarity` already shows.

Today's metrics (Gal et al. 2022, section 5), over L2-normalised judge embeddings:
- image_similarity: mean cosine over every (sample of the reconstruction prompt, training image) pair.
- text_similarity_mean_embedding, per edit prompt: cos(text, normalised mean of the samples' embeddings) (the
  paper's text); text_similarity_per_image: mean over samples of cos(text, sample) (the official code); each
  averaged over prompts. text_similarity: the variant `evaluation.text_variant` names.
- denoising_objective: the early-stopping objective (sweeper/training/early_stop.py, computed by the trainer,
  not from samples; quick/step_<N>/metrics.json of pruning searches).

This module imports numpy only (scipy where an interval is computed), never torch: analysis/ and the Optuna
plugin use it. sweeper/evaluation/clip_score.py embeds the samples; sweeper/evaluation/protocol.py records.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

VARIANTS = ("mean_embedding", "per_image")  # the text similarity's two variants (evaluation.text_variant)
COSINE = (-1.0, 1.0)
Direction = Literal["maximize", "minimize"]
Role = Literal["reconstruction", "editability"]


# ------------------------------------------------------------------------------------ what a metric sees


@dataclass(frozen=True)
class Term:
    """One independently resampled group's term of a metric (a metric is a sum of such terms): its value,
    its bootstrap replicates, the group's sample count and optionally a less biased estimate of the term."""

    value: float
    replicates: np.ndarray
    n: int
    better: float | None = None


@dataclass(frozen=True)
class Measurement:
    value: float | None
    terms: tuple[Term, ...] = ()


@dataclass
class Evidence:
    """What the judge saw of one evaluation, as L2-normalised embeddings: the reconstruction prompt's samples
    [n, d], the training images [m, d], each edit prompt's samples [n_p, d] and the prompts' texts [P, d].
    `other`: what other encoders made of the same images, by encoder name (e.g. {"dino": {"reconstruction":
    [n, d'], "training": [m, d']}}), for metrics that need another embedding than the judge's; row i of any
    of them is sample i, so a group's resamples apply to it too.
    `resample(group, n)` gives a group's bootstrap weights [n_boot, n] (rows sum to 1), drawn once per group
    from one seeded generator, so every metric over a group shares its resamples."""

    reconstruction: np.ndarray
    training: np.ndarray
    prompts: list[np.ndarray]
    texts: np.ndarray
    variant: str = "mean_embedding"
    n_boot: int = 1000
    seed: int = 0
    other: dict[str, Any] = field(default_factory=dict)
    _rng: np.random.Generator | None = field(default=None, repr=False)
    _weights: dict[Any, np.ndarray] = field(default_factory=dict, repr=False)
    _cache: dict[str, Measurement] = field(default_factory=dict, repr=False)

    def resample(self, group: Any, n: int) -> np.ndarray:
        if group not in self._weights:
            if self._rng is None:
                self._rng = np.random.default_rng(self.seed)
            self._weights[group] = self._rng.multinomial(n, np.full(n, 1.0 / n), size=self.n_boot) / n
        return self._weights[group]

    def measure(self, name: str) -> Measurement:
        """A registered metric on this evidence (computed once: one metric may build on another's terms)."""
        if name not in self._cache:
            compute = get(name).compute
            if compute is None:
                raise ValueError(f"metric {name!r} is not computed from samples (it is measured elsewhere)")
            self._cache[name] = compute(self)
        return self._cache[name]


# ----------------------------------------------------------------------------------------- intervals


def bias_corrected_interval(terms: Sequence[Term], level: float = 0.95) -> list[float | None]:
    """A bias-corrected bootstrap interval for a statistic that is a sum of independently resampled groups'
    terms (`Term`: value, bootstrap replicates, group size, optionally a less biased estimate).

    Centre: the sum of the less biased terms where given, else of term - bias with the bootstrap's bias
    estimate (mean of replicates - term, scaled by n/(n-1): a bootstrap of n values sees (n-1)/n of their
    variance); for the means (image similarity, per-image text similarity) this is ~0. Half-width: Student t
    quantile (Welch-Satterthwaite df over groups) x the bootstrap standard error, each group's variance
    scaled by n/(n-1). Why not BCa: at 4 samples a resampled mean never leaves the sample's range, so every
    percentile-type interval (BCa included) covers ~80% of 95%. The interval is for the population value:
    with spread samples it can sit above the recorded plug-in cosine, which is biased low.
    tests/test_intervals.py checks coverage. [None, None] when a group has fewer than 2 samples."""
    if not terms or any(t.n < 2 for t in terms):
        return [None, None]
    from scipy.stats import t as student_t

    centre = 0.0
    for t in terms:
        if t.better is not None:
            centre += t.better
        else:
            centre += t.value - (float(np.mean(t.replicates)) - t.value) * t.n / (t.n - 1)
    variances = [float(np.var(t.replicates)) * t.n / (t.n - 1) for t in terms]
    var = sum(variances)
    if var <= 0:
        return [float(centre), float(centre)]
    df = var**2 / sum(v**2 / (t.n - 1) for v, t in zip(variances, terms))
    half = float(student_t.ppf((1 + level) / 2, df)) * var**0.5
    return [float(centre - half), float(centre + half)]


def clip_value(value: float, bounds: tuple[float, float]) -> float:
    return float(min(max(value, bounds[0]), bounds[1]))


def clip_interval(interval: Sequence[float | None], bounds: tuple[float, float]) -> list[float | None]:
    """Both ends inside the metric's range (an interval for a cosine never reaches past [-1, 1])."""
    return [None if v is None else clip_value(v, bounds) for v in interval]


# ------------------------------------------------------------------------------------------ the registry


@dataclass(frozen=True)
class Metric:
    """One metric, defined once (see the module doc for each field)."""

    name: str
    words: str
    label: str
    short: str
    direction: Direction
    range: tuple[float, float]
    compute: Callable[[Evidence], Measurement] | None = None
    interval: Callable[[Sequence[Term], float], list[float | None]] = bias_corrected_interval
    coverage_from: int | None = None
    role: Role | None = None
    summarised: bool = True
    description: str = ""

    def better(self, a: float, b: float) -> bool:
        """Whether value a is better than value b in this metric's direction."""
        return a > b if self.direction == "maximize" else a < b

    def oriented(self, values):
        """Values turned so that higher is better (the Pareto front and 'best' take maxima)."""
        return values if self.direction == "maximize" else -np.asarray(values, dtype=float)


_REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add a metric to every view (one registration). A second metric under a taken name is refused."""
    if metric.name in _REGISTRY:
        raise ValueError(f"metric {metric.name!r} is registered already")
    if metric.direction not in ("maximize", "minimize"):
        raise ValueError(f"metric {metric.name!r}: direction must be 'maximize' or 'minimize'")
    lo, hi = metric.range
    if not lo < hi:
        raise ValueError(f"metric {metric.name!r}: range {metric.range} must have low < high")
    _REGISTRY[metric.name] = metric
    return metric


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


@contextmanager
def registered_temporarily(metric: Metric) -> Iterator[Metric]:
    """`register` for the duration of a block (tests)."""
    register(metric)
    try:
        yield metric
    finally:
        unregister(metric.name)


def get(name: str) -> Metric:
    """The registered metric `name`; a clear error naming the registered ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no metric {name!r} is registered (registered: {', '.join(_REGISTRY)})") from None


def all_metrics() -> list[Metric]:
    return list(_REGISTRY.values())


def evaluation_metrics() -> list[Metric]:
    """Metrics computed from the judged samples, in registration order: each is a metrics.json key."""
    return [m for m in _REGISTRY.values() if m.compute is not None]


def summarised_metrics() -> list[Metric]:
    """The evaluation metrics the summarising views show (configurations.csv, findings, report, W&B)."""
    return [m for m in evaluation_metrics() if m.summarised]


def with_role(role: Role) -> list[Metric]:
    return [m for m in summarised_metrics() if m.role == role]


# ------------------------------------------------------------------------- scoring one evaluation


def score_evidence(evidence: Evidence, level: float = 0.95) -> dict[str, Any]:
    """Every evaluation metric's value, `<name>_ci` (clipped to its range) and
    `<name>_ci_too_few_samples` (the smallest group's sample count below the count from which the interval's
    coverage was measured; null when it was never measured)."""
    out: dict[str, Any] = {}
    intervals: dict[str, Any] = {}
    for metric in evaluation_metrics():
        measured = evidence.measure(metric.name)
        out[metric.name] = measured.value
        raw = metric.interval(measured.terms, level) if measured.terms else [None, None]
        intervals[f"{metric.name}_ci"] = clip_interval(raw, metric.range)
        n = min((t.n for t in measured.terms), default=0)
        intervals[f"{metric.name}_ci_too_few_samples"] = (
            None if metric.coverage_from is None else bool(n < metric.coverage_from)
        )
    return {**out, **intervals}


def score(
    recon: np.ndarray,
    training: np.ndarray,
    prompt_samples: list[np.ndarray],
    texts: np.ndarray,
    variant: str = "mean_embedding",
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    other: dict[str, Any] | None = None,
) -> dict:
    """Point estimates and clipped bias-corrected bootstrap CIs of every evaluation metric (each prompt's
    samples resampled independently; the training images are the fixed reference, not resampled), and each
    prompt's two text similarities (`per_prompt`). `other`: other encoders' embeddings (Evidence.other)."""
    evidence = Evidence(recon, training, list(prompt_samples), texts, variant, n_boot, seed, other or {})
    out = score_evidence(evidence, level)
    out["per_prompt"] = [text_similarity(s, t) for s, t in zip(prompt_samples, texts)]
    return out


# ------------------------------------------------------------------------- today's metrics


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def image_similarity(samples: np.ndarray, training: np.ndarray) -> float:
    """Mean cosine over all (sample, training image) pairs of normalised embeddings."""
    return float((samples @ training.T).mean())


def image_only_similarity(training: np.ndarray) -> float | None:
    """Mean cosine over the training set's off-diagonal pairs (None with a single image)."""
    n = len(training)
    if n < 2:
        return None
    sims = training @ training.T
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1)))


def text_similarity(samples: np.ndarray, text: np.ndarray) -> dict[str, float]:
    """Both variants for one prompt: samples [N, d] and text [d], all normalised."""
    return {
        "mean_embedding": float(_normalise(samples.mean(0)) @ text),
        "per_image": float((samples @ text).mean()),
    }


def norm_corrected_cosine(samples: np.ndarray, text: np.ndarray) -> float | None:
    """cos(text, mean embedding) with the mean's squared norm estimated without bias: the mean over pairs
    i != j of x_i . x_j instead of |mean|^2, which the samples' spread inflates by trace(cov)/n (why the
    plug-in cosine is biased towards 0 at few samples, most in many dimensions). None when the pairs'
    mean is not positive (samples too spread to estimate the norm)."""
    n = len(samples)
    if n < 2:
        return None
    total = samples.sum(0)
    pairs = float(total @ total - np.einsum("ij,ij->", samples, samples)) / (n * (n - 1))
    return float(samples.mean(0) @ text / np.sqrt(pairs)) if pairs > 0 else None


def _image_similarity(ev: Evidence) -> Measurement:
    recon, training = ev.reconstruction, ev.training
    value = image_similarity(recon, training)
    reps = ev.resample("reconstruction", len(recon)) @ (recon @ training.T).mean(1)
    return Measurement(value, (Term(value, reps, len(recon)),))


def _text_mean_embedding(ev: Evidence) -> Measurement:
    scale = 1.0 / len(ev.texts)  # the objective is the mean over prompts
    values, terms = [], []
    for i, (s, t) in enumerate(zip(ev.prompts, ev.texts)):
        w = ev.resample(("prompt", i), len(s))
        values.append(text_similarity(s, t)["mean_embedding"])
        corrected = norm_corrected_cosine(s, t)
        better = None if corrected is None else scale * corrected
        terms.append(Term(scale * values[-1], scale * (_normalise(w @ s) @ t), len(s), better))
    return Measurement(float(np.mean(values)), tuple(terms))


def _text_per_image(ev: Evidence) -> Measurement:
    scale = 1.0 / len(ev.texts)
    values, terms = [], []
    for i, (s, t) in enumerate(zip(ev.prompts, ev.texts)):
        w = ev.resample(("prompt", i), len(s))
        values.append(text_similarity(s, t)["per_image"])
        terms.append(Term(scale * values[-1], scale * (w @ (s @ t)), len(s)))
    return Measurement(float(np.mean(values)), tuple(terms))


def _text_configured(ev: Evidence) -> Measurement:
    return ev.measure(f"text_similarity_{ev.variant}")


# Samples per group from which tests/test_intervals.py measured the intervals' coverage (4, 16, 64 samples:
# 93.5-95.9% for all three similarities); below it an interval's coverage is unknown.
MEASURED_COVERAGE_FROM = 4

IMAGE_SIMILARITY = register(
    Metric(
        name="image_similarity",
        words="image similarity",
        label="image similarity (reconstruction)",
        short="image sim.",
        direction="maximize",
        range=COSINE,
        compute=_image_similarity,
        coverage_from=MEASURED_COVERAGE_FROM,
        role="reconstruction",
        description="mean CLIP cosine over (reconstruction sample, training image) pairs",
    )
)
TEXT_SIMILARITY = register(
    Metric(
        name="text_similarity",
        words="text similarity",
        label="text similarity (editability)",
        short="text sim.",
        direction="maximize",
        range=COSINE,
        compute=_text_configured,
        coverage_from=MEASURED_COVERAGE_FROM,
        role="editability",
        description="CLIP text-image similarity of the edit prompts, in evaluation.text_variant",
    )
)
register(
    Metric(
        name="text_similarity_mean_embedding",
        words="text similarity (mean embedding)",
        label="text similarity, mean embedding (editability)",
        short="text sim. (mean emb.)",
        direction="maximize",
        range=COSINE,
        compute=_text_mean_embedding,
        coverage_from=MEASURED_COVERAGE_FROM,
        role="editability",
        summarised=False,
        description="cos(text, normalised mean of the samples' embeddings), mean over prompts (the paper)",
    )
)
register(
    Metric(
        name="text_similarity_per_image",
        words="text similarity (per image)",
        label="text similarity, per image (editability)",
        short="text sim. (per image)",
        direction="maximize",
        range=COSINE,
        compute=_text_per_image,
        coverage_from=MEASURED_COVERAGE_FROM,
        role="editability",
        summarised=False,
        description="mean over samples of cos(text, sample), mean over prompts (the official code)",
    )
)


def _clip_i(ev: Evidence) -> Measurement:
    """DreamBench's CLIP-I over the edit prompts' samples: per prompt, the mean cosine over its (sample, training
    image) pairs; averaged over prompts (DreamBench's 4 images per prompt: the mean over every pair)."""
    scale = 1.0 / len(ev.prompts)
    values, terms = [], []
    for i, s in enumerate(ev.prompts):
        per_sample = (s @ ev.training.T).mean(1)
        values.append(float(per_sample.mean()))
        terms.append(
            Term(scale * values[-1], scale * (ev.resample(("prompt", i), len(s)) @ per_sample), len(s))
        )
    return Measurement(float(np.mean(values)), tuple(terms))


def _clip_t(ev: Evidence) -> Measurement:
    """DreamBench's CLIP-T: the prompt's text against each image, averaged: the per-image text similarity."""
    return ev.measure("text_similarity_per_image")


# DreamBench (Ruiz et al. 2023, DreamBooth section 4.1; sweeper/evaluation/dreambench.py). Not summarised: the
# report's DreamBench section (analysis/dreambench.py) shows them, laid out like DreamBooth's Table 1.
CLIP_I = register(
    Metric(
        name="clip_i",
        words="CLIP-I",
        label="CLIP-I (DreamBench subject fidelity)",
        short="CLIP-I",
        direction="maximize",
        range=COSINE,
        compute=_clip_i,
        coverage_from=MEASURED_COVERAGE_FROM,  # the estimator of image_similarity (a mean of per-sample means)
        summarised=False,
        description="mean CLIP cosine over (edit-prompt sample, training image) pairs, mean over prompts",
    )
)
CLIP_T = register(
    Metric(
        name="clip_t",
        words="CLIP-T",
        label="CLIP-T (DreamBench prompt fidelity)",
        short="CLIP-T",
        direction="maximize",
        range=COSINE,
        compute=_clip_t,
        coverage_from=MEASURED_COVERAGE_FROM,
        summarised=False,
        description="CLIP cosine of each edit prompt (S* removed) with its samples: text_similarity_per_image",
    )
)
DINO = register(
    Metric(
        name="dino",
        words="DINO",
        label="DINO (DreamBench subject fidelity)",
        short="DINO",
        direction="maximize",
        range=COSINE,
        coverage_from=MEASURED_COVERAGE_FROM,
        summarised=False,
        description="mean cosine of DINO ViT-S/16 CLS embeddings over (edit-prompt sample, training image) pairs:"
        " a second image encoder's, computed by sweeper/evaluation/dreambench.py when evaluation.dreambench is on",
    )
)
DENOISING_OBJECTIVE = register(
    Metric(
        name="denoising_objective",
        words="denoising objective",
        label="denoising loss on a fixed batch",
        short="denoising loss",
        direction="minimize",
        range=(0.0, math.inf),
        description="the early-stopping objective (training/early_stop.py): computed by the trainer",
    )
)

# The default objectives, in the order a trial returns them (its Scores tuple) and the tradeoff plot's axes.
DEFAULT_OBJECTIVES: tuple[str, str] = (IMAGE_SIMILARITY.name, TEXT_SIMILARITY.name)


# ------------------------------------------------------------------------------ a trial's return value


class Scores(tuple):
    """What a trial returns: a tuple of the default objectives' values (image_similarity, text_similarity:
    what Hydra's sweepers and older callers read by position), and `.metrics`, every scalar metric of the
    evaluation by name, registered metrics only (what the Optuna sweeper picks its objectives from)."""

    metrics: dict[str, float]

    def __new__(cls, metrics: Mapping[str, Any]):
        values = {
            k: float(v)
            for k, v in metrics.items()
            if k in _REGISTRY and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self = super().__new__(cls, tuple(values[name] for name in DEFAULT_OBJECTIVES))
        self.metrics = values
        return self

    def __reduce__(self):  # pickles (joblib workers) with its metrics
        return (Scores, (self.metrics,))


def objective_values(value: Any, names: Sequence[str]) -> list[float]:
    """The named objectives of a trial's return value: by name from a Scores or a mapping; from a plain
    tuple or number (a task that is not sweeper.trial) by position in DEFAULT_OBJECTIVES."""
    metrics = getattr(value, "metrics", value)
    if isinstance(metrics, Mapping):
        missing = [n for n in names if n not in metrics]
        if missing:
            raise KeyError(
                f"hydra.sweeper.objectives: the trial recorded no {', '.join(missing)} "
                f"(it recorded {', '.join(metrics)})"
            )
        return [float(metrics[n]) for n in names]
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) == len(DEFAULT_OBJECTIVES) and all(n in DEFAULT_OBJECTIVES for n in names):
        return [float(values[DEFAULT_OBJECTIVES.index(n)]) for n in names]
    if len(values) == len(names):
        return [float(v) for v in values]
    raise ValueError(f"the task returned {len(values)} values for the objectives {list(names)}")


def directions(names: Sequence[str]) -> list[str]:
    """Optuna's directions of the named objectives, from the registry (a clear error for an unknown name)."""
    out = []
    for n in names:
        try:
            out.append(get(str(n)).direction)
        except KeyError as err:
            raise ValueError(f"hydra.sweeper.objectives: {err.args[0]}") from None
    return out
