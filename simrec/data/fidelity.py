"""Fidelity harness: how close simulated users behave to held-out real ones.

For each seed the world is calibrated from the train split (``simrec.data.calibration``; the seed sets
factor initialisation), a fresh population is built, and the simulated users face the **test
split** under the protocols the field uses:

1. **Discrimination** (Agent4Rec): for each user, positives are their held-out items and negatives
   unobserved items (never in their train or test rows) drawn uniformly at 1:1, 1:3 and 1:9.
   Items are shown in shuffled pages of ``page_size`` and the simulated user judges each one
   (``backend.judge`` -> watch / no watch). Accuracy, precision, recall and F1 are computed per
   user and averaged over users.
2. **Ratings**: ``rmse`` and ``mae`` of the stars the simulated user gives each held-out item (the
   judge's rating: for the embedded model the ordinal model's noise-free prediction, for an LLM
   its stated rating) against the real rating.
3. **Rating distribution** (SUBER): ``tv`` is the total-variation distance between the histogram of
   simulated ratings of the held-out items and the real one. Simulated ratings are *samples*
   (``JudgeBatch.meta["rating_sample"]``: the embedded model with its rating noise; an LLM's stated
   ratings are already samples), since a point prediction has a far narrower histogram than people.
4. **Item popularity**: Agent4Rec-style browsing. Simulated users come back for sessions as the
   simulator's return model decides (``Simulator.pick_users``: session rate x satisfaction), are shown
   pages of ``slate_size`` items drawn uniformly from the items they have not seen (train history
   or earlier clicks; a neutral recommender) and click, rate and leave as the backend decides,
   with the simulator's state dynamics running. ``pop_spearman`` is the Spearman correlation,
   over all catalog items, between simulated click counts and real test-split counts. On sparse
   long-tail catalogs that rank measure is mostly ties and fails even a perfect simulator, so
   ``pop_curve`` (the overlap of simulated and real activity over train-popularity classes) and
   ``pop_spearman_head`` (items with at least 5 held-out interactions) are reported too; see
   :func:`popularity_measures`. Uniform pages also cap how often a popular item can be clicked, so
   ``pop_choice_curve`` / ``pop_choice_spearman`` apply the same measures to free choice from the whole
   catalog (the backend's own choice rule, no exposure; :func:`choice_popularity`, embedded backend).
5. **Activity**: from the same simulation, ``activity_ks`` is the Kolmogorov-Smirnov distance
   between the distributions of per-user activity (clicks, and test-split interactions), each
   divided by its mean so that the simulation length does not matter; it also counts the
   simulation's own sampling noise, which ``activity_ks_matched`` puts on the real side too (see
   :func:`matched_activity_ks`); ``activity_spearman`` says whether the right users are the active ones.

Implicit logs (no ratings) skip the rating metrics; the markdown table says so in a line below it.

Baselines use the same users, pages and negatives: ``popularity`` (watch when the train
interaction count reaches a threshold fitted on train; train popularity as the popularity
prediction), ``global mean`` / ``item mean`` / ``user mean`` (train means as rating predictions;
the point mass at the rounded global mean as a histogram) and ``train history`` (the train rating
histogram; train activity as the activity prediction).

Results hold, for each system and metric, the per-seed values, their mean and standard deviation.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from simrec.cognition import CognitionBackend, EmbeddedCognition, make_backend
from simrec.cognition.base import SOURCE_FALLBACK
from simrec.data.calibration import (
    DEFAULT_DATA_DIR,
    CalibratedWorld,
    build_calibrated_world,
    movielens_settings,
    percentile_ranks,
)
from simrec.data.pairs import PairSet
from simrec.envs.simulator import Simulator
from simrec.envs.spec import EnvSpec, resolve_spec
from simrec.errors import ConfigError
from simrec.llm.endpoint import llm_endpoint
from simrec.resume import Journal, apply_changes, changes, to_json_value, with_llm_cache

RATIOS = (1, 3, 9)
#: Metrics of the README table, in order (JSON holds these and the diagnostics below).
TABLE_METRICS = ("acc@1:1", "f1@1:1", "acc@1:3", "f1@1:3", "acc@1:9", "f1@1:9", "rmse", "mae", "tv",
                 "pop_spearman", "pop_curve", "pop_choice_curve", "activity_ks", "activity_ks_matched")
DIAGNOSTICS = ("prec@1:1", "rec@1:1", "prec@1:3", "rec@1:3", "prec@1:9", "rec@1:9", "rmse_latent",
               "pop_spearman_head", "pop_choice_spearman", "pop_reliability", "activity_spearman", "clicks_per_step", "fallback_rate")
#: Metrics that need ratings (not applicable on implicit logs).
RATING_METRICS = ("rmse", "mae", "tv", "rmse_latent")
#: Direction of each table metric (for the README: higher or lower is better).
HIGHER_IS_BETTER = {m: not (m.startswith(("rmse", "mae", "tv", "activity_ks"))) for m in TABLE_METRICS + DIAGNOSTICS}
BASELINES = ("popularity", "global mean", "item mean", "user mean", "train history")


class FidelityConfig(BaseModel):
    """Settings of :func:`run_fidelity`."""

    model_config = ConfigDict(extra="forbid")

    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)
    ratios: list[int] = Field(default_factory=lambda: list(RATIOS), min_length=1)
    page_size: int = Field(10, ge=1, description="Items per judged page.")
    max_users: int | None = Field(None, ge=1, description="Evaluate a random subset of users (LLM cost control).")
    max_positives: int | None = Field(None, ge=1, description="Cap on held-out items per user (random subset).")
    sessions_per_user: float = Field(10.0, gt=0, description="Simulated sessions, per evaluated user on average.")
    concurrent_sessions: int | None = Field(None, ge=1, description="Sessions run side by side (default: users/16).")
    simulate: bool = Field(True, description="Run the browsing simulation (popularity and activity metrics).")


@dataclass
class FidelityResult:
    """Per-seed metric values of every system, and run information."""

    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # system -> metric -> per seed
    seeds: list[int] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, system: str, metrics: dict[str, float]) -> None:
        row = self.values.setdefault(system, {})
        for k, v in metrics.items():
            row.setdefault(k, []).append(float(v))

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{system: {metric: {"mean", "std", "values"}}}`` (std over seeds, ddof=0)."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for system, row in self.values.items():
            out[system] = {}
            for m, vals in row.items():
                a = np.asarray(vals, dtype=np.float64)
                ok = a[np.isfinite(a)]
                out[system][m] = {
                    "mean": float(ok.mean()) if ok.size else None,
                    "std": float(ok.std()) if ok.size else None,
                    "values": [None if not math.isfinite(v) else v for v in vals],
                }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"seeds": self.seeds, "metrics": list(TABLE_METRICS), "diagnostics": list(DIAGNOSTICS),
                "higher_is_better": HIGHER_IS_BETTER, "results": self.summary(), "info": self.info}

    def markdown(self, metrics: Sequence[str] = TABLE_METRICS) -> str:
        """A markdown table: one row per system, ``mean ± std`` over seeds; ``–`` where not applicable."""
        summ = self.summary()
        arrows = [f"{m} {'↑' if HIGHER_IS_BETTER.get(m, True) else '↓'}" for m in metrics]
        head = "| system | " + " | ".join(arrows) + " |"
        lines = [head, "|" + "---|" * (len(metrics) + 1)]
        for system, row in summ.items():
            cells = []
            for m in metrics:
                s = row.get(m)
                if s is None or s["mean"] is None:
                    cells.append("–")
                else:
                    cells.append(f"{s['mean']:.3f} ± {s['std']:.3f}")
            lines.append(f"| {system} | " + " | ".join(cells) + " |")
        skipped = [m for m in metrics if m in RATING_METRICS]
        if skipped and not self.info.get("has_ratings", True):
            lines.append(f"\n{', '.join(skipped)}: not applicable, {self.info.get('log', 'the log')} has no ratings "
                         "(implicit feedback), so the rating metrics are skipped.")
        return "\n".join(lines)


# -- metric helpers --------------------------------------------------------------------------------


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation with average ranks for ties (NaN if either side is constant)."""
    ra, rb = percentile_ranks(np.asarray(a, float)), percentile_ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (max CDF difference)."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    if a.size == 0 or b.size == 0:
        return float("nan")
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, side="right") / a.size
                               - np.searchsorted(b, grid, side="right") / b.size)))


