"""Contextual bandits with one shared ridge model: epsilon-greedy and LinUCB."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces

from simrec.recommenders.base import Recommender, history_profile, item_feedback


def bandit_features(obs: dict[str, np.ndarray]) -> np.ndarray:
    """Per-candidate context ``(num_candidates, 2d + 4)`` for the linear bandits.

    Item features ``f`` and popularity, crossed with the user's history profile ``p`` (mean clicked
    features): ``[f * p (d), f (d), cos(f, p), popularity, popularity * has_profile, 1]``. The
    element-wise product lets one shared linear model personalise (its sum is ``<f, p>``).
    """
    c = np.asarray(obs["candidates"], dtype=np.float64)
    f, pop = c[:, :-1], c[:, -1:]
    n, d = f.shape
    p = history_profile(obs)
    has = 0.0 if p is None else 1.0
    if p is None:
        p = np.zeros(d)
    fn = np.linalg.norm(f, axis=1, keepdims=True)
    cos = (f @ p)[:, None] / np.maximum(fn * max(np.linalg.norm(p), 1e-8), 1e-8)
    return np.concatenate([f * p, f, cos, pop, pop * has, np.ones((n, 1))], axis=1)


class _LinearBandit(Recommender):
    """A ridge-regression model of per-item click probability shared across items and users.

    Each shown item is one observation: context ``x`` (see :func:`bandit_features`), label = clicked.
    ``A = lambda I + sum x x^T``, ``b = sum r x``; the inverse is kept with Sherman-Morrison updates.
    """

    def __init__(self, action_space: spaces.Space, *, seed: int | None = None, ridge: float = 1.0,
                 features: Callable[[dict[str, np.ndarray]], np.ndarray] = bandit_features) -> None:
        super().__init__(action_space, seed=seed)
        self.ridge = ridge
        self.features = features
        self._dim: int | None = None
        self._x: np.ndarray | None = None  # features of the last observation acted on
        self._x_src: np.ndarray | None = None  # its candidates array (held, so identity is safe)

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self._dim = None
        self._x = None
        self._x_src = None

    def _init(self, dim: int) -> None:
        self._dim = dim
        self.A_inv = np.eye(dim) / self.ridge
        self.b = np.zeros(dim)
        self.theta = np.zeros(dim)
        self.n_updates = 0

    def _context(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        src = obs["candidates"]
        if self._x is None or self._x_src is not src:
            self._x, self._x_src = self.features(obs), src
        if self._dim is None:
            self._init(self._x.shape[1])
        return self._x

    def update(self, obs: dict[str, np.ndarray], action: Any, reward: float, next_obs: dict[str, np.ndarray],
               info: dict[str, Any]) -> None:
        x = self._context(obs)[self.positions(action)]
        labels = item_feedback(action, reward, next_obs, info, obs)
        for xi, r in zip(x, labels):
            Ax = self.A_inv @ xi
            self.A_inv -= np.outer(Ax, Ax) / (1.0 + xi @ Ax)
            self.b += r * xi
        self.theta = self.A_inv @ self.b
        self.n_updates += 1


class EpsilonGreedyRecommender(_LinearBandit):
    """Rank by the ridge model's predicted click probability; with probability ``epsilon`` each
    slate position is filled by a random candidate instead (decaying as ``epsilon / sqrt(1 + n/decay)``)."""

    name = "egreedy"

    def __init__(self, action_space: spaces.Space, *, seed: int | None = None, epsilon: float = 0.1,
                 decay: float | None = None, ridge: float = 1.0, **kw: Any) -> None:
        super().__init__(action_space, seed=seed, ridge=ridge, **kw)
        self.epsilon = epsilon
        self.decay = decay

    def act(self, obs: dict[str, np.ndarray], info: dict[str, Any] | None = None) -> np.ndarray | int:
        x = self._context(obs)
        s = x @ self.theta + 1e-9 * self.rng.random(x.shape[0])
        slate = self._top_k(s)
        eps = self.epsilon if not self.decay else self.epsilon / np.sqrt(1.0 + self.n_updates / self.decay)
        explore = self.rng.random(slate.size) < eps
        if explore.any():
            rest = np.setdiff1d(np.arange(self.num_candidates), slate[~explore])
            slate[explore] = self.rng.choice(rest, size=int(explore.sum()), replace=False)
        return self._format(slate)

    def scores(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        return self._context(obs) @ self.theta


class LinUCBRecommender(_LinearBandit):
    """LinUCB (Li et al., 2010) with one linear model shared by all items: rank candidates by
    ``theta . x + alpha * sqrt(x^T A^-1 x)``."""

    name = "linucb"

    def __init__(self, action_space: spaces.Space, *, seed: int | None = None, alpha: float = 0.5,
                 ridge: float = 1.0, **kw: Any) -> None:
        super().__init__(action_space, seed=seed, ridge=ridge, **kw)
        self.alpha = alpha

    def scores(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        x = self._context(obs)
        width = np.sqrt(np.maximum(((x @ self.A_inv) * x).sum(axis=1), 0.0))
        return x @ self.theta + self.alpha * width
