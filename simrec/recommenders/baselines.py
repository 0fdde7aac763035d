"""Non-learning baselines: random, most popular, content-based greedy."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from simrec.recommenders.base import Recommender, history_profile


class RandomRecommender(Recommender):
    """A uniformly random slate of distinct candidates."""

    name = "random"

    def act(self, obs: dict[str, np.ndarray], info: dict[str, Any] | None = None) -> np.ndarray | int:
        return self._format(self.rng.choice(self.num_candidates, size=self.slate_size, replace=False))


class PopularRecommender(Recommender):
    """The most popular candidates (by the observation's popularity column), most popular on top."""

    name = "popular"

    def scores(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        return np.asarray(obs["candidates"])[:, -1]


class GreedyContentRecommender(Recommender):
    """Content-based: cosine similarity of each candidate to the user's recently clicked items.

    With no click in the history yet it falls back to popularity; ``popularity_weight`` adds a
    little popularity to break near-ties between similar items.
    """

    name = "greedy"

    def __init__(self, action_space: spaces.Space, *, seed: int | None = None, popularity_weight: float = 0.1) -> None:
        super().__init__(action_space, seed=seed)
        self.popularity_weight = popularity_weight

    def scores(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        c = np.asarray(obs["candidates"], dtype=np.float64)
        f, pop = c[:, :-1], c[:, -1]
        p = history_profile(obs)
        if p is None:
            return pop
        cos = f @ p / np.maximum(np.linalg.norm(f, axis=1) * np.linalg.norm(p), 1e-8)
        return cos + self.popularity_weight * pop
