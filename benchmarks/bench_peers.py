"""simrec's single env against peer simulators, measured side by side in one run (prints numbers; not a test).

    python benchmarks/bench_peers.py                    # 5 interleaved rounds
    python benchmarks/bench_peers.py --quick            # shorter runs
    python benchmarks/bench_peers.py --json benchmarks/results/bench_peers.json

Measures steps/s of
  * simrec: ``gymnasium.make("simrec/Synthetic-v0")``, slate 5 of 50 candidates, with pre-drawn valid random
    slates, and with the agent calling ``action_space.sample()`` every step;
  * RecSim ``interest_evolution`` (Ie et al., 2019) at slate 2 of 10 and 5 of 50 candidates
    (``resample_documents=True``, pre-drawn valid random slates), run by RecSim's own Python in a worker
    subprocess (``--recsim-python``, else ``$SIMREC_RECSIM_PYTHON``, else ``/work/venv-recsim/bin/python``);
    skipped with a message when that Python or RecSim is missing;
  * Gymnasium's ``CartPole-v1`` (pre-drawn actions): a second reference, in this process.

Every loop resets when an episode ends, so reset cost is included. Measurements are interleaved round by
round (the order rotates) so machine noise hits all of them alike. Each is timed by the wall clock and by the
measuring process's own CPU time (``time.process_time``; on a shared machine, time taken by other load is not
in it). The table gives the best round of each and the ratios simrec / RecSim 2-of-10 (target >= 2x): of the
best rounds, and the median of the per-round ratios.

RecSim 0.2.4 pins no versions and needs TensorFlow (``gin.tf``, ``tf.estimator``), which TensorFlow 2.16+
dropped. A working CPU set-up for Python 3.11, outside the repository::

    python3.11 -m venv /work/venv-recsim
    /work/venv-recsim/bin/pip install "tensorflow-cpu==2.15.1" "tensorflow-estimator==2.15.0" "keras==2.15.0" \\
        gin-config absl-py "gym==0.26.2" "numpy<2" scipy six
    /work/venv-recsim/bin/pip install --no-deps recsim==0.2.4 dopamine-rl   # dopamine: only its checkpointer is imported
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

DEFAULT_RECSIM_PYTHON = "/work/venv-recsim/bin/python"
PRE = 4096  # pre-drawn slates / actions, cycled


# -- the RecSim worker (runs under RecSim's Python: imports nothing of simrec) ------------------------
def recsim_worker() -> None:
    """Answer ``run K N STEPS`` lines on stdin with one JSON line of steps/s; first line: versions."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings

    warnings.filterwarnings("ignore")
    import numpy as np
    from recsim.environments import interest_evolution

    try:
        from importlib.metadata import version
        versions = {p: version(p) for p in ("recsim", "numpy", "gym", "tensorflow-cpu")}
    except Exception:  # a metadata lookup must not stop the benchmark
        versions = {}
    versions["python"] = platform.python_version()
    print(json.dumps({"ready": True, "versions": versions}), flush=True)
    envs: dict[tuple[int, int], tuple[Any, Any]] = {}
    for line in sys.stdin:
        _, k, n, steps = line.split()
        k, n, steps = int(k), int(n), int(steps)
        if (k, n) not in envs:
            env = interest_evolution.create_environment(
                {"num_candidates": n, "slate_size": k, "resample_documents": True, "seed": 0})
            env.reset()
            rng = np.random.default_rng(0)
            envs[k, n] = env, np.argsort(rng.random((PRE, n)), axis=1)[:, :k]
            _recsim_loop(env, envs[k, n][1], 500)  # warm-up
        env, pre = envs[k, n]
        wall, cpu = _recsim_loop(env, pre, steps)
        print(json.dumps({"steps_per_s": wall, "cpu_steps_per_s": cpu}), flush=True)


