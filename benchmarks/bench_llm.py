"""Benchmarks of the LLM cognition backend (numbers for the README).

* ``overhead``: framework overhead. A local fake OpenAI server (own process) answers every request
  after a fixed latency ``L``; a vector env of ``C`` users steps with concurrency ``C``. The ideal
  is ``C / L`` steps/s; we report steps/s and the fraction of ideal (target >= 0.90).
* ``prompt``: prompt size. Mean prompt tokens per page-step (5-item slate, memories on, after a
  warm-up that fills memory) as counted by the real llama.cpp server with the bundled SmolLM2
  tokenizer (target <= 700; Agent4Rec's stored run spent about 2,100 tokens per page-step).
* ``replay``: replay speed. Record a run into the SQLite cache, replay it replay-only with the
  same seed, and report replay steps/s (target >= 2,000), single env and vector env.

Usage::

    python benchmarks/bench_llm.py all            # everything (prompt needs simrec[local-llm])
    python benchmarks/bench_llm.py overhead --latency 1.0 --concurrency 1 8 32 64
    python benchmarks/bench_llm.py replay --steps 3000
    python benchmarks/bench_llm.py prompt --steps 16

Results are printed and written as JSON to ``benchmarks/results/bench_llm.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from simrec.cognition.embedded import EmbeddedCognition  # noqa: E402
from simrec.cognition.llm import LLMCognition  # noqa: E402
from simrec.envs.slate_env import SlateEnv  # noqa: E402
from simrec.envs.vector_env import SlateVectorEnv  # noqa: E402

NO_REFLECT = {"reflect_every": 0, "reflect_at_session_end": False}


@contextlib.contextmanager
def fake_server_process(latency: float) -> Iterator[str]:
    """The fake OpenAI server of tests/llm_servers.py in its own process (no shared GIL)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "llm_servers.py"), "--latency", str(latency),
                             "--watch-stdin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"fake server did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def slates(rng: np.random.Generator, n: int, k: int = 5, c: int = 50) -> np.ndarray:
    return np.argsort(rng.random((n, c)), axis=1)[:, :k]


# ----------------------------------------------------------------------------------------------
def bench_overhead(latencies: list[float], concurrencies: list[int], batches: int) -> list[dict]:
    rows = []
    for L in latencies:
        with fake_server_process(L) as url:
            for C in concurrencies:
                be = LLMCognition({"base_url": url, "model": "fake", "concurrency": C, "timeout_s": 30 + 2 * L,
                                   **NO_REFLECT}, env={})
                venv = SlateVectorEnv(C, backend=be)
                venv.reset(seed=0)
                rng = np.random.default_rng(0)
                venv.step(slates(rng, C))  # warm-up: connections, world, sanitizer
                t0 = time.perf_counter()
                for _ in range(batches):
                    venv.step(slates(rng, C))
                dt = time.perf_counter() - t0
                sps = C * batches / dt
                s = be.stats()
                assert s["fallbacks"] == 0 and s["retries"] == 0, s
                rows.append({"latency_s": L, "concurrency": C, "steps_per_s": sps, "ideal": C / L,
                             "fraction_of_ideal": sps * L / C})
                print(f"  L={L:.2f}s C={C:3d}: {sps:8.1f} steps/s, ideal {C / L:7.1f} -> {sps * L / C:.3f}", flush=True)
                venv.close()
    return rows


# ----------------------------------------------------------------------------------------------
def bench_replay(steps: int, num_envs: int) -> dict:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d, fake_server_process(0.0) as url:
        for label, n in (("single_env", 1), (f"vector_env_{num_envs}", num_envs)):
            path = str(Path(d) / f"{label}.sqlite")
            rec = LLMCognition({"base_url": url, "model": "fake", "cache_path": path, "concurrency": 32,
                                "reflect_every": 10}, env={})
            t_rec = _drive(rec, n, steps)
            rec.close()
            rep = LLMCognition({"base_url": "http://127.0.0.1:9/v1", "model": "fake", "cache_path": path,
                                "cache_mode": "replay", "reflect_every": 10}, env={})
            t_rep = _drive(rep, n, steps)
            s = rep.stats()
            rep.close()
            assert s["requests"] == 0 and s["cache_misses"] == 0, s
            out[label] = {"steps": steps, "record_steps_per_s": steps / t_rec, "replay_steps_per_s": steps / t_rep,
                          "cache_hits": s["cache_hits"]}
            print(f"  {label}: record {steps / t_rec:8.1f} steps/s, replay {steps / t_rep:8.1f} steps/s", flush=True)
    return out


