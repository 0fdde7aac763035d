"""EASE (Steck, 2019): a closed-form linear item-item autoencoder, ``B = -P / diag(P)``, ``P = (X^T X + l I)^-1``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from gymnasium import spaces

from simrec.errors import ConfigError
from simrec.recommenders.fitted import FittedRecommender, Interactions

#: EASE holds a dense items x items matrix; beyond this many items use item-kNN.
MAX_ITEMS = 20_000


class EASERecommender(FittedRecommender):
    """Score of item ``j`` = sum over the user's history ``i`` of ``B[i, j]`` (zero diagonal)."""

    name = "ease"

    def __init__(self, action_space: spaces.Space, *, seed: int | None = None, l2: float = 500.0, **kw) -> None:
        super().__init__(action_space, seed=seed, **kw)
        self.l2 = l2

    def _fit(self, data: Interactions) -> None:
        if data.n_items > MAX_ITEMS:
            raise ConfigError(f"EASE needs a dense {data.n_items:,} x {data.n_items:,} matrix; above {MAX_ITEMS:,} "
                              "items use 'itemknn' or 'als'")
        x = data.matrix(binary=True)
        g = (x.T @ x).toarray().astype(np.float64)
        g[np.diag_indices_from(g)] += self.l2
        p = np.linalg.inv(g)
        b = -p / np.diag(p)[None, :]
        b[np.diag_indices_from(b)] = 0.0
        self.B = b.astype(np.float32)

    def score_items(self, user: int, history: Sequence[int], items: np.ndarray) -> np.ndarray:
        h = np.unique(np.asarray(history, dtype=np.int64))
        if h.size == 0:
            return self._pop[items].astype(np.float64)
        return self.B[np.ix_(h, items)].sum(axis=0, dtype=np.float64)
