"""How far can a train-only model go on the fidelity harness's discrimination and rating protocols?

    python experiments/fidelity_ceiling.py [--data ../shared/datasets/ml-100k] [--split ratio|random] [--seed 0]

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
unconstrained factor model, again optimistic) next to simrec's latent and whole-star ratings.

Everything is fitted on the train split only; only the scoring reads the test split.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from simrec.data.calibration import _ridge_by_group, build_calibrated_world, movielens_settings
from simrec.cognition.embedded import EmbeddedCognition
from simrec.data.fidelity import FidelityConfig, build_eval_set, classification_metrics
from simrec.users.population import Population
from simrec.envs.spec import EnvSpec


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


def zscore(M: np.ndarray) -> np.ndarray:
    return (M - M.mean(1, keepdims=True)) / (M.std(1, keepdims=True) + 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--split", choices=("ratio", "random"), default="ratio")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    spec = EnvSpec.builtin("movielens-v0")
    world_over = {"split": {"kind": args.split, "train_ratio": 0.8}}
    if args.data:
        world_over["data_dir"] = args.data
    spec = spec.with_overrides(world=world_over)
    t0 = time.perf_counter()
    world = build_calibrated_world(movielens_settings(spec.world), seed=args.seed, choice=spec.choice)
    ev = build_eval_set(world, FidelityConfig(ratios=[1]), np.random.default_rng([args.seed, 101]))
    train = world.split.train
    to_pop = np.full(train.n_users, -1, dtype=np.int64)
    to_pop[world.user_index] = np.arange(len(world.user_index))
    tu, ti = to_pop[train.user], train.item.astype(np.int64)
    nu, ni = len(world.user_index), len(world.catalog)
    X = np.zeros((nu, ni))
    X[tu, ti] = 1.0

    # -- scorers fitted on train --
    scores: dict[str, np.ndarray] = {}
    scores["popularity"] = np.broadcast_to(np.log1p(X.sum(0)), (nu, ni))
    Xn = X / np.maximum(np.sqrt(X.sum(0, keepdims=True)), 1.0)
    S = Xn.T @ Xn
    np.fill_diagonal(S, 0.0)
    scores["item-kNN (cosine)"] = X @ S
    P = np.linalg.inv(X.T @ X + 1000.0 * np.eye(ni))
    B = -P / np.diag(P)
    np.fill_diagonal(B, 0.0)
    scores["EASE (lambda 1000)"] = X @ B
    order = np.lexsort((np.arange(len(train)), train.timestamp, tu))
    uo, io = tu[order], ti[order]
    T = np.zeros((ni, ni))
    for d in range(1, 21):  # item j followed by item i within 20 steps of one user's train sequence
        same = uo[d:] == uo[:-d]
        np.add.at(T, (io[:-d][same], io[d:][same]), 1.0)
    T /= np.maximum(T.sum(1, keepdims=True), 1.0)
    ends = np.cumsum(np.bincount(uo, minlength=nu))
    scores["Markov (last 20 items)"] = np.log1p(100.0 * np.stack(
        [T[io[max(e - 20, e - c):e]].sum(0) for e, c in zip(ends, np.bincount(uo, minlength=nu))]))
    pop = Population(world.catalog, world.personas, None, 5)
    pop.reset(np.random.default_rng(args.seed))
    cog = EmbeddedCognition(spec.choice)
    users = np.arange(nu)
    util = np.concatenate([cog.utilities(pop, users[s:s + 64], np.broadcast_to(np.arange(ni), (len(users[s:s + 64]), ni)))
                           for s in range(0, nu, 64)])
    simrec_score = util - cog.no_click_utility(pop.traits[:, 4], pop.state.fatigue)[:, None]
    scores["simrec embedded judge"] = simrec_score
    scores["simrec + EASE + Markov (z-scored blend)"] = simrec_score + zscore(scores["EASE (lambda 1000)"]) + zscore(
        scores["Markov (last 20 items)"])

    nu_, ni_ = ev.negatives[1]
    order_p, order_n = np.argsort(ev.pos_user, kind="stable"), np.argsort(nu_, kind="stable")
    u = ev.pos_user[order_p]
    assert np.array_equal(u, nu_[order_n]), "1:1 negatives pair up with positives user by user"
    ip, ineg = ev.pos_item[order_p], ni_[order_n]
    rng = np.random.default_rng(args.seed)
    print(f"{world.split.train.name}: {len(u)} positive/negative pairs of {np.unique(u).size} users "
          f"({args.split} split, seed {args.seed})\n")
    print("| scorer (train only) | auc | acc@1:1 (t=0) | acc@1:1 best global t (test, optimistic) "
          "| acc@1:1 per-user t (half) |")
    print("|---|---|---|---|---|")
    for name, M in scores.items():
        sp, sn = M[u, ip], M[u, ineg]
        own = f"{acc_at(u, sp, sn, 0.0):.3f}" if name.startswith("simrec embedded") else "–"
        print(f"| {name} | {per_user_auc(u, sp, sn):.3f} | {own} | {best_global(u, sp, sn):.3f} "
              f"| {per_user_half(u, sp, sn, rng):.3f} |")

    # -- ratings --
    ok = np.isfinite(train.rating) & (tu >= 0)
    ru, ri, rr = tu[ok], ti[ok], train.rating[ok].astype(np.float64)
    real = ev.pos_rating.astype(np.float64)
    pu, pi = ev.pos_user, ev.pos_item
    mu = rr.mean()

    def rmse(pred: np.ndarray) -> float:
        return float(np.sqrt(np.mean((pred - real) ** 2)))

    rows = [("global mean", rmse(np.full(real.size, mu)))]
    bu, bi = np.zeros(nu), np.zeros(ni)
    for _ in range(10):
        bi = np.bincount(ri, rr - mu - bu[ru], ni) / (np.bincount(ri, minlength=ni) + 5.0)
        bu = np.bincount(ru, rr - mu - bi[ri], nu) / (np.bincount(ru, minlength=nu) + 5.0)
    rows.append(("user + item biases", rmse(mu + bu[pu] + bi[pi])))
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
    rows.append((f"biased MF by ALS, best of 6 settings on test ({best[1]}, optimistic)", best[0]))
    lat = np.clip(cog.rating_latents(pop, pu, pi[:, None], util[pu, pi][:, None])[:, 0], 1.0, 5.0)
    rows.append(("simrec embedded, latent score", rmse(lat)))
    rows.append(("simrec embedded, whole stars (the harness's rmse)", rmse(np.clip(np.rint(lat), 1, 5))))
    print("\n| rating predictor (train only) | rmse |\n|---|---|")
    for name, v in rows:
        print(f"| {name} | {v:.3f} |")
    print(f"\n{time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
