"""``simrec stress list`` and ``simrec stress run NAME|all``: the stress tests from the shell."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from simrec.stress import STRESS_TESTS, StressConfig, get_stress_test


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
    r.add_argument("--no-progress", action="store_true")


def run_cli(args: argparse.Namespace) -> int:
    if args.stress_command in (None, "list"):
        for name in STRESS_TESTS:
            cls = get_stress_test(name)
            print(f"{name:18s} {cls.question}\n{'':18s} metric: {cls.metric}")
        return 0
    names = list(STRESS_TESTS) if args.name == "all" else [args.name]
    for name in names:
        get_stress_test(name)  # unknown names fail before anything runs
    overrides: dict[str, Any] = {"max_steps": args.max_steps} if args.max_steps else {}
    summary: dict[str, Any] = {}
    t0 = time.perf_counter()
    from simrec.llm.endpoint import llm_endpoint

    needs_llm = any(getattr(get_stress_test(n), "uses_llm", False) for n in names)
    with llm_endpoint("llm" if needs_llm else None, args.base_url, args.model) as llm:
        for name in names:
            cfg = StressConfig(env=args.env, overrides=overrides, seeds=list(range(args.seeds)),
                               recommenders=args.recommenders.split(",") if args.recommenders else None,
                               episodes=args.episodes, fit_episodes=args.fit_episodes, llm=llm,
                               out=Path(args.out) / name, progress=not args.no_progress)
            t = time.perf_counter()
            res = get_stress_test(name)(cfg).run()
            print(f"\n## {name}: {res.question}\n\n{res.markdown()}\n")
            summary[name] = {"seconds": round(time.perf_counter() - t, 1), "out": str(cfg.out)}
            print(f"({summary[name]['seconds']:.0f}s; JSON and plots in {cfg.out})", file=sys.stderr)
    if len(names) > 1:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "suite.json").write_text(json.dumps(
            {"tests": summary, "seconds": round(time.perf_counter() - t0, 1)}, indent=1) + "\n", encoding="utf-8")
    return 0
