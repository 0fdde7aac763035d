"""``simrec compare`` grids, stress-test seeds and fidelity seeds, one unit per worker.

* :func:`run_grid`: the protocol of :func:`simrec.evaluation.compare.compare`, unit = (seed, recommender).
  Each seed's fit data is computed once (one unit per seed, in parallel) and shared with that seed's
  units; every unit builds its own env, so its run is the run ``compare`` does for it. Returns the same
  :class:`~simrec.evaluation.compare.CompareResult`; with ``out``, the units' logs are merged into one log.
* :func:`run_stress`: a registered stress test, unit = seed (each seed is a full repetition already).
* :func:`run_fidelity_seeds`: :func:`~simrec.data.fidelity.run_fidelity`, unit = seed (each recalibrates).

Results are assembled in seed and recommender order, never in completion order, so a grid gives the
same numbers on 1 worker, 2 workers or a cluster.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from simrec.distributed.executor import Executor, ExecutorConfig
from simrec.distributed.merge import MergeReport, UnitLog, log_digest, merge_logs
from simrec.distributed.units import UnitResult, attempt_dir, provenance
from simrec.errors import ConfigError

STAGING = ".staging"
log = logging.getLogger("simrec.distributed")


def _executor(executor: Executor | ExecutorConfig | str | dict | None, workers: int | None,
              ray_address: str | None) -> contextlib.AbstractContextManager[Executor]:
    """The executor to use: a given :class:`Executor` as it is (its caller closes it, so a process pool can
    serve many grids), else a new one, closed after the grid."""
    if isinstance(executor, Executor):
        if workers is not None or ray_address is not None:
            raise ConfigError("workers/ray_address configure a new executor; set them on the Executor you pass")
        return contextlib.nullcontext(executor)
    return Executor(ExecutorConfig.parse(executor, workers=workers, address=ray_address))


def _bar(total: int, desc: str, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="unit", disable=not progress, file=sys.stderr, dynamic_ncols=True)


def _check_out(out: Path | None, overwrite: bool) -> None:
    # fail before any work is done, not after the grid has run
    if out is not None and (out / "manifest.json").exists() and not overwrite:
        raise FileExistsError(f"{out}: already holds a trajectory log. Fix: choose another directory or pass "
                              "overwrite=True (--overwrite).")


def split_llm_pools(config: Any, workers: int) -> Any:
    """A copy of ``config`` (nested dicts/lists) in which every LLM endpoint pool (a dict with ``endpoints``,
    see :mod:`simrec.llm.pool`) holds one worker's share of each endpoint's concurrency, so ``workers``
    workers together never exceed an endpoint's limit (each keeps at least 1)."""
    if isinstance(config, list):
        return [split_llm_pools(v, workers) for v in config]
    if not isinstance(config, dict):
        return config
    out = {k: split_llm_pools(v, workers) for k, v in config.items()}
    if isinstance(config.get("endpoints"), list):
        from simrec.llm.pool import PoolConfig

        pool, _ = PoolConfig.from_backend_config(config)
        assert pool is not None
        for e in pool.endpoints:
            if e.concurrency < workers:
                log.warning("LLM endpoint %s allows %d requests at once but %d workers each keep one: up to %d may "
                            "reach it. Fix: fewer workers, or a higher concurrency if the server takes it.",
                            e.label(), e.concurrency, workers, workers)
        out["endpoints"] = [e.model_dump(mode="json", exclude_none=True) | (
            {"api_key": e.api_key.get_secret_value()} if e.api_key else {}) for e in pool.split(workers).endpoints]
    return out


# -- compare -------------------------------------------------------------------------------------------
def _fit_unit(env_id: str, overrides: dict[str, Any] | None, seed: int, fit_episodes: int, fit_policy: str) -> Any:
    from simrec.evaluation.compare import fit_interactions

    return fit_interactions(env_id, overrides, seed, fit_episodes=fit_episodes, fit_policy=fit_policy)