def star_histogram(stars: np.ndarray) -> np.ndarray:
    s = np.asarray(stars, float)
    s = np.clip(np.rint(s[np.isfinite(s)]), 1, 5).astype(int)
    h = np.bincount(s, minlength=6)[1:].astype(float)
    return h / max(h.sum(), 1.0)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum())


def classification_metrics(user: np.ndarray, label: np.ndarray, pred: np.ndarray, n_users: int) -> dict[str, float]:
    """Accuracy, precision, recall and F1 computed per user, then averaged over users."""
    label, pred = label.astype(bool), pred.astype(bool)
    tp = np.bincount(user, label & pred, n_users)
    fp = np.bincount(user, ~label & pred, n_users)
    fn = np.bincount(user, label & ~pred, n_users)
    n = np.bincount(user, minlength=n_users)
    has = n > 0
    acc = (n - fp - fn)[has] / n[has]
    prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)[has]
    rec = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)[has]
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
    return {"acc": float(acc.mean()), "prec": float(prec.mean()), "rec": float(rec.mean()), "f1": float(f1.mean())}


# -- the evaluation set ----------------------------------------------------------------------------


@dataclass
class EvalSet:
    """Held-out positives and sampled negatives of the evaluated users (population indices).

    Seen items are :class:`~simrec.data.pairs.PairSet` s over population indices, so the harness never
    holds a population x items matrix; the browsing simulation holds one row per *evaluated* user.
    """

    users: np.ndarray  # (E,) population indices
    pos_user: np.ndarray  # (P,) population index of each held-out positive
    pos_item: np.ndarray
    pos_rating: np.ndarray
    negatives: dict[int, tuple[np.ndarray, np.ndarray]]  # ratio -> (user, item)
    observed: PairSet  # (population user, item) pairs in the user's train or test rows
    train_seen: PairSet  # (population user, item) pairs in train rows

    def train_matrix(self) -> np.ndarray:
        """``(E, n_items)`` bool: train items of each evaluated user, rows in ``users`` order."""
        ni = self.train_seen.n_items
        m = np.zeros((self.users.size, ni), dtype=bool)
        keys = self.train_seen.keys
        u, i = keys // ni, keys % ni
        row = np.searchsorted(self.users, u)
        ok = (row < self.users.size) & (self.users[np.minimum(row, self.users.size - 1)] == u)
        m[row[ok], i[ok]] = True
        return m


