"""Recommenders fitted on logged interactions, and the training data they fit on.

:class:`Interactions` is implicit feedback (who interacted with which item, how strongly, in what order),
built from a real log's train split (:meth:`Interactions.from_log`, :meth:`Interactions.from_world`) or
from simrec's own trajectory logs (:meth:`Interactions.from_trajectories`: every click is an interaction).
A :class:`FittedRecommender` learns from it with :meth:`~FittedRecommender.fit` and then ranks an env's
candidates for the user in session, read from ``info["user_id"]`` and ``info["candidate_items"]`` (catalog
indices): the same decision an offline metric scores. Users unseen at fit time get the fit's item
popularity. During an episode the user's clicks are appended to their history (:meth:`update`), so
history-based models (item-kNN, EASE, sequential) react within the session; factors are not refitted.
Items the user interacted with are never recommended again, nor are items already shown in the current
session (an ignored impression is not repeated).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from gymnasium import spaces

from simrec.errors import ConfigError
from simrec.recommenders.base import Recommender

if TYPE_CHECKING:
    import scipy.sparse

    from simrec.data.log import InteractionLog
    from simrec.trajectory.reader import Trajectories


@dataclass
class Interactions:
    """Implicit feedback for fitting: row ``r`` says user ``user[r]`` interacted with item ``item[r]``.

    ``user`` indexes ``user_ids`` (the ids the env reports in ``info["user_id"]``); ``item`` is a catalog
    index in ``[0, n_items)``; ``weight`` is the interaction's confidence (1 for a click or a watch);
    ``timestamp`` orders each user's history; ``rating`` is the explicit rating where the log has one.
    """

    user: np.ndarray
    item: np.ndarray
    weight: np.ndarray
    timestamp: np.ndarray
    user_ids: list[str]
    n_items: int
    rating: np.ndarray | None = None
    name: str = "interactions"

    def __post_init__(self) -> None:
        self.user = np.asarray(self.user, dtype=np.int64)
        self.item = np.asarray(self.item, dtype=np.int64)
        self.weight = np.asarray(self.weight, dtype=np.float32)
        self.timestamp = np.asarray(self.timestamp, dtype=np.int64)
        n = self.user.shape[0]
        if not (self.item.shape == self.weight.shape == self.timestamp.shape == (n,)):
            raise ValueError("Interactions: user, item, weight and timestamp must be 1-d arrays of one length")
        if n and (self.item.min() < 0 or self.item.max() >= self.n_items):
            raise ValueError(f"Interactions: item indices must lie in [0, {self.n_items})")
        if n and (self.user.min() < 0 or self.user.max() >= len(self.user_ids)):
            raise ValueError(f"Interactions: user indices must lie in [0, {len(self.user_ids)})")

    def __len__(self) -> int:
        return int(self.user.shape[0])

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    # -- constructors ------------------------------------------------------------------------------
    @classmethod
    def from_log(cls, log: InteractionLog, user_ids: Sequence[str] | None = None, *,
                 min_rating: float | None = None) -> Interactions:
        """From an :class:`~simrec.data.log.InteractionLog` (e.g. a train split). ``user_ids`` names the
        log's users as the env will (default: the log's raw ids); ``min_rating`` keeps only ratings at
        or above it (the log's weights are the confidence otherwise)."""
        keep = np.ones(len(log), dtype=bool)
        if min_rating is not None and log.has_ratings:
            keep = np.nan_to_num(log.rating, nan=np.inf) >= min_rating
        ids = list(user_ids) if user_ids is not None else list(log.users.ids)
        if len(ids) != log.n_users:
            raise ValueError(f"user_ids names {len(ids)} users, the log has {log.n_users}")
        return cls(log.user[keep], log.item[keep], log.weight[keep], log.timestamp[keep], ids, log.n_items,
                   rating=log.rating[keep], name=log.name)

    @classmethod
    def from_world(cls, world: Any, **kw: Any) -> Interactions:
        """The train split a calibrated world (``simrec/MovieLens-v0``) was calibrated on, with users named
        by their persona ids, which is what the env reports in ``info["user_id"]``."""
        split = getattr(world, "split", None)
        if split is None:
            raise ConfigError("this world was not calibrated from a log (no train split). Fix: fit on a "
                              "trajectory log instead, Interactions.from_trajectories(read_trajectories(DIR))")
        from simrec.data.calibration import persona_id

        return cls.from_log(split.train, [persona_id(r) for r in split.train.users.ids], **kw)

    @classmethod
    def from_trajectories(cls, traj: Trajectories, n_items: int | None = None) -> Interactions:
        """Every clicked item of a trajectory log, weighted by consumption (1 where none was logged).

        ``n_items`` is the catalog size (``len(env.unwrapped.catalog)``); read from the log's spec for the
        synthetic world, else the largest item seen plus one."""
        steps = traj.steps
        if steps.empty:
            raise ConfigError(f"{traj.path or 'trajectory log'} has no steps to fit on")
        if n_items is None and traj.manifest.get("spec") and traj.spec.world.kind == "synthetic":
            n_items = int(traj.spec.world.n_items)
        users, user_col = np.unique(steps["user"].astype(str).to_numpy(), return_inverse=True)
        rows_u, rows_i, rows_w, rows_t = [], [], [], []
        t_global = steps["episode"].to_numpy() * 100_000 + steps["t"].to_numpy()
        for r, (slate, clicked, cons) in enumerate(zip(steps["slate"], steps["clicked"], steps["consumption"])):
            c = np.asarray(clicked, dtype=bool)
            if c.any():
                s = np.asarray(slate, dtype=np.int64)[c]
                w = np.ones(s.size) if cons is None else np.nan_to_num(np.asarray(cons, np.float32)[c], nan=1.0)
                rows_u.append(np.full(s.size, user_col[r]))
                rows_i.append(s)
                rows_w.append(np.maximum(w, 0.05))
                rows_t.append(np.full(s.size, t_global[r]))
        cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
        item = cat(rows_i, np.int64)
        if n_items is None:
            n_items = int(item.max()) + 1 if item.size else 1
        return cls(cat(rows_u, np.int64), item, cat(rows_w, np.float32), cat(rows_t, np.int64), list(users),
                   int(n_items), name=str(traj.path or "trajectories"))

    # -- views ---------------------------------------------------------------------------------------
    def matrix(self, binary: bool = False) -> scipy.sparse.csr_matrix:
        """Users x items CSR of summed weights (or 1 where any interaction, with ``binary``)."""
        import scipy.sparse as sp

        w = np.ones(len(self), np.float32) if binary else self.weight
        m = sp.csr_matrix((w, (self.user, self.item)), shape=(self.n_users, self.n_items), dtype=np.float32)
        m.sum_duplicates()
        if binary:
            m.data[:] = 1.0
        return m

    def sequences(self) -> list[np.ndarray]:
        """Each user's items in time order (ties in row order)."""
        order = np.lexsort((np.arange(len(self)), self.timestamp, self.user))
        counts = np.bincount(self.user, minlength=self.n_users)
        return np.split(self.item[order], np.cumsum(counts)[:-1])

    def popularity(self) -> np.ndarray:
        """Distinct users per item, as a share of users (``(n_items,)`` in [0, 1])."""
        m = self.matrix(binary=True)
        return np.asarray(m.sum(axis=0)).ravel() / max(self.n_users, 1)


class FittedRecommender(Recommender):
    """Base class of recommenders fitted on :class:`Interactions`.

    Subclasses implement :meth:`_fit` and :meth:`score_items`; this class maps ``info["user_id"]`` to the
    fitted user, gathers ``info["candidate_items"]``, keeps each user's history (fit data plus clicks
    seen since) and scores unseen users by popularity.
    """

    #: Scores of items the user already interacted with are lowered by this much (never re-recommend).
    seen_penalty = 1e6

    def __init__(self, action_space: spaces.Space, *, seed: int | None = None, exclude_seen: bool = True,
                 exclude_shown: bool = True) -> None:
        super().__init__(action_space, seed=seed)
        self.exclude_seen = exclude_seen
        self.exclude_shown = exclude_shown
        self._shown: dict[str, set[int]] = {}  # items shown in the user's current session
        self.fitted = False
        self._uid: dict[str, int] = {}
        self._fit_history: list[list[int]] = []
        self._history: list[list[int]] = []
        self._seen: list[set[int]] = []
        self._cold: dict[str, list[int]] = {}
        self._pop = np.zeros(0)
        self.n_items = 0

    # -- fitting -----------------------------------------------------------------------------------
    def fit(self, data: Interactions) -> FittedRecommender:
        """Learn from ``data``; returns ``self``."""
        if len(data) == 0:
            raise ConfigError(f"{type(self).__name__}.fit: {data.name} holds no interactions")
        self.n_items = data.n_items
        self._uid = {u: i for i, u in enumerate(data.user_ids)}
        self._fit_history = [list(map(int, s)) for s in data.sequences()]
        self._pop = data.popularity()
        self._fit(data)
        self.fitted = True
        self._forget_sessions()
        return self

    def _forget_sessions(self) -> None:
        self._history = [list(h) for h in self._fit_history]
        self._seen = [set(h) for h in self._fit_history]
        self._cold = {}
        self._shown = {}

    def _fit(self, data: Interactions) -> None:
        raise NotImplementedError

    def reset(self, seed: int | None = None) -> None:
        """Re-seed and forget clicks seen since the fit; the fitted model is kept (refit with :meth:`fit`)."""
        self.rng = np.random.default_rng(seed)
        if self.fitted:
            self._forget_sessions()

    # -- scoring -----------------------------------------------------------------------------------
    def score_items(self, user: int, history: Sequence[int], items: np.ndarray) -> np.ndarray:
        """Scores of catalog ``items`` for fitted user ``user`` (-1 if unknown) with item ``history``."""
        raise NotImplementedError

    def user_index(self, user_id: Any) -> int:
        """The fitted index of an env user id, or -1 for a user the fit never saw."""
        return self._uid.get(str(user_id), -1)

    def scores(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted. Fix: call .fit(Interactions...) first "
                               "(simrec compare and simrec agreement fit every recommender for you)")
        items = info.get("candidate_items")
        if items is None or "user_id" not in info:
            raise ConfigError(f"{type(self).__name__} needs info['user_id'] and info['candidate_items'] "
                              "(SlateEnv provides both); it cannot rank from the observation alone")
        items = np.asarray(items, dtype=np.int64)
        s = self.rank_scores(info["user_id"], items)
        if self.exclude_shown:  # an impression the user ignored is not shown again in the same session
            if info.get("t", 0) == 0:
                self._shown.pop(str(info["user_id"]), None)
            shown = self._shown.get(str(info["user_id"]))
            if shown:
                repeat = np.fromiter((int(i) in shown for i in items), dtype=bool, count=items.size)
                s = s - self.seen_penalty * repeat
        return s

    def rank_scores(self, user_id: Any, items: np.ndarray) -> np.ndarray:
        """Scores of catalog ``items`` for env user ``user_id``, seen items pushed to the bottom."""
        u = self.user_index(user_id)
        history = self._history[u] if u >= 0 else self._session_history(user_id)
        s = (np.asarray(self.score_items(u, history, items), dtype=np.float64) if u >= 0 or history
             else self._pop[items].astype(np.float64))
        if self.exclude_seen and u >= 0 and self._seen[u]:
            seen = np.fromiter((int(i) in self._seen[u] for i in items), dtype=bool, count=items.size)
            s = s - self.seen_penalty * seen
        return s

    def update(self, obs: dict[str, np.ndarray], action: Any, reward: float, next_obs: dict[str, np.ndarray],
               info: dict[str, Any]) -> None:
        """Append this step's clicked items to the user's history (no refit)."""
        clicked = info.get("clicked")
        shown = info.get("slate_items")
        if clicked is None or shown is None or "user_id" not in info:
            return
        self._shown.setdefault(str(info["user_id"]), set()).update(int(i) for i in np.asarray(shown).ravel())
        picked = [int(i) for i, c in zip(np.asarray(shown).ravel(), np.asarray(clicked).ravel()) if c]
        if not picked:
            return
        u = self.user_index(info["user_id"])
        if u < 0:
            self._cold.setdefault(str(info["user_id"]), []).extend(picked)
            return
        self._history[u].extend(picked)
        self._seen[u].update(picked)

    def _session_history(self, user_id: Any) -> list[int]:
        return self._cold.get(str(user_id), [])

    def top_k(self, user_id: Any, k: int, exclude: Sequence[int] = ()) -> np.ndarray:
        """The ``k`` best catalog items for a user over the whole catalog (seen items excluded), best first:
        what an offline Recall@k / NDCG@k scores."""
        items = np.arange(self.n_items)
        s = self.rank_scores(user_id, items)
        if len(exclude):
            s[np.asarray(exclude, dtype=np.int64)] = -np.inf
        k = min(k, items.size)
        top = np.argpartition(-s, k - 1)[:k]
        return top[np.argsort(-s[top], kind="stable")]


class MostPopularRecommender(FittedRecommender):
    """The items most users of the fit data interacted with, the user's own items excluded."""

    name = "mostpop"

    def _fit(self, data: Interactions) -> None:
        pass  # the base class keeps the fit's popularity

    def score_items(self, user: int, history: Sequence[int], items: np.ndarray) -> np.ndarray:
        return self._pop[items].astype(np.float64)


class RandomUnseenRecommender(FittedRecommender):
    """Uniformly random items among those the user has not interacted with (the random baseline of an
    offline protocol, where seen items are never candidates)."""

    name = "random-unseen"

    def _fit(self, data: Interactions) -> None:
        pass

    def score_items(self, user: int, history: Sequence[int], items: np.ndarray) -> np.ndarray:
        return self.rng.random(items.size)
