"""Filter bubble: does a recommender narrow what its users consume over many sessions, and how much of that is
exposure-driven taste drift?"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from simrec.analysis.exposure import entropy_bits, topic_entropy_over_time
from simrec.evaluation.compare import build_recommender, make_env, record_run
from simrec.stress.base import StressTest
from simrec.stress.preference_shift import user_pool_schedule


def without_drift(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` with exposure-driven drift switched off: no pull of taste or anchor toward consumed items
    (``dynamics.drift.assimilation`` and ``anchor_assimilation`` = 0); OU noise, boredom and the rest stay."""
    out = dict(overrides)
    dyn = out.get("dynamics") or {}
    dyn = dict(dyn.model_dump() if hasattr(dyn, "model_dump") else dyn)
    drift = dyn.get("drift") or {}
    drift = dict(drift.model_dump() if hasattr(drift, "model_dump") else drift)
    drift.update(assimilation=0.0, anchor_assimilation=0.0)
    dyn["drift"] = drift
    out["dynamics"] = dyn
    return out


def user_topic_windows(traj: Any, catalog: Any, window: int, min_clicks: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Per window of ``window`` episodes (log order): the mean over users of the entropy (bits) of the topics
    of their own clicks in the window, and of their top-1 topic share (the largest topic's share of those
    clicks' topic weight). Users with fewer than ``min_clicks`` clicks in a window are left out of it
    (a handful of clicks has little entropy whatever the recommender does); ``nan`` where nobody qualifies."""
    steps = traj.steps
    if len(steps) == 0:
        return np.zeros(0), np.zeros(0)
    tw = np.asarray(catalog.topic_weights, dtype=np.float64)
    win = pd.factorize(steps["episode"], sort=True)[0] // window
    user = pd.factorize(steps["user"])[0]
    k = np.array([len(s) for s in steps["slate"].to_numpy()])
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in steps["slate"].to_numpy()])
    clicked = np.concatenate([np.asarray(c, dtype=bool) for c in steps["clicked"].to_numpy()])
    shape = (int(win.max()) + 1, int(user.max()) + 1)
    mix = np.zeros(shape + (tw.shape[1],))
    at = (np.repeat(win, k)[clicked], np.repeat(user, k)[clicked])
    np.add.at(mix, at, tw[items[clicked]])
    n = np.zeros(shape, dtype=np.int64)
    np.add.at(n, at, 1)
    ent, top1 = np.full(shape[0], math.nan), np.full(shape[0], math.nan)
    for w in range(shape[0]):
        ok = np.flatnonzero(n[w] >= min_clicks)
        if ok.size:
            ent[w] = float(np.mean([entropy_bits(mix[w, u]) for u in ok]))
            top1[w] = float(np.mean(mix[w, ok].max(axis=1) / mix[w, ok].sum(axis=1)))
    return ent, top1


class FilterBubble(StressTest):
    name: ClassVar[str] = "filter_bubble"
    question: ClassVar[str] = ("Does a recommender narrow what its users consume over many sessions, and how much "
                               "of that is exposure-driven taste drift?")
    protocol: ClassVar[str] = (
        "A pool of 10 users (by activity) returns for `episodes` sessions in a fixed order (about 20 sessions "
        "each), the same for every recommender, in two worlds from the same start: drift on (the env's "
        "dynamics: taste and anchor pulled toward consumed items, the filter-bubble mechanism) and drift off "
        "(dynamics.drift.assimilation = anchor_assimilation = 0; OU noise, boredom and everything else as "
        "on). The run is cut into 5 windows of consecutive sessions (40 each by default).")
    metric: ClassVar[str] = (
        "per window, the mean over pool users (>= 10 clicks in it) of the Shannon entropy in bits of the topic "
        "mix of their own clicks (Catalog.topic_weights; max log2(20) = 4.32) and of their top-1 topic share. "
        "entropy_end = last window, entropy_change = last - first window, top1_end = last window's top-1 share, "
        "pool_entropy_end = entropy of all pool users' clicks together in the last window (low: the pool "
        "converged on the same topics), each for drift on (_drift) and off (_nodrift); drift_effect and "
        "pool_drift_effect = the end entropy with drift minus without (paired: same users, same start; < 0: the "
        "drift narrowed consumption)")
    default_recommenders: ClassVar[tuple[str, ...]] = ("random", "popular", "greedy", "egreedy", "linucb", "ease")
    default_episodes: ClassVar[int] = 200
    higher_is_better: ClassVar[dict[str, bool]] = {
        f"{m}_{v}": hi for m, hi in (("entropy_end", True), ("entropy_change", True), ("top1_end", False),
                                     ("pool_entropy_end", True)) for v in ("drift", "nodrift")} | {
        "drift_effect": True, "pool_drift_effect": True}
    pool: ClassVar[int] = 10
    windows: ClassVar[int] = 5
    min_clicks: ClassVar[int] = 10

    @property
    def window(self) -> int:
        """Sessions per window: the run in ``windows`` equal parts (the last may be shorter)."""
        return max(1, math.ceil(self.episodes / self.windows))

    def curve_axes(self) -> dict[str, tuple[str, str]]:
        axes = (f"window of {self.window} sessions of the pool", "mean per-user topic entropy of clicks (bits)")
        return {"user topic entropy with drift": axes, "user topic entropy without drift": axes}

    def run_seed(self, seed: int, recommenders: Sequence[str]) -> tuple[dict[str, dict[str, float]],
                                                                        dict[str, dict[str, list[float]]]]:
        cfg = self.config
        env = make_env(cfg.env, cfg.overrides)
        users = user_pool_schedule(env, seed, self.pool, self.episodes)
        env.close()
        fit = self.fit_data(seed, recommenders)  # one log for both worlds: only the dynamics differ
        # no latent snapshots: nothing here reads them, and they cost ~15% of a step
        base = {**cfg.overrides, "log_latent": False}
        variants = {"drift": ("with drift", base), "nodrift": ("without drift", without_drift(base))}
        raw: dict[str, dict[str, float]] = {name: {} for name in recommenders}
        curves: dict[str, dict[str, list[float]]] = {}
        for v, (label, overrides) in variants.items():
            curve: dict[str, list[float]] = {}
            for name in recommenders:
                env = make_env(cfg.env, overrides)
                rec = build_recommender(name, env, seed, fit, llm_config=cfg.llm)
                traj = record_run(env, rec, seed, users, name=name, metadata={"stress": self.name, "variant": v})
                ent, top1 = user_topic_windows(traj, env.catalog, self.window, self.min_clicks)
                pooled = topic_entropy_over_time(traj, env.catalog, self.window, by="episode")["entropy"].to_numpy()
                nan = math.nan
                raw[name].update({
                    f"entropy_end_{v}": float(ent[-1]) if ent.size else nan,
                    f"entropy_change_{v}": float(ent[-1] - ent[0]) if ent.size else nan,
                    f"top1_end_{v}": float(top1[-1]) if top1.size else nan,
                    f"pool_entropy_end_{v}": float(pooled[-1]) if pooled.size else nan})
                curve[name] = ent.tolist()
                env.close()
            curves[f"user topic entropy {label}"] = curve
        metrics: dict[str, dict[str, float]] = {}
        for name, row in raw.items():  # columns in pairs (drift, no drift), each end pair with its paired difference
            metrics[name] = {k: row[k] for k in ("entropy_end_drift", "entropy_end_nodrift")}
            metrics[name]["drift_effect"] = row["entropy_end_drift"] - row["entropy_end_nodrift"]
            metrics[name].update({f"{m}_{v}": row[f"{m}_{v}"] for m in ("entropy_change", "top1_end", "pool_entropy_end")
                                  for v in variants})
            metrics[name]["pool_drift_effect"] = row["pool_entropy_end_drift"] - row["pool_entropy_end_nodrift"]
        return metrics, curves
