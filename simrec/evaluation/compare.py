"""``simrec compare``: several recommenders on the same simulated users and seeds, one table.

Protocol, for each seed ``s``:

1. Fit data: a calibrated world (``simrec/MovieLens-v0``) gives its train split; any other world gives
   a logging run of ``fit_policy`` (uniformly random slates by default) for ``fit_episodes`` sessions on
   a separate env seeded ``s + 10_000``, whose clicks become the interactions. Every fitted recommender
   of the seed fits on the same data.
2. A user schedule: ``episodes`` users drawn with probability proportional to their session rate
   (``Population.session_rate``) from a generator seeded ``s``. Every recommender serves the same users in the same order
   (``reset(options={"user_id": ...})``), starting from the same world (``reset(seed=s)``), so differences
   between rows are paired differences.
3. Each recommender runs its sessions, learning online where it can; the run is recorded (in memory, or
   under ``out/<recommender>/seed<s>`` for ``simrec report``).

Resuming: with a :class:`~simrec.resume.Journal` (``simrec compare --out DIR``, journal in ``DIR/journal``)
each finished (recommender, seed) run's metrics are kept as one atomically written file; ``--resume``
reuses them and runs only the others (their fit data, users and env are rebuilt from the seed), so the
result equals an uninterrupted run's. Every (recommender, seed) run is independent of the others: it
starts from ``reset(seed=s)`` and the seed's deterministic user schedule and fit data.

Metrics per run (see :mod:`simrec.analysis.summary` for the shared definitions): ``ctr``,
``clicks_per_step``, ``mean_rating``, ``mean_session_length``, ``return_rate`` (the mean over finished
sessions of the user's return propensity relative to a neutral user, ``exp(return_weight * satisfaction)``
at session end: 1 is neutral, below 1 the recommender drives users away), ``catalog_coverage``,
``exposure_gini`` (Gini of how often each catalog item was shown), ``intra_list_diversity`` and
``novelty``. The table gives the mean over seeds and a 95% interval: by default (``ci="seeds"``) a
Student-t interval over the per-seed values; with ``ci="users"`` the per-session metrics (:data:`USER_RATIOS`)
get a percentile bootstrap over users instead: each seed's users are resampled with replacement (B = 1000,
seeded, the same resamples for every recommender, so rows stay paired), each metric is recomputed as a
ratio of the resampled users' sums and averaged over seeds; the other metrics keep the t interval.
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

import gymnasium
import numpy as np

from simrec.envs.spec import EnvSpec
from simrec.errors import ConfigError
from simrec.evaluation.stats import bootstrap_ratio, ci_summary, ci_table, resample_counts
from simrec.recommenders import RECOMMENDERS, FittedRecommender, Interactions, Recommender, make_recommender
from simrec.resume import Journal

METRICS = ("ctr", "clicks_per_step", "mean_rating", "mean_session_length", "return_rate", "catalog_coverage",
           "exposure_gini", "intra_list_diversity", "novelty")
HIGHER_IS_BETTER = {"ctr": True, "clicks_per_step": True, "mean_rating": True, "mean_session_length": True,
                    "return_rate": True, "catalog_coverage": True, "exposure_gini": False,
                    "intra_list_diversity": True, "novelty": True}
FIT_SEED_OFFSET = 10_000
#: The per-session metrics as ratios of per-user sums (:func:`user_stats`): ``metric -> (numerator, denominator)``.
USER_RATIOS = {"ctr": ("clicks", "shown"), "clicks_per_step": ("clicks", "steps"),
               "mean_rating": ("rating_sum", "rated"), "mean_session_length": ("length_sum", "sessions"),
               "return_rate": ("return_sum", "returns")}
USER_COLUMNS = ("shown", "clicks", "steps", "rated", "rating_sum", "length_sum", "sessions", "return_sum", "returns")
#: ``--ci`` choices: a t interval over seeds, or a bootstrap over users within seeds.
CI_METHODS = ("seeds", "users")


def make_env(env_id: str | EnvSpec, overrides: dict[str, Any] | None = None) -> gymnasium.Env:
    """The bare simrec env for ``env_id`` (no checker wrappers: every step is validated by the env itself);
    an :class:`~simrec.envs.spec.EnvSpec` builds a :class:`~simrec.envs.slate_env.SlateEnv` of that spec."""
    if isinstance(env_id, EnvSpec):
        from simrec.envs.slate_env import SlateEnv

        return SlateEnv(env_id, **(overrides or {}))
    return gymnasium.make(env_id, disable_env_checker=True, **(overrides or {})).unwrapped


def user_schedule(env: gymnasium.Env, seed: int, episodes: int) -> list[str]:
    """``episodes`` persona ids drawn with probability proportional to their session rate (seeded)."""
    pop = env.unwrapped.sim.pop
    w = pop.session_rate
    idx = np.random.default_rng([seed, 7]).choice(pop.n_users, size=episodes, p=w / w.sum())
    return [pop.user_id(int(u)) for u in idx]


def fit_interactions(env_id: str | EnvSpec, overrides: dict[str, Any] | None, seed: int, *, fit_episodes: int = 300,
                     fit_policy: str = "random") -> Interactions:
    """The interactions every fitted recommender of ``seed`` learns from (see the module docstring)."""
    from simrec.envs.registration import build_world
    from simrec.recommenders import run_episodes
    from simrec.trajectory import Recorder

    env = make_env(env_id, overrides)
    world = build_world(env.sim_spec.world)
    if getattr(world, "split", None) is not None:
        return Interactions.from_world(world)
    logger = Recorder(env, None, recommender=fit_policy, flush_every=10**9)
    policy = make_recommender(fit_policy, env.action_space, seed=seed + FIT_SEED_OFFSET)
    run_episodes(logger, policy, fit_episodes, seed=seed + FIT_SEED_OFFSET)
    logger.close()
    return Interactions.from_trajectories(logger.trajectories(), n_items=len(env.catalog))


def build_recommender(name: str, env: gymnasium.Env, seed: int, fit: Interactions | None,
                      policy: str | None = None, llm_config: dict[str, Any] | None = None,
                      **kwargs: Any) -> Recommender:
    """A recommender by name, fitted on ``fit`` if it needs fitting; ``sb3:PATH`` loads a saved SB3 policy;
    the LLM ranker gets ``llm_config`` (an :class:`~simrec.llm.client.LLMConfig` mapping)."""
    if name.startswith("sb3:") or policy:
        from simrec.recommenders.policy import load_sb3_policy

        path = policy or name[4:]
        algo = kwargs.pop("algo", "ppo")
        return load_sb3_policy(path, algo, env)
    cls = RECOMMENDERS.get(name)
    if cls is None:
        raise ConfigError(f"unknown recommender {name!r}; choose from {sorted(RECOMMENDERS)} or sb3:PATH")
    if cls.needs_env:
        kwargs["env"] = env
    if name == "llm":
        kwargs.setdefault("config", llm_config or {})
    rec = make_recommender(name, env.action_space, seed=seed, **kwargs)
    if isinstance(rec, FittedRecommender):
        if fit is None:
            raise ConfigError(f"{name} must be fitted on logged interactions, and none were given")
        rec.fit(fit)
    return rec


def return_rate(traj: Any, return_weight: float) -> float:
    """Mean ``exp(return_weight * satisfaction)`` at the end of each finished session (needs latent logging)."""
    steps, eps = traj.steps, traj.episodes
    if "latent_satisfaction" not in steps.columns or not len(eps):
        return math.nan
    done = set(eps.loc[eps["terminated"] | eps["truncated"], "episode"])
    last = steps.groupby("episode", sort=False)["latent_satisfaction"].last()
    s = last[last.index.isin(done)].to_numpy(dtype=np.float64)
    return float(np.exp(return_weight * s).mean()) if s.size else math.nan


def record_run(env: gymnasium.Env, rec: Recommender, seed: int, users: Sequence[str], *, name: str,
               out: Path | None = None, learn: bool = True, on_step: Callable[[dict[str, Any]], None] | None = None,
               metadata: dict[str, Any] | None = None) -> Any:
    """Serve ``users`` (one session each, in order) with ``rec`` from ``reset(seed=seed)``; the recorded
    :class:`~simrec.trajectory.Trajectories` (in memory, or under ``out``)."""
    from simrec.recommenders import run_episodes
    from simrec.trajectory import Recorder

    rec_env = Recorder(env, out, recommender=name, overwrite=True, flush_every=1 if out else 10**9,
                       metadata={"command": "compare", "seed": seed, **(metadata or {})})
    rec.reset(seed=seed)
    try:
        run_episodes(rec_env, rec, len(users), seed=seed, learn=learn, on_step=on_step,
                     reset_options=lambda ep: {"user_id": users[ep]})
    finally:
        rec_env.close()
    return rec_env.trajectories()


def user_stats(traj: Any, return_weight: float) -> dict[str, list[Any]]:
    """Per-user sums of a run behind the per-session metrics (:data:`USER_RATIOS`), column-wise: ``user`` (ids,
    sorted) and each of :data:`USER_COLUMNS`. Summed over users, each ratio is the run's metric of
    :func:`run_metrics` (``sessions``/``length_sum`` count finished sessions, all if none finished;
    ``returns``/``return_sum`` count finished sessions with latent logging and sum ``exp(w * satisfaction)``)."""
    import pandas as pd

    steps, eps = traj.steps, traj.episodes
    if not len(steps):
        return {"user": [], **{c: [] for c in USER_COLUMNS}}
    clicked = [np.asarray(c, dtype=bool) for c in steps["clicked"]]
    rating = [np.asarray(r, dtype=np.float64) for r in steps["rating"]]
    per_step = pd.DataFrame({
        "user": steps["user"].astype(str).to_numpy(),
        "shown": [c.size for c in clicked], "clicks": [int(c.sum()) for c in clicked], "steps": 1,
        "rated": [int(np.isfinite(r).sum()) for r in rating],
        "rating_sum": [float(np.nansum(r)) for r in rating]})
    g = per_step.groupby("user", sort=True)[["shown", "clicks", "steps", "rated", "rating_sum"]].sum()
    done = eps["terminated"] | eps["truncated"]
    basis = eps[done] if done.any() else eps
    g["length_sum"] = basis.groupby(basis["user"].astype(str))["steps"].sum()
    g["sessions"] = basis.groupby(basis["user"].astype(str)).size()
    g["return_sum"], g["returns"] = 0.0, 0
    if "latent_satisfaction" in steps.columns and done.any():
        last = steps.groupby("episode", sort=False)["latent_satisfaction"].last()
        fin = eps.loc[done, ["episode", "user"]].assign(s=lambda d: d["episode"].map(last)).dropna(subset=["s"])
        fin = fin.assign(e=np.exp(return_weight * fin["s"].to_numpy(dtype=np.float64)))
        by = fin.groupby(fin["user"].astype(str))
        g["return_sum"], g["returns"] = by["e"].sum(), by.size()
    g = g.fillna(0)
    return {"user": [str(u) for u in g.index],
            **{c: [float(v) if c in ("rating_sum", "return_sum") else int(v) for v in g[c]] for c in USER_COLUMNS}}


def run_metrics(traj: Any, env: gymnasium.Env) -> dict[str, float]:
    """:func:`~simrec.analysis.summary.summarize` plus ``exposure_gini`` and ``return_rate`` of a run."""
    from simrec.analysis.exposure import exposure_counts, gini
    from simrec.analysis.summary import summarize

    base = env.unwrapped
    summary = summarize(traj, catalog=base.catalog)
    summary["exposure_gini"] = gini(exposure_counts(traj, len(base.catalog)))
    summary["return_rate"] = return_rate(traj, base.sim_spec.dynamics.satisfaction.return_weight)
    return summary


def run_recommender(env: gymnasium.Env, rec: Recommender, seed: int, users: Sequence[str], *, name: str,
                    out: Path | None = None, learn: bool = True) -> dict[str, float]:
    """:func:`record_run`, then :func:`run_metrics`."""
    return run_metrics(record_run(env, rec, seed, users, name=name, out=out, learn=learn), env)


@dataclass
class CompareResult:
    """Per-recommender, per-seed metrics, with the settings that produced them.

    ``users`` holds each run's :func:`user_stats` (same layout as ``runs``); ``ci`` picks the interval of
    :meth:`aggregate` (:data:`CI_METHODS`); ``replicates`` and ``bootstrap_seed`` set the user bootstrap."""

    runs: dict[str, list[dict[str, float]]]
    seeds: list[int]
    info: dict[str, Any] = field(default_factory=dict)
    users: dict[str, list[dict[str, list[Any]] | None]] = field(default_factory=dict)
    ci: str = "seeds"
    replicates: int = 1000
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        if self.ci not in CI_METHODS:
            raise ConfigError(f"unknown interval {self.ci!r}. Fix: --ci seeds (t over seeds) or --ci users "
                              "(bootstrap over users)")
        if self.replicates < 1:
            raise ConfigError(f"the user bootstrap needs at least 1 replicate, got {self.replicates}. "
                              "Fix: --replicates 1000")

    def aggregate(self, metrics: Sequence[str] = METRICS) -> dict[str, dict[str, dict[str, Any]]]:
        """``{recommender: {metric: {mean, ci_low, ci_high, values, ci}}}``; ``ci`` says which interval the
        cell has (``"users"`` for the per-session metrics under ``ci="users"``, else ``"seeds"``)."""
        out = {name: {m: {**ci_summary([r.get(m, math.nan) for r in runs]), "ci": "seeds"} for m in metrics}
               for name, runs in self.runs.items()}
        if self.ci == "users":
            for name, cells in self.user_intervals([m for m in metrics if m in USER_RATIOS]).items():
                for m, (lo, hi) in cells.items():
                    out[name][m].update(ci_low=lo, ci_high=hi, ci="users")
        return out

    def user_intervals(self, metrics: Sequence[str] = tuple(USER_RATIOS)) -> dict[str, dict[str, tuple[float, float]]]:
        """95% user-bootstrap intervals ``{recommender: {metric: (low, high)}}`` of per-session ``metrics``.

        For each seed, one set of resamples of its users (seeded ``[bootstrap_seed, seed]``) serves every
        recommender and metric, so the intervals of different rows are paired."""
        for name, runs in self.runs.items():
            stats = self.users.get(name, [])
            if len(stats) != len(runs) or any(st is None for st in stats):
                raise ConfigError(f"--ci users needs the per-user sums of every run, and some runs of {name} have "
                                  "none (journaled by an older simrec, or run distributed). Fix: rerun them "
                                  "without --resume, or use --ci seeds")
        counts, order = [], []
        for k, seed in enumerate(self.seeds):
            ids = sorted({u for stats in self.users.values() for u in stats[k]["user"]})  # type: ignore[index]
            order.append({u: i for i, u in enumerate(ids)})
            counts.append(resample_counts(len(ids), self.replicates, [self.bootstrap_seed, int(seed)]) if ids
                          else np.zeros((self.replicates, 0)))
        out: dict[str, dict[str, tuple[float, float]]] = {}
        for name in self.runs:
            cols = [self._aligned(st, order[k]) for k, st in enumerate(self.users[name])]  # type: ignore[arg-type]
            out[name] = {}
            for m in metrics:
                a, b = USER_RATIOS[m]
                _, lo, hi = bootstrap_ratio([c[a] for c in cols], [c[b] for c in cols], counts=counts)
                out[name][m] = (lo, hi)
        return out

    @staticmethod
    def _aligned(stats: dict[str, list[Any]], order: dict[str, int]) -> dict[str, np.ndarray]:
        """``stats`` columns as arrays over the seed's users in ``order`` (0 for a user this run lacks)."""
        idx = np.asarray([order[u] for u in stats["user"]], dtype=np.int64)
        cols = {}
        for c in USER_COLUMNS:
            v = np.zeros(len(order))
            v[idx] = np.asarray(stats[c], dtype=np.float64)
            cols[c] = v
        return cols

    def ci_info(self) -> dict[str, Any]:
        """Which interval the table and JSON give (recorded in :meth:`to_dict` as ``ci``)."""
        if self.ci == "seeds":
            return {"method": "seeds", "level": 0.95, "interval": "Student t over per-seed values"}
        return {"method": "users", "level": 0.95,
                "interval": "percentile bootstrap over users resampled with replacement within each seed, "
                            "metric averaged over seeds",
                "replicates": self.replicates, "seed": self.bootstrap_seed, "metrics": list(USER_RATIOS),
                "other_metrics": "Student t over per-seed values"}

    def describe_ci(self) -> str:
        """One line naming the interval, for the table's caption."""
        if self.ci == "seeds":
            return "mean ± 95% CI half-width over seeds (t)"
        return (f"mean ± 95% CI half-width; per-session metrics: bootstrap over users within seeds "
                f"(B={self.replicates}, seed {self.bootstrap_seed}); others: t over seeds")

    def markdown(self, metrics: Sequence[str] = METRICS) -> str:
        return ci_table(self.aggregate(metrics), metrics, HIGHER_IS_BETTER)

    def to_dict(self) -> dict[str, Any]:
        return {"seeds": self.seeds, "metrics": list(METRICS), "ci": self.ci_info(), "recommenders": self.aggregate(),
                "runs": self.runs, "info": self.info}


