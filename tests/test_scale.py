"""Calibration at scale: pair sets, synthetic logs, and a fit whose memory grows with the log, not with
users x items (timings are in benchmarks/bench_scale.py, not here)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simrec.cognition.embedded import ChoiceConfig
from simrec.data.calibration import CalibrationConfig, _fit_watch, _statistics, _watch_logits, calibrate
from simrec.data.pairs import PairSet
from simrec.data.split import split_log
from simrec.data.synthetic import synthetic_log


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 60)), max_size=300),
       st.lists(st.tuples(st.integers(0, 40), st.integers(0, 60)), min_size=1, max_size=300))
def test_pairset_membership_is_exact(pairs, queries):
    u = np.array([p[0] for p in pairs], np.int64)
    i = np.array([p[1] for p in pairs], np.int64)
    s = PairSet(u, i, 61)
    qu = np.array([q[0] for q in queries])
    qi = np.array([q[1] for q in queries])
    want = np.array([q in set(pairs) for q in queries])
    assert np.array_equal(s.contains(qu, qi), want)
    assert len(s) == len(set(pairs))


def test_draw_unseen_is_uniform_over_unseen_items():
    rng = np.random.default_rng(0)
    n_items = 20
    seen_items = np.array([0, 3, 4, 10, 19])
    s = PairSet(np.zeros(seen_items.size, np.int64), seen_items, n_items)
    draws = s.draw_unseen(np.zeros(40_000, np.int64), rng)
    counts = np.bincount(draws, minlength=n_items)
    assert counts[seen_items].sum() == 0
    free = np.setdiff1d(np.arange(n_items), seen_items)
    share = counts[free] / counts.sum()
    assert np.all(np.abs(share - 1 / free.size) < 0.01)  # 15 free items, ~2,700 draws each


def test_synthetic_shapes():
    ml = synthetic_log("movielens", 50_000, seed=3)
    cu, ci = ml.counts()
    assert abs(len(ml) - 50_000) < 2_500 and ml.has_ratings
    assert cu.min() >= 20 and cu.std() / cu.mean() > 0.5  # heavy-tailed activity, at least 20 each
    assert set(np.unique(ml.rating[np.isfinite(ml.rating)])) <= {1, 2, 3, 4, 5}
    lt = synthetic_log("longtail", 50_000, seed=3)
    cu, ci = lt.counts()
    assert not lt.has_ratings and lt.n_items > 5 * lt.n_users
    assert cu.std() / cu.mean() < 0.1  # near-constant per-user counts
    top = np.sort(ci)[::-1]
    assert top[: lt.n_items // 100].sum() > 0.3 * len(lt)  # 1% of items take a large share of plays
    assert (ci == 0).mean() > 0.1  # and many are never played
    again = synthetic_log("longtail", 50_000, seed=3)
    assert np.array_equal(again.user, lt.user) and np.array_equal(again.item, lt.item)
    assert np.array_equal(again.timestamp, np.arange(len(lt)))  # no timestamps: row order


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    s = np.concatenate([pos, neg])
    r = np.argsort(np.argsort(s)) + 1.0
    return float((r[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def test_sampled_fit_ranks_like_the_exact_one():
    log = synthetic_log("movielens", 30_000, seed=1)
    split = split_log(log, {"kind": "random"})
    choice = ChoiceConfig(rating_dims=0)
    rng = np.random.default_rng(0)
    test = split.test
    neg = PairSet(log.user, log.item, log.n_items).draw_unseen(test.user, rng)
    aucs = {}
    for method in ("dense", "sampled"):
        cfg = CalibrationConfig(choice_factors=8, watch_iters=150, watch_method=method)
        st_ = _statistics(split.train, cfg)
        fit = _fit_watch(split.train, st_, choice, cfg, 8.0, 1.0, np.random.default_rng(0))
        lp = _watch_logits(fit, st_, choice, test.user.astype(np.int64), test.item.astype(np.int64))
        ln = _watch_logits(fit, st_, choice, test.user.astype(np.int64), neg)
        aucs[method] = _auc(lp, ln)
    assert aucs["sampled"] > 0.62  # well above chance on this synthetic log (the exact fit gets ~0.67)
    assert abs(aucs["sampled"] - aucs["dense"]) < 0.02, aucs


@pytest.mark.timeout(600)
def test_calibration_memory_grows_with_the_log_not_users_x_items():
    # 12k users x 30k items = 360M cells: one float32 users x items matrix would take 1.4 GB.
    log = synthetic_log("longtail", 40_000, n_users=12_000, n_items=30_000, seed=0)
    split = split_log(log, {"kind": "random"})
    cfg = CalibrationConfig(choice_factors=8, watch_iters=20, rating_iters=2, max_history_titles=1)
    tracemalloc.start()
    try:
        cal = calibrate(split.train, cfg, ChoiceConfig(rating_dims=4), seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(cal.personas.personas) == int((np.bincount(split.train.user, minlength=log.n_users) > 0).sum())
    assert peak < 250 * 2**20, f"peak {peak / 2**20:.0f} MiB"
