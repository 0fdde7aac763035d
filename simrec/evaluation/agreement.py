"""``simrec agreement``: do recommenders rank the same in simulation as on real held-out data?

Protocol, for each seed ``s`` (each seed recalibrates the world, as the fidelity harness does):

1. Split the log per user in time (the env spec's split, train 80%) and calibrate the env (default
   ``simrec/MovieLensSeq-v1``; ``simrec/MovieLens-v0`` for the static taste model) on the train split with
   seed ``s``. Every recommender fits on the same train
   split (:meth:`~simrec.recommenders.fitted.Interactions.from_world`).
2. **Offline**, on the real held-out split: for every test user, the recommender's top 10 over all items
   the user has not interacted with in train, scored by Recall@10 (hits / min(10, |test items|), as in
   Liang et al. 2018) and NDCG@10 (binary relevance).
3. **Simulated**: ``users`` test users (drawn with a generator seeded ``s``; the same users for every
   recommender) each get one session of at most ``max_steps`` steps in that env with the
   full-catalog candidate mode (``candidates.kind = "catalog"``): the recommender ranks the same pool the
   offline metric ranks (every item, train items excluded), and shows its top ``slate_size``. Metrics:
   CTR, watch rate (share of steps with at least one watch), mean rating, session length.
4. Agreement: Kendall tau-b between the recommenders' order by the offline metric (NDCG@10) and by the
   simulated metric (CTR), with a 95% bootstrap interval that resamples users (jointly for both metrics),
   and the share of recommender pairs both order the same way. Every offline x simulated metric pair is
   in the JSON too.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simrec.errors import ConfigError
from simrec.evaluation.compare import build_recommender, make_env
from simrec.evaluation.stats import kendall_tau_b, mean_ci, sign_agreement
from simrec.recommenders import FittedRecommender, Interactions, run_episodes

DEFAULT_RECOMMENDERS = ("random-unseen", "mostpop", "itemknn", "als", "bpr", "ease", "sasrec", "multvae", "bad")
OFFLINE = ("recall@10", "ndcg@10")
SIMULATED = ("ctr", "watch_rate", "mean_rating", "session_length")
PRIMARY = ("ndcg@10", "ctr")


def offline_metrics(rec: FittedRecommender, test_items: dict[str, set[int]], k: int = 10) -> dict[str, np.ndarray]:
    """Per-user Recall@k and NDCG@k (users in ``test_items`` order) of ``rec``'s top k over unseen items."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recall, ndcg = [], []
    for uid, items in test_items.items():
        top = rec.top_k(uid, k)
        hit = np.fromiter((int(i) in items for i in top), dtype=bool, count=top.size)
        n = min(k, len(items))
        recall.append(hit.sum() / n)
        ndcg.append(float((hit * discounts[: hit.size]).sum() / discounts[:n].sum()))
    return {"recall@10": np.asarray(recall), "ndcg@10": np.asarray(ndcg)}


def simulated_metrics(env: Any, rec: FittedRecommender, users: Sequence[str], seed: int) -> dict[str, np.ndarray]:
    """One session per user, in order, from ``reset(seed=seed)``; per-user metrics."""
    per: dict[str, list[float]] = {m: [] for m in SIMULATED}
    state: dict[str, Any] = {}

    def on_step(info: dict[str, Any]) -> None:
        c = np.asarray(info["clicked"], dtype=bool)
        r = np.asarray(info["rating"], dtype=np.float64)
        state["clicks"] += int(c.sum())
        state["shown"] += c.size
        state["watch_steps"] += bool(c.any())
        state["ratings"] += r[r > 0].tolist()

    rec.reset(seed=seed)
    for ep, uid in enumerate(users):
        state.update(clicks=0, shown=0, watch_steps=0, ratings=[])
        out = run_episodes(env, rec, 1, seed=seed if ep == 0 else None, on_step=on_step,
                           reset_options=lambda _: {"user_id": uid})
        steps = out[0]["length"]
        per["ctr"].append(state["clicks"] / max(state["shown"], 1))
        per["watch_rate"].append(state["watch_steps"] / max(steps, 1))
        per["mean_rating"].append(float(np.mean(state["ratings"])) if state["ratings"] else math.nan)
        per["session_length"].append(float(steps))
    return {m: np.asarray(v, dtype=np.float64) for m, v in per.items()}


