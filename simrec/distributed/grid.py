"""``simrec compare`` grids, stress-test seeds and fidelity seeds, one unit per worker.

* :func:`run_grid`: the protocol of :func:`simrec.evaluation.compare.compare`, unit = (seed, recommender).
  Each seed's fit data is computed once (one unit per seed, in parallel) and shared with that seed's
  units; every unit builds its own env, so its run is the run ``compare`` does for it. Returns the same
  :class:`~simrec.evaluation.compare.CompareResult`; with ``out``, the units' logs are merged into one log.
* :func:`run_stress`: a registered stress test, unit = seed (each seed is a full repetition already).
* :func:`run_fidelity_seeds`: :func:`~simrec.data.fidelity.run_fidelity`, unit = seed (each recalibrates).

Results are assembled in seed and recommender order, never in completion order, so a grid gives the
same numbers on 1 worker, 2 workers or a cluster.

Resuming: each function takes a :class:`~simrec.resume.Journal` (``journal=``), the one its single-process
command keeps (same directory, fingerprint, unit names and entries). The driver journals each unit's result
as soon as its worker returns it (in completion order); units the journal already holds are not dispatched.
A journaled compare unit's log is moved from its attempt directory to ``out/<recommender>/seed<s>``, where
``simrec compare --out`` (without Ray) keeps it too, and merged from there, so the merged log of a resumed
grid equals an uninterrupted one's. With a journal, every result (fresh or resumed) is assembled from its
JSON form, so a resumed run and an uninterrupted one give the same numbers bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from simrec.distributed.executor import Executor, ExecutorConfig
from simrec.distributed.merge import MergeReport, UnitLog, log_digest, merge_logs
from simrec.distributed.units import UnitResult, attempt_dir, provenance
from simrec.errors import ConfigError
from simrec.resume import Journal, apply_changes, to_json_value

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


def _resumed_message(journal: Journal, done: int, total: int, what: str) -> str:
    return (f"resumed {done} of {total} {what} from {journal.path}; running {total - done}" if done
            else f"journaling {total} {what} in {journal.path}")


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
    goes to a fresh attempt directory under ``staging`` (none without). The value is the run's metrics and,
    under ``per_user``, its per-user sums (what ``compare`` journals for the run)."""
    from simrec.evaluation.compare import (
        build_recommender,
        make_env,
        record_run,
        run_metrics,
        user_schedule,
        user_stats,
    )

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
            # what compare() journals for the run: its metrics and the per-user sums of --ci users
            metrics = {**run_metrics(traj, env),
                       "per_user": user_stats(traj, env.sim_spec.dynamics.satisfaction.return_weight)}
        finally:
            if hasattr(rec, "close"):
                rec.close()
    finally:
        env.close()
    return UnitResult(key, metrics, str(target) if target else None, log_digest(target) if target else None,
                      time.perf_counter() - t0, **provenance())


def unit_log_dir(out: str | Path, name: str, seed: int) -> Path:
    """Where a journaled (recommender, seed) run keeps its log: where ``simrec compare --out`` writes it."""
    return Path(out) / name.replace(":", "_").replace("/", "_") / f"seed{seed}"


def _closed_log(path: Path) -> bool:
    from simrec.trajectory import TrajectoryFormatError, read_manifest

    try:
        return read_manifest(path).get("closed") is not None
    except (TrajectoryFormatError, OSError, ValueError):
        return False


def _keep_unit_log(attempt: str, target: Path) -> None:
    """Move a finished attempt's log to ``target`` (replacing a killed run's partial log there)."""
    import shutil

    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(attempt, target)  # staging lies under out: the same file system, so a rename


