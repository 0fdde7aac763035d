"""How low can the fidelity harness's raw ``activity_ks`` go, and where does the simulator lose?

    python experiments/activity_ceiling.py --data ../shared/datasets/ml-100k [--seeds 5] [--json F]
    python experiments/activity_ceiling.py --data ../shared/datasets/ml-100k --harness 10 100   # + real runs

``activity_ks`` (``simrec.data.fidelity``) is the KS distance between per-user simulated click counts
and the real held-out counts, each divided by its mean. A finite simulation adds sampling noise to the
simulated side only, so even a perfect simulator does not score 0. This script measures that ceiling
directly: an *idealised* simulator whose users start sessions at exactly their real relative activity
(``real_u / mean(real)``), each session's clicks drawn from the harness's own session-click
distribution (what :func:`simrec.data.fidelity.matched_activity_ks` does), scored against the real
counts by the harness's own ``_activity_ks``. Two idealisations:

* ``poisson``: a Poisson number of sessions per user, mean ``rate_u x sessions_per_user`` (the
  ``matched`` reference);
* ``rounds``: the harness's own scheduler: ``sessions_per_user x users`` sessions in rounds of
  ``users // 16`` distinct users, each round drawn without replacement with weights ``rate_u``
  (``Simulator.pick_users``), so a user never has two sessions in one round.

With ``--harness S ...`` it also runs the real harness (embedded backend, the harness's seeds and
random streams, no baselines) at ``S`` sessions per user and reports, next to raw and matched KS, a
decomposition of the simulated counts ``clicks_u = sessions_u x clicks_per_session_u``:

* ``ks_sessions``: KS of the simulated sessions per user against the ``rounds`` ideal's (is the
  *number* of sessions spread like the real activity?);
* ``ks_rate``: KS of each user's return weight over the run (``session_rate x exp(return_weight x
  satisfaction)``, averaged over the rounds, normalised) against the real relative activity;
* ``cps_cv``: the spread (coefficient of variation) of users' mean clicks per session, and
  ``cps_cv_shuffled`` the same with sessions shuffled across users (the pure-noise value).

Nothing here is fitted on the test split; the test counts are only what the simulation is compared with.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import simrec.data.fidelity as fid
from simrec.data.calibration import build_calibrated_world, movielens_settings
from simrec.data.fidelity import (
    FidelityConfig,
    _activity_ks,
    build_eval_set,
    ks_distance,
)
from simrec.envs.spec import EnvSpec

SESSIONS = (10, 30, 100, 300)
SESSION_GAP_S = 3600.0


def return_feedback_slope(user: np.ndarray, timestamp: np.ndarray, rating: np.ndarray,
                          gap_s: float = SESSION_GAP_S) -> dict[str, float]:
    """What the log says about ``return_weight``: the within-user slope of ``log(gap to the next session)``
    on the session's experience ``mean((rating - 3) / 2)`` (user fixed effects; sessions are runs of a
    user's interactions less than ``gap_s`` apart; gaps floored at ``gap_s``). Under the simulator's return
    model (return intensity ``rate_u x exp(return_weight x satisfaction)``, exponential gaps) the slope
    is ``-return_weight``; returns the implied weight, its standard error and the number of session pairs."""
    u, t, r = (np.asarray(a) for a in (user, timestamp, rating))
    o = np.lexsort((t, u))
    u, t, r = u[o], t[o].astype(float), r[o].astype(float)
    new = np.r_[True, (u[1:] != u[:-1]) | (np.diff(t) > gap_s)]
    start = np.flatnonzero(new)
    sid = np.cumsum(new) - 1
    su, s_start, s_end = u[start], t[start], np.maximum.reduceat(t, start)
    s_exp = np.bincount(sid, (r - 3.0) / 2.0) / np.bincount(sid)
    same = su[1:] == su[:-1]
    y = np.log(np.maximum(s_start[1:] - s_end[:-1], gap_s))[same]
    x, g = s_exp[:-1][same], su[:-1][same]
    _, g = np.unique(g, return_inverse=True)
    keep = np.bincount(g)[g] >= 2
    y, x, g = y[keep], x[keep], np.unique(g[keep], return_inverse=True)[1]
    if x.size < 3:
        return {"return_weight": float("nan"), "se": float("nan"), "pairs": int(x.size)}
    cnt = np.bincount(g)
    y = y - (np.bincount(g, y) / cnt)[g]
    x = x - (np.bincount(g, x) / cnt)[g]
    sxx = float(x @ x)
    if sxx <= 0:
        return {"return_weight": float("nan"), "se": float("nan"), "pairs": int(x.size)}
    b = float(x @ y) / sxx
    dof = max(x.size - cnt.size - 1, 1)
    se = float(np.sqrt(((y - b * x) ** 2).sum() / dof / sxx))
    return {"return_weight": -b, "se": se, "pairs": int(x.size), "users": int(cnt.size)}


def make_spec(args: argparse.Namespace) -> EnvSpec:
    spec = EnvSpec.builtin("movielens-v0")
    over: dict = {}
    if args.data:
        over["data_dir"] = args.data
    if args.split:
        over["split"] = {"kind": args.split}
    if args.implicit is not None:
        over["implicit"] = {"min_rating": args.implicit}
    if args.dynamics:
        spec = spec.with_overrides(dynamics=json.loads(args.dynamics))
    return spec.with_overrides(world=over) if over else spec


def real_activity(world, seed: int) -> np.ndarray:
    ev = build_eval_set(world, FidelityConfig(), np.random.default_rng([seed, 101]))
    return np.bincount(ev.pos_user, minlength=len(world.user_index))[ev.users].astype(float)


def ideal_counts(rate: np.ndarray, sessions_per_user: float, session_clicks: np.ndarray, kind: str,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(sessions per user, clicks per user) of the idealised simulator with session rates ``rate``."""
    n = rate.size
    if kind == "poisson":
        k = rng.poisson(rate / rate.mean() * sessions_per_user)
    else:
        total, B = max(1, int(round(sessions_per_user * n))), max(1, n // 16)  # noqa: RUF046 (a numpy float rounds to a float)
        k = np.zeros(n, np.int64)
        logw = np.log(rate)
        done = 0
        while done < total:
            b = min(B, total - done)
            keys = logw + rng.gumbel(size=n)
            k[np.argpartition(-keys, b - 1)[:b]] += 1
            done += b
    draws = rng.choice(np.asarray(session_clicks, float), size=int(k.sum()))
    return k, np.bincount(np.repeat(np.arange(n), k), draws, n)


def ceiling(real: np.ndarray, session_clicks: np.ndarray, s: float, kind: str, rng: np.random.Generator,
            reps: int) -> list[float]:
    return [_activity_ks(ideal_counts(real, s, session_clicks, kind, rng)[1], real) for _ in range(reps)]


def harness_run(spec: EnvSpec, seed: int, sessions_per_user: float, world) -> dict:
    """The harness on one seed (embedded backend, no baselines), with the simulation's internals kept."""
    kept: dict = {}
    orig = fid.simulate_browsing

    def recording(sim, users, excluded, n_sessions, concurrent, rng):
        picks = np.zeros(sim.pop.n_users, np.int64)
        weight = np.zeros(sim.pop.n_users)
        rounds = [0]
        pick = sim.pick_users

        def pick_users(rng_, count, exclude=None):
            w = sim.dynamics.return_weights(sim.pop.state, sim.pop.session_rate)
            weight[:] += w / w[users].mean()
            rounds[0] += 1
            out = pick(rng_, count, exclude)
            np.add.at(picks, out, 1)
            return out

        sim.pick_users = pick_users
        out = orig(sim, users, excluded, n_sessions, concurrent, rng)
        kept.update(out=out, picks=picks[users], weight=weight[users] / max(rounds[0], 1), users=users)
        return out

    fid.simulate_browsing = recording
    try:
        res = fid.run_fidelity(spec, None, FidelityConfig(seeds=[seed], sessions_per_user=sessions_per_user),
                               baselines=False, worlds={seed: world})
    finally:
        fid.simulate_browsing = orig
    m = {k: float(v[0]) for k, v in res.values["embedded"].items()}
    kept["metrics"] = m
    return kept


def decompose(kept: dict, real: np.ndarray, s: float, rng: np.random.Generator) -> dict[str, float]:
    out, picks = kept["out"], kept["picks"].astype(float)
    sim_users = out["user_clicks"][kept["users"]].astype(float)
    k_ideal = np.concatenate([ideal_counts(real, s, out["session_clicks"], "rounds", rng)[0] for _ in range(5)])
    cps = sim_users / np.maximum(picks, 1)
    # the pure-noise spread of per-user mean clicks per session: the same session counts, sessions shuffled
    sc = rng.permutation(np.asarray(out["session_clicks"], float))
    shuffled = np.bincount(np.repeat(np.arange(picks.size), picks.astype(np.int64)), sc, picks.size)
    shuffled /= np.maximum(picks, 1)
    good = picks > 0
    return {
        "ks_sessions": ks_distance(picks / picks.mean(), k_ideal / k_ideal.mean()),
        "ks_rate": ks_distance(kept["weight"] / kept["weight"].mean(), real / real.mean()),
        "cps_mean": float(cps[good].mean()),
        "cps_cv": float(cps[good].std() / cps[good].mean()),
        "cps_cv_shuffled": float(shuffled[good].std() / shuffled[good].mean()),
        "corr_cps_real": float(np.corrcoef(cps[good], real[good])[0, 1]),
        "corr_sessions_real": float(np.corrcoef(picks, real)[0, 1]),
    }


def mean_sd(x) -> str:
    x = np.asarray(x, float)
    return f"{x.mean():.3f} ± {x.std():.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--split", choices=("ratio", "random"), default=None)
    ap.add_argument("--implicit", type=float, default=None, metavar="MIN_RATING")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--sessions", type=float, nargs="+", default=list(SESSIONS), help="sessions per user (ceiling)")
    ap.add_argument("--reps", type=int, default=20, help="idealised simulations per seed and setting")
    ap.add_argument("--harness", type=float, nargs="*", default=[],
                    help="also run the harness at these sessions per user (its session clicks then feed the "
                         "ceiling at the same setting)")
    ap.add_argument("--dynamics", default=None, help="JSON dynamics overrides for the harness runs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    spec = make_spec(args)
    settings = movielens_settings(spec.world)
    rows: dict[str, dict] = {}
    harness: dict[str, dict] = {}
    fit: dict[str, float] = {}
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        world = build_calibrated_world(settings, seed=seed, choice=spec.choice)
        tr = world.split.train
        if seed == 0 and tr.has_ratings and tr.timed:
            fit = return_feedback_slope(tr.user, tr.timestamp, tr.rating)
        real = real_activity(world, seed)
        runs = {s: harness_run(spec, seed, s, world) for s in sorted(set(args.harness) | {10.0})}
        for s in args.sessions:
            clicks = runs.get(float(s), runs[10.0])["out"]["session_clicks"]
            rng = np.random.default_rng([seed, 909, int(s)])
            for kind in ("poisson", "rounds"):
                rows.setdefault(f"{kind}@{s:g}", {"sessions_per_user": s, "kind": kind, "ks": []})["ks"] += \
                    ceiling(real, clicks, s, kind, rng, args.reps)
        for s in args.harness:
            kept = runs[float(s)]
            d = harness.setdefault(f"{s:g}", {})
            for k in ("activity_ks", "activity_ks_matched", "activity_spearman", "clicks_per_step", "pop_curve"):
                d.setdefault(k, []).append(kept["metrics"][k])
            for k, v in decompose(kept, real, s, np.random.default_rng([seed, 919])).items():
                d.setdefault(k, []).append(v)
        print(f"seed {seed} done ({time.perf_counter() - t0:.0f}s)", flush=True)
    if fit:
        print(f"\nreturn_weight implied by the TRAIN log (within-user log-gap slope): "
              f"{fit['return_weight']:.3f} ± {fit['se']:.3f} ({fit['pairs']} session pairs, {fit['users']} users)")
    print("\nIdealised simulator (session rates = real relative activity), raw activity_ks vs real counts")
    print("| sessions/user | Poisson sessions | harness rounds |\n|---|---|---|")
    for s in args.sessions:
        print(f"| {s:g} | {mean_sd(rows[f'poisson@{s:g}']['ks'])} | {mean_sd(rows[f'rounds@{s:g}']['ks'])} |")
    if harness:
        keys = list(next(iter(harness.values())))
        print("\nHarness (embedded), mean ± sd over seeds")
        print("| sessions/user | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
        for s, d in harness.items():
            print(f"| {s} | " + " | ".join(mean_sd(d[k]) for k in keys) + " |")
    if args.json:
        summ = {k: {**{kk: vv for kk, vv in v.items() if kk != "ks"}, "mean": float(np.mean(v["ks"])),
                    "std": float(np.std(v["ks"])), "n": len(v["ks"])} for k, v in rows.items()}
        hs = {s: {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": v} for k, v in d.items()}
              for s, d in harness.items()}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": " ".join(__import__("sys").argv), "ceiling": summ,
                                               "harness": hs, "train_return_fit": fit, "seeds": args.seeds, "reps": args.reps}, indent=1) + "\n")


if __name__ == "__main__":
    main()
