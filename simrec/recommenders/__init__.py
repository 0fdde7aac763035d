"""Recommenders that act on a :class:`~simrec.envs.slate_env.SlateEnv` observation.

One module per family: ``base`` (protocol, helpers, :func:`run_episodes`), ``baselines``, ``bandits``,
``policy`` (stable-baselines3). A new recommender is a new module here with a :class:`Recommender`
subclass and one entry in :data:`RECOMMENDERS`. This package may import ``simrec.data``,
``simrec.trajectory`` and below; only analysis, stress tests and the CLI import it.

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

from typing import Any

from gymnasium import spaces

from simrec.recommenders.bandits import EpsilonGreedyRecommender, LinUCBRecommender, bandit_features
from simrec.recommenders.base import Recommender, history_profile, item_feedback, run_episodes, slate_shape
from simrec.recommenders.baselines import GreedyContentRecommender, PopularRecommender, RandomRecommender
from simrec.recommenders.policy import SB3Policy

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


__all__ = [
    "RECOMMENDERS", "Recommender", "make_recommender", "run_episodes", "slate_shape", "history_profile",
    "item_feedback", "bandit_features", "RandomRecommender", "PopularRecommender", "GreedyContentRecommender",
    "EpsilonGreedyRecommender", "LinUCBRecommender", "SB3Policy",
]
