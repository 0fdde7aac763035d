"""RLlib PPO (new API stack) on simrec, next to CartPole and a zero-cost env, in one run (prints numbers; not a test).

    /work/venv-ray/bin/python benchmarks/bench_rllib.py --json benchmarks/results/bench_rllib.json
    python benchmarks/bench_rllib.py --quick          # shorter windows (needs the ``ray`` extra)
    python benchmarks/bench_rllib.py --envs 32 --env-only   # only the env's own step time, in process (no Ray)

Three PPO algorithms with the same settings (``--runners`` env runners x ``--envs`` envs each, train
batch 2048, minibatch 256, 4 epochs, a [64, 64] MLP: ``bench_core.py``'s SB3 PPO settings):

* ``simrec``: ``simrec.rllib.ppo_config("simrec/Synthetic-v0")``, the native vector env (next-step autoreset,
  repaired slates, flattened observations);
* ``zero-cost``: a vector env with exactly simrec's RLlib spaces that does nothing (a copy of a constant
  observation, zero reward, episodes as long as simrec's mean session under a random policy, measured
  in this run, staggered across slots);
* ``CartPole-v1``: RLlib's usual path (Gymnasium ``SyncVectorEnv`` of single envs), for scale.

All three are built first, then their training windows are interleaved ``--repeats`` times, so load
changes on a shared machine hit all of them alike; each reports its best window. Windows are 8 iterations
(16,384 timesteps, about 3 s for simrec on a 2-core machine) and 20 of them per algorithm (a run takes about
4 minutes). With 4 iterations x 3 windows (about 1.5 s each) the share moved between 8% and 25% from one run to
the next on a shared machine, because a single slow window decided the best; with 5 to 20 windows of 8
iterations the zero-cost windows of one run still spread by up to 1.8x, more than the effect measured, so the
best-window share still moves by several points between runs, and the cross-checks below are printed next to
it. ``--quick`` keeps 2 short windows. The env share of PPO time is ``1 - (simrec timesteps/s) / (zero-cost timesteps/s)``: the fraction of
wall time that goes away when the env costs nothing. Target: at most 10% (SB3's PPO on ``SB3VecEnv``: about
23%). Printed next to it:

* the same share of CPU time (this process, where the learner runs, plus every runner; median window): less
  disturbed by other load on a shared machine;
* the share in each round (simrec's window against the zero-cost window right after it), median over rounds;
* the share by RLlib's own ``env_step_timer`` (milliseconds per vector-env step, in the runners): each runner's
  vector steps in a window times that timer, over the window's wall time, median over windows. Runners sample
  in parallel, so one runner's env time is the env's part of the wall clock.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np

PPO_SETTINGS = {"train_batch_size_per_learner": 2048, "minibatch_size": 256, "num_epochs": 4}
HIDDEN = [64, 64]


def zero_cost_creator(config: dict) -> Any:
    """RLlib env creator: a vector env with the given spaces and nothing inside (defined here, pickled by value)."""
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode
    from gymnasium.vector.utils import batch_space

    class ZeroCostEnv(gym.vector.VectorEnv):
        metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

        def __init__(self, num_envs: int, obs_space: gym.Space, act_space: gym.Space, episode_len: int) -> None:
            self.num_envs = num_envs
            self.single_observation_space, self.single_action_space = obs_space, act_space
            self.observation_space = batch_space(obs_space, num_envs)
            self.action_space = batch_space(act_space, num_envs)
            self.episode_len = episode_len
            self._obs = np.zeros((num_envs, *obs_space.shape), obs_space.dtype)
            self._t = np.zeros(num_envs, np.int64)
            self._pending = np.zeros(num_envs, bool)

        def reset(self, *, seed: Any = None, options: Any = None):
            self._t = (np.arange(self.num_envs) * self.episode_len) // self.num_envs  # staggered episode ends
            self._pending[:] = False
            return self._obs.copy(), {}

        def step(self, actions: Any):
            self._t = np.where(self._pending, 0, self._t + 1)  # next-step autoreset, like simrec's
            term = ~self._pending & (self._t >= self.episode_len)
            self._pending = term
            # a fresh array, as any env returns (a shared buffer would stay in cache and flatter RLlib's side)
            return self._obs.copy(), np.zeros(self.num_envs), term, np.zeros(self.num_envs, bool), {}

    return ZeroCostEnv(int(config["num_envs"]), config["obs_space"], config["act_space"], int(config["episode_len"]))


def simrec_episode_len(num_envs: int = 64, steps: int = 400) -> float:
    """Mean session length of simrec/Synthetic-v0 under a random MultiCategorical-like policy (an untrained PPO's).

    Measured on the env itself: RLlib's ``episode_len_mean`` in the first iterations only counts the
    sessions that already ended, so it is biased short when many envs run few steps each.
    """
    import simrec.rllib

    env = simrec.rllib.make_env({"num_envs": num_envs})
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    lens: list[int] = []
    for _ in range(steps):
        _, _, term, trunc, info = env.step(rng.integers(0, 50, size=(num_envs, 5)))
        lens += info["t"][term | trunc].tolist()
    return float(np.mean(lens))


def adapter_step_ms(num_envs: int, steps: int = 500, repeats: int = 7) -> float:
    """Milliseconds per step of simrec's RLlib env in this process (no Ray, no policy): ``num_envs`` slots,
    actions drawn like an untrained MultiCategorical head's (repeats repaired), resets included; best of
    ``repeats`` loops. What the env itself costs, without the runners' contention for the cores."""
    import simrec.rllib

    env = simrec.rllib.make_env({"num_envs": num_envs})
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, 50, size=(steps, num_envs, 5))
    for a in actions[:100]:  # warm-up
        env.step(a)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for a in actions:
            env.step(a)
        best = min(best, (time.perf_counter() - t0) / steps)
    return 1e3 * best


