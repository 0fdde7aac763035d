"""How high can sim-to-real agreement be under ``simrec agreement``'s protocol? A ceiling study.

    python experiments/agreement_ceiling.py --json benchmarks/results/agreement-ceiling.json   # seed 0, ~3 min

``simrec agreement`` orders recommenders by NDCG@10 on the real held-out split and by CTR in
``simrec/MovieLens-v0`` and reports Kendall tau-b between the two orders (target >= 0.8). This script
asks what tau-b a simulator could reach at best, in two ways, with the recommenders fitted on seed 0's
per-user temporal train split:

1. **Noise ceiling: a perfect simulator.** Its users behave exactly like the real ones: they click what
   they really consumed in the held-out period. Its tau-b is limited only by how precisely the protocol's
   data fix the offline order:

   * ``offline order under user resampling``: tau-b between the offline order on all test users and on a
     bootstrap resample of them (how stable the target order itself is);
   * ``perfect simulator, same data``: the perfect simulator scores each recommender on the protocol's
     simulated users (200 per seed, 5 seeds, drawn as ``simrec agreement`` draws them) by precision of
     its top 10, and by the share of its two 5-item slates with at least one consumed item (the simulated
     user clicks at most one item per slate, so this is what CTR can see);
   * ``perfect simulator, independent half``: the same, with every user's held-out items split at random
     into two halves, the offline metric on one and the simulated one on the other, so the simulator's
     draws are independent of the offline metric's, as a real simulator's are (200 splits).

2. **Preference ceiling: simulators whose users follow a train-only model.** A calibrated simulator can
   only know what the train split says. For a scorer ``S`` fitted on train (every recommender of the zoo,
   the simulator's own utility, blends of them), its pseudo-users consume the ``n_u`` items ``S`` ranks
   highest (``n_u`` = the user's real held-out count, unseen items only): a noise-free simulator with
   ``S``'s preferences. Each recommender's NDCG@10 against these pseudo held-out items gives ``S``'s order;
   tau-b against the real offline order is that simulator's agreement with perfect choice sampling.
   ``simulator utility`` is the calibrated embedded model at the start of the simulation: ``MovieLens-v0``'s
   static one, and ``MovieLensSeq-v0``'s and ``-v1``'s with their order-aware sequence term (:mod:`simrec.users.transitions`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RECS = "random-unseen,mostpop,itemknn,als,bpr,ease,sasrec,multvae,bad"
BLEND = ("itemknn", "als", "bpr", "ease", "sasrec", "multvae")  # the zoo's real models (no baselines, no control)


def ndcg_at_10(top: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Per-user binary NDCG@10: ``top`` (U, 10) item ids, ``relevant`` (U, n_items) bool."""
    disc = 1.0 / np.log2(np.arange(2, 12))
    hit = np.take_along_axis(relevant, top, axis=1)
    n = np.minimum(relevant.sum(axis=1), 10)
    ideal = np.concatenate([[0.0], np.cumsum(disc)])[n]
    return np.where(n > 0, (hit * disc).sum(axis=1) / np.maximum(ideal, 1e-12), np.nan)