def _drive(be: LLMCognition, n: int, steps: int) -> float:
    """Seconds to run ``steps`` user-steps (single env if n == 1, else a vector env of n)."""
    rng = np.random.default_rng(1)
    if n == 1:
        env = SlateEnv(backend=be)
        env.reset(seed=1)
        acts = [rng.permutation(50)[:5] for _ in range(steps)]
        t0 = time.perf_counter()
        for a in acts:
            _, _, term, trunc, _ = env.step(a)
            be.drain_calls()  # what a trajectory recorder does each step
            if term or trunc:
                env.reset()
        return time.perf_counter() - t0
    venv = SlateVectorEnv(n, backend=be)
    venv.reset(seed=1)
    acts = [slates(rng, n) for _ in range(steps // n)]
    t0 = time.perf_counter()
    for a in acts:
        venv.step(a)
        be.drain_calls()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
def bench_prompt(steps: int, warmup: int) -> dict:
    from simrec.llm.local_server import local_backend_config, local_server
    from simrec.llm.prompting import approx_tokens

    with local_server() as url:
        be = LLMCognition(local_backend_config(url, **NO_REFLECT), env={})
        env = SlateEnv(backend=be, max_steps=warmup + steps + 5)
        _, info = env.reset(seed=0)
        user = info["user_id"]
        sim = env.unwrapped.sim
        rng = np.random.default_rng(0)
        # fill the user's memory with the embedded backend, then let the LLM decide
        sim.backend = EmbeddedCognition(env.unwrapped.sim_spec.choice)
        for _ in range(warmup):
            _, _, term, trunc, _ = env.step(rng.permutation(50)[:5])
            if term or trunc:
                env.reset(options={"user_id": user})  # memory persists across the user's sessions
        sim.backend = be
        pt, ct, approx = [], [], []
        for _ in range(steps):
            _, _, term, trunc, _ = env.step(rng.permutation(50)[:5])
            for c in be.drain_calls():
                if c["kind"] == "decide" and c["parse_status"] == "ok":  # first-attempt prompts only
                    pt.append(c["prompt_tokens"])
                    ct.append(c["completion_tokens"])
                    approx.append(approx_tokens(json.loads(c["messages"])))
            if term or trunc:
                env.reset(options={"user_id": user})
        env.close()
    res = {"page_steps": len(pt), "slate_size": 5, "memory_records": warmup,
           "mean_prompt_tokens": float(np.mean(pt)), "max_prompt_tokens": int(np.max(pt)),
           "mean_completion_tokens": float(np.mean(ct)), "mean_approx_gpt_tokens": float(np.mean(approx)),
           "tokenizer": "SmolLM2 (llama.cpp usage.prompt_tokens, incl. chat template)"}
    print(f"  prompt tokens per page-step: mean {res['mean_prompt_tokens']:.0f}, max {res['max_prompt_tokens']} "
          f"(approx GPT-style {res['mean_approx_gpt_tokens']:.0f}); "
          f"completion mean {res['mean_completion_tokens']:.0f} "
          f"over {len(pt)} steps", flush=True)
    return res


# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["overhead", "replay", "prompt", "all"])
    p.add_argument("--latency", type=float, nargs="+", default=[1.0])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help="replay: user-steps (3000); prompt: page-steps (16)")
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_llm.json"))
    a = p.parse_args(argv)
    results: dict[str, Any] = {}
    if a.what in ("overhead", "all"):
        print("framework overhead (fake server with fixed latency, vector env of C users):")
        results["overhead"] = bench_overhead(a.latency, a.concurrency, a.batches)
    if a.what in ("replay", "all"):
        print("replay from the SQLite cache:")
        results["replay"] = bench_replay(a.steps or 3000, a.num_envs)
    if a.what in ("prompt", "all"):
        print("prompt size (llama.cpp + SmolLM2 tokenizer):")
        results["prompt"] = bench_prompt(a.steps or 16, warmup=20)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.read_text()) if out.exists() else {}
    old.update(results)
    out.write_text(json.dumps(old, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