def build(kind: str, args: argparse.Namespace, episode_len: int = 0) -> Any:
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.tune.registry import register_env

    import simrec.rllib

    if kind == "simrec":
        config = simrec.rllib.ppo_config("simrec/Synthetic-v0", num_env_runners=args.runners,
                                         num_envs_per_env_runner=args.envs)
    elif kind == "zero-cost":
        if __name__ != "__main__":  # imported: runners cannot import this script, so ship the creator by value
            import ray.cloudpickle

            ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        probe = simrec.rllib.make_env({"num_envs": 1})
        register_env("simrec-zero-cost", zero_cost_creator)
        config = (PPOConfig()
                  .environment("simrec-zero-cost", env_config={"obs_space": probe.single_observation_space,
                                                               "act_space": probe.single_action_space,
                                                               "episode_len": episode_len})
                  .env_runners(num_env_runners=args.runners, num_envs_per_env_runner=args.envs,
                               gym_env_vectorize_mode="vector_entry_point"))
    else:
        config = PPOConfig().environment(kind).env_runners(num_env_runners=args.runners, num_envs_per_env_runner=args.envs)
    config = config.training(**PPO_SETTINGS).rl_module(model_config={"fcnet_hiddens": HIDDEN}).debugging(seed=0)
    return config.build_algo()


def cpu_seconds(algo: Any) -> float:
    """CPU seconds used so far by this process (the learner) and by every remote env runner."""
    runners = algo.env_runner_group.foreach_env_runner(lambda runner: time.process_time(), local_env_runner=False)
    return time.process_time() + float(sum(runners))


