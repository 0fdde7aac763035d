"""Sets of (user, item) pairs that cost memory per pair, not per user x item cell.

Calibration and the fidelity harness ask "has this user seen this item?" millions of times on logs
whose users x items matrix would not fit in memory (150k users x 30k items is 4.5 G cells).
:class:`PairSet` answers from the sorted pair keys, with a hashed bit filter in front so that most
queries (pairs that are *not* in the set) cost one memory read instead of a binary search.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads consecutive keys over the filter


class PairSet:
    """An immutable set of ``(user, item)`` pairs over ``n_items`` items.

    ``keys`` are ``user * n_items + item`` (any order, repeats allowed). Membership is exact: the
    filter only decides which queries need the binary search.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int, bits_per_pair: int = 16) -> None:
        self.n_items = int(n_items)
        self.keys = np.unique(np.asarray(users, np.int64) * self.n_items + np.asarray(items, np.int64))
        size = max(64, int(self.keys.size) * bits_per_pair)
        self._shift = np.uint64(64 - max(6, int(np.ceil(np.log2(size)))))
        self._filter = np.zeros(1 << (64 - int(self._shift)) >> 3, dtype=np.uint8)
        h = self._hash(self.keys)
        np.bitwise_or.at(self._filter, h >> np.uint64(3), (1 << (h & np.uint64(7))).astype(np.uint8))

    def __len__(self) -> int:
        return int(self.keys.size)

    def _hash(self, keys: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return (keys.astype(np.uint64) * _GOLDEN) >> self._shift

    def contains_keys(self, keys: np.ndarray) -> np.ndarray:
        """Boolean array: is each ``user * n_items + item`` key in the set."""
        keys = np.asarray(keys, np.int64)
        h = self._hash(keys)
        maybe = (self._filter[h >> np.uint64(3)] >> (h & np.uint64(7)).astype(np.uint8)) & 1
        out = np.zeros(keys.shape, dtype=bool)
        idx = np.flatnonzero(maybe)
        if idx.size and self.keys.size:
            k = keys.ravel()[idx]
            at = np.minimum(np.searchsorted(self.keys, k), self.keys.size - 1)
            out.ravel()[idx] = self.keys[at] == k
        return out

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.contains_keys(np.asarray(users, np.int64) * self.n_items + np.asarray(items, np.int64))

    def draw_unseen(self, users: np.ndarray, rng: np.random.Generator, tries: int = 10,
                    balanced: bool = False) -> np.ndarray:
        """One item per entry of ``users``, uniform among the items not paired with that user, by
        rejection (a pair still in the set after ``tries`` redraws is kept: only users paired with
        nearly every item get there).

        ``balanced``: the first draw shows every item equally often (whole shuffled copies of the
        catalog, dealt at random to the entries), so each entry's item is still uniform but an item's
        number of draws no longer varies; sums over the draws per item then have far less noise.
        """
        users = np.asarray(users, np.int64)
        if balanced:
            items = rng.permutation(np.resize(rng.permutation(self.n_items), users.size))
        else:
            items = rng.integers(0, self.n_items, size=users.size)
        todo = np.arange(users.size)
        for _ in range(tries):
            clash = self.contains_keys(users[todo] * self.n_items + items[todo])
            if not clash.any():
                break
            todo = todo[clash]
            items[todo] = rng.integers(0, self.n_items, size=todo.size)
        return items
