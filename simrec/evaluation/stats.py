"""Statistics for comparing recommenders across seeds: intervals, rank agreement, bootstrap.

* :func:`mean_ci`: mean and a two-sided 95% Student-t interval over seeds (``n - 1`` degrees of freedom).
* :func:`kendall_tau_b`: Kendall's tau-b between two orderings, ties counted as in Kendall (1945).
* :func:`bootstrap_tau`: a percentile bootstrap interval for tau-b, resampling seeds (each replicate
  averages a resample of the per-seed metrics, then correlates the two orders).
* :func:`sign_agreement`: the share of recommender pairs that both metrics order the same way.
* :func:`resample_counts` and :func:`bootstrap_ratio`: a percentile bootstrap over units (users) resampled
  with replacement within each stratum (seed), for a ratio of sums averaged over strata (CTR = clicks /
  shown, mean rating = stars / rated items, ...); ``simrec compare --ci users``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (normal beyond).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        return math.nan
    return _T975[df - 1] if df <= len(_T975) else 1.959964


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)`` of a two-sided 95% t interval; NaNs are dropped; one value gives ``(v, nan, nan)``."""
    if level != 0.95:
        raise ValueError("only 95% intervals are tabulated")
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if x.size == 1:
        return m, math.nan, math.nan
    half = t975(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return m, m - half, m + half


def kendall_tau_b(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of paired scores ``a`` and ``b`` (NaN if either is constant)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("kendall_tau_b needs two 1-d sequences of one length")
    i, j = np.triu_indices(x.size, k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    n0 = dx.size
    tx, ty = int(np.count_nonzero(dx == 0)), int(np.count_nonzero(dy == 0))
    denom = math.sqrt((n0 - tx) * (n0 - ty))
    return float((dx * dy).sum() / denom) if denom > 0 else math.nan


def sign_agreement(a: Sequence[float], b: Sequence[float]) -> float:
    """Share of pairs ordered the same way by ``a`` and ``b`` (pairs tied in either are left out)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    i, j = np.triu_indices(x.size, k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    ok = (dx != 0) & (dy != 0)
    return float(np.mean(dx[ok] == dy[ok])) if ok.any() else math.nan


def bootstrap_tau(a: np.ndarray, b: np.ndarray, *, replicates: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of tau-b between the seed-means of ``a`` and ``b`` (both ``(seeds, systems)``),
    resampling seeds with replacement (paired: one resample for both metrics)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError("bootstrap_tau needs two (seeds, systems) arrays of one shape")
    rng = np.random.default_rng(seed)
    n = a.shape[0]
    taus = []
    for _ in range(replicates):
        idx = rng.integers(0, n, size=n)
        t = kendall_tau_b(np.nanmean(a[idx], axis=0), np.nanmean(b[idx], axis=0))
        if np.isfinite(t):
            taus.append(t)
    if not taus:
        return math.nan, math.nan
    lo, hi = np.percentile(taus, [2.5, 97.5])
    return float(lo), float(hi)


def resample_counts(n: int, replicates: int, seed: int | Sequence[int]) -> np.ndarray:
    """``(replicates, n)`` counts: how often each of ``n`` units is drawn in each bootstrap resample of
    size ``n`` with replacement (seeded by ``seed``, an int or a sequence such as ``[seed, stratum]``)."""
    if n < 1 or replicates < 1:
        raise ValueError(f"resample_counts needs n >= 1 and replicates >= 1, got n={n}, replicates={replicates}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=replicates).astype(np.float64)


def bootstrap_ratio(num: Sequence[np.ndarray], den: Sequence[np.ndarray], *, replicates: int = 1000,
                    seed: int = 0, counts: Sequence[np.ndarray] | None = None,
                    level: float = 0.95) -> tuple[float, float, float]:
    """``(estimate, low, high)`` of the mean over strata of ``sum(num[s]) / sum(den[s])``, with a 95% percentile
    interval from resampling each stratum's units with replacement.

    ``num[s]`` and ``den[s]`` hold one value per unit of stratum ``s`` (a user's clicks and shown items in
    one seed's run). ``counts[s]`` (from :func:`resample_counts`) fixes the resamples, so that several
    metrics or systems measured on the same units share them (a paired bootstrap); by default stratum
    ``s`` draws ``replicates`` resamples seeded ``[seed, s]``. A stratum whose ``den`` sums to 0 is left
    out of that replicate's mean, as :func:`mean_ci` drops NaN seeds; no stratum at all gives NaNs."""
    if level != 0.95:
        raise ValueError("only 95% intervals are supported")
    if len(num) != len(den) or (counts is not None and len(counts) != len(num)):
        raise ValueError("bootstrap_ratio needs one num, den (and counts) array per stratum")
    point, reps = [], []
    for s, (x, y) in enumerate(zip(num, den)):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape != y.shape or x.ndim != 1:
            raise ValueError(f"stratum {s}: num and den must be 1-d arrays of one length")
        if x.size == 0:
            continue
        w = counts[s] if counts is not None else resample_counts(x.size, replicates, [seed, s])
        if w.ndim != 2 or w.shape[1] != x.size:
            raise ValueError(f"stratum {s}: counts must be (replicates, {x.size}), got {w.shape}")
        with np.errstate(invalid="ignore", divide="ignore"):
            point.append(x.sum() / y.sum() if y.sum() > 0 else math.nan)
            reps.append(np.where(w @ y > 0, (w @ x) / (w @ y), np.nan))
    if not point or not np.isfinite(point).any():
        return math.nan, math.nan, math.nan
    est = float(np.nanmean(point))
    r = np.stack(reps)
    ok = np.isfinite(r).any(axis=0)
    if not ok.any():
        return est, math.nan, math.nan
    with np.errstate(invalid="ignore"):
        means = np.nanmean(r[:, ok], axis=0)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return est, float(lo), float(hi)


def ci_summary(values: Sequence[float]) -> dict[str, Any]:
    """``{mean, ci_low, ci_high, values}`` of per-seed values (see :func:`mean_ci`)."""
    vals = [float(v) for v in values]
    mean, lo, hi = mean_ci(vals)
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "values": vals}


def ci_table(rows: Mapping[str, Mapping[str, Mapping[str, float]]], metrics: Sequence[str],
             higher_is_better: Mapping[str, bool] | None = None, label: str = "recommender") -> str:
    """A markdown table of :func:`ci_summary` cells, ``mean ± half-width`` (``–`` where undefined)."""
    hib = higher_is_better or {}
    arrow = {m: (" ↑" if hib[m] else " ↓") if m in hib else "" for m in metrics}
    lines = [f"| {label} | " + " | ".join(m + arrow[m] for m in metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, row in rows.items():
        cells = []
        for m in metrics:
            v = row.get(m, {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan})
            if not np.isfinite(v["mean"]):
                cells.append("–")
            elif np.isfinite(v["ci_low"]):
                cells.append(f"{v['mean']:.3f} ± {(v['ci_high'] - v['ci_low']) / 2:.3f}")
            else:
                cells.append(f"{v['mean']:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
