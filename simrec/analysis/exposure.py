"""Exposure concentration and topic diversity over time, from trajectory logs. Pure numpy/pandas.

Definitions:

* **exposure count** of item ``i``: how many times ``i`` appeared in a slate (``what="shown"``) or was
  clicked (``what="clicked"``), summed over every step of the log. Items never shown count as 0.
* **Gini coefficient** of a count vector ``x`` of ``n`` items sorted ascending (``x_1 <= ... <= x_n``)::

      G = sum_i (2 i - n - 1) x_i / (n sum_i x_i)

  0 when every item gets the same exposure, ``(n - 1) / n`` (-> 1) when one item gets all of it.
  Zeros are items like any other, so a run that shows 10 of 1,000 items is highly concentrated.
* **Lorenz curve**: the cumulative share of exposure (``y``) held by the least-exposed fraction ``x`` of
  items; from ``(0, 0)`` to ``(1, 1)``, on the diagonal when exposure is equal. ``G`` is twice the area
  between the diagonal and the polygon through the curve's points.
* **topic entropy** of a window of steps: the Shannon entropy ``H = -sum_k p_k log2 p_k`` in bits of the
  topic distribution ``p`` of the items clicked (consumed) in that window, each click spreading weight 1
  over its item's topics (``Catalog.topic_weights``). 0 when every click is on one topic, ``log2(n_topics)``
  when clicks are spread evenly over all topics.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from simrec.trajectory import Trajectories


def _flat(col: pd.Series, dtype: Any) -> np.ndarray:
    # list columns have one entry per slate position; concatenating keeps them aligned across columns
    if len(col) == 0:
        return np.zeros(0, dtype=dtype)
    return np.concatenate([np.asarray(v, dtype=dtype).reshape(-1) for v in col.to_numpy()])


def exposure_counts(traj: Trajectories, n_items: int, *, what: str = "shown") -> np.ndarray:
    """Per-item exposure: ``(n_items,)`` int64 counts of slate appearances (``what="shown"``) or of
    clicks (``what="clicked"``) over the whole log."""
    if what not in ("shown", "clicked"):
        raise ValueError(f"what must be 'shown' or 'clicked', got {what!r}")
    items = _flat(traj.steps["slate"], np.int64) if len(traj.steps) else np.zeros(0, np.int64)
    if what == "clicked" and items.size:
        items = items[_flat(traj.steps["clicked"], bool)]
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"the log shows item index {int(items.max())}, outside a catalog of {n_items} items; "
                         "pass the catalog size the log was recorded with")
    return np.bincount(items, minlength=n_items).astype(np.int64)


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative ``counts`` (see the module docstring); ``nan`` if they sum to 0
    or are empty (no exposure at all has no concentration)."""
    x = np.sort(np.asarray(counts, dtype=np.float64).reshape(-1))
    n, total = x.size, x.sum() if x.size else 0.0
    if n == 0 or total <= 0:
        return math.nan
    if x[0] < 0:
        raise ValueError("gini needs non-negative counts")
    i = np.arange(1, n + 1, dtype=np.float64)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


def lorenz_curve(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lorenz curve of ``counts``: ``x`` = fraction of items (least exposed first), ``y`` = their share
    of all exposure; both ``(n + 1,)`` from 0 to 1. With no exposure the curve is the diagonal."""
    c = np.sort(np.asarray(counts, dtype=np.float64).reshape(-1))
    n = c.size
    x = np.linspace(0.0, 1.0, n + 1)
    total = c.sum()
    if n == 0 or total <= 0:
        return x, x.copy()
    y = np.concatenate([[0.0], np.cumsum(c) / total])
    y[-1] = 1.0  # exactly, despite rounding in the cumulative sum
    return x, y


def entropy_bits(weights: np.ndarray) -> float:
    """Shannon entropy in bits of the distribution proportional to non-negative ``weights``
    (``nan`` when they sum to 0)."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    total = w.sum()
    if total <= 0:
        return math.nan
    p = w[w > 0] / total
    return float(max(0.0, -(p * np.log2(p)).sum()))  # max(): -0.0 for a single topic


def topic_entropy_over_time(traj: Trajectories, catalog: Any, window: int = 50, *, by: str = "step") -> pd.DataFrame:
    """Entropy (bits) of the topics of clicked items per window of the run.

    ``by="step"`` cuts the run's steps, in log order (episode, then step), into windows of ``window``
    steps; ``by="episode"`` into windows of ``window`` episodes. ``catalog`` supplies
    ``topic_weights`` (``(n_items, n_topics)``, rows summing to 1).

    Returns one row per window: ``window`` (0-based), ``start`` / ``stop`` (first and one-past-last step
    or episode number, 0-based), ``clicks``, ``entropy`` (bits; ``nan`` in a window without clicks) and
    ``entropy_norm`` (entropy / ``log2(n_topics)``, in [0, 1]).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if by not in ("step", "episode"):
        raise ValueError(f"by must be 'step' or 'episode', got {by!r}")
    cols = ["window", "start", "stop", "clicks", "entropy", "entropy_norm"]
    steps = traj.steps
    if len(steps) == 0:
        return pd.DataFrame(columns=cols)
    tw = np.asarray(catalog.topic_weights, dtype=np.float64)
    n_topics = tw.shape[1]
    if by == "step":
        pos = np.arange(len(steps))
    else:  # episodes renumbered 0.. in log order, so windows are full even if episode ids have gaps
        pos = pd.factorize(steps["episode"], sort=True)[0]
    win = pos // window
    k = np.array([len(np.asarray(v)) for v in steps["slate"].to_numpy()])
    items, clicked = _flat(steps["slate"], np.int64), _flat(steps["clicked"], bool)
    item_win = np.repeat(win, k)[clicked]
    mix = np.zeros((int(win.max()) + 1, n_topics))
    np.add.at(mix, item_win, tw[items[clicked]])
    n_clicks = np.bincount(item_win, minlength=mix.shape[0])
    ent = np.array([entropy_bits(row) for row in mix])
    # one topic: the entropy is always 0, and so is its share of the (zero) maximum
    norm = ent / math.log2(n_topics) if n_topics > 1 else ent * 0.0
    starts = np.arange(mix.shape[0]) * window
    stops = np.minimum(starts + window, int(pos.max()) + 1)
    return pd.DataFrame({"window": np.arange(mix.shape[0]), "start": starts, "stop": stops, "clicks": n_clicks,
                         "entropy": ent, "entropy_norm": norm})
