"""Baseline recommenders that act on a :class:`~simrec.env.SlateEnv` observation.

Every recommender is a small class with the same three methods::

    rec = make_recommender("linucb", env.action_space, seed=0)
    rec.reset(seed=0)
    action = rec.act(obs, info)                          # candidate positions, best first
    rec.update(obs, action, reward, next_obs, next_info)  # learn from the step's feedback

They read only the observation (candidate features and popularity, the user's recent history)
and the per-item feedback in ``info["clicked"]`` after a step -- never ``info["latent"]``.
Slates are ranked: position 0 (the top, seen most) gets the highest score.

:func:`run_episodes` drives a recommender through an env for a number of sessions.
"""

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


class RandomRecommender(Recommender):
    """A uniformly random slate of distinct candidates."""

    name = "random"

    def act(self, obs: dict[str, np.ndarray], info: dict[str, Any] | None = None) -> np.ndarray | int:
        return self._format(self.rng.choice(self.num_candidates, size=self.slate_size, replace=False))


class PopularRecommender(Recommender):
    """The most popular candidates (by the observation's popularity column), most popular on top."""

    name = "popular"

    def scores(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        return np.asarray(obs["candidates"])[:, -1]


class GreedyContentRecommender(Recommender):
    """Content-based: cosine similarity of each candidate to the user's recently clicked items.

    With no click in the history yet it falls back to popularity; ``popularity_weight`` adds a
    little popularity to break near-ties between similar items.
    """

    name = "greedy"

    def __init__(self, action_space: spaces.Space, *, seed: int | None = None, popularity_weight: float = 0.1) -> None:
        super().__init__(action_space, seed=seed)
        self.popularity_weight = popularity_weight

    def scores(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        c = np.asarray(obs["candidates"], dtype=np.float64)
        f, pop = c[:, :-1], c[:, -1]
        p = history_profile(obs)
        if p is None:
            return pop
        cos = f @ p / np.maximum(np.linalg.norm(f, axis=1) * np.linalg.norm(p), 1e-8)
        return cos + self.popularity_weight * pop


# -- contextual bandits -------------------------------------------------------------------------
def bandit_features(obs: dict[str, np.ndarray]) -> np.ndarray:
    """Per-candidate context ``(num_candidates, 2d + 4)`` for the linear bandits.

    Item features ``f`` and popularity, crossed with the user's history profile ``p`` (mean clicked
    features): ``[f * p (d), f (d), cos(f, p), popularity, popularity * has_profile, 1]``. The
    element-wise product lets one shared linear model personalise (its sum is ``<f, p>``).
    """
    c = np.asarray(obs["candidates"], dtype=np.float64)
    f, pop = c[:, :-1], c[:, -1:]
    n, d = f.shape
    p = history_profile(obs)
    has = 0.0 if p is None else 1.0
    if p is None:
        p = np.zeros(d)
    fn = np.linalg.norm(f, axis=1, keepdims=True)
    cos = (f @ p)[:, None] / np.maximum(fn * max(np.linalg.norm(p), 1e-8), 1e-8)
    return np.concatenate([f * p, f, cos, pop, pop * has, np.ones((n, 1))], axis=1)


class _LinearBandit(Recommender):
    """A ridge-regression model of per-item click probability shared across items and users.

    Each shown item is one observation: context ``x`` (see :func:`bandit_features`), label = clicked.
    ``A = lambda I + sum x x^T``, ``b = sum r x``; the inverse is kept with Sherman-Morrison updates.
    """

    def __init__(self, action_space: spaces.Space, *, seed: int | None = None, ridge: float = 1.0,
                 features: Callable[[dict[str, np.ndarray]], np.ndarray] = bandit_features) -> None:
        super().__init__(action_space, seed=seed)
        self.ridge = ridge
        self.features = features
        self._dim: int | None = None
        self._x: np.ndarray | None = None  # features of the last observation acted on
        self._x_src: np.ndarray | None = None  # its candidates array (held, so identity is safe)

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self._dim = None
        self._x = None
        self._x_src = None

    def _init(self, dim: int) -> None:
        self._dim = dim
        self.A_inv = np.eye(dim) / self.ridge
        self.b = np.zeros(dim)
        self.theta = np.zeros(dim)
        self.n_updates = 0

    def _context(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        src = obs["candidates"]
        if self._x is None or self._x_src is not src:
            self._x, self._x_src = self.features(obs), src
        if self._dim is None:
            self._init(self._x.shape[1])
        return self._x

    def update(self, obs: dict[str, np.ndarray], action: Any, reward: float, next_obs: dict[str, np.ndarray],
               info: dict[str, Any]) -> None:
        x = self._context(obs)[self.positions(action)]
        labels = item_feedback(action, reward, next_obs, info, obs)
        for xi, r in zip(x, labels):
            Ax = self.A_inv @ xi
            self.A_inv -= np.outer(Ax, Ax) / (1.0 + xi @ Ax)
            self.b += r * xi
        self.theta = self.A_inv @ self.b
        self.n_updates += 1


class EpsilonGreedyRecommender(_LinearBandit):
    """Rank by the ridge model's predicted click probability; with probability ``epsilon`` each
    slate position is filled by a random candidate instead (decaying as ``epsilon / sqrt(1 + n/decay)``)."""

    name = "egreedy"

    def __init__(self, action_space: spaces.Space, *, seed: int | None = None, epsilon: float = 0.1,
                 decay: float | None = None, ridge: float = 1.0, **kw: Any) -> None:
        super().__init__(action_space, seed=seed, ridge=ridge, **kw)
        self.epsilon = epsilon
        self.decay = decay

    def act(self, obs: dict[str, np.ndarray], info: dict[str, Any] | None = None) -> np.ndarray | int:
        x = self._context(obs)
        s = x @ self.theta + 1e-9 * self.rng.random(x.shape[0])
        slate = self._top_k(s)
        eps = self.epsilon if not self.decay else self.epsilon / np.sqrt(1.0 + self.n_updates / self.decay)
        explore = self.rng.random(slate.size) < eps
        if explore.any():
            rest = np.setdiff1d(np.arange(self.num_candidates), slate[~explore])
            slate[explore] = self.rng.choice(rest, size=int(explore.sum()), replace=False)
        return self._format(slate)

    def scores(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        return self._context(obs) @ self.theta


class LinUCBRecommender(_LinearBandit):
    """LinUCB (Li et al., 2010) with one linear model shared by all items: rank candidates by
    ``theta . x + alpha * sqrt(x^T A^-1 x)``."""

    name = "linucb"

    def __init__(self, action_space: spaces.Space, *, seed: int | None = None, alpha: float = 0.5,
                 ridge: float = 1.0, **kw: Any) -> None:
        super().__init__(action_space, seed=seed, ridge=ridge, **kw)
        self.alpha = alpha

    def scores(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        x = self._context(obs)
        width = np.sqrt(np.maximum(((x @ self.A_inv) * x).sum(axis=1), 0.0))
        return x @ self.theta + self.alpha * width


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


# -- stable-baselines3 --------------------------------------------------------------------------
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


#: Names accepted by :func:`make_recommender` and the CLI.
RECOMMENDERS: dict[str, type[Recommender]] = {
    "random": RandomRecommender,
    "popular": PopularRecommender,
    "greedy": GreedyContentRecommender,
    "egreedy": EpsilonGreedyRecommender,
    "linucb": LinUCBRecommender,
}


def make_recommender(name: str, action_space: spaces.Space, *, seed: int | None = None, **kwargs: Any) -> Recommender:
    """Build a registered recommender by name (see :data:`RECOMMENDERS`)."""
    try:
        cls = RECOMMENDERS[name]
    except KeyError:
        raise ValueError(f"unknown recommender {name!r}; choose one of {sorted(RECOMMENDERS)}") from None
    return cls(action_space, seed=seed, **kwargs)


def run_episodes(env: gymnasium.Env, recommender: Recommender, episodes: int, *, seed: int | None = None,
                 learn: bool = True, progress: Any = None,
                 on_step: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, float]]:
    """Run ``episodes`` sessions; the first reset uses ``seed``, later ones continue the same world.

    Returns one dict per episode (``return``, ``length``, ``clicks``). ``progress`` is an object
    with ``update(n)`` (e.g. a tqdm bar), advanced once per episode.
    """
    out: list[dict[str, float]] = []
    clicks_total, shown_total = 0, 0
    for ep in range(episodes):
        obs, info = env.reset(seed=seed if ep == 0 else None)
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