def precision_at_10(top: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    return np.take_along_axis(relevant, top, axis=1).mean(axis=1)


def slate_hit_rate(top: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Share of the two 5-item slates (top 1-5, 6-10) holding at least one relevant item."""
    hit = np.take_along_axis(relevant, top, axis=1)
    return 0.5 * (hit[:, :5].any(axis=1).astype(float) + hit[:, 5:].any(axis=1))


def rank_percentiles(scores: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Each row's scores as percentiles among the user's unseen items (seen items -> -1)."""
    s = np.where(seen, -np.inf, scores)
    ranks = np.argsort(np.argsort(s, axis=1, kind="stable"), axis=1, kind="stable").astype(float)
    n_seen = seen.sum(axis=1, keepdims=True)
    out = (ranks - n_seen) / np.maximum(scores.shape[1] - n_seen - 1, 1)
    return np.where(seen, -1.0, out)


def top_n_mask(scores: np.ndarray, seen: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Bool (U, n_items): each user's ``n[u]`` highest-scored unseen items."""
    s = np.where(seen, -np.inf, scores)
    order = np.argsort(-s, axis=1, kind="stable")
    mask = np.zeros_like(seen)
    rows = np.repeat(np.arange(s.shape[0]), n)
    cols = order[rows, np.concatenate([np.arange(k) for k in n])]
    mask[rows, cols] = True
    return mask


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "ml-100k"))
    p.add_argument("--recommenders", default=RECS)
    p.add_argument("--seed", type=int, default=0, help="the world / fit seed (default 0)")
    p.add_argument("--users", type=int, default=200, help="simulated users per protocol seed, as simrec agreement")
    p.add_argument("--protocol-seeds", type=int, default=5)
    p.add_argument("--replicates", type=int, default=200, help="bootstrap resamples and random halvings")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if not (Path(a.data) / "u.data").exists():
        print(f"skipped: MovieLens-100K not found at {a.data} (pass --data DIR)", file=sys.stderr)
        return 0

    from tqdm.auto import tqdm

    from simrec.cognition.embedded import EmbeddedCognition
    from simrec.data.calibration import persona_id
    from simrec.envs.registration import build_world
    from simrec.evaluation.compare import build_recommender, make_env
    from simrec.evaluation.stats import kendall_tau_b
    from simrec.recommenders import Interactions

    t0 = time.perf_counter()
    world_cfg = {"data_dir": str(Path(a.data).resolve()), "seed": a.seed}
    probe = make_env("simrec/MovieLens-v0", {"world": world_cfg})
    world = build_world(probe.sim_spec.world)
    n_items = len(world.catalog)
    env = make_env("simrec/MovieLens-v0", {"world": world_cfg, "num_candidates": n_items,
                                            "candidates": {"kind": "catalog"}, "max_steps": 10})
    env.reset(seed=a.seed)
    pop = env.sim.pop
    fit = Interactions.from_world(world)
    test = world.split.test
    test_items: dict[str, set[int]] = {}
    for u, i in zip(test.user.tolist(), test.item.tolist()):
        test_items.setdefault(persona_id(test.users.ids[u]), set()).add(int(i))
    known = {pop.user_id(u) for u in range(pop.n_users)}
    users = sorted(u for u in test_items if u in known)  # the agreement's user order (its sample draws from it)
    U = len(users)
    relevant = np.zeros((U, n_items), bool)
    for r, uid in enumerate(users):
        relevant[r, list(test_items[uid])] = True
    seen = np.zeros((U, n_items), bool)
    fit_row = {uid: k for k, uid in enumerate(fit.user_ids)}
    for r, uid in enumerate(users):
        k = fit_row.get(uid)
        if k is not None:
            seen[r, fit.item[fit.user == k]] = True
    relevant &= ~seen

    names = a.recommenders.split(",")
    scores: dict[str, np.ndarray] = {}
    top10: dict[str, np.ndarray] = {}
    for name in tqdm(names, desc="fit and score", file=sys.stderr):
        rec = build_recommender(name, env, a.seed, fit)
        rec.reset(seed=a.seed)
        s = np.stack([rec.rank_scores(uid, np.arange(n_items)) for uid in users])
        scores[name] = s
        top10[name] = np.stack([rec.top_k(uid, 10) for uid in users])  # exactly what offline_metrics scores
    sims = [("simulator utility (MovieLens-v0)", env)]
    for v in ("v0", "v1"):  # the same split, order-aware calibrations (v0: weight by likelihood; v1: by NDCG)
        e = make_env(f"simrec/MovieLensSeq-{v}", {"world": world_cfg})
        e.reset(seed=a.seed)
        sims.append((f"simulator utility, order-aware (MovieLensSeq-{v})", e))
    for label, e in sims:
        model, p_ = EmbeddedCognition(e.sim_spec.choice), e.sim.pop
        scores[label] = np.stack([model.utilities_one(p_, p_.index_of(uid), np.arange(n_items))
                                  for uid in users]).astype(np.float64)
    pct = {n: rank_percentiles(s, seen) for n, s in scores.items()}
    scores["blend of the zoo"] = np.mean([pct[n] for n in BLEND if n in pct], axis=0)
    scores["blend of the zoo + simulator"] = np.mean([pct[n] for n in BLEND if n in pct]
                                                     + [pct["simulator utility (MovieLens-v0)"]], axis=0)

    real = np.array([np.nanmean(ndcg_at_10(top10[n], relevant)) for n in names])
    per_user_real = np.stack([ndcg_at_10(top10[n], relevant) for n in names], axis=1)  # (U, R)
    rng = np.random.default_rng(0)
    out: dict[str, object] = {"recommenders": names, "offline_ndcg@10": dict(zip(names, real.tolist())),
                              "seed": a.seed, "test_users": U}

    def q(v: list[float]) -> dict[str, float]:
        v = np.asarray(v, float)
        return {"mean": float(v.mean()), "p2.5": float(np.percentile(v, 2.5)), "p50": float(np.median(v)),
                "p97.5": float(np.percentile(v, 97.5))}

    # 1. noise ceiling
    boot = [kendall_tau_b(real, np.nanmean(per_user_real[rng.integers(0, U, U)], axis=0)) for _ in range(a.replicates)]
    sample = np.concatenate([np.random.default_rng([s, 11]).choice(U, min(a.users, U), replace=False)
                             for s in range(a.protocol_seeds)])  # simrec agreement's simulated users
    same_p = np.array([precision_at_10(top10[n][sample], relevant[sample]).mean() for n in names])
    same_h = np.array([slate_hit_rate(top10[n][sample], relevant[sample]).mean() for n in names])
    half_p, half_h = [], []
    for _ in tqdm(range(a.replicates), desc="random halves", file=sys.stderr):
        half = relevant & (rng.random(relevant.shape) < 0.5)
        other = relevant & ~half
        off = [np.nanmean(ndcg_at_10(top10[n], half)) for n in names]
        half_p.append(kendall_tau_b(off, [precision_at_10(top10[n][sample], other[sample]).mean() for n in names]))
        half_h.append(kendall_tau_b(off, [slate_hit_rate(top10[n][sample], other[sample]).mean() for n in names]))
    noise = {
        "offline order under user resampling": q(boot),
        "perfect simulator, same data: precision@10": kendall_tau_b(real, same_p),
        "perfect simulator, same data: slate hit rate": kendall_tau_b(real, same_h),
        "perfect simulator, independent half: precision@10": q(half_p),
        "perfect simulator, independent half: slate hit rate": q(half_h),
    }
    out["noise_ceiling"] = noise
    out["perfect_simulator_same_data"] = {"precision@10": dict(zip(names, same_p.tolist())),
                                          "slate_hit_rate": dict(zip(names, same_h.tolist()))}

    # 2. preference ceiling
    n_u = relevant.sum(axis=1)
    pref: dict[str, dict[str, object]] = {}
    for sname in tqdm([n for n in scores if n not in ("random-unseen", "bad")], desc="pseudo-users", file=sys.stderr):
        pseudo = top_n_mask(scores[sname], seen, n_u)
        order = np.array([np.nanmean(ndcg_at_10(top10[n], pseudo)) for n in names])
        own = float(np.nanmean(ndcg_at_10(np.argsort(-np.where(seen, -np.inf, scores[sname]), axis=1)[:, :10],
                                          relevant)))
        pref[sname] = {"tau_b": kendall_tau_b(real, order), "scorer_ndcg@10_real": own,
                       "ndcg@10_under_scorer": dict(zip(names, order.tolist()))}
    out["preference_ceiling"] = pref
    out["seconds"] = round(time.perf_counter() - t0, 1)

    print(f"\nSeed {a.seed}, {U} test users, {len(names)} recommenders. Offline NDCG@10: "
          + ", ".join(f"{n} {v:.3f}" for n, v in sorted(zip(names, real), key=lambda x: -x[1])))
    print("\n| noise ceiling | Kendall tau-b with the offline order |\n|---|---|")
    for k, v in noise.items():
        cell = (f"{v['mean']:.3f} (95% of draws in [{v['p2.5']:.3f}, {v['p97.5']:.3f}])" if isinstance(v, dict)
                else f"{v:.3f}")
        print(f"| {k} | {cell} |")
    print("\n| pseudo-users follow | its own NDCG@10 (real) | tau-b with the offline order | its top 3 |\n|---|---|---|---|")
    for sname, v in pref.items():
        top3 = sorted(v["ndcg@10_under_scorer"].items(), key=lambda x: -x[1])[:3]
        print(f"| {sname} | {v['scorer_ndcg@10_real']:.3f} | {v['tau_b']:.3f} | {', '.join(n for n, _ in top3)} |")
    print(f"\n{out['seconds']} s", file=sys.stderr)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
