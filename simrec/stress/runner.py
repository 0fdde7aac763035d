"""``simrec stress list`` and ``simrec stress run NAME|all``: the stress tests from the shell.

Each finished (test, seed) of ``simrec stress run`` is journaled in ``OUT/NAME/journal``
(:class:`~simrec.resume.Journal`: one atomically written file per seed, holding that seed's metrics and
curves); after a crash, ``--resume`` reuses the finished seeds and runs the others. A seed's result
depends only on the test's settings and the seed, so the final result equals an uninterrupted run's.
Tests with LLM users keep their calls in ``OUT/NAME/llm_cache.sqlite``, so even the seed in progress
replays the calls it had made.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from simrec.resume import Journal
from simrec.stress import STRESS_TESTS, StressConfig, get_stress_test
from simrec.stress.base import StressTest


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="stress_command", metavar="list|run")
    sub.add_parser("list", help="the stress tests, with the question each answers")
    r = sub.add_parser("run", help="run one stress test (or all)")
    r.add_argument("name", help="a test name from `simrec stress list`, or all")
    r.add_argument("--env", default="simrec/Synthetic-v0")
    r.add_argument("--recommenders", default=None, help="comma-separated (default: the test's own list)")
    r.add_argument("--seeds", type=int, default=3)
    r.add_argument("--episodes", type=int, default=None, help="sessions per recommender and seed (default: the test's)")
    r.add_argument("--fit-episodes", type=int, default=300)
    r.add_argument("--max-steps", type=int, default=None)
    r.add_argument("--out", default="runs/stress", help="results go to OUT/NAME/ (default runs/stress)")
    r.add_argument("--base-url", default=None, help="OpenAI-compatible server for tests with LLM users "
                                                   "(default: the bundled local model)")
    r.add_argument("--model", default=None)
    r.add_argument("--resume", action="store_true",
                   help="after a crash: reuse the seeds journaled in OUT/NAME/journal, run the rest")
    r.add_argument("--no-progress", action="store_true")


def run_cli(args: argparse.Namespace) -> int:
    if args.stress_command in (None, "list"):
        for name in STRESS_TESTS:
            cls = get_stress_test(name)
            print(f"{name:18s} {cls.question}\n{'':18s} metric: {cls.metric}")
        return 0
    summary: dict[str, Any] = {}
    t0 = time.perf_counter()
    with cli_configs(args) as configs:
        for name, cfg in configs:
            t = time.perf_counter()
            test = get_stress_test(name)(cfg)
            journal = Journal(Path(cfg.out) / "journal", _fingerprint(test, args), resume=args.resume,
                              command="stress run")
            if journal.resumed:
                print(f"resuming {name}: {len(journal.units())} finished seeds in {journal.path}", file=sys.stderr)
            _journal_seeds(test, journal)
            res = test.run()
            print(f"\n## {name}: {res.question}\n\n{res.markdown()}\n")
            summary[name] = {"seconds": round(time.perf_counter() - t, 1), "out": str(cfg.out)}
            print(f"({summary[name]['seconds']:.0f}s; JSON and plots in {cfg.out})", file=sys.stderr)
    write_suite(args, summary, t0)
    return 0


@contextmanager
def cli_configs(args: argparse.Namespace) -> Iterator[list[tuple[str, StressConfig]]]:
    """``(name, StressConfig)`` of each test ``simrec stress run`` names, with the LLM endpoint they need
    open while the block runs (unknown names fail before anything starts)."""
    from simrec.llm.endpoint import llm_endpoint

    names = list(STRESS_TESTS) if args.name == "all" else [args.name]
    for name in names:
        get_stress_test(name)
    overrides: dict[str, Any] = {"max_steps": args.max_steps} if args.max_steps else {}
    needs_llm = any(getattr(get_stress_test(n), "uses_llm", False) for n in names)
    with llm_endpoint("llm" if needs_llm else None, args.base_url, args.model) as llm:
        yield [(name, StressConfig(env=args.env, overrides=overrides, seeds=list(range(args.seeds)),
                                   recommenders=args.recommenders.split(",") if args.recommenders else None,
                                   episodes=args.episodes, fit_episodes=args.fit_episodes, llm=llm,
                                   out=Path(args.out) / name, progress=not args.no_progress))
               for name in names]


def write_suite(args: argparse.Namespace, summary: dict[str, Any], t0: float) -> None:
    """``OUT/suite.json`` with each test's time, when more than one test ran."""
    if len(summary) > 1:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "suite.json").write_text(json.dumps(
            {"tests": summary, "seconds": round(time.perf_counter() - t0, 1)}, indent=1) + "\n", encoding="utf-8")


def _fingerprint(test: StressTest, args: argparse.Namespace) -> dict[str, Any]:
    """What every seed of ``test`` depends on (``--seeds`` only says which seeds there are)."""
    return {"test": test.name, "--env": args.env, "--recommenders": test.recommenders, "--episodes": test.episodes,
            "--fit-episodes": args.fit_episodes, "--max-steps": args.max_steps, "--model": args.model}


def _journal_seeds(test: StressTest, journal: Journal) -> None:
    """Make ``test`` journal each finished seed and reuse the seeds ``journal`` holds.

    Done by wrapping the instance's ``run_seed`` (``StressTest.run`` calls ``self.run_seed`` once per
    seed), so no stress test needs to know about journals.
    """
    run_seed = test.run_seed

    def journaled(seed: int, recommenders: Any) -> tuple[dict, dict]:
        unit = f"seed{seed}"
        hit = journal.get(unit)
        if hit is not None:
            return hit["metrics"], hit["curves"]
        metrics, curves = run_seed(seed, recommenders)
        journal.put(unit, {"metrics": metrics, "curves": curves})
        return metrics, curves

    test.run_seed = journaled  # type: ignore[method-assign]
