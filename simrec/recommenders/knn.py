"""Item-kNN: cosine similarity between items' user vectors, top-``k`` neighbours per item (``implicit``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from gymnasium import spaces

from simrec.recommenders.fitted import FittedRecommender, Interactions


class ItemKNNRecommender(FittedRecommender):
    """Score of item ``j`` = sum over the user's history ``i`` of ``cos(i, j)``, keeping each item's
    ``neighbours`` most similar items (``implicit.nearest_neighbours.CosineRecommender``)."""

    name = "itemknn"

    def __init__(self, action_space: spaces.Space, *, seed: int | None = None, neighbours: int = 100,
                 history: int = 50, **kw) -> None:
        super().__init__(action_space, seed=seed, **kw)
        self.neighbours = neighbours
        self.history = history

    def _fit(self, data: Interactions) -> None:
        import warnings

        from implicit.nearest_neighbours import CosineRecommender
        from implicit.utils import ParameterWarning

        model = CosineRecommender(K=self.neighbours, num_threads=1)
        with warnings.catch_warnings():  # implicit warns about its own internal CSR conversion
            warnings.simplefilter("ignore", ParameterWarning)
            model.fit(data.matrix(binary=True), show_progress=False)
        self.similarity = model.similarity.tocsr().astype(np.float32)

    def score_items(self, user: int, history: Sequence[int], items: np.ndarray) -> np.ndarray:
        h = np.unique(np.asarray(history[-self.history:], dtype=np.int64))
        if h.size == 0:
            return self._pop[items].astype(np.float64)
        rows = self.similarity[h]
        return np.asarray(rows[:, items].sum(axis=0)).ravel() + 1e-6 * self._pop[items]
