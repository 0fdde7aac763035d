"""Synthetic interaction logs of a chosen shape and size, for scale benchmarks and fidelity tests.

Real logs of every shape cannot ship with simrec (MovieLens' licence forbids redistribution, music
and e-commerce logs are private), so tests and benchmarks generate their own with
:func:`synthetic_log`. Two shapes:

* ``"movielens"``: explicit 1-5 star ratings with timestamps, log-normal per-user activity (at least
  20 interactions, like MovieLens), Zipf-like item popularity; defaults sized like ML-1M per
  million interactions.
* ``"longtail"``: implicit feedback (``weight`` = play counts, higher for items the user likes more;
  no ratings; no timestamps: the timestamp column is row order and ``timed`` is False, as the generic
  loader gives for a file without a time column), far more items than users, heavy-tailed item
  popularity and near-constant per-user counts, like a music log.

Users and items have latent factors; each user's items are the top of ``log popularity + taste .
factors + Gumbel noise`` over candidates drawn by popularity, so generation costs O(interactions)
and never forms a users x items matrix. The same arguments give the same log.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from simrec.data.log import InteractionLog, ItemTable, UserTable, Vocabulary

Shape = Literal["movielens", "longtail"]
GENRES = ("Action", "Adventure", "Comedy", "Crime", "Documentary", "Drama", "Fantasy", "Horror", "Music",
          "Mystery", "Romance", "Sci-Fi", "Thriller", "Western", "Animation", "Children's", "War", "Musical")


def default_size(shape: Shape, n_interactions: int) -> tuple[int, int]:
    """``(n_users, n_items)`` of a log of ``n_interactions`` in ``shape``.

    movielens: ML-1M's 6,040 users and 3,706 items per million interactions, users growing linearly and
    items with the square root (ML-10M has 70k users and 10.7k items); longtail: ~67 interactions per user
    and ~6 items per user at 0.1M, items capped at 30k.
    """
    m = n_interactions / 1e6
    if shape == "movielens":
        return max(50, int(round(6040 * m))), max(100, min(30_000, int(round(3706 * math.sqrt(m)))))
    users = max(50, int(round(n_interactions / 67)))
    return users, max(200, min(30_000, int(round(17_600 * math.sqrt(max(m, 0.1) / 0.1)))))


def synthetic_log(shape: Shape = "movielens", n_interactions: int = 100_000, n_users: int | None = None,
                  n_items: int | None = None, factors: int = 8, popularity_exponent: float | None = None,
                  seed: int = 0) -> InteractionLog:
    """A log of about ``n_interactions`` rows (exactly, unless a user would need more items than exist).

    ``popularity_exponent`` is the Zipf exponent of item base popularity (default 0.8 for movielens,
    1.1 for longtail: most items are seldom played).
    """
    if shape not in ("movielens", "longtail"):
        raise ValueError(f"shape must be 'movielens' or 'longtail', got {shape!r}")
    if n_interactions < 1:
        raise ValueError("n_interactions must be >= 1")
    du, di = default_size(shape, n_interactions)
    nu, ni = n_users or du, n_items or di
    rng = np.random.default_rng([seed, 7, nu, ni])
    alpha = popularity_exponent if popularity_exponent is not None else (0.8 if shape == "movielens" else 1.1)

    # per-user counts summing to n_interactions
    if shape == "movielens":
        raw = np.exp(rng.normal(0.0, 0.9, nu))
        minimum = min(20, max(1, n_interactions // nu))
    else:
        raw = rng.uniform(0.9, 1.1, nu)
        minimum = 1
    extra = max(n_interactions - minimum * nu, 0)
    counts = minimum + np.floor(raw / raw.sum() * extra).astype(np.int64)
    short = n_interactions - int(counts.sum())
    if short > 0:
        counts[rng.choice(nu, size=short, replace=True)] += 1
    cap = max(1, ni // 2)
    for _ in range(20):  # what the cap takes from the heaviest users goes to the others
        counts = np.minimum(counts, cap)
        short = n_interactions - int(counts.sum())
        room = np.flatnonzero(counts < cap)
        if short <= 0 or room.size == 0:
            break
        counts[room] += np.bincount(rng.choice(room.size, size=short, p=raw[room] / raw[room].sum()),
                                    minlength=room.size)

    # latent structure: genre directions, item factors, user tastes
    n_genres = len(GENRES)
    genre_dir = rng.standard_normal((n_genres, factors))
    genre_dir /= np.linalg.norm(genre_dir, axis=1, keepdims=True)
    item_genre = rng.integers(0, n_genres, ni)
    item_f = 0.6 * genre_dir[item_genre] + 0.8 * rng.standard_normal((ni, factors)) / math.sqrt(factors)
    taste = 1.2 * rng.standard_normal((nu, factors)) / math.sqrt(factors)
    base = rng.permutation(ni)  # popularity rank of each item, independent of its factors
    logpop = -alpha * np.log1p(base).astype(np.float64)
    p = np.exp(logpop - logpop.max())
    p /= p.sum()

    # candidates by popularity, kept by taste + Gumbel noise; users short of distinct items draw again
    cdf = np.cumsum(p)
    cu = np.empty(0, np.int64)
    ci = np.empty(0, np.int64)
    score = np.empty(0)
    need = counts.copy()
    for over in (4, 16, 64):
        du = np.repeat(np.arange(nu), need * over)
        di = np.minimum(np.searchsorted(cdf, rng.random(du.size) * cdf[-1]), ni - 1).astype(np.int64)
        ds = np.einsum("nd,nd->n", taste[du], item_f[di]) * 2.0 + rng.gumbel(size=du.size)
        cu, ci, score = np.concatenate([cu, du]), np.concatenate([ci, di]), np.concatenate([score, ds])
        order = np.lexsort((-score, ci, cu))  # by user, item, best score first
        cu, ci, score = cu[order], ci[order], score[order]
        first = np.r_[True, (cu[1:] != cu[:-1]) | (ci[1:] != ci[:-1])]
        cu, ci, score = cu[first], ci[first], score[first]
        need = np.maximum(counts - np.bincount(cu, minlength=nu), 0)
        if not need.any():
            break
    order = np.lexsort((-score, cu))
    cu, ci, score = cu[order], ci[order], score[order]
    start = np.searchsorted(cu, np.arange(nu))
    rank = np.arange(cu.size) - start[cu]
    keep = rank < counts[cu]
    u, i, s = cu[keep], ci[keep], score[keep]

    n = u.size
    item_bias = rng.normal(0.0, 0.4, ni)
    if shape == "movielens":
        user_bias = rng.normal(0.0, 0.45, nu)
        latent = 3.55 + user_bias[u] + item_bias[i] + 0.35 * (s - s.mean()) / max(s.std(), 1e-9)
        rating = np.clip(np.rint(latent + rng.normal(0.0, 0.85, n)), 1, 5).astype(np.float32)
        weight = np.ones(n, np.float32)
        # a user's history spans a random stretch; their items arrive in random order within it
        t0 = rng.integers(874_000_000, 893_000_000, nu)
        span = rng.exponential(3e6, nu)
        ts = (t0[u] + rng.random(n) * span[u]).astype(np.int64)
    else:
        rating = np.full(n, np.nan, np.float32)
        # plays: geometric, more of them the better the item suits the user (mean ~20 at the top, ~3 at the bottom)
        z = (s - s.mean()) / max(s.std(), 1e-9)
        weight = (1 + rng.geometric(0.05 + 0.25 / (1.0 + np.exp(z)), n)).astype(np.float32)
        ts = np.empty(n, np.int64)
    shuffle = rng.permutation(n)  # file order is not sorted by user
    u, i, rating, weight, ts = u[shuffle], i[shuffle], rating[shuffle], weight[shuffle], ts[shuffle]
    if shape == "longtail":
        ts = np.arange(n, dtype=np.int64)

    n_extra = rng.random(ni) < 0.3
    second = (item_genre + 1 + rng.integers(0, n_genres - 1, ni)) % n_genres
    genres = [[GENRES[a], GENRES[b]] if two else [GENRES[a]] for a, b, two in zip(item_genre, second, n_extra)]
    kind = "Film" if shape == "movielens" else "Track"
    items = ItemTable(ids=[str(k + 1) for k in range(ni)], titles=[f"{kind} {k + 1}" for k in range(ni)],
                      texts=[""] * ni, genres=genres,
                      years=rng.integers(1950, 2000, ni) if shape == "movielens" else np.zeros(ni, np.int32),
                      genre_names=list(GENRES))
    users = UserTable.anonymous([str(k + 1) for k in range(nu)])
    name = f"synthetic-{shape}-{n}"
    words = (Vocabulary(user="viewer", item="film", did="watched", does="watches") if shape == "movielens" else
             Vocabulary(user="listener", item="track", did="listened to", does="listens", do="listen to",
                        title="track", service="a music streaming service", counts=True))
    return InteractionLog(name, u, i, rating, weight, ts, items, users, source=f"synthetic_log(seed={seed})",
                          timed=shape == "movielens", vocabulary=words)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``simrec synth``."""
    p.add_argument("--shape", choices=("movielens", "longtail"), default="longtail")
    p.add_argument("--interactions", type=int, default=100_000, help="rows of the log (default 100,000)")
    p.add_argument("--users", type=int, default=None, help="default: by shape and size (see default_size)")
    p.add_argument("--items", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="DIR", required=True, help="directory to write the generic log into")


def run_cli(args: argparse.Namespace) -> int:
    """``simrec synth``: write :func:`synthetic_log` as a generic log directory (``simrec fidelity --data DIR``)."""
    from simrec.data.generic import write_generic

    log = synthetic_log(args.shape, args.interactions, n_users=args.users, n_items=args.items, seed=args.seed)
    out = write_generic(log, Path(args.out))
    print(f"{log.summary()} -> {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simrec synth", description=run_cli.__doc__)
    add_arguments(parser)
    return run_cli(parser.parse_args(argv))