def _distinct_unseen(users: np.ndarray, want: np.ndarray, observed: PairSet, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """For each ``users[j]``, ``min(want[j], unobserved items)`` distinct items drawn uniformly among the
    items it has not observed (by rejection; a user short of unobserved items gets all of them)."""
    ni = observed.n_items
    if users.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    obs_user = observed.keys // ni
    free = ni - np.bincount(obs_user, minlength=int(max(users.max(), obs_user.max(initial=0))) + 1)[users]
    want = np.minimum(want, free)
    out_u, out_i = [], []
    dense = want > free // 2  # rejection would mostly redraw: list the user's free items instead
    for j in np.flatnonzero(dense & (want > 0)):
        pool = np.flatnonzero(~observed.contains(np.full(ni, users[j]), np.arange(ni)))
        out_u.append(np.full(want[j], users[j]))
        out_i.append(rng.choice(pool, size=want[j], replace=False))
    todo = np.flatnonzero(~dense & (want > 0))
    need = want[todo].copy()
    while todo.size:
        # enough draws that the unobserved ones alone cover `need` twice over (free >= 2 need here)
        draw = 2 * need * ni // np.maximum(free[todo], 1) + 8
        cu = np.repeat(todo, draw)
        ci = rng.integers(0, ni, size=cu.size)
        ok = ~observed.contains(users[cu], ci)
        cu, ci = cu[ok], ci[ok]
        order = np.lexsort((rng.random(cu.size), ci, cu))
        cu, ci = cu[order], ci[order]
        first = np.r_[True, (cu[1:] != cu[:-1]) | (ci[1:] != ci[:-1])]  # drop repeats
        cu, ci = cu[first], ci[first]
        order = np.lexsort((rng.random(cu.size), cu))  # random order within each user, then the first `want`
        cu, ci = cu[order], ci[order]
        start = np.searchsorted(cu, todo)
        got = np.searchsorted(cu, todo, side="right") - start
        enough = got >= need
        rank = np.arange(cu.size) - np.repeat(start, got)
        take = enough[np.searchsorted(todo, cu)] & (rank < np.repeat(need, got))
        out_u.append(users[cu[take]])
        out_i.append(ci[take])
        todo, need = todo[~enough], need[~enough]  # the few short of items draw again, from scratch
    if not out_u:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    u, i = np.concatenate(out_u).astype(np.int64), np.concatenate(out_i).astype(np.int64)
    order = np.argsort(u, kind="stable")
    return u[order], i[order]


def build_eval_set(world: CalibratedWorld, cfg: FidelityConfig, rng: np.random.Generator) -> EvalSet:
    split = world.split
    assert split is not None and world.user_index is not None
    n_pop, ni = len(world.user_index), split.train.n_items
    to_pop = np.full(split.train.n_users, -1, dtype=np.int64)
    to_pop[world.user_index] = np.arange(n_pop)
    test = split.test
    tu = to_pop[test.user]
    keep = tu >= 0
    tu, ti, tr = tu[keep], test.item[keep].astype(np.int64), test.rating[keep]
    tru = to_pop[split.train.user]
    trk = tru >= 0
    train_seen = PairSet(tru[trk], split.train.item[trk], ni)
    observed = PairSet(np.concatenate([tru[trk], tu]), np.concatenate([split.train.item[trk], ti]), ni)
    # one positive per (user, item): the latest test row
    key = tu * ni + ti
    _, first = np.unique(key[::-1], return_index=True)
    rows = np.sort(len(key) - 1 - first)
    tu, ti, tr = tu[rows], ti[rows], tr[rows]
    users = np.unique(tu)
    if cfg.max_users is not None and cfg.max_users < users.size:
        users = np.sort(rng.choice(users, size=cfg.max_users, replace=False))
        m = np.isin(tu, users)
        tu, ti, tr = tu[m], ti[m], tr[m]
    if cfg.max_positives is not None:
        keys = rng.random(tu.size)
        order = np.lexsort((keys, tu))
        start = np.searchsorted(tu[order], users)
        rank = np.arange(tu.size) - np.repeat(start, np.bincount(tu[order], minlength=n_pop)[users])
        m = np.zeros(tu.size, bool)
        m[order[rank < cfg.max_positives]] = True
        tu, ti, tr = tu[m], ti[m], tr[m]
    n_pos = np.bincount(tu, minlength=n_pop)
    negatives = {int(ratio): _distinct_unseen(users, ratio * n_pos[users], observed, rng) for ratio in cfg.ratios}
    return EvalSet(users, tu, ti, tr.astype(np.float32), negatives, observed, train_seen)


# -- judging ---------------------------------------------------------------------------------------


def judge_pages(backend: CognitionBackend, pop: Any, user: np.ndarray, item: np.ndarray, page_size: int,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Show each user their items in shuffled pages and collect the judgements, in input order.

    Returns ``watch``, ``rating``, ``rating_sample``, ``rating_latent`` (NaN if absent) and
    ``fallback`` per input row.
    """
    n = user.size
    out = {"watch": np.zeros(n, bool), "rating": np.full(n, np.nan, np.float32),
           "rating_sample": np.full(n, np.nan, np.float32), "rating_latent": np.full(n, np.nan, np.float32),
           "fallback": np.zeros(n, bool)}
    if n == 0:
        return out
    order = np.lexsort((rng.random(n), user))  # shuffled within each user
    us = user[order]
    starts = np.flatnonzero(np.r_[True, us[1:] != us[:-1]])
    ends = np.r_[starts[1:], n]
    pages: dict[int, list[np.ndarray]] = {}
    for s, e in zip(starts, ends):
        for p in range(s, e, page_size):
            rows = order[p: min(p + page_size, e)]
            pages.setdefault(rows.size, []).append(rows)
    for k, group in sorted(pages.items()):
        R = np.stack(group)  # (B, k) row indices
        jb = backend.judge(pop, user[R[:, 0]], item[R], rng)
        out["watch"][R] = jb.watch
        out["rating"][R] = jb.rating
        sample = jb.meta.get("rating_sample")
        out["rating_sample"][R] = jb.rating if sample is None else sample
        latent = jb.meta.get("rating_latent")
        if latent is not None:
            out["rating_latent"][R] = latent
        out["fallback"][R] = (np.asarray(jb.source) == SOURCE_FALLBACK)[:, None]
    return out


# -- browsing simulation ---------------------------------------------------------------------------


def draw_pages(rows: np.ndarray, k: int, excluded: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(B, k)`` distinct items per row, uniform among items not ``excluded[row]``."""
    keys = rng.random((rows.size, excluded.shape[1]))
    keys[excluded[rows]] += 2.0  # excluded items go last (used only if fewer than k remain)
    return np.argpartition(keys, k - 1, axis=1)[:, :k]


def simulate_browsing(sim: Simulator, users: np.ndarray, excluded: np.ndarray, n_sessions: int,
                      concurrent: int, rng: np.random.Generator) -> dict[str, Any]:
    """Run ``n_sessions`` sessions of ``users`` (sorted population indices, drawn by the simulator's
    return model) on uniform pages of unseen items; ``excluded`` is ``(len(users), n_items)``: the items
    each may not be shown (its train history). Returns click counts per item and per user, ratings and
    step counts."""
    pop, backend = sim.pop, sim.backend
    K, max_steps = sim.spec.slate_size, sim.spec.max_steps
    ni = excluded.shape[1]
    excluded = excluded.copy()
    row_of = np.full(pop.n_users, -1, np.int64)
    row_of[users] = np.arange(users.size)
    item_clicks = np.zeros(ni, np.int64)
    user_clicks = np.zeros(pop.n_users, np.int64)
    ratings: list[np.ndarray] = []
    session_clicks: list[np.ndarray] = []
    others = np.setdiff1d(np.arange(pop.n_users), users)
    steps = 0
    done = 0
    while done < n_sessions:
        B = int(min(concurrent, n_sessions - done, users.size))
        active = np.sort(sim.pick_users(rng, B, exclude=others))
        sim.start_sessions(active, rng)
        t = 0
        clicks = np.zeros(active.size, np.int64)  # this round's sessions, in `active` order while they last
        while active.size and t < max_steps:
            slates = draw_pages(row_of[active], K, excluded, rng)
            res = sim.step(active, slates, rng)
            r = res.response
            rows, cols = np.nonzero(r.clicked)
            items = slates[rows, cols]
            np.add.at(item_clicks, items, 1)
            np.add.at(user_clicks, active[rows], 1)
            excluded[row_of[active[rows]], items] = True
            rated = r.rating[r.clicked]
            ratings.append(rated[np.isfinite(rated)])
            steps += active.size
            clicks += r.clicked.sum(axis=1)
            leaving = r.leave
            if leaving.any():
                backend.end_session(pop, active[leaving])
                session_clicks.append(clicks[leaving])
            active, clicks = active[~leaving], clicks[~leaving]
            t += 1
        if active.size:
            backend.end_session(pop, active)
            session_clicks.append(clicks)
        done += B
    return {"item_clicks": item_clicks, "user_clicks": user_clicks,
            "ratings": np.concatenate(ratings) if ratings else np.empty(0), "steps": steps,
            "session_clicks": np.concatenate(session_clicks) if session_clicks else np.empty(0, np.int64),
            "sessions": done}


# -- one seed --------------------------------------------------------------------------------------


BackendFactory = Callable[[EnvSpec], CognitionBackend]


def embedded_factory(spec: EnvSpec) -> CognitionBackend:
    return EmbeddedCognition(spec.choice)


def llm_factory(config: dict[str, Any]) -> BackendFactory:
    """A factory for the LLM backend; its embedded fallback runs the spec's calibrated choice model."""

    def make(spec: EnvSpec) -> CognitionBackend:
        cfg = dict(config)
        cfg.setdefault("fallback_choice", spec.choice.model_dump())
        return make_backend("llm", cfg)

    return make


def _discrimination_and_ratings(backend: CognitionBackend, pop: Any, ev: EvalSet, cfg: FidelityConfig,
                                rng: np.random.Generator) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    m: dict[str, float] = {}
    n_pop = pop.n_users
    fallbacks, judged = 0, 0
    pos_out: dict[str, np.ndarray] = {}
    for ratio in cfg.ratios:
        nu_, ni_ = ev.negatives[ratio]
        user = np.concatenate([ev.pos_user, nu_])
        item = np.concatenate([ev.pos_item, ni_])
        label = np.r_[np.ones(ev.pos_user.size, bool), np.zeros(nu_.size, bool)]
        out = judge_pages(backend, pop, user, item, cfg.page_size, rng)
        for k, v in classification_metrics(user, label, out["watch"], n_pop).items():
            m[f"{k}@1:{ratio}"] = v
        fallbacks += int(out["fallback"].sum())
        judged += user.size
        if not pos_out:  # ratings of the held-out items come from the first (1:1) pages
            pos_out = {k: v[: ev.pos_user.size] for k, v in out.items()}
    m.update(_rating_metrics(ev.pos_rating, pos_out["rating"], pos_out["rating_sample"], pos_out["rating_latent"]))
    m["fallback_rate"] = fallbacks / max(judged, 1)
    return m, pos_out


def _rating_metrics(real: np.ndarray, stars: np.ndarray, sample: np.ndarray,
                    latent: np.ndarray | None = None) -> dict[str, float]:
    ok = np.isfinite(real) & np.isfinite(stars)
    if not ok.any():
        return {"rmse": float("nan"), "mae": float("nan"), "tv": float("nan"), "rmse_latent": float("nan")}
    err = stars[ok] - real[ok]
    out = {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err))),
           "tv": total_variation(star_histogram(sample[ok]), star_histogram(real[ok]))}
    if latent is not None and np.isfinite(latent[ok]).all():
        out["rmse_latent"] = float(np.sqrt(np.mean((latent[ok] - real[ok]) ** 2)))
    else:
        out["rmse_latent"] = float("nan")
    return out