def compare_unit(env_id: str, overrides: dict[str, Any] | None, seed: int, name: str, episodes: int, fit: Any,
                 policy: str | None, llm_config: dict[str, Any] | None, staging: str | None,
                 on_step: Callable[[dict[str, Any]], None] | None = None) -> UnitResult:
    """One recommender on one seed, as :func:`~simrec.evaluation.compare.compare` runs it; the run's log
    goes to a fresh attempt directory under ``staging`` (none without)."""
    from simrec.evaluation.compare import build_recommender, make_env, record_run, run_metrics, user_schedule

    t0 = time.perf_counter()
    key = f"{name}/seed{seed}"
    env = make_env(env_id, overrides)
    try:
        users = user_schedule(env, seed, episodes)
        rec = build_recommender(name, env, seed, fit, policy=policy if name == "sb3" else None, llm_config=llm_config)
        target = attempt_dir(staging, key) if staging else None
        try:
            traj = record_run(env, rec, seed, users, name=name, out=target, on_step=on_step,
                              metadata={"unit": key})
            metrics = run_metrics(traj, env)
        finally:
            if hasattr(rec, "close"):
                rec.close()
    finally:
        env.close()
    return UnitResult(key, metrics, str(target) if target else None, log_digest(target) if target else None,
                      time.perf_counter() - t0, **provenance())


def run_grid(env_id: str, recommenders: Sequence[str], *, seeds: Sequence[int] = (0, 1, 2, 3, 4),
             episodes: int = 100, overrides: dict[str, Any] | None = None, fit_episodes: int = 300,
             fit_policy: str = "random", out: str | Path | None = None, policy: str | None = None,
             llm_config: dict[str, Any] | None = None, executor: Executor | ExecutorConfig | str | dict | None = "ray",
             workers: int | None = None, ray_address: str | None = None, overwrite: bool = False,
             keep_staging: bool = False, progress: bool = True, llm_share: int | None = None,
             on_step: Callable[[dict[str, Any]], None] | None = None) -> Any:
    """:func:`~simrec.evaluation.compare.compare` with its (seed, recommender) runs spread over workers.

    The arguments before ``executor`` are ``compare``'s. ``out``: every run's log is merged into one log
    there (one part per run, in seed then recommender order; ``simrec.distributed.unit_keys`` labels the
    episodes; ``verify_log`` checks it), staged under ``out/.staging`` (removed after the merge unless
    ``keep_staging``). ``executor``/``workers``/``ray_address``: see :class:`ExecutorConfig` (or pass a
    ready :class:`Executor` to reuse it). LLM endpoint pools in ``overrides``/``llm_config`` are split so
    that the workers together stay within each endpoint's concurrency (:func:`split_llm_pools`);
    ``llm_share`` is how many workers share an endpoint (default: all; with endpoints on 127.0.0.1 of every
    node, the workers per node). ``on_step`` is called with each step's info inside the workers (it must
    pickle). Returns a ``CompareResult`` whose ``info["distributed"]`` says where each unit ran
    and what the merge wrote.
    """
    from simrec.evaluation.compare import CompareResult
    from simrec.recommenders import RECOMMENDERS, FittedRecommender

    names = list(recommenders)
    if not names:
        raise ConfigError("no recommenders to compare. Fix: --recommenders random,popular,...")
    seeds = [int(s) for s in seeds]
    given_overrides = overrides
    outp = Path(out) if out is not None else None
    _check_out(outp, overwrite)
    staging = outp / STAGING if outp is not None else None
    t0 = time.perf_counter()
    needs_fit = any(n in RECOMMENDERS and issubclass(RECOMMENDERS[n], FittedRecommender) for n in names)
    units = [(seed, name) for seed in seeds for name in names]
    with _executor(executor, workers, ray_address) as ex, _bar(len(units) + (len(seeds) if needs_fit else 0),
                                                               "compare", progress) as bar:
        workers_used = ex.workers
        # LLM endpoint pools: each worker holds its share of every endpoint's concurrency
        share = llm_share or workers_used
        overrides, llm_config = split_llm_pools(overrides, share), split_llm_pools(llm_config, share)
        fits: dict[int, Any] = {}
        if needs_fit:
            data = ex.map(_fit_unit, [(env_id, overrides, s, fit_episodes, fit_policy) for s in seeds],
                          keys=[f"fit/seed{s}" for s in seeds], on_result=lambda i, r: bar.update(1))
            fits = {s: ex.share(d) for s, d in zip(seeds, data)}  # one copy per seed, however many units read it
        t_fit = time.perf_counter() - t0
        args = [(env_id, overrides, seed, name, episodes, fits.get(seed), policy, llm_config,
                 str(staging) if staging else None, on_step) for seed, name in units]
        results: list[UnitResult] = ex.map(compare_unit, args, keys=[f"{n}/seed{s}" for s, n in units],
                                           on_result=lambda i, r: bar.update(1))
        t_units = time.perf_counter() - t0 - t_fit
        report = None
        if outp is not None:  # each unit's part is rewritten by a worker; this process writes the manifest
            logs = [UnitLog(r.key, r.log, {"recommender": n, "seed": s}, r.digest)  # type: ignore[arg-type]
                    for (s, n), r in zip(units, results)]
            report = merge_logs(logs, outp, overwrite=overwrite,
                                metadata={"command": "compare", "seeds": seeds, "recommenders": names},
                                staging=staging, keep_staging=keep_staging, executor=ex)
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for (_, name), r in zip(units, results):
        runs[name].append(r.value)
    total = time.perf_counter() - t0
    info = {"env": env_id, "overrides": given_overrides or {}, "episodes": episodes, "fit_episodes": fit_episodes,
            "fit_policy": fit_policy,
            "timing": {"fit_data_s": round(t_fit, 2), "units_s": round(t_units, 2),
                       "merge_s": round(total - t_fit - t_units, 2), "total_s": round(total, 2)},
            "distributed": _distributed_info(ex, workers_used, results, report)}
    return CompareResult(runs, seeds, info)


