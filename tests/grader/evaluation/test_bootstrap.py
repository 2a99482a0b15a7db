"""Bootstrap intervals (grader/evaluation/bootstrap.py)."""

from __future__ import annotations

import numpy as np
import pytest

from grader.evaluation import bootstrap_ci, paired_bootstrap_delta


def sample(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(2.0, 1.0, size=n)


def test_interval_contains_the_estimate() -> None:
    values = sample(200)
    estimate, lo, hi = bootstrap_ci(values)
    assert estimate == pytest.approx(values.mean())
    assert lo < estimate < hi


def test_weighted_estimate_is_the_weighted_mean() -> None:
    values, weights = [1.0, 3.0], [3, 1]
    assert bootstrap_ci(values, weights, n_resamples=50)[0] == pytest.approx(1.5)


def test_narrows_with_more_data() -> None:
    _, lo_small, hi_small = bootstrap_ci(sample(50))
    _, lo_big, hi_big = bootstrap_ci(sample(5000))
    assert hi_big - lo_big < (hi_small - lo_small) / 5  # ~sqrt(100) narrower
    assert (hi_big - lo_big) == pytest.approx(2 * 1.96 / np.sqrt(5000), rel=0.15)


def test_deterministic_given_the_seed() -> None:
    values, weights = sample(300), np.arange(1, 301)
    assert bootstrap_ci(values, weights, seed=3) == bootstrap_ci(values, weights, seed=3)
    assert bootstrap_ci(values, weights, seed=3) != bootstrap_ci(values, weights, seed=4)


def test_large_inputs_are_chunked_with_the_same_statistics() -> None:
    estimate, lo, hi = bootstrap_ci(sample(20_000), n_resamples=300)
    assert lo < estimate < hi and hi - lo < 0.05


def test_paired_delta_sign_and_pairing() -> None:
    base = sample(100, seed=1) * 3  # examples differ a lot in difficulty...
    better = base - 0.1 + np.random.default_rng(2).normal(0, 0.02, size=100)  # ...the adapter gains a little on each
    delta, lo, hi = paired_bootstrap_delta(base, better)
    assert delta == pytest.approx(better.mean() - base.mean())
    assert hi < 0 and lo < delta < hi  # b lower than a: negative, and significant because paired
    _, ulo, uhi = bootstrap_ci(better)
    assert uhi - ulo > 10 * (hi - lo)  # unpaired intervals would swamp the effect
    d2, lo2, _ = paired_bootstrap_delta(better, base)
    assert d2 == pytest.approx(-delta) and lo2 > 0


def test_paired_delta_with_token_weights_is_the_micro_average_difference() -> None:
    tokens = np.array([10, 1, 5])
    a, b = np.array([2.0, 4.0, 3.0]), np.array([1.0, 5.0, 3.0])
    delta, _, _ = paired_bootstrap_delta(a, b, tokens, n_resamples=20)
    assert delta == pytest.approx((b @ tokens - a @ tokens) / tokens.sum())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": []}, "values must be a non-empty 1-D sequence"),
        ({"values": [1.0, float("nan")]}, "values must be finite"),
        ({"values": [1.0, 2.0], "weights": [1.0]}, r"weights must match values: \(1,\) vs \(2,\)"),
        ({"values": [1.0, 2.0], "weights": [0, 0]}, "weights must be finite, non-negative and not all zero"),
        ({"values": [1.0], "alpha": 1.5}, "alpha must be between 0 and 1"),
    ],
)
def test_bad_inputs(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        bootstrap_ci(**kwargs)


def test_paired_lengths_must_match() -> None:
    with pytest.raises(ValueError, match="same examples"):
        paired_bootstrap_delta([1.0, 2.0], [1.0])
