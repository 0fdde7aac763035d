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
    """

    def __init__(self, catalog: Catalog, num_candidates: int, config: CandidateConfig | None = None) -> None:
        if num_candidates > len(catalog):
            raise ValueError(f"num_candidates ({num_candidates}) exceeds the catalog size ({len(catalog)})")
        self.n = len(catalog)
        self.k = num_candidates
        self.config = config or CandidateConfig()
        self._offsets = np.arange(num_candidates)
        self._logpop = np.log(catalog.popularity.astype(np.float64) + 0.01)
        self.reset()

    def reset(self) -> None:
        """Forget buffered random numbers (call when the generator's rng is re-seeded)."""
        self._buf: list[int] = []
        self._pos = 0

    def draw(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        if self.config.kind == "popular_mix":
            return self._popular_mix(rng, batch)
        if batch == 1:
            return self._draw_one(rng)
        perm = rng.permutation(self.n)
        perm = np.concatenate((perm, perm[: self.k]))  # wrap-around without a modulo
        start = rng.integers(0, self.n, size=(batch, 1))
        return np.take(perm, start + self._offsets)

    def _draw_one(self, rng: np.random.Generator) -> np.ndarray:
        """Sequential sampling without replacement: uniform draws, duplicates skipped.

        Uniform integers are drawn from ``rng`` in blocks and consumed in order, so the result is a
        deterministic function of the rng's stream, at a fraction of ``rng.choice``'s cost.
        """
        k = self.k
        take = k + 8 + k // 4
        if 2 * k > self.n:  # dense draws: rejection would loop; a permutation is cheaper
            return rng.permutation(self.n)[:k][None, :]
        if self._pos + take > len(self._buf):
            self._buf = rng.integers(0, self.n, size=64 * take).tolist()
            self._pos = 0
        chunk = self._buf[self._pos:self._pos + take]
        self._pos += take
        uniq = list(dict.fromkeys(chunk))
        if len(uniq) < k:  # rare: too many repeats in this chunk
            return rng.choice(self.n, size=(1, k), replace=False)
        return np.array(uniq[:k])[None, :]

    def _popular_mix(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        m = int(round(self.config.popular_fraction * self.k))
        g = self._logpop + rng.gumbel(size=(batch, self.n))
        pop = np.argpartition(-g, m - 1, axis=1)[:, :m] if m > 0 else np.empty((batch, 0), np.int64)
        # fill the rest uniformly among items not already taken (random keys, taken ones pushed last)
        keys = rng.random((batch, self.n))
        np.put_along_axis(keys, pop, 2.0, axis=1)
        rest = np.argpartition(keys, self.k - m - 1, axis=1)[:, : self.k - m] if self.k > m else np.empty((batch, 0), np.int64)
        out = np.concatenate([pop, rest], axis=1)
        # shuffle columns so popular items are not always first
        return np.take_along_axis(out, rng.random(out.shape).argsort(axis=1), axis=1)
