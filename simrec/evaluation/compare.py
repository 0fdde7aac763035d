"""``simrec compare``: several recommenders on the same simulated users and seeds, one table.

Protocol, for each seed ``s``:

1. Fit data: a calibrated world (``simrec/MovieLens-v0``) gives its train split; any other world gives
   a logging run of ``fit_policy`` (uniformly random slates by default) for ``fit_episodes`` sessions on
   a separate env seeded ``s + 10_000``, whose clicks become the interactions. Every fitted recommender
   of the seed fits on the same data.
2. A user schedule: ``episodes`` users drawn with probability proportional to ``0.2 + activity``
   from a generator seeded ``s``. Every recommender serves the same users in the same order
   (``reset(options={"user_id": ...})``), starting from the same world (``reset(seed=s)``), so differences
   between rows are paired differences.
3. Each recommender runs its sessions, learning online where it can; the run is recorded (in memory, or
   under ``out/<recommender>/seed<s>`` for ``simrec report``).

Metrics per run (see :mod:`simrec.analysis.summary` for the shared definitions): ``ctr``,
``clicks_per_step``, ``mean_rating``, ``mean_session_length``, ``return_rate`` (the mean over finished
sessions of the user's return propensity relative to a neutral user, ``exp(return_weight * satisfaction)``
at session end: 1 is neutral, below 1 the recommender drives users away), ``catalog_coverage``,
``exposure_gini`` (Gini of how often each catalog item was shown), ``intra_list_diversity`` and
``novelty``. The table gives the mean over seeds and a 95% Student-t interval.
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

from simrec.errors import ConfigError
from simrec.evaluation.stats import ci_summary, ci_table
from simrec.recommenders import RECOMMENDERS, FittedRecommender, Interactions, Recommender, make_recommender

METRICS = ("ctr", "clicks_per_step", "mean_rating", "mean_session_length", "return_rate", "catalog_coverage",
           "exposure_gini", "intra_list_diversity", "novelty")
HIGHER_IS_BETTER = {"ctr": True, "clicks_per_step": True, "mean_rating": True, "mean_session_length": True,
                    "return_rate": True, "catalog_coverage": True, "exposure_gini": False,
                    "intra_list_diversity": True, "novelty": True}
FIT_SEED_OFFSET = 10_000


def make_env(env_id: str, overrides: dict[str, Any] | None = None) -> gymnasium.Env:
    """The bare simrec env for ``env_id`` (no checker wrappers: every step is validated by the env itself)."""
    return gymnasium.make(env_id, disable_env_checker=True, **(overrides or {})).unwrapped


def user_schedule(env: gymnasium.Env, seed: int, episodes: int) -> list[str]:
    """``episodes`` persona ids drawn with probability proportional to ``0.2 + activity`` (seeded)."""
    pop = env.unwrapped.sim.pop
    w = 0.2 + pop.trait("activity").astype(np.float64)
    idx = np.random.default_rng([seed, 7]).choice(pop.n_users, size=episodes, p=w / w.sum())
    return [pop.user_id(int(u)) for u in idx]


def fit_interactions(env_id: str, overrides: dict[str, Any] | None, seed: int, *, fit_episodes: int = 300,
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
    """Per-recommender, per-seed metrics, with the settings that produced them."""

    runs: dict[str, list[dict[str, float]]]
    seeds: list[int]
    info: dict[str, Any] = field(default_factory=dict)

    def aggregate(self, metrics: Sequence[str] = METRICS) -> dict[str, dict[str, dict[str, Any]]]:
        """``{recommender: {metric: {mean, ci_low, ci_high, values}}}``."""
        return {name: {m: ci_summary([r.get(m, math.nan) for r in runs]) for m in metrics}
                for name, runs in self.runs.items()}

    def markdown(self, metrics: Sequence[str] = METRICS) -> str:
        return ci_table(self.aggregate(metrics), metrics, HIGHER_IS_BETTER)

    def to_dict(self) -> dict[str, Any]:
        return {"seeds": self.seeds, "metrics": list(METRICS), "recommenders": self.aggregate(),
                "runs": self.runs, "info": self.info}


def compare(env_id: str, recommenders: Sequence[str], *, seeds: Sequence[int] = (0, 1, 2, 3, 4), episodes: int = 100,
            overrides: dict[str, Any] | None = None, fit_episodes: int = 300, fit_policy: str = "random",
            out: str | Path | None = None, policy: str | None = None, progress: bool = True,
            llm_config: dict[str, Any] | None = None, log: Callable[[str], None] = lambda s: None) -> CompareResult:
    """Run the protocol of the module docstring and return every run's metrics."""
    from tqdm.auto import tqdm

    names = list(recommenders)
    if not names:
        raise ConfigError("no recommenders to compare. Fix: --recommenders random,popular,...")
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    t0 = time.perf_counter()
    timing: dict[str, float] = {"fit_data_s": 0.0, "fit_s": 0.0, "run_s": 0.0}
    needs_fit = any(n in RECOMMENDERS and issubclass(RECOMMENDERS[n], FittedRecommender) for n in names)
    with tqdm(total=len(seeds) * len(names), desc="compare", unit="run", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for seed in seeds:
            t = time.perf_counter()
            fit = fit_interactions(env_id, overrides, seed, fit_episodes=fit_episodes,
                                   fit_policy=fit_policy) if needs_fit else None
            timing["fit_data_s"] += time.perf_counter() - t
            env = make_env(env_id, overrides)
            users = user_schedule(env, seed, episodes)
            for name in names:
                t = time.perf_counter()
                rec = build_recommender(name, env, seed, fit, policy=policy if name == "sb3" else None,
                                        llm_config=llm_config)
                timing["fit_s"] += time.perf_counter() - t
                t = time.perf_counter()
                target = Path(out) / name.replace(":", "_").replace("/", "_") / f"seed{seed}" if out else None
                summary = run_recommender(env, rec, seed, users, name=name, out=target)
                timing["run_s"] += time.perf_counter() - t
                runs[name].append(summary)
                if hasattr(rec, "close"):
                    rec.close()
                bar.set_postfix(seed=seed, rec=name, ctr=f"{summary.get('ctr', math.nan):.3f}", refresh=False)
                bar.update(1)
            env.close()
    timing["total_s"] = time.perf_counter() - t0
    info = {"env": env_id, "overrides": overrides or {}, "episodes": episodes, "fit_episodes": fit_episodes,
            "fit_policy": fit_policy, "timing": {k: round(v, 2) for k, v in timing.items()}}
    return CompareResult(runs, list(seeds), info)


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
    p.add_argument("--out", default=None, help="also write each run's trajectory log under this directory")
    p.add_argument("--json", default=None, help="write the result as JSON")
    p.add_argument("--list", action="store_true", help="list the recommenders and exit")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible server for the 'llm' ranker (default: bundled model)")
    p.add_argument("--model", default=None, help="model name for the 'llm' ranker")
    p.add_argument("--no-progress", action="store_true")


def run_cli(args: argparse.Namespace) -> int:
    if args.list:
        from simrec.recommenders import fitted_names

        fitted = set(fitted_names())
        for name, cls in sorted(RECOMMENDERS.items()):
            kind = ("fitted on logs" if name in fitted else "reads hidden state (cheat)" if cls.cheat
                    else "needs the env" if cls.needs_env else "online")
            print(f"{name:10s} {kind:22s} {(cls.__doc__ or '').strip().splitlines()[0]}")
        return 0
    names = [n.strip() for n in args.recommenders.split(",") if n.strip()]
    if args.policy and "sb3" not in names:
        names.append("sb3")
    overrides: dict[str, Any] = {}
    if args.data:
        overrides["world"] = {"data_dir": str(Path(args.data).resolve())}
    if args.max_steps:
        overrides["max_steps"] = args.max_steps
    say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    from simrec.llm.endpoint import llm_endpoint

    with llm_endpoint("llm" if "llm" in names else None, args.base_url, args.model) as llm_config:
        result = compare(args.env, names, seeds=list(range(args.seeds)), episodes=args.episodes, overrides=overrides,
                         fit_episodes=args.fit_episodes, fit_policy=args.fit_policy, out=args.out, policy=args.policy,
                         progress=not args.no_progress, llm_config=llm_config, log=say)
    print(result.markdown())
    t = result.info["timing"]
    print(f"\n{args.env}: {len(names)} recommenders x {args.seeds} seeds x {args.episodes} sessions, "
          f"mean ± 95% CI half-width over seeds; {t['total_s']:.0f}s", file=sys.stderr)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1, default=float) + "\n", encoding="utf-8")
    return 0
