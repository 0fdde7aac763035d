"""Why do the offline and the simulated order of recommenders disagree? Measure the simulator's own ranking.

    python experiments/agreement_diagnosis.py                   # seed 0, ~2 min with a cached world

``simrec agreement`` ranks recommenders by NDCG@10 on the real held-out split and by CTR in
``simrec/MovieLens-v0``. A simulated user clicks what the calibrated choice model gives high utility, so the
simulated CTR of a recommender is, to first order, how highly that utility ranks what it recommends. This
script measures, for seed 0 and the same fitted recommenders:

* the simulator's *own* ranking as a recommender offline: each test user's items ranked by the embedded
  choice model's utility at the start of the simulation (the ``oracle`` control), scored by Recall@10 and
  NDCG@10 on the real test split: the most offline accuracy a recommender can be rewarded for in simulation;
* per recommender, the overlap of its top 10 with that utility top 10, and the mean utility percentile of
  its top 10 among the user's unseen items;
* Kendall tau-b of simulated CTR (from ``benchmarks/results/agreement-ml100k.json``) against the overlap
  and against the offline NDCG.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "ml-100k"))
    p.add_argument("--agreement-json", default=str(ROOT / "benchmarks" / "results" / "agreement-ml100k.json"))
    p.add_argument("--recommenders", default="random-unseen,mostpop,itemknn,als,bpr,ease,sasrec,multvae,bad")
    p.add_argument("--users", type=int, default=400)
    p.add_argument("--env", default="simrec/MovieLens-v0", help="calibrated env (simrec/MovieLensSeq-v1: order-aware)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)

    from simrec.cognition.embedded import EmbeddedCognition
    from simrec.data.calibration import persona_id
    from simrec.envs.registration import build_world
    from simrec.evaluation.agreement import offline_metrics
    from simrec.evaluation.compare import build_recommender, make_env
    from simrec.evaluation.stats import kendall_tau_b
    from simrec.recommenders import Interactions

    env = make_env(a.env, {"world": {"data_dir": str(Path(a.data).resolve()), "seed": 0}})
    env.reset(seed=0)
    world = build_world(env.sim_spec.world)
    fit = Interactions.from_world(world)
    pop, n_items = env.sim.pop, len(world.catalog)
    model = EmbeddedCognition(env.sim_spec.choice)
    test_items: dict[str, set[int]] = {}
    for u, i in zip(world.split.test.user.tolist(), world.split.test.item.tolist()):
        test_items.setdefault(persona_id(world.split.test.users.ids[u]), set()).add(int(i))
    users = sorted(test_items)[: a.users]
    seen = {uid: set(fit.item[fit.user == k].tolist()) for k, uid in enumerate(fit.user_ids) if uid in test_items}
    all_items = np.arange(n_items)

    util_top: dict[str, np.ndarray] = {}
    pct: dict[str, np.ndarray] = {}
    for uid in users:
        util = model.utilities_one(pop, pop.index_of(uid), all_items).astype(np.float64)
        util[list(seen.get(uid, ()))] = -np.inf
        order = np.argsort(-util)
        util_top[uid] = order[:10]
        ranks = np.empty(n_items)
        ranks[order] = np.arange(n_items)
        pct[uid] = 1.0 - ranks / (n_items - len(seen.get(uid, ())))

    class _Utility:  # the simulator's own ranking, as offline_metrics expects a recommender
        def top_k(self, uid: str, k: int) -> np.ndarray:
            return util_top[uid][:k]

    sub = {u: test_items[u] for u in users}
    sim_own = {m: float(v.mean()) for m, v in offline_metrics(_Utility(), sub).items()}
    rows: dict[str, dict[str, float]] = {}
    for name in a.recommenders.split(","):
        rec = build_recommender(name, env, 0, fit)
        off = {m: float(v.mean()) for m, v in offline_metrics(rec, sub).items()}
        overlap, upct = [], []
        for uid in users:
            top = rec.top_k(uid, 10)
            overlap.append(len(set(top.tolist()) & set(util_top[uid].tolist())) / 10)
            upct.append(float(pct[uid][top].mean()))
        rows[name] = {**off, "overlap@10_with_sim": float(np.mean(overlap)), "utility_percentile": float(np.mean(upct))}
        print(f"{name:14s} ndcg@10 {off['ndcg@10']:.3f}  overlap with the simulator's top 10 {np.mean(overlap):.3f}  "
              f"mean utility percentile of its top 10 {np.mean(upct):.3f}", flush=True)
    print(f"\nthe simulator's own utility ranking, offline on the real test split ({len(users)} users): "
          f"recall@10 {sim_own['recall@10']:.3f}, ndcg@10 {sim_own['ndcg@10']:.3f}")
    out: dict[str, object] = {"simulator_ranking_offline": sim_own, "recommenders": rows, "users": len(users)}
    if Path(a.agreement_json).exists():
        ag = json.loads(Path(a.agreement_json).read_text())["recommenders"]
        names = [n for n in rows if n in ag]
        ctr = [ag[n]["simulated"]["ctr"]["mean"] for n in names]
        out["tau_ctr_vs_overlap"] = kendall_tau_b(ctr, [rows[n]["overlap@10_with_sim"] for n in names])
        out["tau_ctr_vs_utility_percentile"] = kendall_tau_b(ctr, [rows[n]["utility_percentile"] for n in names])
        out["tau_ctr_vs_ndcg"] = kendall_tau_b(ctr, [rows[n]["ndcg@10"] for n in names])
        print(f"Kendall tau-b of simulated CTR against: overlap with the simulator's top 10 {out['tau_ctr_vs_overlap']:.3f}, "
              f"mean utility percentile {out['tau_ctr_vs_utility_percentile']:.3f}, offline NDCG@10 "
              f"{out['tau_ctr_vs_ndcg']:.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
