"""Core throughput and memory of simrec's embedded backend (prints numbers; not a test).

    python benchmarks/bench_core.py            # all measurements
    python benchmarks/bench_core.py --quick    # shorter runs

Measures
  * single env: steps/s of ``gymnasium.make("simrec/Synthetic-v0")`` (slate 5 of 50 candidates),
    with pre-drawn valid random slates, and including the random agent's own sampling;
  * batched: user-steps/s of ``make_vec(..., num_envs=1024, vectorization_mode="vector_entry_point")``;
  * PPO: stable-baselines3 PPO timesteps/s (rollout + training) through ``simrec.envs.sb3.SB3VecEnv``
    (16 users, n_steps 128, batch 256, 4 epochs, MlpPolicy on flattened observations), and with
    SB3's default hyperparameters on one ``FlattenObservation(RepairSlate(env))``;
  * peak resident memory of the process.
Targets on the 2-core reference machine: single >= 16,000 steps/s, batched >= 400,000 user-steps/s,
PPO >= 1,100 timesteps/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import gymnasium as gym
import numpy as np

import simrec


def best_of(fn, repeats: int) -> float:
    return max(fn() for _ in range(repeats))


def single_env(steps: int, sample_in_loop: bool) -> float:
    env = gym.make("simrec/Synthetic-v0")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    pre = np.argsort(rng.random((4096, 50)), axis=1)[:, :5]
    sample = env.action_space.sample
    t0 = time.perf_counter()
    for i in range(steps):
        a = sample() if sample_in_loop else pre[i & 4095]
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - t0)


def batched(num_envs: int, steps: int) -> float:
    env = gym.make_vec("simrec/Synthetic-v0", num_envs=num_envs, vectorization_mode="vector_entry_point")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    pre = [np.argsort(rng.random((num_envs, 50)), axis=1)[:, :5] for _ in range(8)]
    t0 = time.perf_counter()
    for i in range(steps):
        env.step(pre[i & 7])
    return steps * num_envs / (time.perf_counter() - t0)


def ppo(timesteps: int, num_envs: int) -> float:
    import torch
    from stable_baselines3 import PPO

    from simrec.envs.sb3 import SB3VecEnv

    torch.set_num_threads(1)  # small MLPs: threading overhead outweighs the gain on 2 cores
    venv = SB3VecEnv.make("simrec/Synthetic-v0", num_envs=num_envs, seed=0, flatten=True)
    model = PPO("MlpPolicy", venv, n_steps=128, batch_size=256, n_epochs=4, seed=0, verbose=0, device="cpu")
    model.learn(num_envs * 128)  # warm-up: allocations, first graph
    t0 = time.perf_counter()
    model.learn(timesteps, reset_num_timesteps=False)
    return timesteps / (time.perf_counter() - t0)


def ppo_single_default(timesteps: int) -> float:
    """SB3 PPO with its default hyperparameters on one flattened env (the slowest reasonable setup)."""
    import torch
    from gymnasium.wrappers import FlattenObservation
    from stable_baselines3 import PPO

    from simrec.envs.wrappers import RepairSlate

    torch.set_num_threads(1)
    env = FlattenObservation(RepairSlate(gym.make("simrec/Synthetic-v0")))
    model = PPO("MlpPolicy", env, seed=0, verbose=0, device="cpu")
    t0 = time.perf_counter()
    model.learn(timesteps)
    return timesteps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-ppo", action="store_true")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    scale = 0.25 if args.quick else 1.0
    res: dict[str, float] = {}
    res["single_env_steps_per_s"] = best_of(lambda: single_env(int(40_000 * scale), False), args.repeats)
    res["single_env_with_sampling_steps_per_s"] = best_of(lambda: single_env(int(40_000 * scale), True), args.repeats)
    res["batched_1024_user_steps_per_s"] = best_of(lambda: batched(1024, int(400 * scale)), args.repeats)
    if not args.skip_ppo:
        res["ppo_timesteps_per_s"] = ppo(int(32_768 * scale), num_envs=16)
        res["ppo_sb3_defaults_single_env_timesteps_per_s"] = ppo_single_default(int(8_192 * scale))
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    targets = {"single_env_steps_per_s": 16_000, "batched_1024_user_steps_per_s": 400_000, "ppo_timesteps_per_s": 1_100}
    print(f"simrec {simrec.__version__}, numpy {np.__version__}, gymnasium {gym.__version__}, "
          f"python {platform.python_version()}, {platform.machine()}")
    for k, v in res.items():
        t = targets.get(k)
        print(f"{k:40s} {v:>12,.0f}" + (f"   (target >= {t:,}: {'ok' if v >= t else 'MISSED'})" if t else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
