"""Popularity bias: does a recommender concentrate exposure on items that were popular to begin with?"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from simrec.analysis.exposure import exposure_counts, gini
from simrec.evaluation.compare import build_recommender, make_env, record_run, user_schedule
from simrec.stress.base import StressTest


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); ``nan`` when either side is constant."""
    rx = pd.Series(np.asarray(x, dtype=np.float64)).rank().to_numpy()
    ry = pd.Series(np.asarray(y, dtype=np.float64)).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def _mean_prior(counts: np.ndarray, prior: np.ndarray) -> float:
    return float(counts @ prior / counts.sum()) if counts.sum() else math.nan


def _offered(steps: pd.DataFrame, n: int) -> np.ndarray:
    """How often each item was among the candidates (the whole catalog once where they were not logged)."""
    if "candidates" not in steps or len(steps) == 0 or steps["candidates"].isna().any():
        return np.ones(n, dtype=np.int64)
    return np.bincount(np.concatenate([np.asarray(c, dtype=np.int64) for c in steps["candidates"].to_numpy()]),
                       minlength=n)


class PopularityBias(StressTest):
    name: ClassVar[str] = "popularity_bias"
    question: ClassVar[str] = "Does a recommender concentrate exposure on items that were popular to begin with?"
    protocol: ClassVar[str] = (
        "`episodes` sessions of users drawn by activity (the same users in the same order for every "
        "recommender), from the same world. Exposure is counted over the first 3,000 steps of each run (15,000 "
        "impressions: 12.5 per catalog item), or over the shortest run's steps if a run is shorter, so every "
        "recommender is measured at the same amount of exposure (Gini and coverage depend on it).")
    metric: ClassVar[str] = (
        "exposure_gini = Gini of how often each catalog item was shown (0 equal, -> 1 one item); "
        "amplification = exposure_gini - Gini of the catalog's prior popularity (the Gini exposure proportional "
        "to prior popularity would have; > 0: more concentrated than popularity itself); spearman_pop = rank "
        "correlation of per-item exposure with prior popularity; pop_lift = mean prior popularity of shown items "
        "/ that of the candidates offered (1: popularity-blind); coverage = distinct items shown / catalog size")
    default_recommenders: ClassVar[tuple[str, ...]] = ("random", "popular", "greedy", "egreedy", "linucb", "ease",
                                                       "itemknn", "mostpop")
    default_episodes: ClassVar[int] = 120
    higher_is_better: ClassVar[dict[str, bool]] = {"exposure_gini": False, "amplification": False,
                                                   "spearman_pop": False, "pop_lift": False, "coverage": True}
    budget_steps: ClassVar[int] = 3000
    every: ClassVar[int] = 100
    gini_window: ClassVar[int] = 500

    def curve_axes(self) -> dict[str, tuple[str, str]]:
        return {"catalog coverage": (f"step / {self.every}", "distinct items shown so far / catalog size"),
                "exposure gini": (f"step / {self.every} (the first point is step {self.gini_window})",
                                  f"Gini of exposure in the last {self.gini_window} steps")}

    def run_seed(self, seed: int, recommenders: Sequence[str]) -> tuple[dict[str, dict[str, float]],
                                                                        dict[str, dict[str, list[float]]]]:
        cfg = self.config
        # no latent snapshots: nothing here reads them, and they cost ~15% of a step
        overrides = {**cfg.overrides, "log_latent": False}
        env = make_env(cfg.env, overrides)
        users = user_schedule(env, seed, self.episodes)
        prior = np.asarray(env.catalog.popularity, dtype=np.float64)
        n = len(env.catalog)
        env.close()
        fit = self.fit_data(seed, recommenders)
        runs: dict[str, Any] = {}
        for name in recommenders:
            env = make_env(cfg.env, overrides)
            rec = build_recommender(name, env, seed, fit, llm_config=cfg.llm)
            runs[name] = record_run(env, rec, seed, users, name=name, metadata={"stress": self.name})
            env.close()
        # one budget for the seed: Gini and coverage grow or shrink with the number of impressions counted
        budget = min([self.budget_steps] + [len(t.steps) for t in runs.values()])
        prior_gini = gini(prior)
        metrics: dict[str, dict[str, float]] = {}
        coverage: dict[str, list[float]] = {}
        gini_t: dict[str, list[float]] = {}
        for name, traj in runs.items():
            steps = traj.steps.iloc[:budget]
            counts = exposure_counts(dataclasses.replace(traj, steps=steps), n)
            g = gini(counts)
            metrics[name] = {"exposure_gini": g, "amplification": g - prior_gini, "spearman_pop": spearman(counts, prior),
                             "pop_lift": _mean_prior(counts, prior) / _mean_prior(_offered(steps, n), prior),
                             "coverage": float(np.count_nonzero(counts) / n)}
            # curves over the whole run: first-seen step of each item (coverage), exposure per window (Gini)
            all_shown = [np.asarray(s, dtype=np.int64) for s in traj.steps["slate"].to_numpy()]
            step_of = np.repeat(np.arange(len(all_shown)), [s.size for s in all_shown])
            flat = np.concatenate(all_shown) if all_shown else np.zeros(0, np.int64)
            first = np.full(n, np.iinfo(np.int64).max)
            np.minimum.at(first, flat, step_of)
            ticks = np.arange(self.every, len(all_shown) + 1, self.every)
            coverage[name] = (np.searchsorted(np.sort(first), ticks, side="left") / n).tolist()
            gini_t[name] = [gini(np.bincount(flat[(step_of >= t - self.gini_window) & (step_of < t)], minlength=n))
                            for t in ticks if t >= self.gini_window]
        return metrics, {"catalog coverage": coverage, "exposure gini": gini_t}
