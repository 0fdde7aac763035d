"""Order-aware short-term interest: what users consume next, given what they just consumed.

A calibrated user's taste vector says what they like overall; the order of a log says more. People
who just watched the first film of a series, or three 1970s westerns in a row, pick the next item
differently from their long-run taste (the signal sequential recommenders such as SASRec learn). The
:class:`Transitions` model carries that signal into the simulator: fitted on the train split's
per-user sequences, it scores a candidate item by how often it followed the user's recent items,

    sequence(u, i) = log(1 + scale * sum_l decay ** age_l * P(i follows r_l within `window` steps)),

``r_l`` the user's ``recent`` items (newest last, age 0 for the newest). The embedded choice model adds
``weight * sequence(u, i)`` to the item's utility (calibration picks ``weight`` on a validation slice of
the train split); every click pushes the item into the user's recent items, so short-term interest
follows the session. Each item keeps its ``top`` strongest successors only, so the model holds at most
``n_items * top`` pairs however long the log is.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class Transitions:
    """Sparse item -> next-item probabilities with the scoring rule of the module docstring.

    Attributes:
        keys: ``(nnz,)`` int64 sorted ``source * n_items + successor`` pairs.
        probs: ``(nnz,)`` float32 ``P(successor | source)`` within ``window`` steps.
        n_items: catalog size.
        weight: utility weight of the sequence score (0: the model is off).
        decay: per-step decay of older recent items.
        scale: inside the log, so a successor seen once among many counts little.
        recent: how many recent items a user keeps (``UserState.recent`` columns).
    """

    def __init__(self, keys: np.ndarray, probs: np.ndarray, n_items: int, *, weight: float = 1.0,
                 decay: float = 0.7, scale: float = 1000.0, recent: int = 10, window: int = 20) -> None:
        self.keys = np.ascontiguousarray(keys, dtype=np.int64)
        self.probs = np.ascontiguousarray(probs, dtype=np.float32)
        if self.keys.shape != self.probs.shape or (self.keys.size > 1 and np.any(np.diff(self.keys) <= 0)):
            raise ValueError("transition keys must be strictly increasing and as many as the probabilities")
        self.n_items, self.weight, self.decay, self.scale = int(n_items), float(weight), float(decay), float(scale)
        self.recent, self.window = int(recent), int(window)
        self._ages = self.decay ** np.arange(self.recent - 1, -1, -1, dtype=np.float64)  # oldest ... newest

    @classmethod
    def fit(cls, sequences: Sequence[np.ndarray], n_items: int, *, window: int = 20, top: int = 100,
            **kw: float) -> "Transitions":
        """Count, for every item ``j``, the items that followed it within ``window`` steps of one user's
        sequence (each sequence in time order), normalise per source and keep the ``top`` strongest."""
        src, dst = [], []
        for s in sequences:
            s = np.asarray(s, dtype=np.int64)
            for d in range(1, min(window, s.size - 1) + 1):
                src.append(s[:-d])
                dst.append(s[d:])
        if not src:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.float32), n_items, window=window, **kw)
        key, count = np.unique(np.concatenate(src) * n_items + np.concatenate(dst), return_counts=True)
        source = key // n_items
        prob = count / np.bincount(source, count, n_items)[source]
        order = np.lexsort((-prob, source))  # by source, strongest successor first
        first = np.searchsorted(source[order], source[order])  # start of each source's run
        keep = np.sort(order[np.arange(order.size) - first < top])
        return cls(key[keep], prob[keep], n_items, window=window, **kw)

    def __len__(self) -> int:
        return int(self.keys.size)

    def scores(self, recent: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Sequence scores ``(B, K)`` of ``items`` ``(B, K)`` for users whose recent items are ``recent``
        ``(B, recent)`` (newest last, -1 for an empty slot)."""
        recent = np.asarray(recent)
        items = np.asarray(items)
        if self.keys.size == 0 or recent.shape[1] == 0:
            return np.zeros(items.shape, np.float64)
        q = recent[:, :, None].astype(np.int64) * self.n_items + items[:, None, :]
        pos = np.searchsorted(self.keys, q)
        np.minimum(pos, self.keys.size - 1, out=pos)
        p = np.where((self.keys[pos] == q) & (recent[:, :, None] >= 0), self.probs[pos], 0.0)
        return np.log1p(self.scale * (self._ages[-recent.shape[1]:] @ p))  # (L,) @ (B, L, K) -> (B, K)

    def recent_of(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        """``(len(sequences), recent)`` int32: each sequence's last items, newest last, -1 padded."""
        out = np.full((len(sequences), self.recent), -1, np.int32)
        for r, s in enumerate(sequences):
            t = np.asarray(s)[-self.recent:] if self.recent else np.zeros(0, np.int64)
            out[r, self.recent - t.size:] = t
        return out

    # -- files ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write as ``.npz`` (arrays and settings)."""
        buf = io.BytesIO()
        np.savez_compressed(buf, keys=self.keys, probs=self.probs, settings=np.array(
            [self.n_items, self.weight, self.decay, self.scale, self.recent, self.window], np.float64))
        Path(path).write_bytes(buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "Transitions":
        with np.load(Path(path)) as z:
            n, weight, decay, scale, recent, window = z["settings"].tolist()
            return cls(z["keys"], z["probs"], int(n), weight=weight, decay=decay, scale=scale, recent=int(recent),
                       window=int(window))

    def __repr__(self) -> str:
        return (f"Transitions(n_items={self.n_items}, pairs={len(self)}, weight={self.weight:g}, decay={self.decay:g}, "
                f"recent={self.recent})")


def push_recent(recent: np.ndarray, rows: np.ndarray, items: np.ndarray) -> None:
    """Append ``items`` (one per row of ``rows``) as the newest recent item of those users, in place."""
    if recent.shape[1] == 0 or rows.size == 0:
        return
    block = recent[rows]
    block[:, :-1] = block[:, 1:]
    block[:, -1] = items
    recent[rows] = block


def push_recent_one(recent: np.ndarray, u: int, item: int) -> None:
    """:func:`push_recent` for one user (the single env's fast path), in place."""
    row = recent[u]
    row[:-1] = row[1:]
    row[-1] = item