def _distributed_info(ex: Executor, workers: int, results: Sequence[UnitResult],
                      report: MergeReport | None) -> dict[str, Any]:
    return {"executor": ex.kind, "workers": workers, "units": [r.where() for r in results],
            "unit_seconds": round(sum(r.seconds for r in results), 3),
            "log": report.path if report else None, "digest": report.digest if report else None,
            "discarded_attempts": report.discarded if report else []}


# -- stress tests --------------------------------------------------------------------------------------
def stress_unit(name: str, config: Any, seed: int) -> UnitResult:
    """One seed of stress test ``name``: its full ``run()`` (LLM tests set up their endpoint and cache there)
    restricted to ``seed``; the value is what ``run_seed`` returned, ``(metrics, curves)``."""
    from simrec.stress import get_stress_test

    t0 = time.perf_counter()
    cfg = config.model_copy(update={"seeds": [seed], "out": None, "progress": False})
    res = get_stress_test(name)(cfg).run()
    metrics = {rec: {k: v[0] for k, v in per.items()} for rec, per in res.metrics.items()}
    curves = {c: {rec: runs[0] for rec, runs in per.items()} for c, per in res.curves.items()}
    return UnitResult(f"{name}/seed{seed}", (metrics, curves), seconds=time.perf_counter() - t0, **provenance())


