"""Control recommenders that bracket every comparison: a deliberately bad one and a cheating oracle.

* ``bad``: the *lowest*-scored candidates of a fitted model (EASE by default). A simulator whose users
  cannot tell it from a good model is not measuring recommendation quality.
* ``oracle``: **a cheat, for upper bounds only.** It reads the simulated user's hidden state through
  the env (taste, boredom, the embedded choice model's utilities) and shows the candidates with the
  highest utility, best on top. No real recommender can do this; it bounds what the users reward.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from simrec.errors import ConfigError
from simrec.recommenders.base import Recommender
from simrec.recommenders.fitted import FittedRecommender, Interactions


class WorstOfRecommender(FittedRecommender):
    """The bottom of a fitted model's ranking: ``-score`` of ``base`` (items the user saw stay excluded)."""

    name = "bad"

    #: ``make_recommender`` builds the recommender named by ``base=`` (default below) and passes it in.
    wraps = "ease"

    def __init__(self, action_space: spaces.Space, *, seed: int | None = None, base: FittedRecommender) -> None:
        super().__init__(action_space, seed=seed)
        if not isinstance(base, FittedRecommender):
            raise ConfigError(f"'bad' inverts a fitted recommender, got {type(base).__name__}")
        self.base = base

    def _fit(self, data: Interactions) -> None:
        self.base.fit(data)

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self.base.reset(seed)

    def score_items(self, user: int, history: Any, items: np.ndarray) -> np.ndarray:
        return -np.asarray(self.base.score_items(user, history, items), dtype=np.float64)

    def rank_scores(self, user_id: Any, items: np.ndarray) -> np.ndarray:
        s = -self.base.rank_scores(user_id, items)
        u = self.user_index(user_id)
        if self.exclude_seen and u >= 0 and self._seen[u]:  # the base pushed seen items down; keep them out
            seen = np.fromiter((int(i) in self._seen[u] for i in items), dtype=bool, count=items.size)
            s = np.where(seen, -2 * self.seen_penalty, s)
        return s

    def update(self, obs: Any, action: Any, reward: float, next_obs: Any, info: dict[str, Any]) -> None:
        super().update(obs, action, reward, next_obs, info)
        self.base.update(obs, action, reward, next_obs, info)


class OracleRecommender(Recommender):
    """Ranks candidates by the embedded choice model's utility for the user's *hidden* state (a cheat).

    Needs the env (``env=``): it reads ``env.unwrapped.sim``'s population. Under LLM users it still ranks
    by the embedded model's utility, which the LLM's prompt state is rendered from.
    """

    name = "oracle"
    needs_env = True
    cheat = True

    def __init__(self, action_space: spaces.Space, *, seed: int | None = None, env: Any = None) -> None:
        super().__init__(action_space, seed=seed)
        if env is None or not hasattr(env.unwrapped, "sim"):
            raise ConfigError("the oracle reads the simulated users' hidden state. Fix: "
                              "make_recommender('oracle', env.action_space, env=env) with a simrec SlateEnv")
        from simrec.cognition.embedded import EmbeddedCognition

        base = env.unwrapped
        self.env = base
        self.model = EmbeddedCognition(base.sim_spec.choice)

    def scores(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        items = np.asarray(info["candidate_items"], dtype=np.int64)
        return self.model.utilities_one(self.env.sim.pop, self.env.user_index, items).astype(np.float64)
