"""How far can a train-only model go on the fidelity harness's discrimination and rating protocols?

    python experiments/fidelity_ceiling.py [--data DIR] [--split ratio|random] [--implicit MIN_RATING] [--seed 0]

    # MovieLens-100K, temporal split (the default world)
    python experiments/fidelity_ceiling.py --data ../shared/datasets/ml-100k
    # the same log as implicit feedback (rated >= 4 stars), random split, no ratings
    python experiments/fidelity_ceiling.py --data ../shared/datasets/ml-100k --implicit 4 --split random
    # a long-tail play-count log without timestamps (1,493 users x 17,600 items)
    simrec synth --shape longtail --interactions 100000 --out /tmp/ceil/longtail
    python experiments/fidelity_ceiling.py --data /tmp/ceil/longtail --split random

The harness's 1:1 task (held-out later items vs unobserved items, accuracy per user) is a ranking
problem followed by a threshold. This script scores the very same pairs (``build_eval_set``, the
harness's negatives) with standard recommenders fitted on the same train split, and reports:

* ``auc``: the per-user AUC (threshold-free ranking quality), averaged over users;
* ``acc@1:1 (t=0)``: accuracy of the model's own decision (simrec: the embedded judge, i.e.
  utility > no-click utility; others have no decision rule, so ``–``);
* ``acc@1:1 best global t``: the accuracy of the single threshold that is best **on the test pairs**,
  an optimistic upper bound for any model that scores like this one and thresholds once;
* ``acc@1:1 per-user t (half)``: a per-user threshold chosen on half of each user's pairs and
  scored on the other half (can a per-user threshold beat a global one?);

and, for ratings, the RMSE of train-fitted predictors (the grid's best value on test for the
unconstrained factor model, again optimistic) next to simrec's latent and whole-star ratings. A log
without ratings (implicit feedback) skips that part.

Scores are only needed at the evaluation pairs, so no ``items x items`` matrix is ever formed: the
item-item models keep sparse train matrices, and every scorer (simrec's utility too) computes dense
score rows for a few users at a time (memory ``64 x items``) and keeps the pairs. EASE needs a dense
``items x items`` inverse, so on a catalog larger than ``--ease-items`` (4,000) it is fitted on the
most popular items by train count only (the row name says so); every other item scores 0, as it
would with zero weights. On MovieLens-100K (1,682 items) EASE is exact.

The Markov scorer follows the train rows in time order; on a log without timestamps that is row
order (the row name says so).

Everything is fitted on the train split only; only the scoring reads the test split.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sps

from simrec.cognition.embedded import EmbeddedCognition
from simrec.data.calibration import (
    _ridge_by_group,
    build_calibrated_world,
    movielens_settings,
)
from simrec.data.fidelity import FidelityConfig, build_eval_set, classification_metrics
from simrec.envs.spec import EnvSpec
from simrec.users.population import Population

# population users -> their dense score rows over the whole catalog, (len(users), n_items)
Rows = Callable[[np.ndarray], np.ndarray]
Pairs = tuple[np.ndarray, np.ndarray]  # scores of the positives and of their 1:1 negatives


def per_user_auc(u: np.ndarray, sp: np.ndarray, sn: np.ndarray) -> float:
    """Mean over users of P(positive scores above negative) over all of the user's pairs."""
    out = []
    for k in np.unique(u):
        m = u == k
        p, n = sp[m], sn[m]
        out.append((p[:, None] > n[None, :]).mean() + 0.5 * (p[:, None] == n[None, :]).mean())
    return float(np.mean(out))


def acc_at(u: np.ndarray, sp: np.ndarray, sn: np.ndarray, t: float) -> float:
    """The harness's per-user accuracy when everything scoring above ``t`` is watched."""
    label = np.r_[np.ones(sp.size, bool), np.zeros(sn.size, bool)]
    return classification_metrics(np.r_[u, u], label, np.r_[sp, sn] > t, int(u.max()) + 1)["acc"]


def best_global(u: np.ndarray, sp: np.ndarray, sn: np.ndarray) -> float:
    grid = np.quantile(np.r_[sp, sn], np.linspace(0.01, 0.99, 197))
    return max(acc_at(u, sp, sn, t) for t in grid)