def compare(env_id: str, recommenders: Sequence[str], *, seeds: Sequence[int] = (0, 1, 2, 3, 4), episodes: int = 100,
            overrides: dict[str, Any] | None = None, fit_episodes: int = 300, fit_policy: str = "random",
            out: str | Path | None = None, policy: str | None = None, progress: bool = True,
            llm_config: dict[str, Any] | None = None, log: Callable[[str], None] = lambda s: None,
            journal: Journal | None = None, ci: str = "seeds", replicates: int = 1000,
            bootstrap_seed: int = 0) -> CompareResult:
    """Run the protocol of the module docstring and return every run's metrics and per-user sums.

    ``journal`` keeps each finished (recommender, seed) run's metrics and reuses those it already holds;
    ``ci``, ``replicates`` and ``bootstrap_seed`` only say how :class:`CompareResult` draws its intervals."""
    from tqdm.auto import tqdm

    names = list(recommenders)
    if not names:
        raise ConfigError("no recommenders to compare. Fix: --recommenders random,popular,...")
    result = CompareResult({n: [] for n in names}, list(seeds), users={n: [] for n in names}, ci=ci,
                           replicates=replicates, bootstrap_seed=bootstrap_seed)  # checks ci before any run
    runs, users_of = result.runs, result.users

    def keep(name: str, unit: dict[str, Any]) -> None:
        unit = dict(unit)
        users_of[name].append(unit.pop("per_user", None))  # absent in units journaled by an older simrec
        runs[name].append(unit)

    t0 = time.perf_counter()
    timing: dict[str, float] = {"fit_data_s": 0.0, "fit_s": 0.0, "run_s": 0.0}
    with tqdm(total=len(seeds) * len(names), desc="compare", unit="run", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for seed in seeds:
            done = {n: journal.get(_unit(n, seed)) for n in names} if journal is not None else {}
            todo = [n for n in names if done.get(n) is None]
            if not todo:  # the whole seed is journaled: no fit data, env or users needed
                for name in names:
                    keep(name, done[name])
                bar.update(len(names))
                continue
            needs_fit = any(n in RECOMMENDERS and issubclass(RECOMMENDERS[n], FittedRecommender) for n in todo)
            t = time.perf_counter()
            fit = fit_interactions(env_id, overrides, seed, fit_episodes=fit_episodes,
                                   fit_policy=fit_policy) if needs_fit else None
            timing["fit_data_s"] += time.perf_counter() - t
            env = make_env(env_id, overrides)
            users = user_schedule(env, seed, episodes)
            for name in names:
                if done.get(name) is not None:
                    keep(name, done[name])
                    bar.update(1)
                    continue
                t = time.perf_counter()
                rec = build_recommender(name, env, seed, fit, policy=policy if name == "sb3" else None,
                                        llm_config=llm_config)
                timing["fit_s"] += time.perf_counter() - t
                t = time.perf_counter()
                target = Path(out) / name.replace(":", "_").replace("/", "_") / f"seed{seed}" if out else None
                traj = record_run(env, rec, seed, users, name=name, out=target)
                summary = run_metrics(traj, env)
                unit = {**summary, "per_user": user_stats(traj, env.sim_spec.dynamics.satisfaction.return_weight)}
                timing["run_s"] += time.perf_counter() - t
                if journal is not None:  # after its log is closed: a journaled run is a finished one
                    journal.put(_unit(name, seed), unit)
                keep(name, unit)
                if hasattr(rec, "close"):
                    rec.close()
                bar.set_postfix(seed=seed, rec=name, ctr=f"{summary.get('ctr', math.nan):.3f}", refresh=False)
                bar.update(1)
            env.close()
    timing["total_s"] = time.perf_counter() - t0
    result.info = {"env": env_id, "overrides": overrides or {}, "episodes": episodes, "fit_episodes": fit_episodes,
                   "fit_policy": fit_policy, "timing": {k: round(v, 2) for k, v in timing.items()}}
    return result


def _unit(name: str, seed: int) -> str:
    return f"{name}/seed{seed}"


# -- CLI ---------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", default="simrec/Synthetic-v0", help="registered env id (see `simrec envs`)")
    p.add_argument("--data", default=None, help="dataset directory for simrec/MovieLens-v0 (its train split is the fit data)")
    p.add_argument("--recommenders", default="random,popular,greedy,linucb,itemknn,als,ease,bad",
                   help="comma-separated names (see `simrec compare --list`), sb3 with --policy")
    p.add_argument("--policy", default=None, help="a saved SB3 model.zip to compare as 'sb3'")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--episodes", type=int, default=100, help="sessions per recommender and seed")
    p.add_argument("--fit-episodes", type=int, default=300, help="logging-policy sessions to fit on (synthetic worlds)")
    p.add_argument("--fit-policy", default="random")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--out", default=None, help="also write each run's trajectory log under this directory, and "
                                               "journal each finished (recommender, seed) run in OUT/journal")
    p.add_argument("--resume", action="store_true",
                   help="after a crash: reuse the finished (recommender, seed) runs journaled in --out, run the rest")
    p.add_argument("--json", default=None, help="write the result as JSON")
    p.add_argument("--ci", choices=CI_METHODS, default="seeds",
                   help="95%% intervals: 'seeds', Student t over the per-seed values (default); 'users', a bootstrap "
                        "over users resampled within each seed for the per-session metrics (CTR, clicks per step, "
                        "mean rating, session length, return rate; the others keep 'seeds')")
    p.add_argument("--replicates", type=int, default=1000, help="bootstrap resamples for --ci users (default 1000)")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the --ci users resamples (default 0)")
    p.add_argument("--list", action="store_true", help="list the recommenders and exit")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible server for the 'llm' ranker (default: bundled model)")
    p.add_argument("--model", default=None, help="model name for the 'llm' ranker")
    p.add_argument("--no-progress", action="store_true")