@dataclass
class AgreementResult:
    """Per recommender and seed, per-user offline and simulated metrics; the agreement statistics."""

    names: list[str]
    seeds: list[int]
    offline: dict[str, list[dict[str, np.ndarray]]]
    simulated: dict[str, list[dict[str, np.ndarray]]]
    info: dict[str, Any] = field(default_factory=dict)

    def means(self, table: str, metric: str) -> np.ndarray:
        """``(seeds, recommenders)`` means of ``metric`` (NaN-aware over users)."""
        src = self.offline if table == "offline" else self.simulated
        return np.array([[float(np.nanmean(src[n][i][metric])) for n in self.names] for i in range(len(self.seeds))])

    def per_user(self, table: str, metric: str) -> np.ndarray:
        """``(users x seeds, recommenders)``: rows are (seed, user) units, for the bootstrap."""
        src = self.offline if table == "offline" else self.simulated
        return np.concatenate([np.stack([src[n][i][metric] for n in self.names], axis=1)
                               for i in range(len(self.seeds))], axis=0)

    def agreement(self, offline_metric: str = PRIMARY[0], sim_metric: str = PRIMARY[1], *,
                  replicates: int = 2000) -> dict[str, float]:
        off = self.means("offline", offline_metric).mean(axis=0)
        sim = self.means("simulated", sim_metric).mean(axis=0)
        # Users differ between the two tables (all test users offline, a sample in simulation), so each
        # is resampled on its own; both resamples feed one replicate's tau.
        a, b = self.per_user("offline", offline_metric), self.per_user("simulated", sim_metric)
        rng = np.random.default_rng(0)
        taus = []
        for _ in range(replicates):
            ia, ib = rng.integers(0, a.shape[0], a.shape[0]), rng.integers(0, b.shape[0], b.shape[0])
            t = kendall_tau_b(np.nanmean(a[ia], axis=0), np.nanmean(b[ib], axis=0))
            if np.isfinite(t):
                taus.append(t)
        lo, hi = (np.percentile(taus, [2.5, 97.5]).tolist() if taus else [math.nan, math.nan])
        return {"kendall_tau_b": kendall_tau_b(off, sim), "ci_low": float(lo), "ci_high": float(hi),
                "sign_agreement": sign_agreement(off, sim)}

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        out: dict[str, dict[str, dict[str, float]]] = {}
        for j, n in enumerate(self.names):
            row: dict[str, dict[str, float]] = {}
            for table, metrics in (("offline", OFFLINE), ("simulated", SIMULATED)):
                for m in metrics:
                    mean, lo, hi = mean_ci(self.means(table, m)[:, j].tolist())
                    row[m] = {"mean": mean, "ci_low": lo, "ci_high": hi}
            out[n] = row
        return out

    def markdown(self) -> str:
        s = self.summary()
        cols = OFFLINE + SIMULATED
        lines = ["| recommender | " + " | ".join(f"{c} (offline)" if c in OFFLINE else f"{c} (sim)" for c in cols)
                 + " | offline rank | sim rank |", "|---" * (len(cols) + 3) + "|"]
        off = np.array([s[n][PRIMARY[0]]["mean"] for n in self.names])
        sim = np.array([s[n][PRIMARY[1]]["mean"] for n in self.names])
        rank = lambda v: (-v).argsort().argsort() + 1  # noqa: E731
        r_off, r_sim = rank(off), rank(sim)
        for j, n in enumerate(self.names):
            cells = []
            for c in cols:
                v = s[n][c]
                ci = f" ± {(v['ci_high'] - v['ci_low']) / 2:.3f}" if np.isfinite(v["ci_low"]) else ""
                cells.append(f"{v['mean']:.3f}{ci}" if np.isfinite(v["mean"]) else "–")
            lines.append(f"| {n} | " + " | ".join(cells) + f" | {r_off[j]} | {r_sim[j]} |")
        a = self.agreement()
        lines.append("")
        lines.append(f"Kendall tau-b ({PRIMARY[0]} offline vs {PRIMARY[1]} simulated) = {a['kendall_tau_b']:.3f} "
                     f"[95% CI {a['ci_low']:.3f}, {a['ci_high']:.3f}], pairwise sign agreement "
                     f"{a['sign_agreement']:.3f}, over {len(self.names)} recommenders and {len(self.seeds)} seeds")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        s = self.summary()
        recs = {n: {"offline": {m: s[n][m] for m in OFFLINE}, "simulated": {m: s[n][m] for m in SIMULATED}}
                for n in self.names}
        pairs = {f"{o} vs {m}": self.agreement(o, m, replicates=500) for o in OFFLINE for m in SIMULATED}
        main = self.agreement()
        return {"recommenders": recs, **main, "primary": {"offline": PRIMARY[0], "simulated": PRIMARY[1]},
                "pairs": pairs, "seeds": self.seeds, "info": self.info}


