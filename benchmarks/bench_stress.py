"""Cost of the stress suite and of ``simrec agreement`` on this machine.

    python benchmarks/bench_stress.py --json benchmarks/results/bench_stress.json
    python benchmarks/bench_stress.py --only suite          # or: --only agreement

Targets (2-core machine): the whole stress suite (every registered test, 3 seeds, each test's default
recommenders, at least 6, embedded users; LLM parts on small cached samples) under 15 minutes, and
``simrec agreement`` on ML-100K (5 seeds, calibration and fitting included, the world cache off) under 10.
Absolute seconds mean little across machines, so each figure is also given in units of a reference measured
in the same run: the time of 100,000 steps of the bare ``SlateEnv`` with pre-drawn random slates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "ml-100k"


def reference_seconds(steps: int = 100_000) -> float:
    """Seconds for ``steps`` steps of the bare single env with pre-drawn random slates."""
    from simrec.envs.slate_env import SlateEnv

    env = SlateEnv()
    rng = np.random.default_rng(0)
    slates = np.argsort(rng.random((4096, 50)), axis=1)[:, :5]
    env.reset(seed=0)
    t = time.perf_counter()
    for i in range(steps):
        _, _, term, trunc, _ = env.step(slates[i % 4096])
        if term or trunc:
            env.reset()
    return time.perf_counter() - t


def bench_suite(out: Path) -> dict[str, float]:
    from simrec.stress import STRESS_TESTS, StressConfig, get_stress_test

    times: dict[str, float] = {}
    for name in STRESS_TESTS:
        t = time.perf_counter()
        get_stress_test(name)(StressConfig(seeds=[0, 1, 2], out=out / name, progress=False)).run()
        times[name] = round(time.perf_counter() - t, 1)
        print(f"  {name}: {times[name]:.0f}s", flush=True)
    times["total"] = round(sum(times.values()), 1)
    return times


def bench_agreement() -> dict[str, float]:
    from simrec.evaluation.agreement import agreement

    os.environ["SIMREC_CACHE_DIR"] = "off"  # calibration is part of the cost
    t = time.perf_counter()
    res = agreement(DATA, seeds=range(5), progress=False)
    total = time.perf_counter() - t
    return {"total": round(total, 1), **res.info["timing"], "kendall_tau_b": res.agreement()["kendall_tau_b"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("suite", "agreement"), default=None)
    p.add_argument("--out", default="runs/bench-stress")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    ref = reference_seconds()
    print(f"reference: 100,000 bare SlateEnv steps in {ref:.1f}s ({100_000 / ref:,.0f} steps/s)")
    result: dict[str, object] = {"reference_s": round(ref, 2), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                                 "python": platform.python_version()}
    if a.only in (None, "suite"):
        print("stress suite, 3 seeds, default recommenders:")
        s = bench_suite(Path(a.out))
        result["suite_s"] = s
        print(f"suite: {s['total']:.0f}s = {s['total'] / 60:.1f} min (target < 15 min), "
              f"{s['total'] / ref:.0f} x the reference")
    if a.only in (None, "agreement"):
        if not DATA.exists():
            print(f"agreement skipped: MovieLens-100K is not at {DATA}", file=sys.stderr)
        else:
            g = bench_agreement()
            result["agreement_s"] = g
            print(f"agreement (5 seeds, cache off): {g['total']:.0f}s = {g['total'] / 60:.1f} min (target < 10 min), "
                  f"{g['total'] / ref:.0f} x the reference; {g}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
