"""Matrix factorisation on implicit feedback: weighted ALS (Hu et al., 2008) and BPR (Rendle et al., 2009),
both from the ``implicit`` library. Scores are ``<user factors, item factors>``; a user unseen at fit time
is folded in from their session clicks by one regularised least-squares solve."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from simrec.recommenders.fitted import FittedRecommender, Interactions


class _FactorModel(FittedRecommender):
    def __init__(self, action_space: spaces.Space, *, seed: int | None = None, factors: int = 64,
                 iterations: int = 20, regularization: float = 0.05, **kw: Any) -> None:
        super().__init__(action_space, seed=seed, **kw)
        self.factors = factors
        self.iterations = iterations
        self.regularization = regularization
        self._seed = 0 if seed is None else int(seed)

    def _model(self) -> Any:
        raise NotImplementedError

    def _fit(self, data: Interactions) -> None:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, "blas"):  # implicit's own threads do the work; BLAS threads would fight them
            model = self._model()
            model.fit(data.matrix(), show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)

    def score_items(self, user: int, history: Sequence[int], items: np.ndarray) -> np.ndarray:
        if user >= 0:
            u = self.user_factors[user]
        else:  # fold in: least squares on the clicked items' factors
            y = self.item_factors[np.asarray(history, dtype=np.int64)]
            u = np.linalg.solve(y.T @ y + self.regularization * len(history) * np.eye(y.shape[1]), y.sum(axis=0))
        return self.item_factors[items] @ u


class ALSRecommender(_FactorModel):
    """Weighted ALS: confidence ``1 + alpha * weight`` on observed cells, zero preference elsewhere."""

    name = "als"

    def __init__(self, action_space: spaces.Space, *, seed: int | None = None, alpha: float = 10.0, **kw: Any) -> None:
        super().__init__(action_space, seed=seed, **kw)
        self.alpha = alpha

    def _model(self) -> Any:
        from implicit.als import AlternatingLeastSquares

        return AlternatingLeastSquares(factors=self.factors, regularization=self.regularization, alpha=self.alpha,
                                       iterations=self.iterations, random_state=self._seed, num_threads=0)


class BPRRecommender(_FactorModel):
    """Bayesian personalised ranking: SGD on (user, observed item, sampled item) triples."""

    name = "bpr"

    def __init__(self, action_space: spaces.Space, *, seed: int | None = None, learning_rate: float = 0.01,
                 iterations: int = 100, regularization: float = 0.01, **kw: Any) -> None:
        super().__init__(action_space, seed=seed, iterations=iterations, regularization=regularization, **kw)
        self.learning_rate = learning_rate

    def _model(self) -> Any:
        from implicit.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(factors=self.factors, learning_rate=self.learning_rate,
                                           regularization=self.regularization, iterations=self.iterations,
                                           random_state=self._seed, num_threads=1)  # Hogwild threads: unseeded