def agreement(data_dir: str | Path, recommenders: Sequence[str] = DEFAULT_RECOMMENDERS, *,
              seeds: Sequence[int] = (0, 1, 2, 3, 4), users: int = 200, max_steps: int = 10,
              env_id: str = "simrec/MovieLensSeq-v1", world: dict[str, Any] | None = None, progress: bool = True,
              log: Callable[[str], None] = lambda s: None) -> AgreementResult:
    """Run the protocol of the module docstring."""
    from tqdm.auto import tqdm

    from simrec.data.calibration import persona_id
    from simrec.envs.registration import build_world

    names = list(recommenders)
    offline: dict[str, list[dict[str, np.ndarray]]] = {n: [] for n in names}
    simulated: dict[str, list[dict[str, np.ndarray]]] = {n: [] for n in names}
    timing = {"calibrate_s": 0.0, "fit_s": 0.0, "offline_s": 0.0, "simulate_s": 0.0}
    t0 = time.perf_counter()
    with tqdm(total=len(seeds) * len(names), desc="agreement", unit="rec", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for seed in seeds:
            t = time.perf_counter()
            w = {"data_dir": str(Path(data_dir).resolve()), "seed": int(seed), **(world or {})}
            probe = make_env(env_id, {"world": w})
            cal = build_world(probe.sim_spec.world)
            if getattr(cal, "split", None) is None:
                raise ConfigError(f"{env_id} is not calibrated from a log; agreement needs a real held-out split")
            n_items = len(cal.catalog)
            env = make_env(env_id, {"world": w, "num_candidates": n_items, "candidates": {"kind": "catalog"},
                                    "max_steps": max_steps})
            timing["calibrate_s"] += time.perf_counter() - t
            fit = Interactions.from_world(cal)
            test = cal.split.test
            known = set(env.sim.pop.user_id(u) for u in range(env.sim.pop.n_users))
            test_items: dict[str, set[int]] = {}
            for u, i in zip(test.user.tolist(), test.item.tolist()):
                test_items.setdefault(persona_id(test.users.ids[u]), set()).add(int(i))
            test_items = {u: s for u, s in test_items.items() if u in known}
            pool = sorted(test_items)
            sample = [pool[i] for i in np.random.default_rng([seed, 11]).choice(len(pool), min(users, len(pool)),
                                                                                 replace=False)]
            log(f"seed {seed}: {len(fit):,} train interactions, {len(test_items)} test users, {len(sample)} simulated")
            for name in names:
                t = time.perf_counter()
                rec = build_recommender(name, env, seed, fit)
                if not isinstance(rec, FittedRecommender):
                    raise ConfigError(f"agreement ranks every unseen item; {name} is not a fitted recommender "
                                      "(use random-unseen / mostpop for the baselines)")
                timing["fit_s"] += time.perf_counter() - t
                t = time.perf_counter()
                offline[name].append(offline_metrics(rec, test_items))
                timing["offline_s"] += time.perf_counter() - t
                t = time.perf_counter()
                simulated[name].append(simulated_metrics(env, rec, sample, seed))
                timing["simulate_s"] += time.perf_counter() - t
                bar.set_postfix(seed=seed, rec=name, refresh=False)
                bar.update(1)
            env.close()
    timing["total_s"] = time.perf_counter() - t0
    info = {"data_dir": str(data_dir), "env": env_id, "users": users, "max_steps": max_steps,
            "timing": {k: round(v, 1) for k, v in timing.items()}}
    return AgreementResult(names, list(seeds), offline, simulated, info)


# -- CLI ---------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="../shared/datasets/ml-100k", help="dataset directory (default: %(default)s)")
    p.add_argument("--env", default="simrec/MovieLensSeq-v1",
                   help="calibrated env to simulate in (default: %(default)s, order-aware users with calibrated "
                        "choosiness; simrec/MovieLens-v0: the static taste model)")
    p.add_argument("--recommenders", default=",".join(DEFAULT_RECOMMENDERS), help="comma-separated fitted recommenders")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--users", type=int, default=200, help="simulated test users per seed (default 200)")
    p.add_argument("--max-steps", type=int, default=10, help="steps per simulated session (default 10)")
    p.add_argument("--json", default=None, help="write the result as JSON")
    p.add_argument("--no-progress", action="store_true")


def run_cli(args: argparse.Namespace) -> int:
    from simrec.data.calibration import resolve_data_dir

    resolve_data_dir(args.data)  # fail early, with the fix in the message
    names = [n.strip() for n in args.recommenders.split(",") if n.strip()]
    say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    res = agreement(args.data, names, seeds=list(range(args.seeds)), users=args.users, max_steps=args.max_steps,
                    env_id=args.env, progress=not args.no_progress, log=say)
    print(res.markdown())
    print(f"\n{res.info['timing']}", file=sys.stderr)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res.to_dict(), indent=1, default=float) + "\n", encoding="utf-8")
    return 0
