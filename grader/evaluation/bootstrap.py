"""Percentile bootstrap intervals over examples, so a score comes with its uncertainty.

The unit resampled is the example (a record), not the token: tokens of one answer are not
independent, and resampling records is what "another draw of hidden data" would change. A
weighted mean with ``weights = tokens per record`` and ``values = mean NLL per record`` is exactly
the micro-averaged NLL (see ``NLLResult.bootstrap_inputs``), so the same code serves per-token and
per-example metrics.

Everything is vectorised over resamples with numpy and seeded by ``seed`` alone: the same inputs
and seed give the same interval on every machine (numpy's ``default_rng`` stream is stable).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_DRAWS_PER_CHUNK = 4_000_000
"""Resample indices held in memory at once (32 MB of int64)."""


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(estimate, lo, hi)``: the (weighted) mean and its ``1 - alpha`` percentile interval.

    ``estimate`` is computed on the data itself (not the resamples), so it always lies in the
    interval unless the resampling distribution is very skewed.
    """
    v, w = _arrays(values, weights)
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be between 0 and 1")
    estimate = float(np.dot(w, v) / w.sum())
    stats = _resampled_means(v, w, n_resamples, np.random.default_rng(seed))
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return estimate, float(lo), float(hi)


def paired_bootstrap_delta(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(delta, lo, hi)`` for ``mean(b) - mean(a)`` where ``a[i]`` and ``b[i]`` are two models'
    scores on the same example ``i`` (base vs base+adapter).

    Paired: each resample draws examples once and uses both models' values for them, so the
    interval reflects how consistently ``b`` beats ``a``, not how hard the examples are. For NLL a
    negative delta means the adapter (``b``) is better. With shared weights the weighted mean of
    ``b - a`` equals ``mean(b) - mean(a)`` exactly, which is what is resampled.
    """
    av, bv = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if av.shape != bv.shape:
        raise ValueError(f"a and b must score the same examples: {av.shape} vs {bv.shape}")
    return bootstrap_ci(bv - av, weights, n_resamples=n_resamples, alpha=alpha, seed=seed)


def _arrays(
    values: Sequence[float] | np.ndarray, weights: Sequence[float] | np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError("values must be a non-empty 1-D sequence")
    if not np.all(np.isfinite(v)):
        raise ValueError("values must be finite")
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != v.shape:
        raise ValueError(f"weights must match values: {w.shape} vs {v.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    return v, w


def _resampled_means(v: np.ndarray, w: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Weighted mean of each resample; resamples drawing only zero-weight examples are dropped."""
    n = v.size
    wv = w * v
    chunk = max(1, min(n_resamples, MAX_DRAWS_PER_CHUNK // n))
    out = []
    for start in range(0, n_resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
        num, den = wv[idx].sum(axis=1), w[idx].sum(axis=1)
        out.append(num[den > 0] / den[den > 0])
    stats = np.concatenate(out)
    if stats.size == 0:
        raise ValueError("every resample drew only zero-weight examples")
    return stats
