"""Counterfactual controls: does simulated behaviour respond to recommendation quality, and only to it?

* :func:`slate_dilution`: a recommender's slates with ``k`` of their ``slate_size`` items replaced by random
  candidates, for ``k = 0 .. slate_size``, served to the same users. Engagement must fall monotonically
  in ``k``: a simulator whose users click random items as often as recommended ones measures nothing.
* :func:`activity_injection`: the same users shown the same fixed slates with their ``activity`` trait set
  low and high. Ratings and satisfaction must not rise with activity: published LLM simulators fail this
  (satisfaction follows the injected trait, not the recommendations).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from simrec.evaluation.compare import build_recommender, fit_interactions, make_env, user_schedule
from simrec.recommenders import Recommender, fitted_names, run_episodes


class DilutedRecommender(Recommender):
    """``base``'s slate with ``k`` positions (chosen at random each step) refilled by random other candidates."""

    name = "diluted"

    def __init__(self, action_space: spaces.Space, base: Recommender, k: int, *, seed: int | None = None) -> None:
        super().__init__(action_space, seed=seed)
        if not 0 <= k <= self.slate_size:
            raise ValueError(f"k must be in [0, {self.slate_size}], got {k}")
        self.base, self.k = base, k

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self.base.reset(seed)

    def act(self, obs: dict[str, np.ndarray], info: dict[str, Any] | None = None) -> np.ndarray | int:
        slate = np.asarray(self.base.act(obs, info), dtype=np.int64).reshape(-1).copy()
        if self.k:
            pos = self.rng.choice(slate.size, size=self.k, replace=False)
            rest = np.setdiff1d(np.arange(self.num_candidates), slate)
            slate[pos] = self.rng.choice(rest, size=self.k, replace=False)
        return self._format(slate)

    def update(self, obs: Any, action: Any, reward: float, next_obs: Any, info: dict[str, Any]) -> None:
        self.base.update(obs, action, reward, next_obs, info)


def _engagement(env: Any, rec: Recommender, users: Sequence[str], seed: int) -> dict[str, float]:
    clicks = shown = rated = 0
    stars = 0.0

    def on_step(info: dict[str, Any]) -> None:
        nonlocal clicks, shown, rated, stars
        c = np.asarray(info["clicked"], dtype=bool)
        r = np.asarray(info["rating"], dtype=np.float64)
        clicks += int(c.sum())
        shown += c.size
        rated += int((r > 0).sum())
        stars += float(r[r > 0].sum())

    rec.reset(seed=seed)
    out = run_episodes(env, rec, len(users), seed=seed, on_step=on_step, reset_options=lambda ep: {"user_id": users[ep]})
    steps = sum(o["length"] for o in out)
    return {"ctr": clicks / max(shown, 1), "clicks_per_step": clicks / max(steps, 1),
            "session_length": steps / max(len(out), 1), "mean_rating": stars / rated if rated else float("nan")}


def slate_dilution(env_id: str, base: str = "ease", *, seeds: Sequence[int] = (0, 1, 2), episodes: int = 100,
                   overrides: dict[str, Any] | None = None, fit_episodes: int = 300) -> dict[str, Any]:
    """Engagement of ``base`` with ``k`` random items per slate, ``k = 0 .. slate_size``, per seed."""
    per_k: dict[int, list[dict[str, float]]] = {}
    for seed in seeds:
        env = make_env(env_id, overrides)
        fit = fit_interactions(env_id, overrides, seed, fit_episodes=fit_episodes) if base in fitted_names() else None
        users = user_schedule(env, seed, episodes)
        for k in range(env.sim_spec.slate_size + 1):
            rec = DilutedRecommender(env.action_space, build_recommender(base, env, seed, fit), k, seed=seed)
            per_k.setdefault(k, []).append(_engagement(env, rec, users, seed))
    return {"base": base, "env": env_id, "seeds": list(seeds), "episodes": episodes,
            "k": {k: {m: [r[m] for r in runs] for m in runs[0]} for k, runs in per_k.items()}}


def activity_injection(env_id: str, *, levels: Sequence[float] = (0.05, 0.95), seeds: Sequence[int] = (0, 1, 2),
                       users: int = 60, steps: int = 10, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Mean rating, CTR and final satisfaction of the same users on the same fixed slates, with every
    persona's ``activity`` trait set to each of ``levels``."""
    out: dict[float, list[dict[str, float]]] = {}
    for seed in seeds:
        for level in levels:
            env = make_env(env_id, {**(overrides or {}), "max_steps": steps})
            pop = env.sim.pop
            pop.traits[:, 0] = level  # activity is trait 0 (simrec.users.persona.Traits order)
            rng = np.random.default_rng([seed, 23])  # the same slates, in the same order, at every level
            schedule = [pop.user_id(int(u)) for u in rng.choice(pop.n_users, size=users, replace=False)]
            slates = rng.integers(0, env.sim_spec.num_candidates, size=(users, steps, env.sim_spec.slate_size))
            clicks = shown = rated = 0
            stars, sat = 0.0, []
            for i, uid in enumerate(schedule):
                env.reset(seed=seed if i == 0 else None, options={"user_id": uid})
                for t in range(steps):
                    a = _distinct(slates[i, t], env.sim_spec.num_candidates)
                    _, _, term, trunc, info = env.step(a)
                    c, r = np.asarray(info["clicked"], bool), np.asarray(info["rating"], float)
                    clicks, shown = clicks + int(c.sum()), shown + c.size
                    rated, stars = rated + int((r > 0).sum()), stars + float(r[r > 0].sum())
                    if term or trunc:
                        break
                sat.append(float(pop.state.satisfaction[pop.index_of(uid)]))
            out.setdefault(float(level), []).append({"mean_rating": stars / rated if rated else float("nan"),
                                                     "ctr": clicks / max(shown, 1),
                                                     "final_satisfaction": float(np.mean(sat))})
            env.close()
    return {"env": env_id, "seeds": list(seeds), "users": users, "steps": steps,
            "levels": {lv: {m: [r[m] for r in runs] for m in runs[0]} for lv, runs in out.items()}}


def _distinct(row: np.ndarray, n: int) -> np.ndarray:
    """``row`` with repeats replaced by the next unused indices (deterministic), a valid slate."""
    seen: list[int] = []
    for x in row.tolist():
        while x in seen:
            x = (x + 1) % n
        seen.append(x)
    return np.asarray(seen, dtype=np.int64)
