"""A trained stable-baselines3 model as a recommender."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from simrec.errors import ConfigError
from simrec.recommenders.base import Recommender


class SB3Policy(Recommender):
    """Use a trained stable-baselines3 model as a recommender.

    ``env`` is the (wrapped) environment the model was trained on, e.g.
    ``FlattenObservation(TopKScores(SlateEnv()))``. Its observation wrappers are applied to the raw
    observation and its action wrappers to the model's output, so the adapter returns candidate
    positions for the bare :class:`SlateEnv`. Without ``env`` observations and actions pass through.

    For a ``MultiDiscrete`` policy, ``deterministic`` decoding picks each position's most likely
    candidate among those not yet on the slate (SB3's per-position arg-max would repeat items).
    """

    name = "sb3"

    def __init__(self, model: Any, env: gymnasium.Env | None = None, *, deterministic: bool = True,
                 action_space: spaces.Space | None = None, seed: int | None = None) -> None:
        space = action_space or (env.unwrapped.action_space if env is not None else model.action_space)
        super().__init__(space, seed=seed)
        self.model = model
        self.deterministic = deterministic
        self._obs_fns, self._act_fns = _wrapper_transforms(env)

    def act(self, obs: dict[str, np.ndarray], info: dict[str, Any] | None = None) -> np.ndarray | int:
        o: Any = obs
        for fn in self._obs_fns:
            o = fn(o)
        if self.deterministic and isinstance(self.model.action_space, spaces.MultiDiscrete):
            a = self._greedy_distinct(o)
        else:
            a, _ = self.model.predict(o, deterministic=self.deterministic)
        for fn in self._act_fns:
            a = fn(a)
        a = np.asarray(a, dtype=np.int64).reshape(-1)
        return int(a[0]) if self.discrete else a


    def _greedy_distinct(self, obs: Any) -> np.ndarray:
        import torch

        policy = self.model.policy
        obs_t, _ = policy.obs_to_tensor(obs)
        with torch.no_grad():
            dists = policy.get_distribution(obs_t).distribution
        chosen: list[int] = []
        for d in dists:  # one Categorical per slate position
            logits = d.logits[0].detach().cpu().numpy().astype(np.float64)
            logits[chosen] = -np.inf
            chosen.append(int(np.argmax(logits)))
        return np.asarray(chosen, dtype=np.int64)


def _wrapper_transforms(env: gymnasium.Env | None) -> tuple[list[Callable], list[Callable]]:
    """Observation transforms inner-to-outer and action transforms outer-to-inner of a wrapper chain."""
    obs_fns: list[Callable] = []
    act_fns: list[Callable] = []
    e = env
    while isinstance(e, gymnasium.Wrapper):
        if isinstance(e, gymnasium.ObservationWrapper):
            obs_fns.insert(0, e.observation)
        if isinstance(e, gymnasium.ActionWrapper):
            act_fns.append(e.action)
        e = e.env
    return obs_fns, act_fns


def load_sb3_policy(path: str | Path, algo: str, env: gymnasium.Env) -> SB3Policy:
    """A saved stable-baselines3 model as a recommender for ``env`` (the bare simrec env).

    The wrappers are inferred from the model's spaces: a ``Box`` action means per-candidate scores
    (:class:`~simrec.envs.wrappers.TopKScores`), a ``MultiDiscrete`` one repaired slates
    (:class:`~simrec.envs.wrappers.RepairSlate`); a flat ``Box`` observation means ``FlattenObservation``.
    """
    try:
        import stable_baselines3 as sb3
    except ImportError:
        raise ConfigError("--policy needs stable-baselines3. Fix: pip install -e .[rl]") from None
    from gymnasium.wrappers import FlattenObservation

    from simrec.envs.wrappers import RepairSlate, TopKScores

    cls = getattr(sb3, algo.upper(), None)
    if cls is None:
        raise ConfigError(f"unknown --algo {algo!r}. Fix: use an SB3 algorithm name such as ppo, a2c, sac")
    path = str(path)
    if not Path(path).exists() and not Path(path + ".zip").exists():
        raise ConfigError(f"{path}: no such model file")
    model = cls.load(path, device="cpu")
    wrapped: gymnasium.Env = env
    if isinstance(model.action_space, spaces.Box):
        wrapped = TopKScores(wrapped)
    elif isinstance(model.action_space, spaces.MultiDiscrete) and not isinstance(env.action_space, spaces.Discrete):
        wrapped = RepairSlate(wrapped)
    if isinstance(model.observation_space, spaces.Box) and isinstance(env.observation_space, spaces.Dict):
        wrapped = FlattenObservation(wrapped)
    if model.observation_space.shape != wrapped.observation_space.shape:
        raise ConfigError(f"{path}: the model expects observations of shape {model.observation_space.shape}, "
                          f"this env gives {wrapped.observation_space.shape}. Fix: use the env it was trained on.")
    return SB3Policy(model, wrapped)
