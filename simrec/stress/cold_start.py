"""Cold start: how soon does a recommender show items injected mid-run, and do users take them up?

Fitted recommenders fit on data that holds none of the new items and are retrained every
:attr:`ColdStart.refit_every` sessions after the injection on the fit data plus every click of the run so far,
so the only way they can learn a new item is a click on it in this run. What happens (``simrec stress run
cold_start``): most-popular, item-kNN, EASE and ALS score an item they have no data on at zero, below the old
candidates they do have data on, and (practically) never show it, so it never gets the click a retrain would
need: the loop stays closed and the new items stay invisible however often the model is refitted. Greedy and
LinUCB rank by content features, which a new item has from the start, and show new items at about their share
of the catalog; random is the reference (parity 1). ``popular`` ranks by the observation's popularity column,
a prior the world gives every item (think buzz, not logged clicks), so it shows the new items with a high prior
at once and most of the others never.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from simrec.evaluation.compare import FIT_SEED_OFFSET, build_recommender, make_env, record_run, user_schedule
from simrec.recommenders import FittedRecommender, Interactions, fitted_names, make_recommender, run_episodes
from simrec.stress.base import StressTest


def holdout_items(n_items: int, seed: int, share: float) -> np.ndarray:
    """The ``round(share * n_items)`` (at least one) catalog items held out until the injection, by seed."""
    k = max(1, round(share * n_items))
    return np.sort(np.random.default_rng([seed, 23]).choice(n_items, size=k, replace=False))


def holdout_fit_interactions(env_id: str, overrides: dict[str, Any] | None, seed: int, available: np.ndarray, *,
                             fit_episodes: int = 300, fit_policy: str = "random") -> Interactions:
    """:func:`~simrec.evaluation.compare.fit_interactions` with the held-out items absent: a calibrated world's
    train split loses their rows; a synthetic world's logging run draws candidates only from ``available``
    (so no logged slate ever showed them, and what the logging users clicked instead is what was logged)."""
    from simrec.envs.registration import build_world
    from simrec.trajectory import Recorder

    env = make_env(env_id, overrides)
    world = build_world(env.sim_spec.world)
    if getattr(world, "split", None) is not None:
        full = Interactions.from_world(world)
        keep = available[full.item]
        rating = None if full.rating is None else full.rating[keep]
        return Interactions(full.user[keep], full.item[keep], full.weight[keep], full.timestamp[keep], full.user_ids,
                            full.n_items, rating=rating, name=full.name)
    env.sim.candidates.set_available(available)
    logger = Recorder(env, None, recommender=fit_policy, flush_every=10**9)
    policy = make_recommender(fit_policy, env.action_space, seed=seed + FIT_SEED_OFFSET)
    run_episodes(logger, policy, fit_episodes, seed=seed + FIT_SEED_OFFSET)
    logger.close()
    return Interactions.from_trajectories(logger.trajectories(), n_items=len(env.catalog))


def with_clicks(fit: Interactions, users: Sequence[str], items: Sequence[int]) -> Interactions:
    """``fit`` plus one interaction per ``(users[r], items[r])`` click, ordered after every fit interaction."""
    ids = list(fit.user_ids)
    index = {u: i for i, u in enumerate(ids)}
    for u in users:
        if u not in index:
            index[u] = len(ids)
            ids.append(u)
    n = len(items)
    t0 = int(fit.timestamp.max()) + 1 if len(fit) else 0
    rating = None if fit.rating is None else np.concatenate([fit.rating, np.full(n, np.nan, fit.rating.dtype)])
    return Interactions(np.concatenate([fit.user, np.array([index[u] for u in users], np.int64)]),
                        np.concatenate([fit.item, np.asarray(items, np.int64)]),
                        np.concatenate([fit.weight, np.ones(n, np.float32)]),
                        np.concatenate([fit.timestamp, t0 + np.arange(n, dtype=np.int64)]),
                        ids, fit.n_items, rating=rating, name=f"{fit.name}+run")


@dataclass
class Injection:
    """One seed's setting, the same for every recommender: new items, user schedule, injection, fit data."""

    n_items: int
    new: np.ndarray  # catalog indices held out until the injection
    users: list[str]
    half: int  # sessions before the injection
    fit: Interactions | None


