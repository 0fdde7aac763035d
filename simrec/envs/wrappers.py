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
    a = np.clip(a, 0, num_candidates - 1)
    return a, repair_in_place(a)


def repair_in_place(a: np.ndarray) -> np.ndarray:
    """The repair of :func:`repair_slates` on ``a`` (B, K) int64, already in range, in place; returns the
    repairs per row. Vectorised over rows: a position repeats iff its value occurs earlier in the row (a
    replacement never equals a later value, which is on the row), and as every original value stays on
    the row, the m-th repeated position gets the m-th smallest value not in the original row."""
    if a.shape[0] <= _FEW_ROWS:
        return _repair_rows(a)
    K = a.shape[1]
    dup = a[:, :, None] == a[:, None, :]  # [b, k, j]: positions k and j hold the same value
    dup &= _earlier(K)
    dup = dup.any(axis=2)  # (B, K): the value at k occurs at an earlier position
    repairs = dup.sum(axis=1)
    rows = np.flatnonzero(repairs)
    if rows.size:
        ar, d = a[rows], dup[rows]
        # values 0..K-1 not on the row, ascending (a row with repeats lacks at least as many of them as it repeats)
        present = (ar[:, :, None] == np.arange(K)).any(axis=1)
        free = np.argsort(present, axis=1, kind="stable")
        rank = np.cumsum(d, axis=1)
        rank -= 1  # -1 before the first repeat: a valid index, and masked out by d
        ar[d] = np.take_along_axis(free, rank, axis=1)[d]
        a[rows] = ar
    return repairs


#: Up to this many rows, :func:`repair_in_place` repairs row by row in Python: the vectorised version costs about
#: a dozen numpy calls whatever the batch, more than a few short Python loops (RLlib sends a few bad rows a step).
_FEW_ROWS = 12


def _repair_rows(a: np.ndarray) -> np.ndarray:
    """:func:`repair_in_place` one row at a time (the same rule, for few rows)."""
    repairs = np.zeros(a.shape[0], np.int64)
    for r, row in enumerate(a.tolist()):
        seen: set[int] = set()
        present, free, n = set(row), 0, 0
        for k, v in enumerate(row):
            if v in seen:  # a later copy: the lowest value not on the row (nor given to an earlier copy)
                while free in present:
                    free += 1
                row[k] = free
                present.add(free)
                n += 1
            else:
                seen.add(v)
        if n:
            a[r] = row
            repairs[r] = n
    return repairs


_EARLIER: dict[int, np.ndarray] = {}


def _earlier(k: int) -> np.ndarray:
    """``(k, k)`` bool, ``[i, j]`` true where ``j < i`` (cached)."""
    m = _EARLIER.get(k)
    if m is None:
        m = _EARLIER[k] = np.tri(k, k, -1, dtype=bool)
    return m


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
