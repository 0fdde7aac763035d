"""Bounded episodic memory with retrieval and a running summary, for a whole population at once.

Every step writes one record per user: the slate shown, the item chosen (or none), its rating,
how much was consumed and how it felt. Records live in a fixed-size ring per user; what falls out
of the ring is folded into a running summary (per-topic exposure and ratings), so memory cost is
``O(capacity)`` per user however long the history grows.

Retrieval follows Generative Agents: score = recency + relevance + importance, each in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simrec.catalog import Catalog
from simrec.users.state import rows


@dataclass(frozen=True)
class MemoryRecord:
    """One remembered step, as handed to prompt rendering."""

    t: float
    shown: tuple[int, ...]
    chosen: int  # catalog index, -1 for "chose nothing"
    rating: float | None
    consumption: float
    feeling: float  # [-1, 1]: how the step felt
    importance: float


class MemoryBank:
    """Ring-buffer episodic memory for ``n_users`` users.

    Args:
        n_users: population size.
        capacity: records kept verbatim per user.
        slate_size: items shown per step.
        n_topics: topic vocabulary size of the catalog (for the summary).
        summary_decay: per-record decay of the running summary (older evictions weigh less).
    """

    def __init__(self, n_users: int, capacity: int, slate_size: int, n_topics: int, summary_decay: float = 0.995):
        if capacity < 1:
            raise ValueError("memory capacity must be >= 1")
        self.capacity = capacity
        self.slate_size = slate_size
        self.summary_decay = summary_decay
        self.shown = np.full((n_users, capacity, slate_size), -1, dtype=np.int32)
        self.chosen = np.full((n_users, capacity), -1, dtype=np.int32)
        # Numeric record fields live in one array (one scatter per step); rating, consumption,
        # feeling, importance and t are views of its columns.
        self._rec = np.zeros((n_users, capacity, len(self._REC)), dtype=np.float64)
        self._rec[:, :, 0] = np.nan
        self.count = np.zeros(n_users, dtype=np.int64)  # records ever written
        # Running summary of everything ever consumed (decayed), used for novelty and for prompts:
        # views topic_consumed, topic_rating_sum, topic_rating_n of one (n_users, 3, n_topics) array.
        self._topics = np.zeros((n_users, len(self._TOPICS), n_topics), dtype=np.float32)
        self.n_chosen = np.zeros(n_users, dtype=np.int64)
        self.n_skipped = np.zeros(n_users, dtype=np.int64)
        self._decay32 = np.array(summary_decay, np.float32)  # write_one's factor, cast once
        self._bind_views()

    _REC = ("rating", "consumption", "feeling", "importance", "t")
    _TOPICS = ("topic_consumed", "topic_rating_sum", "topic_rating_n")

    def _bind_views(self) -> None:
        for j, name in enumerate(self._REC):
            setattr(self, name, self._rec[:, :, j])
        for j, name in enumerate(self._TOPICS):
            setattr(self, name, self._topics[:, j])
        # write_one's scratch rows (never outliving a call): the factors (consumption, rating, 1) of a rated record
        # repeated over the topics, with its first two rows as views; the topic weights repeated; their product;
        # the factor of an unrated record
        f = np.ones((3, self._topics.shape[2]), np.float32)
        self._rows3 = (f, f[0], f[1], np.empty_like(f), np.empty_like(f), np.empty(f.shape[1], np.float32))

    # Views must stay views through copy/pickle (numpy copies them as independent arrays).
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in self._REC + self._TOPICS + ("_rows3",)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_decay32", np.array(self.summary_decay, np.float32))  # pickles from before it
        self.__dict__.pop("_f3", None)  # an older scratch column
        self._bind_views()

    def __len__(self) -> int:
        return self.chosen.shape[0]

    def write(
        self,
        users: np.ndarray | slice,
        shown: np.ndarray,
        chosen: np.ndarray,
        rating: np.ndarray,
        consumption: np.ndarray,
        feeling: np.ndarray,
        now: np.ndarray,
        topic_weights: np.ndarray,
    ) -> None:
        """Write one record per user in ``users`` (distinct indices, or a slice).

        ``chosen`` is a catalog index or -1; ``topic_weights`` is ``(B, n_topics)`` of the chosen item
        (zeros when none).
        """
        count = rows(self.count, users)
        slot = count % self.capacity
        # With a slice, [users, slot] is an outer (1, 1) index and values broadcast into it.
        self.shown[users, slot] = shown
        self.chosen[users, slot] = chosen
        rated = ~np.isnan(rating)
        rec = np.empty((chosen.shape[0], len(self._REC)))
        rec[:, 0] = rating
        rec[:, 1] = consumption
        rec[:, 2] = feeling
        rec[:, 3] = np.minimum(0.5 * np.abs(feeling) + 0.5 * np.abs(np.where(rated, rating, 3.0) - 3.0) / 2.0, 1.0)
        rec[:, 4] = now
        self._rec[users, slot] = rec
        self.count[users] = count + 1  # users are distinct
        clicked = chosen >= 0
        self.n_chosen[users] += clicked
        self.n_skipped[users] += ~clicked
        ts = rows(self._topics, users)  # (B, 3, T); a view for a slice
        ts[:, 0] *= self.summary_decay
        ts[:, 0] += topic_weights * consumption[:, None]
        ts[:, 1] += topic_weights * np.where(rated, rating, 0.0)[:, None]
        ts[:, 2] += topic_weights * rated[:, None]
        self._topics[users] = ts

    def write_one(self, u: int, shown: np.ndarray, chosen: int, rating: float, consumption: float, feeling: float,
                  now: float, topic_weights: np.ndarray | None) -> None:
        """:meth:`write` for one user with scalar values (the single env's fast path)."""
        n = self.count.item(u)
        slot = n % self.capacity
        self.shown[u, slot] = shown
        self.chosen[u, slot] = chosen
        rated = rating == rating  # not NaN
        importance = 0.5 * abs(feeling) + 0.5 * (abs(rating - 3.0) / 2.0 if rated else 0.0)
        importance = 1.0 if 1.0 < importance else importance  # min(importance, 1.0) without the builtin call
        rec = self._rec[u, slot]  # scalar stores: cheaper than converting a sequence
        rec[0], rec[1], rec[2], rec[3], rec[4] = rating, consumption, feeling, importance, now
        self.count[u] = n + 1
        ts = self._topics[u]  # rows: topic_consumed, topic_rating_sum, topic_rating_n (views)
        consumed = ts[0]
        multiply, add = np.multiply, np.add  # with a positional ``out``: less argument handling than ``x *= y``
        multiply(consumed, self._decay32, consumed)
        if chosen >= 0:
            self.n_chosen[u] = self.n_chosen.item(u) + 1
            if topic_weights is not None:  # a float32 catalog row
                f, f_consumption, f_rating, weights, product, f_unrated = self._rows3
                if rated:  # all three rows in one same-shape product (same float32 values as row by row)
                    f_consumption.fill(consumption)
                    f_rating.fill(rating)
                    weights[...] = topic_weights
                    add(ts, multiply(f, weights, product), ts)
                else:
                    f_unrated.fill(consumption)
                    add(consumed, multiply(topic_weights, f_unrated, product[0]), consumed)
        else:
            self.n_skipped[u] = self.n_skipped.item(u) + 1

    # -- reads ----------------------------------------------------------------------------------
    def recent_slots(self, users: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
        """Slots of the last ``window`` records, oldest first, and a validity mask: ``(B, window)``."""
        back = np.arange(window, 0, -1)  # window..1 records ago
        idx = self.count[users, None] - back[None, :]
        valid = (idx >= 0) & (back[None, :] <= self.capacity)
        return np.where(valid, idx % self.capacity, 0), valid

    def topic_novelty(self, users: np.ndarray, item_topic_weights: np.ndarray) -> np.ndarray:
        """1 - how much of the user's consumption went to each item's topics: ``(B, K)`` in [0, 1]."""
        tc = self.topic_consumed[users]
        share = tc / np.maximum(tc.sum(axis=1, keepdims=True), 1e-6)
        return 1.0 - np.einsum("bkt,bt->bk", item_topic_weights, share)

    def records(self, u: int) -> list[MemoryRecord]:
        """All records still held verbatim for user ``u``, oldest first."""
        n = int(min(self.count[u], self.capacity))
        start = int(self.count[u]) - n
        out = []
        for j in range(start, start + n):
            s = j % self.capacity
            r = float(self.rating[u, s])
            out.append(MemoryRecord(
                t=float(self.t[u, s]), shown=tuple(int(x) for x in self.shown[u, s] if x >= 0),
                chosen=int(self.chosen[u, s]), rating=None if np.isnan(r) else r,
                consumption=float(self.consumption[u, s]), feeling=float(self.feeling[u, s]),
                importance=float(self.importance[u, s]),
            ))
        return out

    def retrieve(self, u: int, query: np.ndarray, catalog: Catalog, now: float, k: int = 5,
                 recency_half_life: float = 20.0) -> list[MemoryRecord]:
        """The ``k`` records most worth recalling for a slate with feature vectors ``query`` (K, dim).

        Relevance is the best cosine similarity between the remembered item and any slate item.
        Records that chose nothing are scored on the slate they saw.
        """
        recs = self.records(u)
        if not recs:
            return []
        items = np.array([r.chosen if r.chosen >= 0 else (r.shown[0] if r.shown else 0) for r in recs])
        rel = (catalog.features[items] @ query.T).max(axis=1)
        rel = (rel + 1.0) / 2.0
        age = now - np.array([r.t for r in recs])
        rec = 0.5 ** (age / recency_half_life)
        imp = np.array([r.importance for r in recs])
        score = rec + rel + imp
        top = np.argsort(-score, kind="stable")[:k]
        return [recs[i] for i in sorted(top, key=lambda i: -recs[i].t)]  # newest first

    def summary(self, u: int, topic_names: list[str], top: int = 3) -> dict[str, object]:
        """A compact, bounded summary of a user's whole history (for prompts and analysis)."""
        tc = self.topic_consumed[u]
        n = self.topic_rating_n[u]
        mean = np.divide(self.topic_rating_sum[u], n, out=np.full_like(n, np.nan), where=n > 0.5)
        most = [topic_names[i] for i in np.argsort(-tc)[:top] if tc[i] > 0.05]
        rated = [i for i in range(len(topic_names)) if not np.isnan(mean[i])]
        liked = sorted(rated, key=lambda i: -mean[i])[:top]
        disliked = sorted(rated, key=lambda i: mean[i])[:top]
        return {
            "steps": int(self.count[u]),
            "chosen": int(self.n_chosen[u]),
            "skipped": int(self.n_skipped[u]),
            "most_watched_topics": most,
            "liked_topics": [topic_names[i] for i in liked if mean[i] >= 3.5],
            "disliked_topics": [topic_names[i] for i in disliked if mean[i] <= 2.5],
        }

    def reset_users(self, users: np.ndarray) -> None:
        """Forget everything about ``users`` (used when the population is re-seeded)."""
        self.shown[users] = -1
        self.chosen[users] = -1
        self.rating[users] = np.nan
        self.consumption[users] = 0
        self.feeling[users] = 0
        self.importance[users] = 0
        self.t[users] = 0
        self.count[users] = 0
        self.topic_consumed[users] = 0
        self.topic_rating_sum[users] = 0
        self.topic_rating_n[users] = 0
        self.n_chosen[users] = 0
        self.n_skipped[users] = 0
