"""Adapter from :class:`~simrec.envs.vector_env.SlateVectorEnv` to stable-baselines3's ``VecEnv``.

SB3 steps its own ``VecEnv`` interface (auto-reset with ``terminal_observation`` in a list of info
dicts). ``SB3VecEnv`` exposes simrec's natively batched population through it, so PPO/A2C train
on N simulated users per step without N Python envs::

    from stable_baselines3 import PPO
    from simrec.envs.sb3 import SB3VecEnv

    venv = SB3VecEnv.make("simrec/Synthetic-v0", num_envs=64, seed=0)
    PPO("MultiInputPolicy", venv, n_steps=64).learn(20_000)

Slates: SB3's ``MultiDiscrete`` head samples positions independently, so repeated indices are
repaired (``action="repair"``, see :func:`simrec.envs.wrappers.repair_slates`), or the policy outputs
one score per candidate and the slate is the top-k (``action="scores"``).
``flatten=True`` concatenates the Dict observation for an ``MlpPolicy``.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import gymnasium
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices

from simrec.envs.vector_env import SlateVectorEnv
from simrec.envs.wrappers import repair_slates


class SB3VecEnv(VecEnv):
    """``SlateVectorEnv`` as an SB3 ``VecEnv``."""

    def __init__(self, venv: SlateVectorEnv, action: Literal["repair", "scores"] = "repair",
                 flatten: bool = False) -> None:
        self.venv = venv
        self.action_mode = action
        self.flatten = flatten
        single_obs = venv.single_observation_space
        obs_space = spaces.flatten_space(single_obs) if flatten else single_obs
        s = venv.sim_spec
        self.num_candidates, self.slate_size = s.num_candidates, s.slate_size
        if action == "scores":
            act_space: spaces.Space = spaces.Box(-1.0, 1.0, shape=(s.num_candidates,), dtype=np.float32)
        elif action == "repair":
            act_space = (spaces.Discrete(s.num_candidates) if s.slate_size == 1
                         else spaces.MultiDiscrete(np.full(s.slate_size, s.num_candidates)))
        else:
            raise ValueError(f"action must be 'repair' or 'scores', got {action!r}")
        super().__init__(venv.num_envs, obs_space, act_space)
        self._keys = list(single_obs.spaces.keys())
        self._actions: np.ndarray | None = None
        self.slate_repairs = 0

    @classmethod
    def make(cls, env_id: str = "simrec/Synthetic-v0", num_envs: int = 16, seed: int | None = None,
             action: Literal["repair", "scores"] = "repair", flatten: bool = False, **kwargs: Any) -> "SB3VecEnv":
        venv = gymnasium.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
        out = cls(venv.unwrapped if hasattr(venv, "unwrapped") else venv, action=action, flatten=flatten)
        if seed is not None:
            out.seed(seed)
        return out

    # -- VecEnv API -----------------------------------------------------------------------------
    def _obs(self, obs: dict[str, np.ndarray]) -> Any:
        if not self.flatten:
            return obs
        n = self.num_envs if obs["user"].ndim == 2 else None
        parts = [obs[k].reshape(n or 1, -1) for k in self._keys]  # the order flatten_space uses
        flat = np.concatenate(parts, axis=1)
        return flat if n else flat[0]

    def reset(self):
        seed = self._seeds[0]
        obs, _ = self.venv.reset(seed=seed)
        self._reset_seeds()
        return self._obs(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self):
        a = self._actions
        if self.action_mode == "scores":
            slates = np.argsort(-a, axis=1, kind="stable")[:, : self.slate_size]
        else:
            a = a.reshape(self.num_envs, -1).astype(np.int64)
            slates, rep = repair_slates(a, self.num_candidates)
            self.slate_repairs += int(rep.sum())
        obs, reward, terminated, truncated, info = self.venv.step(slates)
        done = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if done.any():
            for i in np.flatnonzero(done):
                infos[i]["terminal_observation"] = self._obs(info["final_obs"][i])
                infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                infos[i]["episode_clicks"] = info["final_info"][i]["episode_clicks"]
        return self._obs(obs), reward.astype(np.float32), done, infos

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.venv, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any) -> list[Any]:
        return [getattr(self.venv, method_name)(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gymnasium.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def _get_indices(self, indices: VecEnvIndices) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else list(indices)