def run_grid(env_id: str, recommenders: Sequence[str], *, seeds: Sequence[int] = (0, 1, 2, 3, 4),
             episodes: int = 100, overrides: dict[str, Any] | None = None, fit_episodes: int = 300,
             fit_policy: str = "random", out: str | Path | None = None, policy: str | None = None,
             llm_config: dict[str, Any] | None = None, executor: Executor | ExecutorConfig | str | dict | None = "ray",
             workers: int | None = None, ray_address: str | None = None, overwrite: bool = False,
             keep_staging: bool = False, progress: bool = True, llm_share: int | None = None,
             on_step: Callable[[dict[str, Any]], None] | None = None, journal: Journal | None = None,
             log: Callable[[str], None] | None = None) -> Any:
    """:func:`~simrec.evaluation.compare.compare` with its (seed, recommender) runs spread over workers.

    The arguments before ``executor`` are ``compare``'s. ``out``: every run's log is merged into one log
    there (one part per run, in seed then recommender order; ``simrec.distributed.unit_keys`` labels the
    episodes; ``verify_log`` checks it), staged under ``out/.staging`` (removed after the merge unless
    ``keep_staging``). ``executor``/``workers``/``ray_address``: see :class:`ExecutorConfig` (or pass a
    ready :class:`Executor` to reuse it). LLM endpoint pools in ``overrides``/``llm_config`` are split so
    that the workers together stay within each endpoint's concurrency (:func:`split_llm_pools`);
    ``llm_share`` is how many workers share an endpoint (default: all; with endpoints on 127.0.0.1 of every
    node, the workers per node). ``on_step`` is called with each step's info inside the workers (it must
    pickle). ``journal`` (``simrec compare``'s, in ``out/journal``): each run's metrics are journaled as its
    worker returns them, and its log kept in ``out/<recommender>/seed<s>`` (:func:`unit_log_dir`); runs the
    journal holds (with their log, when ``out`` is given) are not run again. ``log`` gets one line saying
    how many were resumed. Returns a ``CompareResult`` whose ``info["distributed"]`` says where each unit
    ran, which were ``resumed`` and what the merge wrote.
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
    units = [(seed, name) for seed in seeds for name in names]
    keys = [f"{n}/seed{s}" for s, n in units]
    values: dict[int, dict[str, Any]] = {}  # unit index -> its journaled value (metrics and per_user)
    if journal is not None:
        for i, ((s, n), k) in enumerate(zip(units, keys)):
            v = journal.get(k)
            if v is not None and outp is not None and not _closed_log(unit_log_dir(outp, n, s)):
                log and log(f"{k}: journaled, but its log {unit_log_dir(outp, n, s)} is missing or unfinished: "
                            "running it again")
                v = None
            if v is not None:
                values[i] = v
        log and log(_resumed_message(journal, len(values), len(units), "units"))
    resumed = sorted(values)
    todo = [i for i in range(len(units)) if i not in values]

    def fitted(name: str) -> bool:
        return name in RECOMMENDERS and issubclass(RECOMMENDERS[name], FittedRecommender)

    fit_seeds = sorted({units[i][0] for i in todo if fitted(units[i][1])})  # resumed runs need no fit data
    with _executor(executor, workers, ray_address) as ex, _bar(len(todo) + len(fit_seeds), "compare",
                                                               progress) as bar:
        workers_used = ex.workers
        # LLM endpoint pools: each worker holds its share of every endpoint's concurrency
        share = llm_share or workers_used
        overrides, llm_config = split_llm_pools(overrides, share), split_llm_pools(llm_config, share)
        fits: dict[int, Any] = {}
        if fit_seeds:
            data = ex.map(_fit_unit, [(env_id, overrides, s, fit_episodes, fit_policy) for s in fit_seeds],
                          keys=[f"fit/seed{s}" for s in fit_seeds], on_result=lambda i, r: bar.update(1))
            fits = {s: ex.share(d) for s, d in zip(fit_seeds, data)}  # one copy per seed, however many units read it
        t_fit = time.perf_counter() - t0
        args = [(env_id, overrides, units[i][0], units[i][1], episodes, fits.get(units[i][0]), policy, llm_config,
                 str(staging) if staging else None, on_step) for i in todo]

        def finished(j: int, r: UnitResult) -> None:
            # in completion order, as each worker returns: a killed driver loses only the units in flight
            i = todo[j]
            if journal is not None:
                if outp is not None and r.log is not None:
                    target = unit_log_dir(outp, units[i][1], units[i][0])
                    _keep_unit_log(r.log, target)
                    r.log = str(target)
                journal.put(keys[i], r.value)  # after its log is in place: a journaled run is a finished one
            bar.update(1)

        fresh: list[UnitResult] = ex.map(compare_unit, args, keys=[keys[i] for i in todo], on_result=finished)
        by_index = dict(zip(todo, fresh))
        for i, r in by_index.items():  # with a journal, fresh runs too are taken as they read back from it
            values[i] = to_json_value(r.value) if journal is not None else r.value
        t_units = time.perf_counter() - t0 - t_fit
        report = None
        if outp is not None:  # each unit's part is rewritten by a worker; this process writes the manifest
            logs = []
            for i, ((s, n), k) in enumerate(zip(units, keys)):
                r = by_index.get(i)
                path, digest = (r.log, r.digest) if r is not None else (str(unit_log_dir(outp, n, s)), None)
                logs.append(UnitLog(k, path, {"recommender": n, "seed": s}, digest))  # type: ignore[arg-type]
            report = merge_logs(logs, outp, overwrite=overwrite,
                                metadata={"command": "compare", "seeds": seeds, "recommenders": names},
                                staging=staging, keep_staging=keep_staging, executor=ex)
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    users: dict[str, list[Any]] = {n: [] for n in names}
    for i, (_, name) in enumerate(units):
        v = dict(values[i])
        users[name].append(v.pop("per_user", None))
        runs[name].append(v)
    total = time.perf_counter() - t0
    info = {"env": env_id, "overrides": given_overrides or {}, "episodes": episodes, "fit_episodes": fit_episodes,
            "fit_policy": fit_policy,
            "timing": {"fit_data_s": round(t_fit, 2), "units_s": round(t_units, 2),
                       "merge_s": round(total - t_fit - t_units, 2), "total_s": round(total, 2)},
            "distributed": _distributed_info(ex, workers_used, fresh, report, [keys[i] for i in resumed])}
    return CompareResult(runs, seeds, info, users=users)


def _distributed_info(ex: Executor, workers: int, results: Sequence[UnitResult],
                      report: MergeReport | None, resumed: Sequence[str] = ()) -> dict[str, Any]:
    return {"executor": ex.kind, "workers": workers, "units": [r.where() for r in results],
            "unit_seconds": round(sum(r.seconds for r in results), 3), "resumed": list(resumed),
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
               llm_share: int | None = None, journal: Journal | None = None,
               log: Callable[[str], None] | None = None) -> Any:
    """Stress test ``name`` (a :class:`~simrec.stress.StressConfig` or its fields) with its seeds spread over
    workers; the same :class:`~simrec.stress.StressResult` as ``run_stress_test``, saved under ``config.out``.
    LLM endpoint pools are split among the workers as in :func:`run_grid`. ``journal`` (``simrec stress
    run``'s, in ``OUT/NAME/journal``): each seed's metrics and curves are journaled as its worker returns
    them, and seeds it holds are not run again."""
    from simrec.stress import StressConfig, StressTest, get_stress_test

    cls = get_stress_test(name)
    cfg = config if isinstance(config, StressConfig) else StressConfig(**(config or {}))
    seeds = [int(s) for s in cfg.seeds]
    t0 = time.perf_counter()
    by_seed: dict[int, Any] = {}
    if journal is not None:
        for s in seeds:
            hit = journal.get(f"seed{s}")  # the layout of simrec.stress.runner's journal
            if hit is not None:
                by_seed[s] = (hit["metrics"], hit["curves"])
        log and log(_resumed_message(journal, len(by_seed), len(seeds), f"seeds of {name}"))
    resumed = [s for s in seeds if s in by_seed]
    todo = [s for s in seeds if s not in by_seed]
    with _executor(executor, workers, ray_address) as ex, _bar(len(todo), name, progress) as bar:
        workers_used = ex.workers
        share = llm_share or workers_used
        wcfg = cfg.model_copy(update={"overrides": split_llm_pools(cfg.overrides, share),
                                      "llm": split_llm_pools(cfg.llm, share)})

        def finished(j: int, r: UnitResult) -> None:
            if journal is not None:
                metrics, curves = r.value
                journal.put(f"seed{todo[j]}", {"metrics": metrics, "curves": curves})
            bar.update(1)

        results: list[UnitResult] = ex.map(stress_unit, [(name, wcfg, s) for s in todo],
                                           keys=[f"{name}/seed{s}" for s in todo], on_result=finished)
    for s, r in zip(todo, results):  # with a journal, as the seed reads back from it (like a resumed one)
        by_seed[s] = tuple(to_json_value(list(r.value))) if journal is not None else r.value
    test = cls(cfg.model_copy(update={"progress": False}))
    # the base class's run() aggregates, saves and renders; it asks run_seed for each seed in order, and
    # gets the workers' answers. StressTest.run, not the subclass's: LLM tests would start an endpoint here.
    test.run_seed = lambda seed, recs: by_seed[int(seed)]  # type: ignore[method-assign]
    res = StressTest.run(test)
    res.info["seconds"] = round(time.perf_counter() - t0, 1)
    res.info["distributed"] = _distributed_info(ex, workers_used, results, None,
                                                [f"{name}/seed{s}" for s in resumed])
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


#: Fidelity result info shared by every seed (set once per run, from the whole config), not added per seed.
_FIDELITY_HEADER = ("spec", "world", "config", "backends")


def _leaf_changes(node: dict[str, Any], path: list[str], seed: int) -> list[list[Any]]:
    """:func:`simrec.resume.changes` of one seed's result, as edits that add it to the result of whichever
    seeds came before it: lists are extended, other values set, dicts descended into except the seed's own
    entry (``eval["<seed>"]``, ``calibration["<seed>"]``: set whole)."""
    out: list[list[Any]] = []
    for k, v in node.items():
        p = path + [str(k)]
        if isinstance(v, (list, tuple)):
            out.append(["extend", p, to_json_value(list(v))])
        elif isinstance(v, dict) and v and str(k) != str(seed):
            out += _leaf_changes(v, p, seed)
        else:
            out.append(["set", p, to_json_value(v)])
    return out


def fidelity_seed_changes(part: Any, seed: int) -> dict[str, list[list[Any]]]:
    """What seed ``seed``'s own ``FidelityResult`` (a run over that seed alone) adds to a run over many
    seeds, in the journal entry layout of :func:`~simrec.data.fidelity.run_fidelity`: ``{"values": edits,
    "info": edits}`` (:func:`simrec.resume.apply_changes` replays them, in seed order)."""
    info = {k: v for k, v in part.info.items() if k not in _FIDELITY_HEADER}
    info["timing"] = {k: v for k, v in (info.get("timing") or {}).items() if k != "total_s"}
    return {"values": _leaf_changes(part.values, [], seed), "info": _leaf_changes(info, [], seed)}


def run_fidelity_seeds(spec: Any = "movielens-v0", backends: dict[str, Any] | None = None, config: Any = None, *,
                       baselines: bool = True, executor: Executor | ExecutorConfig | str | dict | None = "ray",
                       workers: int | None = None, ray_address: str | None = None, progress: bool = True,
                       journal: Journal | None = None, log: Callable[[str], None] | None = None) -> Any:
    """:func:`~simrec.data.fidelity.run_fidelity` with one seed per worker; the same ``FidelityResult``
    (values in seed order). ``backends`` are factories, shipped to the workers (they must pickle; Ray's
    cloudpickle takes closures such as ``llm_factory(...)``). ``journal`` (``simrec fidelity``'s): what each
    seed adds to the result is journaled as its worker returns it, in ``run_fidelity``'s entry layout, and
    seeds it holds are not run again. Seeds are added to the result in seed order, as those edits."""
    from simrec.data.fidelity import FidelityConfig, FidelityResult
    from simrec.envs.spec import resolve_spec

    cfg = config if isinstance(config, FidelityConfig) else FidelityConfig(**(config or {}))
    seeds = [int(s) for s in cfg.seeds]
    t0 = time.perf_counter()
    entries: dict[int, Any] = {}
    if journal is not None:
        for s in seeds:
            hit = journal.get(f"seed{s}")
            if hit is not None:
                entries[s] = hit
        log and log(_resumed_message(journal, len(entries), len(seeds), "seeds"))
    resumed = [s for s in seeds if s in entries]
    todo = [s for s in seeds if s not in entries]
    with _executor(executor, workers, ray_address) as ex, _bar(len(todo), "fidelity", progress) as bar:

        def finished(j: int, r: UnitResult) -> None:
            entries[todo[j]] = fidelity_seed_changes(r.value, todo[j])
            if journal is not None:
                journal.put(f"seed{todo[j]}", entries[todo[j]])
            bar.update(1)

        results: list[UnitResult] = ex.map(fidelity_unit, [(spec, backends, cfg, baselines, s) for s in todo],
                                           keys=[f"fidelity/seed{s}" for s in todo], on_result=finished)
        workers_used = ex.workers
    sp = resolve_spec(spec)  # the run's header, as run_fidelity writes it
    info: dict[str, Any] = {"spec": sp.id, "world": json.loads(sp.world.model_dump_json()), "config": cfg.model_dump(),
                            "backends": sorted(backends or {"embedded": None}), "timing": {}}
    out = FidelityResult(seeds=seeds)
    for s in seeds:  # every seed as the same edits, fresh or journaled: a resumed run equals an uninterrupted one
        entry = to_json_value(entries[s])
        apply_changes(out.values, entry["values"])
        apply_changes(info, entry["info"])
    info["timing"]["total_s"] = round(time.perf_counter() - t0, 2)
    info["distributed"] = _distributed_info(ex, workers_used, results, None, [f"fidelity/seed{s}" for s in resumed])
    out.info = info
    return out