def window(algo: Any, iters: int) -> dict[str, float]:
    """Train ``iters`` iterations: timesteps per wall second, CPU microseconds per timestep, RLlib's env timer."""
    steps, timers, lens = 0, [], []
    cpu0, t0 = cpu_seconds(algo), time.perf_counter()
    for _ in range(iters):
        res = algo.train()
        steps += int(res["env_runners"]["num_env_steps_sampled"])
        timers.append(float(res["env_runners"].get("env_step_timer", np.nan)))
        lens.append(float(res["env_runners"].get("episode_len_mean", np.nan)))
    dt, cpu = time.perf_counter() - t0, cpu_seconds(algo) - cpu0
    return {"timesteps_per_s": steps / dt, "cpu_us_per_timestep": 1e6 * cpu / steps,
            "env_step_ms": 1e3 * float(np.nanmean(timers)), "episode_len_mean": float(np.nanmean(lens)),
            "seconds": dt, "timesteps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runners", type=int, default=2, help="env runners (remote actors)")
    ap.add_argument("--envs", type=int, default=8, help="envs per env runner")
    ap.add_argument("--iters", type=int, default=8, help="training iterations per timed window")
    ap.add_argument("--repeats", type=int, default=20, help="interleaved windows per algorithm; the best counts")
    ap.add_argument("--quick", action="store_true", help="2 iterations x 2 repeats")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch threads of the learner (in this process); runners get 1 from Ray")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--env-only", action="store_true",
                    help="only time the env in this process (no Ray needed) and exit")
    args = ap.parse_args()
    env_ms = adapter_step_ms(args.envs)
    print(f"simrec's RLlib env in this process, {args.envs} users: {env_ms:.3f} ms per step (best of 7 x 500 steps)")
    if args.env_only:
        return
    if args.quick:
        args.iters, args.repeats = 2, 2
    import ray
    import torch

    # The learner runs in this process; with torch's default (one thread per core) it fights the runners for
    # the cores, and on a busy 2-core machine a [64, 64] forward pass then takes milliseconds, not microseconds.
    torch.set_num_threads(args.torch_threads)
    # Logical CPUs: each env runner reserves one, and all three algorithms hold theirs at once (only one
    # trains at a time), so the runtime is told of enough CPUs for all of them, whatever the machine has.
    ray.init(num_cpus=3 * args.runners + 1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        t_build = time.perf_counter()
        ep_len = max(2, round(simrec_episode_len()))  # what the zero-cost env copies
        algos = {"simrec": build("simrec", args), "zero-cost": build("zero-cost", args, ep_len),
                 "CartPole-v1": build("CartPole-v1", args)}
        for algo in algos.values():
            window(algo, 1)  # warm-up
        t_build = time.perf_counter() - t_build
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in algos}
        for _ in range(args.repeats):
            for name, algo in algos.items():
                runs[name].append(window(algo, args.iters))
        for algo in algos.values():
            algo.stop()
    finally:
        ray.shutdown()
    best = {k: max(v, key=lambda r: r["timesteps_per_s"]) for k, v in runs.items()}
    cpu = {k: float(np.median([r["cpu_us_per_timestep"] for r in v])) for k, v in runs.items()}
    s, z, c = best["simrec"], best["zero-cost"], best["CartPole-v1"]
    share = 1.0 - s["timesteps_per_s"] / z["timesteps_per_s"]
    cpu_share = 1.0 - cpu["zero-cost"] / cpu["simrec"]
    # Two cross-checks that do not hang on one best window each: the share in each round (simrec's window
    # against the zero-cost window run right after it), median over rounds; and RLlib's own env timer: each
    # runner's vector steps in a window times its mean step time, over the window's wall time (runners sample
    # in parallel, so one runner's env time is the env's share of the wall clock), median over windows.
    paired = float(np.median([1.0 - a["timesteps_per_s"] / b["timesteps_per_s"]
                              for a, b in zip(runs["simrec"], runs["zero-cost"])]))
    timer = float(np.median([r["env_step_ms"] * 1e-3 * r["timesteps"] / (args.runners * args.envs) / r["seconds"]
                             for r in runs["simrec"]]))
    import ray as _ray

    res = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "ray": _ray.__version__,
                    "torch": torch.__version__, "torch_threads": args.torch_threads, "load_avg_1m": os.getloadavg()[0]},
        "settings": {"env_runners": args.runners, "envs_per_runner": args.envs, "iters_per_window": args.iters,
                     "repeats": args.repeats, **PPO_SETTINGS, "fcnet_hiddens": HIDDEN, "zero_cost_episode_len": ep_len},
        "best": best, "median_cpu_us_per_timestep": cpu, "all_windows": runs,
        "simrec_vs_cartpole": s["timesteps_per_s"] / c["timesteps_per_s"],
        "simrec_vs_zero_cost": s["timesteps_per_s"] / z["timesteps_per_s"],
        "env_share_of_ppo_time": share, "env_share_of_ppo_cpu": cpu_share, "env_share_target": 0.10,
        "env_share_paired_median": paired, "env_share_by_env_timer": timer,
        "build_and_warmup_s": t_build, "adapter_step_ms_in_process": env_ms,
    }
    print(f"RLlib PPO, {args.runners} env runners x {args.envs} envs, batch 2048, minibatch 256, 4 epochs, "
          f"MLP {HIDDEN}; best of {args.repeats} windows of {args.iters} iterations (CPU: median)")
    print(f"{'env':<14}{'timesteps/s':>13}{'vs CartPole':>13}{'vs zero-cost':>14}{'CPU us/step':>13}"
          f"{'env step ms':>13}{'episode len':>13}")
    for name, r in best.items():
        print(f"{name:<14}{r['timesteps_per_s']:>13,.0f}{r['timesteps_per_s'] / c['timesteps_per_s']:>13.2f}"
              f"{r['timesteps_per_s'] / z['timesteps_per_s']:>14.2f}{cpu[name]:>13.0f}{r['env_step_ms']:>13.2f}"
              f"{r['episode_len_mean']:>13.1f}")
    print(f"env share of PPO wall time (1 - simrec / zero-cost timesteps/s): {share:.1%}; of PPO CPU time "
          f"(learner + runners): {cpu_share:.1%} (target <= 10%; SB3 today: about 23%)")
    print(f"cross-checks: median over rounds of the same share: {paired:.1%}; RLlib's env step timer x steps per "
          f"runner / wall time: {timer:.1%} (median window)")
    print(f"load average at the end: {res['machine']['load_avg_1m']:.1f} on {os.cpu_count()} CPUs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