def choice_popularity(backend: CognitionBackend, pop: Any, users: np.ndarray, excluded: np.ndarray,
                      chunk: int = 64) -> np.ndarray | None:
    """Expected picks of each item if each of ``users`` chose one item from the whole catalog (less the
    ``excluded`` items, ``(len(users), n_items)``: their train history) by the backend's own choice rule,
    a multinomial logit over utility / temperature; None for a backend without utilities (an LLM).

    Browsing shows uniform pages, so an item is clicked at most as often as it is shown: under that
    exposure even a simulator that knows popularity spreads its clicks far flatter than a long-tail log,
    whose users found their items through charts, search and recommendations. Free choice removes the
    exposure and asks only whether the simulated users' preferences make the right items popular."""
    utilities = getattr(backend, "utilities", None)
    temperature = getattr(getattr(backend, "config", None), "temperature", None)
    if utilities is None or temperature is None:
        return None
    ni = excluded.shape[1]
    share = np.zeros(ni)
    items = np.arange(ni)
    for s in range(0, users.size, chunk):
        u = users[s:s + chunk]
        z = np.asarray(utilities(pop, u, np.broadcast_to(items, (u.size, ni))), np.float64) / temperature
        z[excluded[s:s + chunk]] = -np.inf
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        share += (e / e.sum(axis=1, keepdims=True)).sum(axis=0)
    return share