def per_user_half(u: np.ndarray, sp: np.ndarray, sn: np.ndarray, rng: np.random.Generator) -> float:
    out = []
    for k in np.unique(u):
        idx = np.flatnonzero(u == k)
        if idx.size < 4:
            continue
        perm = rng.permutation(idx.size)
        a, b = idx[perm[: idx.size // 2]], idx[perm[idx.size // 2:]]
        cand = np.r_[sp[a], sn[a]]
        t = cand[int(np.argmax([(sp[a] >= c).sum() + (sn[a] < c).sum() for c in cand]))]
        out.append(((sp[b] >= t).sum() + (sn[b] < t).sum()) / (2 * b.size))
    return float(np.mean(out))


def at_pairs(rows: Rows, u: np.ndarray, ip: np.ndarray, ineg: np.ndarray,
             chunk: int = 64) -> tuple[Pairs, np.ndarray, np.ndarray]:
    """``rows``'s scores at the pairs (``u`` sorted), and each user's row mean and std over all items.

    Rows come ``chunk`` users at a time, so only ``chunk x items`` scores are held at once; the row
    statistics are what z-scoring a full ``users x items`` matrix would use (zero for absent users).
    """
    users = np.unique(u)
    n = int(u.max()) + 1
    mean, std = np.zeros(n), np.zeros(n)
    sp, sn = [], []
    for s in range(0, users.size, chunk):
        us = users[s:s + chunk]
        M = rows(us)
        a, b = np.searchsorted(u, [us[0], us[-1] + 1])
        r = np.searchsorted(us, u[a:b])
        sp.append(M[r, ip[a:b]])
        sn.append(M[r, ineg[a:b]])
        mean[us], std[us] = M.mean(1), M.std(1)
    return (np.concatenate(sp), np.concatenate(sn)), mean, std


def knn_rows(X: sps.csr_matrix) -> Rows:
    """Item-kNN: the sum of the cosine similarities of the user's train items to each item.

    ``X @ S`` with ``S = Xn.T @ Xn`` (diagonal zeroed) is ``(X @ Xn.T) @ Xn`` minus the self-similarity
    of the user's own items, so a chunk only needs a ``chunk x users`` dense product, never ``S``.
    """
    norm = np.maximum(np.sqrt(np.asarray(X.sum(0)).ravel()), 1.0)
    Xn = sps.csr_matrix((X.data / norm[X.indices], X.indices, X.indptr), shape=X.shape)  # X / norm column-wise
    XnT = Xn.T.tocsr()
    self_sim = np.asarray(Xn.multiply(Xn).sum(0)).ravel()  # diag(S)

    def rows(users: np.ndarray) -> np.ndarray:
        Xu = X[users]
        return np.asarray((Xu @ XnT).toarray() @ Xn) - Xu.toarray() * self_sim

    return rows


def ease_rows(X: sps.csr_matrix, lam: float, max_items: int) -> tuple[Rows, int]:
    """EASE (Steck 2019) fitted on the ``max_items`` most popular items (all when the catalog is smaller).

    Returns the rows and the number of items fitted; other items score 0 (zero weights).
    """
    ni = X.shape[1]
    if ni <= max_items:
        top = np.arange(ni)
    else:  # the dense inverse is O(k^3) time and k^2 memory: keep it to the head of the catalog
        top = np.sort(np.argsort(-np.asarray(X.sum(0)).ravel(), kind="stable")[:max_items])
    Xk = X[:, top].tocsr()
    G = (Xk.T @ Xk).toarray()  # integer counts: the same exact Gram matrix as a dense product
    P = np.linalg.inv(G + lam * np.eye(top.size))
    del G
    B = -P / np.diag(P)
    del P
    np.fill_diagonal(B, 0.0)

    def rows(users: np.ndarray) -> np.ndarray:
        E = Xk[users].toarray() @ B
        if top.size == ni:
            return E
        out = np.zeros((users.size, ni))
        out[:, top] = E
        return out

    return rows, top.size


def markov_rows(tu: np.ndarray, ti: np.ndarray, timestamp: np.ndarray, nu: int, ni: int,
                window: int = 20) -> Rows:
    """Markov: how often each item followed the user's last ``window`` train items within ``window`` steps.

    The transition counts are sparse (at most ``window`` per train row); each user's row sums the
    rows of their last items in sequence order, so it has the dense ``items x items`` version's values.
    """
    order = np.lexsort((np.arange(tu.size), timestamp, tu))
    uo, io = tu[order], ti[order]
    src, dst = [], []
    for d in range(1, window + 1):  # item j followed by item i within `window` steps of one user's sequence
        same = uo[d:] == uo[:-d]
        src.append(io[:-d][same])
        dst.append(io[d:][same])
    src_, dst_ = np.concatenate(src), np.concatenate(dst)
    T = sps.csr_matrix((np.ones(src_.size), (src_, dst_)), shape=(ni, ni))  # duplicates summed
    T.data /= np.repeat(np.maximum(np.asarray(T.sum(1)).ravel(), 1.0), np.diff(T.indptr))
    ends = np.cumsum(np.bincount(uo, minlength=nu))
    starts = ends - np.bincount(uo, minlength=nu)

    def rows(users: np.ndarray) -> np.ndarray:
        out = np.stack([T[io[max(ends[k] - window, starts[k]):ends[k]]].toarray().sum(0) for k in users])
        return np.log1p(100.0 * out)

    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--split", choices=("ratio", "random"), default="ratio")
    ap.add_argument("--implicit", type=float, default=None, metavar="MIN_RATING",
                    help="turn the ratings into implicit feedback: rows rated >= MIN_RATING are the positives")
    ap.add_argument("--ease-items", type=int, default=4000,
                    help="fit EASE on at most this many of the most popular items (default 4000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spec", default="movielens-v0", help="calibrated env spec (movielensseq-v1: order-aware)")
    args = ap.parse_args()
    spec = EnvSpec.builtin(args.spec)
    world_over: dict = {"split": {"kind": args.split, "train_ratio": 0.8}}
    if args.data:
        world_over["data_dir"] = args.data
    if args.implicit is not None:
        world_over["implicit"] = {"min_rating": args.implicit}
    spec = spec.with_overrides(world=world_over)
    t0 = time.perf_counter()
    world = build_calibrated_world(movielens_settings(spec.world), seed=args.seed, choice=spec.choice)
    ev = build_eval_set(world, FidelityConfig(ratios=[1]), np.random.default_rng([args.seed, 101]))
    train = world.split.train
    to_pop = np.full(train.n_users, -1, dtype=np.int64)
    to_pop[world.user_index] = np.arange(len(world.user_index))
    tu, ti = to_pop[train.user], train.item.astype(np.int64)
    nu, ni = len(world.user_index), len(world.catalog)
    inpop = tu >= 0  # train rows of users outside the population have no row to score
    # binary: who interacted with what (stars and play counts unused), like the harness's positives
    X = sps.csr_matrix((np.ones(int(inpop.sum())), (tu[inpop], ti[inpop])), shape=(nu, ni))
    X.data[:] = 1.0

    nu_, ni_ = ev.negatives[1]
    order_p, order_n = np.argsort(ev.pos_user, kind="stable"), np.argsort(nu_, kind="stable")
    u = ev.pos_user[order_p]
    assert np.array_equal(u, nu_[order_n]), "1:1 negatives pair up with positives user by user"
    ip, ineg = ev.pos_item[order_p].astype(np.int64), ni_[order_n].astype(np.int64)

    # -- scorers fitted on train, evaluated at the pairs --
    scores: dict[str, Pairs] = {}
    pop_score = np.log1p(np.asarray(X.sum(0)).ravel())
    scores["popularity"] = (pop_score[ip], pop_score[ineg])
    scores["item-kNN (cosine)"], _, _ = at_pairs(knn_rows(X), u, ip, ineg)
    ease, n_ease = ease_rows(X, 1000.0, args.ease_items)
    ease_name = "EASE (lambda 1000)" if n_ease == ni else f"EASE (lambda 1000, top {n_ease:,} of {ni:,} items)"
    scores[ease_name], ease_mean, ease_std = at_pairs(ease, u, ip, ineg)
    markov_name = "Markov (last 20 items)" if train.timed else "Markov (last 20 items, row order: no timestamps)"
    scores[markov_name], mk_mean, mk_std = at_pairs(markov_rows(tu[inpop], ti[inpop], train.timestamp[inpop],
                                                                nu, ni), u, ip, ineg)
    pop = Population(world.catalog, world.personas, None, 5, transitions=world.transitions)
    pop.reset(np.random.default_rng(args.seed))
    cog = EmbeddedCognition(spec.for_world(world).choice)  # the world's temperature and sequence weight
    # whole-catalog rows rather than (B, 2) slates: the batched product's rounding depends on the slate
    # shape, and full rows keep the values the users x items matrix had, bit for bit (8 rows: ~50 MB)
    util, _, _ = at_pairs(lambda us: cog.utilities(pop, us, np.broadcast_to(np.arange(ni), (us.size, ni))),
                          u, ip, ineg, chunk=8)
    no_click = cog.no_click_utility(pop.traits[:, 4], pop.state.fatigue)[u]
    simrec = (util[0] - no_click, util[1] - no_click)
    scores["simrec embedded judge"] = simrec

    def z(s: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:  # z-score within the user's row
        return (s - mean[u]) / (std[u] + 1e-9)

    scores["simrec + EASE + Markov (z-scored blend)"] = tuple(  # type: ignore[assignment]
        simrec[j] + z(scores[ease_name][j], ease_mean, ease_std) + z(scores[markov_name][j], mk_mean, mk_std)
        for j in (0, 1))

    rng = np.random.default_rng(args.seed)
    print(f"{train.name}: {len(u)} positive/negative pairs of {np.unique(u).size} users "
          f"({args.split} split, seed {args.seed})\n")
    print("| scorer (train only) | auc | acc@1:1 (t=0) | acc@1:1 best global t (test, optimistic) "
          "| acc@1:1 per-user t (half) |")
    print("|---|---|---|---|---|")
    for name, (sp, sn) in scores.items():
        own = f"{acc_at(u, sp, sn, 0.0):.3f}" if name.startswith("simrec embedded") else "–"
        print(f"| {name} | {per_user_auc(u, sp, sn):.3f} | {own} | {best_global(u, sp, sn):.3f} "
              f"| {per_user_half(u, sp, sn, rng):.3f} |")

    # -- ratings --
    if not train.has_ratings:
        print(f"\nratings: not applicable, {train.name} has no ratings (implicit feedback)")
        print(f"\n{time.perf_counter() - t0:.0f}s")
        return
    ok = np.isfinite(train.rating) & inpop
    ru, ri, rr = tu[ok], ti[ok], train.rating[ok].astype(np.float64)
    real = ev.pos_rating.astype(np.float64)
    pu, pi = ev.pos_user, ev.pos_item
    mu = rr.mean()

    def rmse(pred: np.ndarray) -> float:
        return float(np.sqrt(np.mean((pred - real) ** 2)))

    table = [("global mean", rmse(np.full(real.size, mu)))]
    bu, bi = np.zeros(nu), np.zeros(ni)
    for _ in range(10):
        bi = np.bincount(ri, rr - mu - bu[ru], ni) / (np.bincount(ri, minlength=ni) + 5.0)
        bu = np.bincount(ru, rr - mu - bi[ri], nu) / (np.bincount(ru, minlength=nu) + 5.0)
    table.append(("user + item biases", rmse(mu + bu[pu] + bi[pi])))
    best = (math.inf, None)
    for k in (16, 32):
        for lam in (0.05, 0.1, 0.2):
            g = np.random.default_rng(0)
            Pu, Qi = 0.1 * g.standard_normal((nu, k)), 0.1 * g.standard_normal((ni, k))
            bu, bi = np.zeros(nu), np.zeros(ni)
            n_i, n_u = np.maximum(np.bincount(ri, minlength=ni), 1), np.maximum(np.bincount(ru, minlength=nu), 1)
            for _ in range(15):
                sol = _ridge_by_group(ri, ru, np.c_[Pu, np.ones(nu)], rr - mu - bu[ru], np.ones(ru.size), ni,
                                      lam * n_i)
                Qi, bi = sol[:, :k], sol[:, k]
                sol = _ridge_by_group(ru, ri, np.c_[Qi, np.ones(ni)], rr - mu - bi[ri], np.ones(ru.size), nu,
                                      lam * n_u)
                Pu, bu = sol[:, :k], sol[:, k]
            r = rmse(mu + bu[pu] + bi[pi] + np.einsum("nk,nk->n", Pu[pu], Qi[pi]))
            best = min(best, (r, f"k={k}, lambda={lam}"), key=lambda x: x[0])
    table.append((f"biased MF by ALS, best of 6 settings on test ({best[1]}, optimistic)", best[0]))
    util_pos = np.empty(u.size, util[0].dtype)
    util_pos[order_p] = util[0]  # back to the eval set's order of positives
    lat = np.clip(cog.rating_latents(pop, pu, pi[:, None], util_pos[:, None])[:, 0], 1.0, 5.0)
    table.append(("simrec embedded, latent score", rmse(lat)))
    table.append(("simrec embedded, whole stars (the harness's rmse)", rmse(np.clip(np.rint(lat), 1, 5))))
    print("\n| rating predictor (train only) | rmse |\n|---|---|")
    for name, v in table:
        print(f"| {name} | {v:.3f} |")
    print(f"\n{time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
