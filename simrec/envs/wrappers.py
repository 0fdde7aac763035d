"""Action wrappers that let generic RL agents emit valid slates.

A slate needs distinct indices, but agents with a ``MultiDiscrete`` head (SB3's PPO/A2C) sample
each position independently and will repeat items. Two ways to fix that:

* :class:`RepairSlate` keeps the ``MultiDiscrete`` action and replaces a repeated index by the
  lowest unused one (deterministic; repairs are counted in ``info["slate_repairs"]``).
* :class:`TopKScores` exposes a ``Box`` of one score per candidate and shows the top-k
  (the usual choice for continuous-action agents such as SAC/TD3, or PPO with a Gaussian head).
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces


def repair_slates(actions: np.ndarray, num_candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """Make every row of ``actions`` (B, K) distinct; returns ``(slates, repairs per row)``.

    A repeated index keeps its first position; later copies become the lowest index not yet on
    the slate, so the result is a deterministic function of the input.
    """
    a = np.array(actions, dtype=np.int64, copy=True)
    if a.ndim == 1:
        a = a[None, :]
    B, K = a.shape
    a = np.clip(a, 0, num_candidates - 1)
    repairs = np.zeros(B, dtype=np.int64)
    for k in range(1, K):
        dup = (a[:, :k] == a[:, k : k + 1]).any(axis=1)
        if not dup.any():
            continue
        rows = np.flatnonzero(dup)
        # lowest index not used anywhere on the row (at most K are used, so it is < K + 1)
        used = np.zeros((rows.size, K + 1), dtype=bool)
        for j in range(K):
            v = a[rows, j]
            ok = v <= K
            used[ok.nonzero()[0], v[ok]] = True
        a[rows, k] = np.argmin(used, axis=1)
        repairs[rows] += 1
    return a, repairs


class RepairSlate(gymnasium.ActionWrapper):
    """Expose a plain ``MultiDiscrete`` slate action and repair repeated indices."""

    def __init__(self, env: gymnasium.Env) -> None:
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, spaces.MultiDiscrete):
            raise TypeError(f"RepairSlate needs a MultiDiscrete slate action space, got {space}")
        self.num_candidates = int(space.nvec[0])
        self.action_space = spaces.MultiDiscrete(space.nvec.copy())
        self._repairs = 0

    def action(self, action: Any) -> np.ndarray:
        slate, rep = repair_slates(np.asarray(action), self.num_candidates)
        self._repairs = int(rep[0])
        return slate[0]

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = super().step(action)
        info["slate_repairs"] = self._repairs
        return obs, reward, terminated, truncated, info


class TopKScores(gymnasium.ActionWrapper):
    """Expose ``Box(-1, 1, (num_candidates,))`` scores; the slate is the top-k, best first."""

    def __init__(self, env: gymnasium.Env) -> None:
        super().__init__(env)
        space = env.action_space
        if isinstance(space, spaces.Discrete):
            self.num_candidates, self.slate_size = int(space.n), 1
        elif isinstance(space, spaces.MultiDiscrete):
            self.num_candidates, self.slate_size = int(space.nvec[0]), int(space.nvec.size)
        else:
            raise TypeError(f"TopKScores needs a Discrete or MultiDiscrete slate action space, got {space}")
        self.action_space = spaces.Box(-1.0, 1.0, shape=(self.num_candidates,), dtype=np.float32)

    def action(self, action: Any) -> np.ndarray | int:
        scores = np.asarray(action, dtype=np.float64).reshape(self.num_candidates)
        if not np.all(np.isfinite(scores)):
            raise ValueError("TopKScores got non-finite scores")
        top = np.argsort(-scores, kind="stable")[: self.slate_size]
        return int(top[0]) if self.slate_size == 1 else top.astype(np.int64)