def cli_recommenders_and_overrides(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """The recommender names and spec overrides ``simrec compare``'s options ask for."""
    names = [n.strip() for n in args.recommenders.split(",") if n.strip()]
    if args.policy and "sb3" not in names:
        names.append("sb3")
    overrides: dict[str, Any] = {}
    if args.data:
        overrides["world"] = {"data_dir": str(Path(args.data).resolve())}
    if args.max_steps:
        overrides["max_steps"] = args.max_steps
    return names, overrides


def run_cli(args: argparse.Namespace) -> int:
    if args.list:
        from simrec.recommenders import fitted_names

        fitted = set(fitted_names())
        for name, cls in sorted(RECOMMENDERS.items()):
            kind = ("fitted on logs" if name in fitted else "reads hidden state (cheat)" if cls.cheat
                    else "needs the env" if cls.needs_env else "online")
            print(f"{name:10s} {kind:22s} {(cls.__doc__ or '').strip().splitlines()[0]}")
        return 0
    names, overrides = cli_recommenders_and_overrides(args)
    say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    from simrec.llm.endpoint import llm_endpoint
    from simrec.resume import with_llm_cache

    if args.resume and not args.out:
        raise ConfigError("--resume reuses the runs journaled in --out DIR. Fix: pass --out DIR.")
    journal = Journal(Path(args.out) / "journal", _fingerprint(args, overrides), resume=args.resume,
                      command="compare") if args.out else None
    if journal is not None and journal.resumed:
        say(f"resuming: {len(journal.units())} finished runs in {journal.path}")
    with llm_endpoint("llm" if "llm" in names else None, args.base_url, args.model) as llm_config:
        if llm_config is not None and journal is not None:  # the LLM ranker's calls, replayed on resume
            llm_config = with_llm_cache(llm_config, journal.path)
        result = compare(args.env, names, seeds=list(range(args.seeds)), episodes=args.episodes, overrides=overrides,
                         fit_episodes=args.fit_episodes, fit_policy=args.fit_policy, out=args.out, policy=args.policy,
                         progress=not args.no_progress, llm_config=llm_config, log=say, journal=journal,
                         ci=args.ci, replicates=args.replicates, bootstrap_seed=args.bootstrap_seed)
    print(result.markdown())
    t = result.info["timing"]
    print(f"\n{args.env}: {len(names)} recommenders x {args.seeds} seeds x {args.episodes} sessions, "
          f"{result.describe_ci()}; {t['total_s']:.0f}s", file=sys.stderr)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1, default=float) + "\n", encoding="utf-8")
    return 0


def _fingerprint(args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    """The arguments every (recommender, seed) run depends on (``--recommenders`` and ``--seeds`` only
    say which runs there are, so a resume may add some)."""
    fp: dict[str, Any] = {"--env": args.env, "--data": overrides.get("world", {}).get("data_dir"),
                          "--max-steps": overrides.get("max_steps"), "--episodes": args.episodes,
                          "--fit-episodes": args.fit_episodes,
                          "--fit-policy": args.fit_policy, "--model": args.model, "--policy": None}
    if args.policy:
        import hashlib

        fp["--policy"] = {"path": args.policy, "sha256": hashlib.sha256(Path(args.policy).read_bytes()).hexdigest()}
    return fp