def run_stress(name: str, config: Any = None, *, executor: Executor | ExecutorConfig | str | dict | None = "ray",
               workers: int | None = None, ray_address: str | None = None, progress: bool = True,
               llm_share: int | None = None) -> Any:
    """Stress test ``name`` (a :class:`~simrec.stress.StressConfig` or its fields) with its seeds spread over
    workers; the same :class:`~simrec.stress.StressResult` as ``run_stress_test``, saved under ``config.out``.
    LLM endpoint pools are split among the workers as in :func:`run_grid`."""
    from simrec.stress import StressConfig, StressTest, get_stress_test

    cls = get_stress_test(name)
    cfg = config if isinstance(config, StressConfig) else StressConfig(**(config or {}))
    seeds = [int(s) for s in cfg.seeds]
    t0 = time.perf_counter()
    with _executor(executor, workers, ray_address) as ex, _bar(len(seeds), name, progress) as bar:
        workers_used = ex.workers
        share = llm_share or workers_used
        wcfg = cfg.model_copy(update={"overrides": split_llm_pools(cfg.overrides, share),
                                      "llm": split_llm_pools(cfg.llm, share)})
        results: list[UnitResult] = ex.map(stress_unit, [(name, wcfg, s) for s in seeds],
                                           keys=[f"{name}/seed{s}" for s in seeds],
                                           on_result=lambda i, r: bar.update(1))
    by_seed = {s: r.value for s, r in zip(seeds, results)}
    test = cls(cfg.model_copy(update={"progress": False}))
    # the base class's run() aggregates, saves and renders; it asks run_seed for each seed in order, and
    # gets the workers' answers. StressTest.run, not the subclass's: LLM tests would start an endpoint here.
    test.run_seed = lambda seed, recs: by_seed[int(seed)]  # type: ignore[method-assign]
    res = StressTest.run(test)
    res.info["seconds"] = round(time.perf_counter() - t0, 1)
    res.info["distributed"] = _distributed_info(ex, workers_used, results, None)
    if cfg.out is not None:
        res.save(cfg.out)  # again, now with the distributed info in result.json
    return res


# -- fidelity ------------------------------------------------------------------------------------------
def fidelity_unit(spec: Any, backends: dict[str, Any] | None, config: Any, baselines: bool, seed: int) -> UnitResult:
    """One seed of the fidelity harness (calibration included)."""
    from simrec.data.fidelity import run_fidelity

    t0 = time.perf_counter()
    res = run_fidelity(spec, backends, config.model_copy(update={"seeds": [seed]}), baselines=baselines)
    return UnitResult(f"fidelity/seed{seed}", res, seconds=time.perf_counter() - t0, **provenance())


def _merge_info(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per-seed info dicts combined: lists concatenated, dicts merged, other values kept from the first."""
    out = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, list) and isinstance(out[k], list):
            out[k] = out[k] + v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _merge_info(out[k], v)
    return out


def run_fidelity_seeds(spec: Any = "movielens-v0", backends: dict[str, Any] | None = None, config: Any = None, *,
                       baselines: bool = True, executor: Executor | ExecutorConfig | str | dict | None = "ray",
                       workers: int | None = None, ray_address: str | None = None, progress: bool = True) -> Any:
    """:func:`~simrec.data.fidelity.run_fidelity` with one seed per worker; the same ``FidelityResult``
    (values in seed order). ``backends`` are factories, shipped to the workers (they must pickle; Ray's
    cloudpickle takes closures such as ``llm_factory(...)``)."""
    from simrec.data.fidelity import FidelityConfig, FidelityResult

    cfg = config if isinstance(config, FidelityConfig) else FidelityConfig(**(config or {}))
    seeds = [int(s) for s in cfg.seeds]
    t0 = time.perf_counter()
    with _executor(executor, workers, ray_address) as ex, _bar(len(seeds), "fidelity", progress) as bar:
        results: list[UnitResult] = ex.map(fidelity_unit, [(spec, backends, cfg, baselines, s) for s in seeds],
                                           keys=[f"fidelity/seed{s}" for s in seeds],
                                           on_result=lambda i, r: bar.update(1))
        workers_used = ex.workers
    out = FidelityResult(seeds=seeds)
    info: dict[str, Any] = {}
    for r in results:
        part = r.value
        for system, row in part.values.items():
            for metric, vals in row.items():
                out.values.setdefault(system, {}).setdefault(metric, []).extend(vals)
        info = _merge_info(info, part.info) if info else dict(part.info)
    info.setdefault("timing", {})["total_s"] = round(time.perf_counter() - t0, 2)
    info["distributed"] = _distributed_info(ex, workers_used, results, None)
    out.info = info
    return out
