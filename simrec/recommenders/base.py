"""The recommender protocol (``reset`` / ``act`` / ``update``), observation helpers and the episode loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

#: Columns after the item features in an observation's ``history`` rows.
_HIST_EXTRA = 4  # clicked, rating/5, consumption, valid


def slate_shape(action_space: spaces.Space) -> tuple[int, int, bool]:
    """``(num_candidates, slate_size, discrete)`` of a SlateEnv action space."""
    if isinstance(action_space, spaces.Discrete):
        return int(action_space.n), 1, True
    if isinstance(action_space, spaces.MultiDiscrete):
        nvec = np.asarray(action_space.nvec).reshape(-1)
        if nvec.size == 0 or np.any(nvec != nvec[0]):
            raise ValueError(f"expected a slate space (equal MultiDiscrete entries), got {action_space}")
        return int(nvec[0]), int(nvec.size), False
    raise TypeError(f"recommenders act on Discrete or MultiDiscrete slate spaces, got {action_space}")


def history_profile(obs: dict[str, np.ndarray], weighted: bool = True) -> np.ndarray | None:
    """The user's taste as seen from the observation: mean feature vector of recently clicked items.

    Clicks are weighted by their rating (``rating/5``, 0.6 when unrated) when ``weighted``.
    Returns ``None`` when the history holds no click yet.
    """
    h = np.asarray(obs["history"])
    d = h.shape[1] - _HIST_EXTRA
    clicked = h[:, d] > 0.5
    if not clicked.any():
        return None
    w = np.where(h[:, d + 1] > 0, h[:, d + 1], 0.6) if weighted else np.ones(h.shape[0], np.float32)
    w = w * clicked
    p = (w[:, None] * h[:, :d]).sum(axis=0) / w.sum()
    return p.astype(np.float64)


class Recommender:
    """Base class: holds the slate shape and a seeded generator; subclasses implement :meth:`scores`.

    Args:
        action_space: the env's action space (``SlateSpace``/``MultiDiscrete`` or ``Discrete``).
        seed: seeds tie-breaking and exploration.
    """

    name = "base"
    #: True for recommenders built with the env itself (``make_recommender(..., env=env)``).
    needs_env = False
    #: True for controls that read the simulated users' hidden state (upper bounds, never real systems).
    cheat = False

    def __init__(self, action_space: spaces.Space, *, seed: int | None = None) -> None:
        self.action_space = action_space
        self.num_candidates, self.slate_size, self.discrete = slate_shape(action_space)
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        """Re-seed and forget anything learned."""
        self.rng = np.random.default_rng(seed)

    def scores(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        """``(num_candidates,)`` scores; the slate is the top ``slate_size``."""
        raise NotImplementedError

    def act(self, obs: dict[str, np.ndarray], info: dict[str, Any] | None = None) -> np.ndarray | int:
        s = np.asarray(self.scores(obs, info or {}), dtype=np.float64)
        # tiny random jitter breaks ties without biasing toward low indices
        return self._format(self._top_k(s + 1e-9 * self.rng.random(s.size)))

    def update(self, obs: dict[str, np.ndarray], action: Any, reward: float, next_obs: dict[str, np.ndarray],
               info: dict[str, Any]) -> None:
        """Learn from one step (a no-op for non-learning recommenders)."""

    # -- helpers ---------------------------------------------------------------------------------
    def _top_k(self, s: np.ndarray) -> np.ndarray:
        k = self.slate_size
        top = np.argpartition(-s, k - 1)[:k] if k < s.size else np.arange(s.size)
        return top[np.argsort(-s[top], kind="stable")]

    def _format(self, slate: np.ndarray) -> np.ndarray | int:
        return int(slate[0]) if self.discrete else slate.astype(np.int64)

    def positions(self, action: Any) -> np.ndarray:
        """Candidate positions of an action, as a 1-d int array."""
        return np.asarray(action, dtype=np.int64).reshape(-1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(slate {self.slate_size} of {self.num_candidates})"



def item_feedback(action: Any, reward: float, next_obs: dict[str, np.ndarray] | None, info: dict[str, Any],
                  obs: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Per-slate-position click labels for one step.

    Uses ``info["clicked"]`` when present. Otherwise the newest ``history`` row of ``next_obs`` says
    whether something was clicked and its features, which identify the clicked candidate of ``obs``.
    """
    pos = np.asarray(action, dtype=np.int64).reshape(-1)
    if "clicked" in info:
        return np.asarray(info["clicked"], dtype=np.float64).reshape(-1)
    out = np.zeros(pos.size)
    if next_obs is not None and obs is not None:
        last = np.asarray(next_obs["history"])[-1]
        d = last.size - _HIST_EXTRA
        if last[d] > 0.5:
            f = np.asarray(obs["candidates"])[pos, :d]
            out[np.argmin(np.abs(f - last[:d]).sum(axis=1))] = 1.0
    return out



def run_episodes(env: gymnasium.Env, recommender: Recommender, episodes: int, *, seed: int | None = None,
                 learn: bool = True, progress: Any = None,
                 on_step: Callable[[dict[str, Any]], None] | None = None,
                 reset_options: Callable[[int], dict[str, Any] | None] | None = None) -> list[dict[str, float]]:
    """Run ``episodes`` sessions; the first reset uses ``seed``, later ones continue the same world.

    Returns one dict per episode (``return``, ``length``, ``clicks``). ``progress`` is an object
    with ``update(n)`` (e.g. a tqdm bar), advanced once per episode. ``reset_options(episode)`` gives
    each reset's options (e.g. ``{"user_id": ...}`` to serve a fixed user schedule).
    """
    out: list[dict[str, float]] = []
    clicks_total, shown_total = 0, 0
    for ep in range(episodes):
        obs, info = env.reset(seed=seed if ep == 0 else None,
                              options=reset_options(ep) if reset_options is not None else None)
        done, ret, n, clicks = False, 0.0, 0, 0
        while not done:
            action = recommender.act(obs, info)
            next_obs, reward, terminated, truncated, info = env.step(action)
            if learn:
                recommender.update(obs, action, reward, next_obs, info)
            if on_step is not None:
                on_step(info)
            obs = next_obs
            ret += float(reward)
            n += 1
            clicks += int(np.asarray(info.get("clicked", 0)).sum())
            done = terminated or truncated
        out.append({"return": ret, "length": n, "clicks": clicks})
        clicks_total += clicks
        shown_total += n * recommender.slate_size
        if progress is not None:
            if hasattr(progress, "set_postfix"):  # tqdm: show the running CTR
                progress.set_postfix(ctr=f"{clicks_total / max(shown_total, 1):.4f}", refresh=False)
            progress.update(1)
    return out