def _recsim_loop(env: Any, pre: Any, steps: int) -> tuple[float, float]:
    step, reset = env.step, env.reset
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(steps):
        if step(pre[i % PRE])[2]:  # gym 0.x API: (obs, reward, done, info)
            reset()
    return steps / (time.perf_counter() - t0), steps / (time.process_time() - c0)


class RecSim:
    """A persistent worker process under RecSim's Python (TensorFlow is imported once)."""

    def __init__(self, python: str) -> None:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
        self.proc = subprocess.Popen([python, os.path.abspath(__file__), "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().strip().splitlines()
            raise RuntimeError(err[-1] if err else f"{python} exited with code {self.proc.wait()}")
        self.versions: dict[str, str] = json.loads(line)["versions"]

    def steps_per_s(self, k: int, n: int, steps: int) -> tuple[float, float]:
        self.proc.stdin.write(f"run {k} {n} {steps}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"RecSim worker died: {self.proc.stderr.read().strip()[-2000:]}")
        out = json.loads(line)
        return float(out["steps_per_s"]), float(out["cpu_steps_per_s"])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


# -- in-process measurements ----------------------------------------------------------------------
def simrec_runner(sample_in_loop: bool) -> Callable[[int], tuple[float, float]]:
    import gymnasium as gym
    import numpy as np

    import simrec  # noqa: F401  (registers the envs)

    env = gym.make("simrec/Synthetic-v0")
    env.reset(seed=0)
    env.action_space.seed(0)
    rng = np.random.default_rng(0)
    pre = np.argsort(rng.random((PRE, 50)), axis=1)[:, :5]
    sample, step, reset = env.action_space.sample, env.step, env.reset

    def run(steps: int) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(steps):
            _, _, term, trunc, _ = step(sample() if sample_in_loop else pre[i % PRE])
            if term or trunc:
                reset()
        return steps / (time.perf_counter() - t0), steps / (time.process_time() - c0)

    run(500)  # warm-up
    return run


def cartpole_runner() -> Callable[[int], tuple[float, float]]:
    import gymnasium as gym
    import numpy as np

    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    pre = np.random.default_rng(0).integers(0, 2, size=PRE).tolist()
    step, reset = env.step, env.reset

    def run(steps: int) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(steps):
            _, _, term, trunc, _ = step(pre[i % PRE])
            if term or trunc:
                reset()
        return steps / (time.perf_counter() - t0), steps / (time.process_time() - c0)

    run(500)
    return run


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical cores visible, {platform.system()} {platform.release()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recsim-python", default=os.environ.get("SIMREC_RECSIM_PYTHON", DEFAULT_RECSIM_PYTHON),
                    help="a Python with recsim installed (default: $SIMREC_RECSIM_PYTHON or %(default)s)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--quick", action="store_true", help="a quarter of the steps per measurement")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        recsim_worker()
        return

    import gymnasium as gym
    import numpy as np

    import simrec

    scale = 0.25 if args.quick else 1.0
    # steps per measurement: about a second each on the reference machine
    runs: dict[str, tuple[str, Callable[[int], tuple[float, float]], int]] = {
        "simrec_5of50": ("simrec Synthetic-v0, 5 of 50, pre-drawn slates", simrec_runner(False), 20_000),
        "simrec_5of50_sample": ("simrec Synthetic-v0, 5 of 50, action_space.sample()", simrec_runner(True), 20_000),
    }
    recsim, recsim_note = None, ""
    if not os.path.exists(args.recsim_python):
        recsim_note = (f"RecSim skipped: no Python at {args.recsim_python} (set --recsim-python or "
                       "$SIMREC_RECSIM_PYTHON; this file's docstring sets one up)")
    else:
        try:
            recsim = RecSim(args.recsim_python)
        except Exception as e:  # a broken peer set-up skips the peer, not the benchmark
            recsim_note = f"RecSim skipped: {args.recsim_python} could not run interest_evolution ({e})"
    if recsim is not None:
        runs["recsim_2of10"] = ("RecSim interest_evolution, 2 of 10", lambda s: recsim.steps_per_s(2, 10, s), 10_000)
        runs["recsim_5of50"] = ("RecSim interest_evolution, 5 of 50", lambda s: recsim.steps_per_s(5, 50, s), 4_000)
    runs["cartpole"] = ("Gymnasium CartPole-v1", cartpole_runner(), 40_000)

    names = list(runs)
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.repeats):
        for k in names[r % len(names):] + names[: r % len(names)]:  # rotate the order every round
            w, c = runs[k][1](max(1, int(runs[k][2] * scale)))
            wall[k].append(w)
            cpu[k].append(c)
    if recsim is not None:
        recsim.close()

    ref = "recsim_2of10" if recsim is not None else None
    print(f"simrec {simrec.__version__}, numpy {np.__version__}, gymnasium {gym.__version__}, "
          f"python {platform.python_version()}; {machine()}")
    print("RecSim worker: " + ", ".join(f"{p} {v}" for p, v in recsim.versions.items()) if recsim else recsim_note)
    print(f"{args.repeats} interleaved rounds of each; steps/s of the best round (median round in brackets), by the "
          "wall clock and by the process's own CPU time (what a shared machine's other load does not take)\n")
    print(f"| {'measurement':52s} | {'wall steps/s':>18s} | {'CPU steps/s':>18s} | {'x RecSim 2 of 10':>16s} | {'x CartPole':>10s} |")
    print(f"|{'-' * 54}|{'-' * 19}:|{'-' * 19}:|{'-' * 17}:|{'-' * 11}:|")
    best_w = {k: max(v) for k, v in wall.items()}
    best_c = {k: max(v) for k, v in cpu.items()}
    for k in names:
        fw = f"{best_w[k]:,.0f} ({statistics.median(wall[k]):,.0f})"
        fc = f"{best_c[k]:,.0f} ({statistics.median(cpu[k]):,.0f})"
        vs = f"{best_w[k] / best_w[ref]:.2f} / {best_c[k] / best_c[ref]:.2f}" if ref else "-"
        print(f"| {runs[k][0]:52s} | {fw:>18s} | {fc:>18s} | {vs:>16s} | {best_w[k] / best_w['cartpole']:>10.3f} |")
    res: dict[str, Any] = {
        "wall_steps_per_s": {"best": best_w, "median": {k: statistics.median(v) for k, v in wall.items()}, "rounds": wall},
        "cpu_steps_per_s": {"best": best_c, "median": {k: statistics.median(v) for k, v in cpu.items()}, "rounds": cpu},
        "repeats": args.repeats, "quick": args.quick, "machine": machine(),
        "versions": {"simrec": simrec.__version__, "numpy": np.__version__, "gymnasium": gym.__version__,
                     "python": platform.python_version()},
        "recsim_versions": recsim.versions if recsim is not None else None, "recsim_note": recsim_note or None,
    }
    if ref:
        ratios = {}
        for label, data, best in (("wall", wall, best_w), ("cpu", cpu, best_c)):
            per_round = [a / b for a, b in zip(data["simrec_5of50"], data[ref])]
            ratios[label] = {"best": best["simrec_5of50"] / best[ref], "median_per_round": statistics.median(per_round),
                             "per_round": per_round}
        res["ratio_simrec_vs_recsim_2of10"] = {**ratios, "target": 2.0}
        print("\nsimrec 5 of 50 / RecSim 2 of 10 (target >= 2x):")
        for label in ("wall", "cpu"):
            q = ratios[label]
            print(f"  {label:4s}: {q['best']:.2f}x of the best rounds, {q['median_per_round']:.2f}x median of the "
                  f"per-round ratios ({'ok' if min(q['best'], q['median_per_round']) >= 2.0 else 'MISSED'})")
        print(f"simrec 5 of 50 / RecSim 5 of 50: {best_w['simrec_5of50'] / best_w['recsim_5of50']:.2f}x wall, "
              f"{best_c['simrec_5of50'] / best_c['recsim_5of50']:.2f}x CPU (best rounds)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