def _browsing_metrics(sim: Simulator, ev: EvalSet, cfg: FidelityConfig, rng: np.random.Generator,
                      real_items: np.ndarray, real_users: np.ndarray, train_items: np.ndarray) -> dict[str, float]:
    n_sessions = max(1, int(round(cfg.sessions_per_user * ev.users.size)))
    concurrent = cfg.concurrent_sessions or max(1, ev.users.size // 16)
    excluded = ev.train_matrix()
    choice = choice_popularity(sim.backend, sim.pop, ev.users, excluded)  # before browsing changes the users
    free: dict[str, float] = {"pop_choice_curve": float("nan"), "pop_choice_spearman": float("nan")}
    if choice is not None:
        pm = popularity_measures(choice, real_items, train_items, rng)
        free = {"pop_choice_curve": pm["pop_curve"], "pop_choice_spearman": spearman(choice, real_items)}
    sim_out = simulate_browsing(sim, ev.users, excluded, n_sessions, concurrent, rng)
    sim_users = sim_out["user_clicks"][ev.users].astype(float)
    return {
        **free,
        "pop_spearman": spearman(sim_out["item_clicks"], real_items),
        **popularity_measures(sim_out["item_clicks"], real_items, train_items, rng),
        "activity_ks": _activity_ks(sim_users, real_users),
        "activity_ks_matched": matched_activity_ks(sim_users, real_users, sim_out["session_clicks"],
                                                   sim_out["sessions"], rng),
        "activity_spearman": spearman(sim_users, real_users),
        "clicks_per_step": float(sim_out["item_clicks"].sum() / max(sim_out["steps"], 1)),
    }


def _activity_ks(sim_users: np.ndarray, real_users: np.ndarray) -> float:
    if sim_users.sum() <= 0 or real_users.sum() <= 0:
        return float("nan")
    return ks_distance(sim_users / sim_users.mean(), real_users / real_users.mean())


def split_half_reliability(counts: np.ndarray, rng: np.random.Generator) -> float:
    """Spearman-Brown split-half reliability of per-item event counts: every event goes to one of two
    halves at random, and ``2 r / (1 + r)``, ``r`` the Spearman correlation of the halves, says how well
    the counts rank the items' underlying rates (NaN when the halves do not correlate)."""
    c = np.asarray(counts, np.int64)
    a = rng.binomial(c, 0.5)
    r = spearman(a, c - a)
    return 2 * r / (1 + r) if math.isfinite(r) and r > 0 else float("nan")


def popularity_class(train_items: np.ndarray) -> np.ndarray:
    """Each item's popularity class: its train interaction count in powers of two (0, 1-2, 3-6, 7-14, ...)."""
    return np.floor(np.log2(1.0 + np.asarray(train_items, float))).astype(np.int64)


def popularity_measures(sim_items: np.ndarray, real_items: np.ndarray, train_items: np.ndarray,
                        rng: np.random.Generator, min_count: int = 5) -> dict[str, float]:
    """Popularity agreement that stays valid when most items have zero or one held-out interaction.

    A per-item rank correlation cannot confirm a simulator there: with 3,000 held-out interactions on
    20,000 items, a simulator that clicks exactly the true rates scores a Spearman of about 0.3, even
    after correcting for attenuation (``tests/test_implicit.py``). Sums over groups of items are not
    that noisy, so:

    * ``pop_curve``: items are grouped by their train interaction count in powers of two (0, 1-2, 3-6,
      7-14, ...); ``1 - TV`` between the simulated clicks' and the held-out interactions' shares of the
      groups (the overlap of the two distributions; 1: each popularity class gets exactly its real share
      of the activity; a simulator clicking the true rates scores about 0.98, uniform clicks about 0.25);
    * ``pop_spearman_head``: Spearman over the items with at least ``min_count`` held-out interactions
      (NaN with fewer than 20 such items): which items, where the test split can tell;
    * ``pop_reliability``: the real counts' split-half reliability, how far any per-item ranking can
      agree with them.
    """
    sim_items, real_items = np.asarray(sim_items, float), np.asarray(real_items, float)
    head = real_items >= min_count
    out = {"pop_spearman_head": spearman(sim_items[head], real_items[head]) if head.sum() >= 20 else float("nan")}
    group = popularity_class(train_items)
    s_g = np.bincount(group, sim_items, group.max() + 1)
    r_g = np.bincount(group, real_items, group.max() + 1)
    out["pop_curve"] = (1.0 - total_variation(s_g / s_g.sum(), r_g / r_g.sum())
                        if s_g.sum() > 0 and r_g.sum() > 0 else float("nan"))
    out["pop_reliability"] = split_half_reliability(real_items, rng)
    return out


def matched_activity_ks(sim_users: np.ndarray, real_users: np.ndarray, session_clicks: np.ndarray, sessions: int,
                        rng: np.random.Generator, reps: int = 20) -> float:
    """Activity KS with the simulation's own sampling noise put on the real side too.

    The raw ``activity_ks`` compares simulated click counts, noisy from a finite simulation (a user with
    10 sessions has a Poisson spread of about 30%), with real counts that may have none (a log that kept
    the top 50 items of every user): no stochastic simulator passes it there. Here every real user is
    simulated as the harness would if its session rate were exactly its real relative activity: a
    Poisson number of sessions (``sessions`` in all, shared in proportion to the real counts), each with a
    number of clicks drawn from the simulation's own sessions (``reps`` draws per user). The KS distance
    between the simulated counts and these is 0 up to sampling error when the simulator's users are as
    active, relative to each other, as the real ones."""
    if sim_users.sum() <= 0 or real_users.sum() <= 0 or session_clicks.size == 0:
        return float("nan")
    rel = np.repeat(real_users / real_users.mean(), reps)
    k = rng.poisson(rel * sessions / real_users.size)
    draws = rng.choice(np.asarray(session_clicks, float), size=int(k.sum()))
    totals = np.bincount(np.repeat(np.arange(rel.size), k), draws, rel.size)
    return _activity_ks(sim_users, totals)


def _baselines(world: CalibratedWorld, ev: EvalSet, cfg: FidelityConfig, rng: np.random.Generator,
               real_items: np.ndarray, real_users: np.ndarray) -> dict[str, dict[str, float]]:
    train = world.split.train
    to_pop = np.full(train.n_users, -1, np.int64)
    to_pop[world.user_index] = np.arange(len(world.user_index))
    n_pop, ni = len(world.user_index), train.n_items
    count = np.bincount(train.item, minlength=ni).astype(float)
    # popularity threshold: best balanced accuracy on train positives vs unobserved-in-train items
    tu = to_pop[train.user]
    neg = rng.integers(0, ni, size=tu.size)
    for _ in range(50):
        bad = ev.train_seen.contains(tu, neg)
        if not bad.any():
            break
        neg[bad] = rng.integers(0, ni, size=int(bad.sum()))
    cp, cn = count[train.item], count[neg]
    grid = np.unique(np.concatenate([cp, cn]))
    sp, sn = np.sort(cp), np.sort(cn)
    bal = (1 - np.searchsorted(sp, grid, side="left") / sp.size + np.searchsorted(sn, grid, side="left") / sn.size) / 2
    tau = float(grid[int(np.argmax(bal))])
    pop_m: dict[str, float] = {}
    for ratio in cfg.ratios:
        nu_, ni_ = ev.negatives[ratio]
        user = np.concatenate([ev.pos_user, nu_])
        item = np.concatenate([ev.pos_item, ni_])
        label = np.r_[np.ones(ev.pos_user.size, bool), np.zeros(nu_.size, bool)]
        for k, v in classification_metrics(user, label, count[item] >= tau, n_pop).items():
            pop_m[f"{k}@1:{ratio}"] = v
    pop_m["pop_spearman"] = spearman(count, real_items)
    pop_m.update(popularity_measures(count, real_items, count, rng))
    pop_m.pop("pop_reliability")
    out = {"popularity": pop_m}
    real = ev.pos_rating
    if train.has_ratings and np.isfinite(real).any():
        ok = np.isfinite(train.rating)
        r, u_, i_ = train.rating[ok].astype(float), to_pop[train.user[ok]], train.item[ok]
        mu = float(r.mean())
        item_mean = np.bincount(i_, r, ni) / np.maximum(np.bincount(i_, minlength=ni), 1)
        item_mean = np.where(np.bincount(i_, minlength=ni) > 0, item_mean, mu)
        valid = u_ >= 0
        user_mean = np.bincount(u_[valid], r[valid], n_pop) / np.maximum(np.bincount(u_[valid], minlength=n_pop), 1)
        user_mean = np.where(np.bincount(u_[valid], minlength=n_pop) > 0, user_mean, mu)
        gm = np.full(real.size, mu)
        out["global mean"] = _rating_metrics(real, gm, gm)
        out["item mean"] = _rating_metrics(real, item_mean[ev.pos_item], np.rint(item_mean[ev.pos_item]))
        out["user mean"] = _rating_metrics(real, user_mean[ev.pos_user], np.rint(user_mean[ev.pos_user]))
        for row in ("global mean", "item mean", "user mean"):
            out[row].pop("rmse_latent", None)
        out["item mean"].pop("tv")
        out["user mean"].pop("tv")
        out["train history"] = {"tv": total_variation(star_histogram(r), star_histogram(real))}
    train_users = np.bincount(to_pop[train.user][to_pop[train.user] >= 0], minlength=n_pop)[ev.users].astype(float)
    out.setdefault("train history", {})["activity_ks"] = _activity_ks(train_users, real_users)
    out["train history"]["activity_spearman"] = spearman(train_users, real_users)
    return out


def run_fidelity(spec: EnvSpec | str | dict = "movielens-v0", backends: dict[str, BackendFactory] | None = None,
                 config: FidelityConfig | dict | None = None, baselines: bool = True,
                 log: Callable[[str], None] | None = None, worlds: dict[int, CalibratedWorld] | None = None,
                 journal: Journal | None = None) -> FidelityResult:
    """Run the harness over ``config.seeds`` for each backend in ``backends`` (name -> factory).

    ``spec`` is a movielens env spec (its ``world`` section says which data and split; its
    ``choice`` section is the embedded model). ``worlds`` may hold pre-calibrated worlds by seed.
    ``journal`` keeps what each finished seed added to the result (values and info, one atomic entry
    per seed) and takes the seeds it already holds from there, without calibrating or calling a backend.
    """
    sp = resolve_spec(spec)
    if sp.world.kind != "movielens":
        raise ConfigError(f"fidelity needs a spec with world.kind 'movielens', got {sp.world.kind!r}")
    cfg = config if isinstance(config, FidelityConfig) else FidelityConfig(**(config or {}))
    backends = backends or {"embedded": embedded_factory}
    settings = movielens_settings(sp.world)
    say = log or (lambda s: None)
    result = FidelityResult(seeds=list(cfg.seeds))
    result.info = {"spec": sp.id, "world": json.loads(sp.world.model_dump_json()), "config": cfg.model_dump(),
                   "backends": sorted(backends), "timing": {}}
    t_all = time.perf_counter()
    for seed in cfg.seeds:
        done = journal.get(f"seed{seed}") if journal is not None else None
        if done is not None:  # a finished seed: its values and info exactly as first recorded
            apply_changes(result.values, done["values"])
            apply_changes(result.info, done["info"])
            say(f"seed {seed}: finished before, taken from {journal.path}")  # type: ignore[union-attr]
            continue
        before = to_json_value([result.values, result.info]) if journal is not None else None
        t0 = time.perf_counter()
        world = (worlds or {}).get(seed) or build_calibrated_world(settings, seed=seed, choice=sp.choice)
        t_cal = time.perf_counter() - t0
        say(f"seed {seed}: calibrated {world.split.train.name} in {t_cal:.1f}s")
        result.info["log"] = world.split.train.name.split("/")[0]
        result.info["has_ratings"] = world.split.train.has_ratings
        ev = build_eval_set(world, cfg, np.random.default_rng([seed, 101]))
        real_items = np.bincount(ev.pos_item, minlength=len(world.catalog)).astype(float)
        real_users = np.bincount(ev.pos_user, minlength=len(world.user_index))[ev.users].astype(float)
        train_items = np.bincount(world.split.train.item, minlength=len(world.catalog)).astype(float)
        result.info.setdefault("eval", {})[str(seed)] = {"users": int(ev.users.size),
                                                          "positives": int(ev.pos_user.size)}
        result.info["timing"].setdefault("calibration_s", []).append(round(t_cal, 2))
        n_pos = np.bincount(ev.pos_user)[ev.users]
        pages = int(sum(np.ceil(n_pos * (1 + r) / cfg.page_size).sum() for r in cfg.ratios))
        say(f"seed {seed}: {ev.users.size} users, {ev.pos_user.size} held-out items, {pages} judged pages "
            f"(one backend call each), ~{int(round(cfg.sessions_per_user * ev.users.size))} simulated sessions")
        # the harness draws its own pages; a catalog smaller than the spec's candidate set is fine
        sp_w = sp if len(world.catalog) >= sp.num_candidates else sp.with_overrides(
            num_candidates=len(world.catalog), slate_size=min(sp.slate_size, len(world.catalog)))
        sp_w = sp_w.for_world(world)  # the world's calibrated temperature and sequence weight
        for name, factory in backends.items():
            t1 = time.perf_counter()
            backend = factory(sp_w)
            try:
                sim = Simulator(sp_w, world, backend=backend)
                sim.reset_population(np.random.default_rng([seed, 202]))
                m, _ = _discrimination_and_ratings(backend, sim.pop, ev, cfg, np.random.default_rng([seed, 303]))
                if cfg.simulate:
                    m.update(_browsing_metrics(sim, ev, cfg, np.random.default_rng([seed, 404]), real_items,
                                               real_users, train_items))
                result.add(name, m)
                stats = backend.stats()
            finally:
                backend.close()
            result.info["timing"].setdefault(f"{name}_s", []).append(round(time.perf_counter() - t1, 2))
            result.info.setdefault("backend_stats", {}).setdefault(name, []).append(stats)
            say(f"seed {seed}: {name}: " + ", ".join(f"{k}={m[k]:.3f}" for k in TABLE_METRICS if k in m))
        if baselines:
            for name, m in _baselines(world, ev, cfg, np.random.default_rng([seed, 505]), real_items,
                                      real_users).items():
                result.add(name, m)
        result.info.setdefault("calibration", {})[str(seed)] = world.report
        if journal is not None and before is not None:  # what this seed added, as one atomic entry
            journal.put(f"seed{seed}", {"values": changes(before[0], result.values),
                                        "info": changes(before[1], result.info)})
    result.info["timing"]["total_s"] = round(time.perf_counter() - t_all, 2)
    return result


# -- command line ----------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``simrec fidelity``."""
    p.add_argument("--data", metavar="DIR", default=None,
                   help=f"dataset directory (default: the spec's, {DEFAULT_DATA_DIR})")
    p.add_argument("--variant", choices=("auto", "ml-100k", "ml-1m", "generic"), default=None)
    p.add_argument("--spec", metavar="NAME|FILE", default="movielens-v0",
                   help="movielens env spec (default movielens-v0)")
    p.add_argument("--split", choices=("ratio", "last_k", "random"), default=None,
                   help="per-user split (default: the spec's, temporal 80/20)")
    p.add_argument("--train-ratio", type=float, default=None, help="train share for --split ratio/random")
    p.add_argument("--implicit", type=float, metavar="MIN_RATING", default=None,
                   help="turn the ratings into implicit feedback first: rows rated MIN_RATING or more are the "
                        "positives, weights = stars, no timestamps (simrec.data.implicit; use with --split random)")
    p.add_argument("--last-k", type=int, default=None, help="test items per user for --split last_k")
    p.add_argument("--backend", action="append", choices=("embedded", "llm"), default=None,
                   help="backend to evaluate (repeatable; default embedded)")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds 0..N-1 (default 5)")
    p.add_argument("--json", metavar="FILE", help="write results (mean, std, per-seed values) as JSON")
    p.add_argument("--markdown", metavar="FILE", help="also write the markdown table to FILE")
    p.add_argument("--max-users", type=int, default=None, help="evaluate a random subset of users (LLM cost)")
    p.add_argument("--max-positives", type=int, default=None, help="held-out items per user, at most")
    p.add_argument("--page-size", type=int, default=10)
    p.add_argument("--sessions-per-user", type=float, default=None,
                   help="browsing simulation budget (default 10 for embedded, 2 with an LLM)")
    p.add_argument("--no-simulate", action="store_true", help="skip the browsing simulation (metrics 4 and 5)")
    p.add_argument("--no-baselines", action="store_true")
    g = p.add_argument_group("LLM backend (--backend llm)")
    g.add_argument("--base-url", default=None, help="OpenAI-compatible base URL (default: the bundled local model)")
    g.add_argument("--model", default=None)
    g.add_argument("--api-key", default=None)
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--cache-path", default=None, help="SQLite record/replay cache of LLM calls")
    g.add_argument("--backend-config", metavar="JSON", default=None, help="extra LLM backend config as JSON")
    p.add_argument("--no-cache", action="store_true",
                   help="calibrate afresh instead of reusing the on-disk cache of calibrated worlds")
    p.add_argument("--journal", metavar="DIR", default=None,
                   help="keep each finished seed's results in DIR (default with --resume: the --json file's "
                        "name with suffix .journal); LLM calls are recorded in DIR/llm_cache.sqlite unless "
                        "--cache-path is given")
    p.add_argument("--resume", action="store_true",
                   help="after a crash: take the seeds finished in the journal from there, run the rest")
    p.add_argument("--quiet", action="store_true")


def _llm_config(args: argparse.Namespace) -> dict[str, Any]:
    cfg: dict[str, Any] = json.loads(args.backend_config) if args.backend_config else {}
    for key in ("api_key", "temperature", "cache_path"):
        v = getattr(args, key)
        if v is not None:
            cfg[key] = v
    return cfg


def command_line(args: argparse.Namespace) -> str:
    """The ``simrec fidelity`` command that reproduces ``args`` (without secrets)."""
    parts = ["simrec", "fidelity"]
    for key, value in sorted(vars(args).items()):
        if key in ("func", "command", "fidelity_error", "api_key") or value in (None, False):
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [x for v in value for x in (flag, str(v))]
        else:
            parts += [flag, str(value)]
    return " ".join(parts)


#: ``simrec fidelity`` options that do not change a seed's results (where things go, how many seeds,
#: where the LLM is served, whether calibrated worlds are cached); every other option must match on --resume.
_NOT_FINGERPRINTED = {"func", "command", "command_error", "fidelity_error", "seeds", "json", "markdown", "quiet",
                      "resume", "journal", "base_url", "api_key", "cache_path", "no_cache"}


def _journal(args: argparse.Namespace) -> Journal | None:
    """The per-seed journal of ``--journal``/``--resume`` (None without either)."""
    if not (args.resume or args.journal):
        return None
    if args.journal:
        path = Path(args.journal)
    elif args.json:
        path = Path(args.json).with_suffix(".journal")
    else:
        raise ConfigError("--resume keeps finished seeds in a journal. Fix: pass --journal DIR (or --json "
                          "FILE.json: the journal is then FILE.journal beside it).")
    fp = {"--" + k.replace("_", "-"): v for k, v in sorted(vars(args).items())
          if k not in _NOT_FINGERPRINTED and not callable(v)}
    if args.data:
        fp["--data"] = str(Path(args.data).resolve())
    return Journal(path, fp, resume=args.resume, command="fidelity")


def cli_spec_and_config(args: argparse.Namespace) -> tuple[EnvSpec, FidelityConfig]:
    """The env spec and harness settings a parsed ``simrec fidelity`` command asks for (data checked)."""
    names = args.backend or ["embedded"]
    spec = resolve_spec(args.spec)
    world: dict[str, Any] = {}
    if args.data:
        world["data_dir"] = args.data
    if args.variant:
        world["variant"] = args.variant
    split = {k: v for k, v in (("kind", args.split), ("train_ratio", args.train_ratio), ("k", args.last_k))
             if v is not None}
    if split:
        world["split"] = split
    if args.implicit is not None:
        world["implicit"] = {"min_rating": args.implicit}
    if args.no_cache:
        world["cache"] = False
    if world:
        spec = spec.with_overrides(world=world)
    settings = movielens_settings(spec.world)
    from simrec.data.calibration import resolve_data_dir

    resolve_data_dir(settings.data_dir)  # fail early with the fix in the message
    sessions = args.sessions_per_user or (2.0 if "llm" in names else 10.0)
    cfg = FidelityConfig(seeds=list(range(args.seeds)), page_size=args.page_size, max_users=args.max_users,
                         max_positives=args.max_positives, sessions_per_user=sessions, simulate=not args.no_simulate)
    return spec, cfg


def cli_backends(args: argparse.Namespace, stack: Any, journal: Journal | None = None) -> dict[str, BackendFactory]:
    """Backend factories of a parsed ``simrec fidelity`` command; LLM endpoints it starts live in ``stack``
    (a ``contextlib.ExitStack``)."""
    factories: dict[str, BackendFactory] = {}
    for name in args.backend or ["embedded"]:
        if name == "embedded":
            factories["embedded"] = embedded_factory
        else:
            endpoint = stack.enter_context(llm_endpoint("llm", args.base_url, args.model))
            llm_cfg = {**(endpoint or {}), **_llm_config(args)}
            if journal is not None:  # the calls of a seed cut short are replayed, not paid again
                llm_cfg = with_llm_cache(llm_cfg, journal.path)
            factories["llm"] = llm_factory(llm_cfg)
    return factories


def cli_report(result: FidelityResult, args: argparse.Namespace) -> int:
    """Print the table and write ``--json`` / ``--markdown`` as ``simrec fidelity`` does."""
    result.info["command"] = command_line(args)
    table = result.markdown()
    print(table)
    print(f"\n{len(result.seeds)} seeds; total {result.info['timing']['total_s']:.0f}s", file=sys.stderr)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1, default=str) + "\n", encoding="utf-8")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    return 0


def run_cli(args: argparse.Namespace) -> int:
    """``simrec fidelity``: run the harness, print the table, optionally write JSON/markdown."""
    import contextlib

    spec, cfg = cli_spec_and_config(args)
    say = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    journal = _journal(args)
    if journal is not None and journal.resumed:
        say(f"resuming: {len(journal.units())} finished seeds in {journal.path}")
    with contextlib.ExitStack() as stack:
        factories = cli_backends(args, stack, journal)
        result = run_fidelity(spec, factories, cfg, baselines=not args.no_baselines, log=say, journal=journal)
    return cli_report(result, args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simrec fidelity", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_cli(parser.parse_args(argv))
