"""Fatigue and retention: do users of a recommender that keeps repeating one topic leave sooner and come back
less than users of diverse ones?"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces

from simrec.evaluation.compare import build_recommender, make_env, record_run, return_rate
from simrec.recommenders.base import Recommender
from simrec.stress.base import StressTest
from simrec.stress.preference_shift import user_pool_schedule

#: The probe's name in this test's recommender lists (it is not in the global registry).
ONE_TOPIC = "one-topic"


class OneTopicRecommender(Recommender):
    """Probe: candidates of the user's most-clicked topic first, then the rest, each group by popularity.

    Clicks per topic are counted per ``info["user_id"]`` from ``info["slate_items"]`` and ``info["clicked"]``
    (an item counts for each of its topics, split by ``topic_weights``) and kept across sessions; before a
    user's first click the ranking is plain popularity.
    """

    name = ONE_TOPIC

    def __init__(self, action_space: spaces.Space, *, seed: int | None = None, topic_weights: np.ndarray) -> None:
        super().__init__(action_space, seed=seed)
        self.topic_weights = np.asarray(topic_weights, dtype=np.float64)
        self._clicks: dict[str, np.ndarray] = {}

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self._clicks = {}

    def scores(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        pop = np.asarray(obs["candidates"], dtype=np.float64)[:, -1]  # in [0, 1]
        counts = self._clicks.get(info.get("user_id"))
        if counts is None:
            return pop
        on_topic = self.topic_weights[np.asarray(info["candidate_items"], dtype=np.int64), int(np.argmax(counts))] > 0
        return on_topic + 0.5 * pop  # +1 puts every on-topic candidate above every other

    def update(self, obs: dict[str, np.ndarray], action: Any, reward: float, next_obs: dict[str, np.ndarray],
               info: dict[str, Any]) -> None:
        clicked = np.asarray(info.get("clicked", ()), dtype=bool)
        if clicked.any():
            items = np.asarray(info["slate_items"], dtype=np.int64)[clicked]
            row = self._clicks.setdefault(info["user_id"], np.zeros(self.topic_weights.shape[1]))
            row += self.topic_weights[items].sum(axis=0)


class FatigueRetention(StressTest):
    name: ClassVar[str] = "fatigue_retention"
    question: ClassVar[str] = ("Do users of a recommender that keeps repeating one topic leave sooner and come back "
                               "less than users of diverse ones?")
    protocol: ClassVar[str] = (
        "A pool of 25 users (by activity) returns for `episodes` sessions in a fixed order (8 sessions each on "
        "average), the same for every recommender, from the same world. The recommenders include the "
        "'one-topic' probe (this module: candidates of the user's most-clicked topic first, by popularity). "
        "Sessions end when the user leaves (fatigue, satisfaction, no click) or at max_steps.")
    metric: ClassVar[str] = (
        "session_len = mean session length (steps) over all sessions; len_first / len_later = over each user's "
        "1st session / their 4th and later ones; return_rate = simrec.evaluation.compare.return_rate: the mean "
        "over finished sessions of exp(return_weight * satisfaction) at session end, the relative odds the user "
        "comes back (1 = a neutral user, < 1 driven away); final_satisfaction and final_fatigue = each pool "
        "user's latent satisfaction and fatigue at the end of their last session, mean over users. Curve: mean "
        "session length by session index, up to the first index fewer than half the pool reached")
    default_recommenders: ClassVar[tuple[str, ...]] = ("random", "popular", "greedy", "linucb", "ease", ONE_TOPIC)
    default_episodes: ClassVar[int] = 200
    higher_is_better: ClassVar[dict[str, bool]] = {"session_len": True, "len_first": True, "len_later": True,
                                                   "return_rate": True, "final_satisfaction": True,
                                                   "final_fatigue": False}
    pool: ClassVar[int] = 25
    later_from: ClassVar[int] = 4
    #: The curve stops at the first session index fewer than this share of the pool reached (same for every
    #: recommender: the schedule fixes it).
    curve_share: ClassVar[float] = 0.5

    def curve_axes(self) -> dict[str, tuple[str, str]]:
        return {"session length": ("session index of the user (0 = first session)", "mean session length (steps)")}

    def run_seed(self, seed: int, recommenders: Sequence[str]) -> tuple[dict[str, dict[str, float]],
                                                                        dict[str, dict[str, list[float]]]]:
        cfg = self.config
        env = make_env(cfg.env, cfg.overrides)
        users = user_pool_schedule(env, seed, self.pool, self.episodes)
        env.close()
        fit = self.fit_data(seed, recommenders)
        metrics: dict[str, dict[str, float]] = {}
        curve: dict[str, list[float]] = {}
        for name in recommenders:
            env = make_env(cfg.env, cfg.overrides)
            if name == ONE_TOPIC:
                rec: Recommender = OneTopicRecommender(env.action_space, seed=seed,
                                                       topic_weights=env.catalog.topic_weights)
            else:
                rec = build_recommender(name, env, seed, fit, llm_config=cfg.llm)
            traj = record_run(env, rec, seed, users, name=name, metadata={"stress": self.name})
            eps = traj.episodes.sort_values("episode")
            # the schedule fixes which user plays each session, so session indices pair across recommenders
            index = eps.groupby("user", sort=False).cumcount().to_numpy()
            length = eps["steps"].to_numpy(dtype=np.float64)
            lat = "latent_satisfaction" in traj.steps.columns  # absent when the spec sets log_latent = false
            last = traj.steps[["user"] + (["latent_satisfaction", "latent_fatigue"] if lat else [])]
            last = last.groupby("user", sort=False).last()  # each user's final step of the run
            metrics[name] = {
                "session_len": float(length.mean()),
                "len_first": float(length[index == 0].mean()),
                "len_later": float(length[index >= self.later_from - 1].mean())
                if (index >= self.later_from - 1).any() else math.nan,
                "return_rate": return_rate(traj, env.sim_spec.dynamics.satisfaction.return_weight),
                "final_satisfaction": float(last["latent_satisfaction"].mean()) if lat else math.nan,
                "final_fatigue": float(last["latent_fatigue"].mean()) if lat else math.nan}
            reached = np.bincount(index)  # [i]: users with at least i + 1 sessions
            few = np.flatnonzero(reached < self.curve_share * reached[0])
            curve[name] = [float(length[index == i].mean()) for i in range(int(few[0]) if few.size else reached.size)]
            env.close()
        return metrics, {"session length": curve}
