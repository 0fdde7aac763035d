"""Which popularity and activity measures can be trusted on sparse, long-tail catalogs?

    python experiments/measure_validity.py [--json benchmarks/results/measure-validity.json]
    python experiments/measure_validity.py --exposure DIR [--split random] [--implicit 4]

A measure is valid if a simulator that behaves exactly like the real users scores (close to) perfect on
it and wrong simulators do not, however sparse the held-out split. Real logs cannot show this, since
their true rates are unknown, so this script draws the held-out interactions from known item rates
(Zipf, exponent 1.1, 20,000 items, like a music log) at several sparsities and scores simulators that
click by the true rates (``oracle``), by flatter or sharper rates, or uniformly. Activity is checked the
same way: real users with equal counts (a log that kept every user's top items) against simulators
whose users have equal or spread session rates, with the harness's per-session click noise.

``--exposure DIR`` calibrates the log in DIR (seed 0) and prints, per train-popularity class, the
simulated users' mean utility, the share of the class the embedded judge would watch, and the class's
share of free choices from the whole catalog against its share of the real held-out interactions: does
the calibrated user know popularity, whatever uniform browsing pages let it show?
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from simrec.data.fidelity import (
    _activity_ks,
    matched_activity_ks,
    popularity_class,
    popularity_measures,
    spearman,
    split_half_reliability,
)


def popularity_rows(rng: np.random.Generator, n_items: int = 20_000) -> list[dict]:
    p = np.exp(-1.1 * np.log1p(rng.permutation(n_items)))
    p /= p.sum()
    sims = {"oracle (true rates)": p, "flatter (rates^0.5)": p**0.5, "sharper (rates^1.5)": p**1.5,
            "uniform": np.ones_like(p)}
    rows = []
    for n_test in (3_000, 30_000, 300_000):
        real = rng.multinomial(n_test, p)
        train = rng.multinomial(4 * n_test, p)
        for name, q in sims.items():
            sim = rng.multinomial(30_000, q / q.sum())
            m = popularity_measures(sim, real, train, rng)
            rho = spearman(sim, real)
            rel = split_half_reliability(real, rng) * split_half_reliability(sim, rng)
            rows.append({"held_out": n_test, "simulator": name, "spearman": rho,
                         "spearman_corrected": rho / math.sqrt(rel) if rel > 0 else float("nan"),
                         "spearman_head": m["pop_spearman_head"], "pop_curve": m["pop_curve"],
                         "reliability": m["pop_reliability"]})
    return rows


def activity_rows(rng: np.random.Generator, n: int = 1_000, sessions: int = 10_000) -> list[dict]:
    per_session = rng.geometric(0.4, 50_000) - 1
    rows = []
    for real_name, real in (("equal counts", np.full(n, 10.0)),
                            ("log-normal counts", np.maximum(1, np.rint(10 * np.exp(rng.normal(0, 0.8, n)))))):
        for sim_name, rates in (("equal rates", np.ones(n)), ("log-normal rates (sd 0.8)", np.exp(rng.normal(0, 0.8, n))),
                                ("rates as the real counts", real)):
            k = rng.poisson(rates / rates.mean() * sessions / n)
            sim = np.bincount(np.repeat(np.arange(n), k), rng.choice(per_session, k.sum()), n)
            rows.append({"real": real_name, "simulator": sim_name, "activity_ks": _activity_ks(sim, real),
                         "activity_ks_matched": matched_activity_ks(sim, real, per_session, sessions, rng)})
    return rows


def exposure_rows(data: str, split: str, implicit: float | None) -> list[dict]:
    from simrec.cognition.embedded import EmbeddedCognition
    from simrec.data.calibration import build_calibrated_world, movielens_settings
    from simrec.data.fidelity import FidelityConfig, build_eval_set, choice_popularity
    from simrec.envs.spec import EnvSpec
    from simrec.users.population import Population

    over: dict = {"data_dir": data, "split": {"kind": split}, "cache": False}
    if implicit is not None:
        over["implicit"] = {"min_rating": implicit}
    spec = EnvSpec.builtin("movielens-v0").with_overrides(world=over)
    world = build_calibrated_world(movielens_settings(spec.world), seed=0, choice=spec.choice)
    ev = build_eval_set(world, FidelityConfig(), np.random.default_rng([0, 101]))
    pop = Population(world.catalog, world.personas, None, 5, transitions=world.transitions)
    pop.reset(np.random.default_rng(0))
    cog = EmbeddedCognition(spec.for_world(world).choice)  # the world's temperature and sequence weight
    ni = len(world.catalog)
    users = ev.users[:: max(1, ev.users.size // 300)]
    util = cog.utilities(pop, users, np.broadcast_to(np.arange(ni), (users.size, ni)))
    watch = util > cog.no_click_utility(pop.traits[users, 4], pop.state.fatigue[users])[:, None]
    excluded = ev.train_matrix()[np.searchsorted(ev.users, users)]
    free = choice_popularity(cog, pop, users, excluded)
    train = np.bincount(world.split.train.item, minlength=ni)
    real = np.bincount(ev.pos_item, minlength=ni).astype(float)
    group = popularity_class(train)
    rows = []
    for g in range(group.max() + 1):
        m = group == g
        if m.any():
            rows.append({"train_count": f"{2**g - 1}-{2**(g + 1) - 2}" if g else "0", "items": int(m.sum()),
                         "mean_utility": float(util[:, m].mean()), "watched": float(watch[:, m].mean()),
                         "free_choice_share": float(free[m].sum() / free.sum()),
                         "real_share": float(real[m].sum() / real.sum())})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--exposure", metavar="DIR", default=None, help="calibrate this log and print the per-class table")
    ap.add_argument("--split", default="random")
    ap.add_argument("--implicit", type=float, default=None)
    args = ap.parse_args()
    if args.exposure:
        print("| train count | items | mean utility | share the judge watches | share of free choices | share of real held-out |")
        print("|---|---|---|---|---|---|")
        for r in exposure_rows(args.exposure, args.split, args.implicit):
            print(f"| {r['train_count']} | {r['items']:,} | {r['mean_utility']:.2f} | {r['watched']:.3f} | "
                  f"{r['free_choice_share']:.3f} | {r['real_share']:.3f} |")
        return
    rng = np.random.default_rng(args.seed)
    pop, act = popularity_rows(rng), activity_rows(rng)
    print("| held-out interactions (20,000 items) | simulator | Spearman | Spearman, corrected for attenuation "
          "| Spearman, items with >= 5 | pop_curve | split-half reliability of the real counts |")
    print("|---|---|---|---|---|---|---|")
    for r in pop:
        print(f"| {r['held_out']:,} | {r['simulator']} | {r['spearman']:.3f} | {r['spearman_corrected']:.3f} | "
              f"{r['spearman_head']:.3f} | {r['pop_curve']:.3f} | {r['reliability']:.3f} |")
    print("\n| real users | simulated users | activity_ks | activity_ks_matched |\n|---|---|---|---|")
    for r in act:
        print(f"| {r['real']} | {r['simulator']} | {r['activity_ks']:.3f} | {r['activity_ks_matched']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"popularity": pop, "activity": act}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
