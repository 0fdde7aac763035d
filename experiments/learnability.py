"""Learnability gate: does PPO trained on simrec/Synthetic-v0 beat random and popular on mean return?

    python experiments/learnability.py                       # 3 training seeds x 300k steps, ~10 min on 2 cores
    python experiments/learnability.py --seeds 5 --json benchmarks/results/learnability.json

Users of other simulators report agents that never beat random. For each training seed, PPO (the
slate-scoring policy of ``experiments/train_ppo.py``) trains on the batched population, then the frozen
policy, random, popular and LinUCB serve the same evaluation users (``simrec.evaluation.compare.user_schedule``)
from the same world seed. The table gives mean return per session over training seeds with a 95% t interval,
and the paired differences PPO - random and PPO - popular with their intervals: the gate passes when both
intervals lie above zero.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_ppo import ENV_ID, train  # noqa: E402  (the script beside this one)


def evaluate(model: Any, seed: int, episodes: int) -> dict[str, dict[str, float]]:
    from gymnasium.wrappers import FlattenObservation

    from simrec.envs.slate_env import SlateEnv
    from simrec.envs.wrappers import RepairSlate
    from simrec.evaluation.compare import make_env, record_run, run_metrics, user_schedule
    from simrec.recommenders import SB3Policy, make_recommender

    out = {}
    for name in ("random", "popular", "linucb", "ppo"):
        env = make_env(ENV_ID)
        users = user_schedule(env, seed, episodes)
        rec = (SB3Policy(model, FlattenObservation(RepairSlate(SlateEnv())), seed=seed) if name == "ppo"
               else make_recommender(name, env.action_space, seed=seed))
        out[name] = run_metrics(record_run(env, rec, seed, users, name=name), env)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3, help="training seeds (each also an evaluation seed)")
    p.add_argument("--timesteps", type=int, default=300_000)
    p.add_argument("--eval-episodes", type=int, default=200)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from simrec.evaluation.stats import mean_ci

    args = argparse.Namespace(policy="slate", action="repair", num_envs=64, n_steps=64, batch_size=512, n_epochs=5,
                              lr=3e-4, timesteps=a.timesteps, progress=False)
    rows: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for seed in range(a.seeds):
        args.seed = seed
        model = train(args)
        res = evaluate(model, 100 + seed, a.eval_episodes)
        for name, s in res.items():
            rows.setdefault(name, []).append(s["mean_return"])
        print(f"seed {seed}: " + ", ".join(f"{n} {s['mean_return']:.2f}" for n, s in res.items()), flush=True)
    table: dict[str, Any] = {}
    for name, vals in rows.items():
        m, lo, hi = mean_ci(vals)
        table[name] = {"mean_return": m, "ci_low": lo, "ci_high": hi, "values": vals}
    for base in ("random", "popular", "linucb"):
        d = np.asarray(rows["ppo"]) - np.asarray(rows[base])
        m, lo, hi = mean_ci(d.tolist())
        table[f"ppo - {base}"] = {"mean_return": m, "ci_low": lo, "ci_high": hi, "values": d.tolist()}
    print(f"\n{a.seeds} training seeds x {a.timesteps:,} PPO steps, {a.eval_episodes} evaluation sessions each "
          f"({time.perf_counter() - t0:.0f}s)\n")
    print("| policy | mean return per session (95% CI over seeds) |\n|---|---|")
    for name, v in table.items():
        print(f"| {name} | {v['mean_return']:.2f} [{v['ci_low']:.2f}, {v['ci_high']:.2f}] |")
    gate = table["ppo - random"]["ci_low"] > 0 and table["ppo - popular"]["ci_low"] > 0
    print(f"\ngate (PPO above random and popular, both intervals > 0): {'PASS' if gate else 'FAIL'}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"table": table, "gate": gate, "timesteps": a.timesteps,
                                            "seeds": a.seeds, "eval_episodes": a.eval_episodes}, indent=1) + "\n")
    return 0 if gate else 1


if __name__ == "__main__":
    raise SystemExit(main())
