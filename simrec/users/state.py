"""Explicit numeric user state: the simulator's source of truth.

State is kept for a whole population at once (struct of arrays) so that a batch of users can be
updated by one vectorised call. It persists across sessions of the same user within an env.
Nothing here is ever put into an observation; it reaches an LLM only as plain language
(``simrec.llm.prompting``) and the logs only as ``snapshot``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simrec.catalog import Catalog
from simrec.users.persona import Persona


#: numpy's clip ufunc: what ``np.clip`` calls, without its Python wrapper (hot paths on small batches)
clip_ufunc = (np._core if hasattr(np, "_core") else np.core).umath.clip


def rows(a: np.ndarray, users: np.ndarray | slice) -> np.ndarray:
    """``a[users]``: a view for a slice, ``a.take`` for an index array (the method: several times faster than
    fancy indexing for row gathers, and than ``np.take``, which wraps it)."""
    return a[users] if isinstance(users, slice) else a.take(users, axis=0)


def topic_directions(catalog: Catalog) -> np.ndarray:
    """Mean feature vector of each topic's items, unit norm: ``(n_topics, dim)``."""
    w = catalog.topic_weights
    c = w.T @ catalog.features
    n = np.linalg.norm(c, axis=1, keepdims=True)
    return (c / np.maximum(n, 1e-8)).astype(np.float32)


def initial_taste(persona: Persona, catalog: Catalog, directions: np.ndarray, rng: np.random.Generator,
                  noise: float = 0.3) -> np.ndarray:
    """A persona's starting taste: its calibrated vector, or its interests mixed over topic directions."""
    if persona.taste is not None:
        v = np.asarray(persona.taste, dtype=np.float32)
        if v.shape != (catalog.dim,):
            raise ValueError(
                f"persona '{persona.id}': taste has {v.size} values but the catalog's features have {catalog.dim}"
            )
    else:
        v = np.zeros(catalog.dim, dtype=np.float32)
        for topic, w in persona.interests.items():
            try:
                v += w * directions[catalog.topic_names.index(topic)]
            except ValueError:
                raise ValueError(
                    f"persona '{persona.id}': interest '{topic}' is not a topic of catalog '{catalog.name}'"
                ) from None
        v = v + noise * rng.normal(size=catalog.dim).astype(np.float32) / np.sqrt(catalog.dim)
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-8 else v


@dataclass
class UserState:
    """Latent state of ``n_users`` users.

    * ``taste``: ``(n, dim)`` current preference direction (unit norm).
    * ``anchor``: ``(n, dim)`` long-term preference that drift reverts to; moved by assimilation and shifts.
    * ``boredom``: ``(n, n_topics)`` satiation per topic, >= 0.
    * ``fatigue``: ``(n,)`` in-session tiredness in [0, 1].
    * ``satisfaction``: ``(n,)`` long-term satisfaction in [-1, 1].
    * ``clock``: ``(n,)`` the user's own time in steps (sessions add gaps).
    * ``steps_total``, ``sessions``: counters.
    * ``recent``: ``(n, k)`` int32 the last ``k`` items each user clicked, newest last, -1 when empty (``k`` is 0
      in worlds without order-aware short-term interest, :mod:`simrec.users.transitions`).
    """

    taste: np.ndarray
    anchor: np.ndarray
    boredom: np.ndarray
    fatigue: np.ndarray
    satisfaction: np.ndarray
    clock: np.ndarray
    steps_total: np.ndarray
    sessions: np.ndarray
    recent: np.ndarray

    @classmethod
    def initial(cls, tastes: np.ndarray, n_topics: int, recent: np.ndarray | None = None) -> "UserState":
        n = tastes.shape[0]
        tastes = np.asarray(tastes, dtype=np.float32)
        return cls(
            taste=tastes.copy(),
            anchor=tastes.copy(),
            boredom=np.zeros((n, n_topics), dtype=np.float32),
            fatigue=np.zeros(n, dtype=np.float32),
            satisfaction=np.zeros(n, dtype=np.float32),
            clock=np.zeros(n, dtype=np.float64),
            steps_total=np.zeros(n, dtype=np.int64),
            sessions=np.zeros(n, dtype=np.int64),
            recent=np.zeros((n, 0), np.int32) if recent is None else np.array(recent, dtype=np.int32),
        )

    def __len__(self) -> int:
        return self.taste.shape[0]

    def snapshot(self, u: int) -> dict[str, object]:
        """A copy of one user's latent state, for logs only."""
        return {
            "taste": self.taste[u].tolist(),
            "boredom": self.boredom[u].tolist(),
            # .item gives a Python float (float arrays) or int (integer arrays), without a numpy scalar first
            "fatigue": self.fatigue.item(u),
            "satisfaction": self.satisfaction.item(u),
            "clock": self.clock.item(u),
            "steps_total": self.steps_total.item(u),
            "sessions": self.sessions.item(u),
        }

    def copy(self) -> "UserState":
        return UserState(**{k: v.copy() for k, v in self.__dict__.items()})