@dataclass
class ColdStartRun:
    """What one recommender did with the new items."""

    first_shown: np.ndarray  # per new item: post-injection step of its first impression, -1 if never shown
    pre_impressions: int  # impressions of new items before the injection (the protocol needs 0)
    post_steps: int
    slate_size: int
    shown: np.ndarray  # (post_steps,) new items in each post-injection slate
    impressions: int  # post-injection slate slots
    new_impressions: int
    clicks: int  # post-injection clicks
    new_clicks: int
    refits: int


class ColdStart(StressTest):
    name: ClassVar[str] = "cold_start"
    question: ClassVar[str] = ("How soon does a recommender show items injected mid-run, and do users take them "
                               "up?")
    protocol: ClassVar[str] = (
        "5% of the catalog (chosen by seed) is held out: never a candidate and absent from the fit data (the "
        "logging run never drew them). The same `episodes` users (compare's activity-weighted schedule) are "
        "served by every recommender; after half of the sessions the held-out items join the candidate pool. "
        "Fitted recommenders are retrained every 20 sessions after the injection on the fit data plus every "
        "click of the run so far, so they learn a new item only from clicks on it in this run.")
    metric: ClassVar[str] = (
        "first_exposure = median over new items of the post-injection steps until the item is first shown "
        "(inf when over half are never shown), never_shown = share of new items never shown, impression_parity "
        "and click_parity = the new items' share of post-injection impressions and of clicks divided by their "
        "share of the catalog (1: their fair share, 0: ignored), new_ctr and old_ctr = post-injection CTR of "
        "new and of old items when shown")
    default_recommenders: ClassVar[tuple[str, ...]] = ("random", "popular", "greedy", "linucb", "mostpop",
                                                       "itemknn", "ease", "als")
    default_episodes: ClassVar[int] = 120
    higher_is_better: ClassVar[dict[str, bool]] = {"first_exposure": False, "never_shown": False,
                                                   "impression_parity": True, "click_parity": True, "new_ctr": True,
                                                   "old_ctr": True}
    holdout: ClassVar[float] = 0.05
    refit_every: ClassVar[int] = 20
    window: ClassVar[int] = 100

    def curve_axes(self) -> dict[str, tuple[str, str]]:
        return {"new items ever shown": ("step after the injection (x 20)", "share of new items shown at least once"),
                "new-item impression parity": (f"step after the injection (x {self.window})",
                                                 f"new items' impression share / catalog share per {self.window} steps")}

    def setup(self, seed: int, recommenders: Sequence[str]) -> Injection:
        """The held-out items, user schedule and fit data of ``seed`` (fit data only if a recommender needs it)."""
        cfg = self.config
        env = make_env(cfg.env, cfg.overrides)
        new = holdout_items(len(env.catalog), seed, self.holdout)
        available = np.ones(len(env.catalog), dtype=bool)
        available[new] = False
        fit = None
        if set(recommenders) & set(fitted_names()):
            fit = holdout_fit_interactions(cfg.env, cfg.overrides, seed, available, fit_episodes=cfg.fit_episodes)
        users = user_schedule(env, seed, self.episodes)
        env.close()
        return Injection(len(env.catalog), new, users, self.episodes // 2, fit)

    def serve(self, seed: int, name: str, inj: Injection) -> ColdStartRun:
        """Run ``name`` through the seed's sessions with the injection after ``inj.half`` of them."""
        cfg = self.config
        env = make_env(cfg.env, cfg.overrides)
        is_new = np.zeros(len(env.catalog), dtype=bool)
        is_new[inj.new] = True
        env.sim.candidates.set_available(~is_new)  # before reset(seed): the pool survives the population reset
        rec = build_recommender(name, env, seed, inj.fit, llm_config=cfg.llm)
        refit = isinstance(rec, FittedRecommender)
        max_steps = env.sim_spec.max_steps
        first = np.full(len(env.catalog), -1, dtype=np.int64)
        shown: list[int] = []
        state = {"ep": 0, "pre": 0, "clicks": 0, "new_clicks": 0, "refits": 0}
        click_users: list[str] = []
        click_items: list[int] = []

        def on_step(info: dict[str, Any]) -> None:
            slate = np.asarray(info["slate_items"])
            clicked = np.asarray(info["clicked"], dtype=bool)
            fresh = is_new[slate]
            if state["ep"] < inj.half:
                state["pre"] += int(fresh.sum())
            else:
                step = len(shown)
                unseen = slate[fresh & (first[slate] < 0)]
                first[unseen] = step
                shown.append(int(fresh.sum()))
                state["clicks"] += int(clicked.sum())
                state["new_clicks"] += int((clicked & fresh).sum())
            if refit and clicked.any():
                click_users.extend([str(info["user_id"])] * int(clicked.sum()))
                click_items.extend(int(i) for i in slate[clicked])
            if info["leave"] or info["t"] >= max_steps:  # the session is over; the next reset draws afresh
                state["ep"] += 1
                after = state["ep"] - inj.half
                if after == 0:  # the event: every held-out item joins the pool, for every recommender alike
                    env.sim.candidates.set_available(None)
                elif refit and after > 0 and after % self.refit_every == 0 and state["ep"] < len(inj.users):
                    rec.fit(with_clicks(inj.fit, click_users, click_items))
                    state["refits"] += 1

        record_run(env, rec, seed, inj.users, name=name, on_step=on_step, metadata={"stress": self.name})
        env.close()
        k = env.sim_spec.slate_size
        n_shown = np.array(shown, dtype=np.int64)
        return ColdStartRun(first[inj.new], state["pre"], n_shown.size, k, n_shown, n_shown.size * k,
                            int(n_shown.sum()), state["clicks"], state["new_clicks"], state["refits"])

    def run_seed(self, seed: int, recommenders: Sequence[str]) -> tuple[dict[str, dict[str, float]],
                                                                        dict[str, dict[str, list[float]]]]:
        inj = self.setup(seed, recommenders)
        share = inj.new.size / inj.n_items
        metrics: dict[str, dict[str, float]] = {}
        ever: dict[str, list[float]] = {}
        parity: dict[str, list[float]] = {}
        for name in recommenders:
            r = self.serve(seed, name, inj)
            if r.pre_impressions:
                raise RuntimeError(f"cold_start: {name} was shown {r.pre_impressions} held-out items before the "
                                   "injection; the candidate pool leaked")
            t = np.where(r.first_shown >= 0, r.first_shown, np.inf).astype(np.float64)
            old = r.impressions - r.new_impressions
            metrics[name] = {
                "first_exposure": float(np.median(t)),
                "never_shown": float(np.mean(r.first_shown < 0)),
                "impression_parity": r.new_impressions / r.impressions / share if r.impressions else float("nan"),
                "click_parity": r.new_clicks / r.clicks / share if r.clicks else float("nan"),
                "new_ctr": r.new_clicks / r.new_impressions if r.new_impressions else float("nan"),
                "old_ctr": (r.clicks - r.new_clicks) / old if old else float("nan"),
            }
            grid = np.arange(0, r.post_steps, 20)
            ever[name] = [float(np.mean(t <= s)) for s in grid]
            w = r.post_steps // self.window
            blocks = r.shown[:w * self.window].reshape(w, self.window).sum(axis=1) if w else np.zeros(0)
            parity[name] = (blocks / (self.window * r.slate_size) / share).tolist()
        return metrics, {"new items ever shown": ever, "new-item impression parity": parity}
