"""Preference shift: how fast does a recommender adapt when a share of its users suddenly change taste?"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from simrec.evaluation.compare import build_recommender, make_env, record_run
from simrec.stress.base import StressTest
from simrec.users.dynamics import DriftConfig, concept_shift


def user_pool_schedule(env: Any, seed: int, pool: int, episodes: int) -> list[str]:
    """``episodes`` sessions by a fixed pool of ``pool`` users (drawn by activity), each user returning many
    times, so what a recommender learns about a user is tested again after the user changes."""
    sim = env.unwrapped.sim
    w = sim.pop.session_rate
    rng = np.random.default_rng([seed, 13])
    members = rng.choice(sim.pop.n_users, size=min(pool, sim.pop.n_users), replace=False, p=w / w.sum())
    order = rng.choice(members, size=episodes, p=w[members] / w[members].sum())
    return [sim.pop.user_id(int(u)) for u in order]


def recovery_steps(ctr: np.ndarray, shift_at: int, level: float, window: int) -> float:
    """Steps after ``shift_at`` until a ``window``-step mean of ``ctr`` starting there is back at ``level``
    (0: the first post-shift window already is; ``inf``: never, within the run)."""
    post = ctr[shift_at:]
    if post.size < window:
        return float("inf")
    roll = np.convolve(post, np.ones(window) / window, mode="valid")
    hit = np.flatnonzero(roll >= level)
    return float(hit[0]) if hit.size else float("inf")


class PreferenceShift(StressTest):
    name: ClassVar[str] = "preference_shift"
    question: ClassVar[str] = "How fast does a recommender adapt when a share of its users suddenly change taste?"
    protocol: ClassVar[str] = (
        "A pool of 40 users (by activity) returns for `episodes` sessions in a fixed order, the same for every "
        "recommender. Halfway through, 50% of the pool shift (anchor moved to a random topic direction, taste "
        "halfway there; the same users and topics for every recommender). CTR is tracked per step of the "
        "shifted users.")
    metric: ClassVar[str] = (
        "pre_ctr and post_ctr of the shifted users (the 200 steps before the shift, all steps after), "
        "drop = 1 - (CTR over the first 200 post-shift steps) / pre_ctr, recovery_steps = steps after the "
        "shift until a 100-step window of the shifted users' CTR is back at 90% of pre_ctr (0: it never fell "
        "below; inf: not within the run)")
    default_recommenders: ClassVar[tuple[str, ...]] = ("random", "popular", "greedy", "egreedy", "linucb", "ease",
                                                       "itemknn")
    default_episodes: ClassVar[int] = 240
    higher_is_better: ClassVar[dict[str, bool]] = {"pre_ctr": True, "post_ctr": True, "drop": False,
                                                   "recovery_steps": False}
    pool: ClassVar[int] = 40
    share: ClassVar[float] = 0.5
    magnitude: ClassVar[float] = 1.0
    window: ClassVar[int] = 100
    pre_window: ClassVar[int] = 200

    def curve_axes(self) -> dict[str, tuple[str, str]]:
        return {"shifted users' CTR": (f"step of the shifted users (the shift is at {self.pre_window})",
                                       "CTR, 50-step moving mean")}

    def run_seed(self, seed: int, recommenders: Sequence[str]) -> tuple[dict[str, dict[str, float]],
                                                                        dict[str, dict[str, list[float]]]]:
        cfg = self.config
        env = make_env(cfg.env, cfg.overrides)
        users = user_pool_schedule(env, seed, self.pool, self.episodes)
        pool = sorted(set(users))
        rng = np.random.default_rng([seed, 17])
        shifted = set(rng.choice(pool, size=int(round(self.share * len(pool))), replace=False).tolist())
        half = self.episodes // 2
        fit = self.fit_data(seed, recommenders)
        metrics: dict[str, dict[str, float]] = {}
        curve: dict[str, list[float]] = {}
        for name in recommenders:
            env = make_env(cfg.env, cfg.overrides)
            rec = build_recommender(name, env, seed, fit, llm_config=cfg.llm)
            per_step: list[tuple[int, float]] = []  # (episode, ctr of a shifted user's step)
            state = {"ep": -1}

            def on_step(info: dict[str, Any]) -> None:
                if info["t"] == 1:
                    state["ep"] += 1
                    if state["ep"] == half:  # the event: same users, same new directions for every recommender
                        pop = env.sim.pop
                        idx = np.array([pop.index_of(u) for u in sorted(shifted)])
                        concept_shift(pop.state, idx, DriftConfig(shift_rate=1.0, shift_magnitude=self.magnitude),
                                      np.random.default_rng([seed, 19]), pop.directions)
                if info["user_id"] in shifted:
                    per_step.append((state["ep"], float(np.mean(info["clicked"]))))

            record_run(env, rec, seed, users, name=name, on_step=on_step, metadata={"stress": self.name})
            eps = np.array([e for e, _ in per_step])
            ctr = np.array([c for _, c in per_step])
            at = int(np.searchsorted(eps, half))
            pre = float(ctr[max(0, at - self.pre_window):at].mean()) if at else float("nan")
            early = float(ctr[at:at + self.pre_window].mean()) if at < ctr.size else float("nan")
            metrics[name] = {"pre_ctr": pre, "post_ctr": float(ctr[at:].mean()) if at < ctr.size else float("nan"),
                             "drop": 1.0 - early / pre if pre > 0 else float("nan"),
                             "recovery_steps": recovery_steps(ctr, at, 0.9 * pre, self.window)}
            roll = np.convolve(ctr, np.ones(50) / 50, mode="valid") if ctr.size >= 50 else ctr
            curve[name] = roll[max(0, at - self.pre_window):].tolist()
            env.close()
        return metrics, {"shifted users' CTR": curve}

