"""Population rollouts: a large simulated population cut into shards, each shard one vector env on a worker.

Shard ``j`` holds ``shard_users`` users (the last one the rest), simulated by a
:class:`~simrec.envs.vector_env.SlateVectorEnv` with ``num_envs`` concurrent sessions for
``ceil(steps_per_user * users / num_envs)`` steps under a batched policy, seeded from
``SeedSequence([seed, j])``. Shards are fixed by the config, not by the number of workers, so the same
config gives the same episodes on 1 worker or 100. With ``out``, each shard's ``VectorRecorder`` log is
merged into one log whose ``user_index`` is global (shard ``j``'s users are offset by the users of the
shards before it; ``user`` stays the persona instance id within its shard).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from simrec.distributed.executor import Executor, ExecutorConfig
from simrec.distributed.grid import STAGING, _bar, _check_out, _distributed_info, _executor, split_llm_pools
from simrec.distributed.merge import MergeReport, UnitLog, log_digest, merge_logs
from simrec.distributed.units import UnitResult, attempt_dir, provenance


class PopulationConfig(BaseModel):
    """A population rollout (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    env: str = Field("simrec/Synthetic-v0", description="Registered env id.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Env spec overrides (gym.make_vec kwargs).")
    users: int = Field(ge=1, description="Simulated users in the whole population.")
    shard_users: int = Field(4096, ge=1, description="Users per shard (one unit of work).")
    num_envs: int = Field(256, ge=1, description="Concurrent sessions per shard (capped at the shard's users).")
    steps_per_user: float = Field(10.0, gt=0, description="User-steps per user, on average.")
    policy: Literal["random", "popular"] = Field("random", description="Batched policy: uniform slates, or the "
                                                                       "most popular candidates.")
    seed: int = 0
    log_latent: bool = Field(True, description="Log the hidden-state snapshot columns (with out).")
    flush_every: int = Field(1000, ge=1, description="Sessions per Parquet part of a shard's log. A shard whose "
                                                     "worker dies is re-run whole, so per-session parts would "
                                                     "only cost time.")

    @model_validator(mode="after")
    def _overrides_leave_population(self) -> "PopulationConfig":
        if "population_size" in self.overrides:
            raise ValueError("set users/shard_users instead of overrides['population_size']")
        return self

    def shards(self) -> list[int]:
        """Users in each shard."""
        n, k = divmod(self.users, self.shard_users)
        return [self.shard_users] * n + ([k] if k else [])

    def shard_seed(self, j: int) -> int:
        return int(np.random.SeedSequence([self.seed, j]).generate_state(1, dtype=np.uint32)[0])


def _act(policy: str, obs: dict[str, np.ndarray], slate: int, rng: np.random.Generator) -> np.ndarray:
    cands = obs["candidates"]
    n, c = cands.shape[0], cands.shape[1]
    if policy == "popular":  # last candidate column is the popularity prior; jitter breaks ties
        score = cands[:, :, -1] + 1e-6 * rng.random((n, c))
    else:
        score = rng.random((n, c))
    top = np.argpartition(-score, slate - 1, axis=1)[:, :slate]
    order = np.argsort(-np.take_along_axis(score, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def shard_unit(config: PopulationConfig, j: int, users: int, staging: str | None) -> UnitResult:
    """Simulate shard ``j`` of ``config`` (``users`` users); log it under ``staging`` if given."""
    import gymnasium

    from simrec.trajectory import VectorRecorder

    t0 = time.perf_counter()
    key = f"shard{j:05d}"
    n_envs = min(config.num_envs, users)
    env: Any = gymnasium.make_vec(config.env, num_envs=n_envs, vectorization_mode="vector_entry_point",
                                  population_size=users, **config.overrides)
    target = attempt_dir(staging, key) if staging else None
    if target is not None:
        env = VectorRecorder(env, target, flush_every=config.flush_every, log_latent=config.log_latent,
                             recommender=config.policy,
                             metadata={"unit": key, "shard": j, "shard_users": users})
    slate = env.unwrapped.sim_spec.slate_size
    rng = np.random.default_rng([config.seed, j, 1])
    steps = math.ceil(config.steps_per_user * users / n_envs)
    obs, _ = env.reset(seed=config.shard_seed(j))
    clicks = ended = 0
    reward = 0.0
    try:
        for _ in range(steps):
            obs, r, term, trunc, info = env.step(_act(config.policy, obs, slate, rng))
            clicks += int(info["clicked"].sum())
            ended += int((term | trunc).sum())
            reward += float(r.sum())
    finally:
        env.close()
    value = {"shard": j, "users": users, "user_steps": steps * n_envs, "sessions_ended": ended, "clicks": clicks,
             "shown": steps * n_envs * slate, "reward": reward}
    return UnitResult(key, value, str(target) if target else None, log_digest(target) if target else None,
                      time.perf_counter() - t0, **provenance())


@dataclass
class PopulationResult:
    """Totals of a population rollout, per-shard counts, and the merged log's report (with ``out``)."""

    config: dict[str, Any]
    shards: list[dict[str, Any]]
    user_steps: int
    clicks: int
    ctr: float
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)
    log: MergeReport | None = None

    @property
    def user_steps_per_s(self) -> float:
        """Aggregate throughput over the whole rollout (wall clock, merge included)."""
        return self.user_steps / self.seconds if self.seconds > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["user_steps_per_s"] = self.user_steps_per_s
        return d


def rollout_population(config: PopulationConfig | dict[str, Any], *, out: str | Path | None = None,
                       executor: Executor | ExecutorConfig | str | dict | None = "ray", workers: int | None = None,
                       ray_address: str | None = None, overwrite: bool = False, keep_staging: bool = False,
                       progress: bool = True, llm_share: int | None = None) -> PopulationResult:
    """Simulate ``config``'s population shard by shard on the executor's workers (see the module docstring).

    ``out``, ``executor``, ``workers``, ``ray_address``, ``llm_share``: as in :func:`~simrec.distributed.run_grid`."""
    cfg = config if isinstance(config, PopulationConfig) else PopulationConfig(**config)
    outp = Path(out) if out is not None else None
    _check_out(outp, overwrite)
    staging = outp / STAGING if outp is not None else None
    sizes = cfg.shards()
    t0 = time.perf_counter()
    with _executor(executor, workers, ray_address) as ex, _bar(len(sizes), "population", progress) as bar:
        workers_used = ex.workers
        # LLM users on endpoint pools: each worker holds its share of every endpoint's concurrency
        wcfg = cfg.model_copy(update={"overrides": split_llm_pools(cfg.overrides, llm_share or workers_used)})
        results: list[UnitResult] = ex.map(shard_unit, [(wcfg, j, n, str(staging) if staging else None)
                                                        for j, n in enumerate(sizes)],
                                           keys=[f"shard{j:05d}" for j in range(len(sizes))],
                                           on_result=lambda i, r: bar.update(1))
        t_units = time.perf_counter() - t0
        report = None
        if outp is not None:  # each shard's part is rewritten by a worker; this process writes the manifest
            offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
            logs = [UnitLog(r.key, r.log, {"shard_users": n}, r.digest, user_offset=o)  # type: ignore[arg-type]
                    for r, n, o in zip(results, sizes, offsets)]
            report = merge_logs(logs, outp, overwrite=overwrite,
                                metadata={"command": "population", "config": cfg.model_dump(mode="json")},
                                staging=staging, keep_staging=keep_staging, executor=ex)
    seconds = time.perf_counter() - t0
    shards = [r.value for r in results]
    steps = sum(s["user_steps"] for s in shards)
    clicks = sum(s["clicks"] for s in shards)
    shown = sum(s["shown"] for s in shards)
    info = {"timing": {"units_s": round(t_units, 3), "merge_s": round(seconds - t_units, 3)},
            "distributed": _distributed_info(ex, workers_used, results, report)}
    return PopulationResult(cfg.model_dump(mode="json"), shards, steps, clicks, clicks / shown if shown else math.nan,
                            seconds, info, report)
