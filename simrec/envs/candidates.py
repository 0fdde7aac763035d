"""Candidate generators: which catalog items the recommender may choose from at each step."""

from __future__ import annotations

import numpy as np

from simrec.catalog import Catalog
from simrec.envs.spec import CandidateConfig


class CandidateGenerator:
    """Draws ``(B, num_candidates)`` distinct catalog indices per row.

    One row (the single env) is sequential sampling without replacement (see ``_draw_one``). Batch
    rows are windows of one fresh random permutation of the catalog, each at its own random
    offset: distinct within a row, uniform over the catalog, and ``O(n_items)`` per batch rather
    than per row. ``popular_mix`` fills part of each row by Gumbel top-k on log popularity.

    :meth:`set_available` restricts every draw to part of the catalog (items not released yet, say); with
    no restriction (the default) the draws and their random streams are the plain generator's.
    """

    def __init__(self, catalog: Catalog, num_candidates: int, config: CandidateConfig | None = None) -> None:
        if num_candidates > len(catalog):
            raise ValueError(f"num_candidates ({num_candidates}) exceeds the catalog size ({len(catalog)})")
        self.n = len(catalog)
        self.k = num_candidates
        self.config = config or CandidateConfig()
        if self.config.kind == "catalog" and num_candidates != len(catalog):
            raise ValueError(f"candidates kind 'catalog' shows all {len(catalog)} items; set num_candidates={len(catalog)} "
                             f"(got {num_candidates})")
        self._offsets = np.arange(num_candidates)
        self._arange = np.arange(self.n)
        self._perm = np.empty(self.n + num_candidates, np.int64)  # draw()'s permutation buffer (never outlives a call)
        self._logpop = np.log(catalog.popularity.astype(np.float64) + 0.01)
        self._avail: np.ndarray | None = None  # catalog indices that may be drawn; None = all
        self._mask: np.ndarray | None = None
        self._plain = self.config.kind == "uniform" and 2 * num_candidates <= self.n  # draws come from _draw_one's block
        self.reset()

    def reset(self) -> None:
        """Forget buffered random numbers (call when the generator's rng is re-seeded)."""
        self._rows: np.ndarray | None = None  # (64, k) draws of the current block, see _draw_one
        self._ok: list[bool] = []  # per row: enough distinct values in its chunk
        self._row = 0

    @property
    def available(self) -> np.ndarray | None:
        """The ``(n_items,)`` bool mask of items that may be drawn, or ``None`` when all may."""
        return None if self._mask is None else self._mask.copy()

    def set_available(self, mask: np.ndarray | None) -> None:
        """Draw only items where ``mask`` (``(n_items,)`` bool) is true; ``None`` (or an all-true mask) lifts
        the restriction. Every kind but ``catalog`` honours it (``catalog`` shows every item by definition,
        so a mask raises); at least ``num_candidates`` items must stay available. A masked uniform draw
        samples positions in the available pool with the plain algorithm and maps them to catalog indices;
        ``popular_mix`` keeps its random stream and pushes unavailable items out of both halves."""
        if mask is None:
            new = None
        else:
            m = np.asarray(mask, dtype=bool).reshape(-1)
            if m.size != self.n:
                raise ValueError(f"set_available: mask has {m.size} entries, the catalog {self.n} items")
            new = None if m.all() else m.copy()
        if new is not None and self.config.kind == "catalog":
            raise ValueError("set_available: candidates kind 'catalog' shows every item in index order, so it "
                             "cannot hide any. Fix: use kind 'uniform' or 'popular_mix' to restrict the pool")
        if new is not None and int(new.sum()) < self.k:
            raise ValueError(f"set_available: {int(new.sum())} items available, fewer than num_candidates ({self.k})")
        changed = (new is None) != (self._mask is None) or (new is not None and not np.array_equal(new, self._mask))
        self._mask = new
        self._avail = None if new is None else np.flatnonzero(new)
        if changed:  # buffered draws are positions in the previous pool
            self.reset()

    def draw(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        if self._avail is not None:
            return self._draw_masked(rng, batch)
        if self.config.kind == "popular_mix":
            return self._popular_mix(rng, batch)
        if self.config.kind == "catalog":
            return np.tile(self._offsets, (batch, 1))
        if batch == 1:
            return self._draw_one(rng)
        # rng.permutation(n) shuffles a fresh arange(n); this shuffles one in place in a buffer that repeats its
        # first k entries at the end, for windows that wrap around without a modulo (the same draws)
        perm = self._perm
        perm[: self.n] = self._arange
        rng.shuffle(perm[: self.n])
        perm[self.n:] = perm[: self.k]
        start = rng.integers(0, self.n, size=(batch, 1))
        return perm.take(start + self._offsets)

    def draw_one(self, rng: np.random.Generator) -> np.ndarray:
        """``draw(rng, 1)``, the single env's per-step call: a buffered row of the current block is handed out
        without the general dispatch; anything else (a new block, a mask, another kind) goes through it."""
        i = self._row
        if i < len(self._ok) and self._ok[i] and self._plain and self._avail is None:
            self._row = i + 1
            return self._rows[i:i + 1]
        return self.draw(rng, 1)

    def _draw_masked(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        avail = self._avail
        if self.config.kind == "popular_mix":
            return self._popular_mix(rng, batch, self._mask)
        if batch == 1:
            return avail[self._draw_one(rng, avail.size)]
        perm = rng.permutation(avail.size)
        perm = np.concatenate((perm, perm[: self.k]))
        start = rng.integers(0, avail.size, size=(batch, 1))
        return avail[np.take(perm, start + self._offsets)]

    def _draw_one(self, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
        """Sequential sampling without replacement from ``range(n)`` (default: the catalog): uniform draws,
        duplicates skipped.

        Uniform integers are drawn from ``rng`` in blocks of 64 chunks of ``k + 8 + k // 4`` and consumed a
        chunk per call; each chunk's first ``k`` distinct values (in order) are the draw, so the result is a
        deterministic function of the rng's stream, at a fraction of ``rng.choice``'s cost. The whole
        block's rows are deduplicated in one vectorised pass when it is drawn; a call returns a view of its row.
        """
        k = self.k
        n = self.n if n is None else n
        if 2 * k > n:  # dense draws: rejection would loop; a permutation is cheaper
            return rng.permutation(n)[:k][None, :]
        i = self._row
        if self._rows is None or i >= len(self._ok):
            self._refill(rng, n)
            i = 0
        self._row = i + 1
        if not self._ok[i]:  # rare: too many repeats in this chunk; drawn now, as the stream requires
            return rng.choice(n, size=(1, k), replace=False)
        return self._rows[i:i + 1]

    def _refill(self, rng: np.random.Generator, n: int, chunks: int = 64) -> None:
        """Draw the next block of chunks and keep, per chunk, its first ``k`` distinct values in order."""
        k, take = self.k, self.k + 8 + self.k // 4
        shift = take.bit_length()  # a position fits in the low `shift` bits of a sort key
        # int32 where the keys below fit: numpy draws int32 and int64 alike below 2**32 (one bounded 32-bit
        # stream), so the values and the rng's state after are the same, with half the memory traffic
        dt = np.int32 if n << shift < 2**31 else np.int64
        block = rng.integers(0, n, size=(chunks, take), dtype=dt)
        # Sorting value << shift | position puts each value's copies together, its first occurrence first; the
        # later copies' positions are pushed past the end, and a second sort orders the first occurrences'
        # positions: a chunk's first k distinct values sit at the k smallest. (Shifts and masks: the same keys'
        # order as value * take + position, without integer division.)
        srt = block << shift
        srt |= np.arange(take, dtype=dt)
        srt.sort(axis=1)
        pos = srt & ((1 << shift) - 1)
        srt >>= shift  # the values, sorted
        pos[:, 1:][srt[:, 1:] == srt[:, :-1]] = take
        pos.sort(axis=1)
        first_k = pos[:, :k]
        ok = first_k[:, -1] < take  # at least k distinct values
        first_k += np.arange(0, chunks * take, take, dtype=dt)[:, None]  # flat index into the block
        rows = np.zeros((chunks, k), dtype=np.int64)
        if ok.all():
            rows[:] = block.ravel()[first_k]
        else:
            rows[ok] = block.ravel()[first_k[ok]]
        self._rows, self._ok = rows, ok.tolist()

    def _popular_mix(self, rng: np.random.Generator, batch: int, mask: np.ndarray | None = None) -> np.ndarray:
        m = round(self.config.popular_fraction * self.k)
        g = self._logpop + rng.gumbel(size=(batch, self.n))
        if mask is not None:  # same random numbers as unmasked; unavailable items can never win a slot
            g[:, ~mask] = -np.inf
        pop = np.argpartition(-g, m - 1, axis=1)[:, :m] if m > 0 else np.empty((batch, 0), np.int64)
        # fill the rest uniformly among items not already taken (random keys, taken ones pushed last)
        keys = rng.random((batch, self.n))
        if mask is not None:
            keys[:, ~mask] = 3.0  # behind the taken ones, so the k - m smallest are all available
        np.put_along_axis(keys, pop, 2.0, axis=1)
        rest = np.argpartition(keys, self.k - m - 1, axis=1)[:, : self.k - m] if self.k > m else np.empty((batch, 0), np.int64)
        out = np.concatenate([pop, rest], axis=1)
        # shuffle columns so popular items are not always first
        return np.take_along_axis(out, rng.random(out.shape).argsort(axis=1), axis=1)
