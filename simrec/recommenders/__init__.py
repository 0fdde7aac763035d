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
from simrec.recommenders.controls import OracleRecommender, WorstOfRecommender
from simrec.recommenders.ease import EASERecommender
from simrec.recommenders.fitted import (
    FittedRecommender,
    Interactions,
    MostPopularRecommender,
    RandomUnseenRecommender,
)
from simrec.recommenders.knn import ItemKNNRecommender
from simrec.recommenders.llm_ranker import LLMRankerRecommender
from simrec.recommenders.mf import ALSRecommender, BPRRecommender
from simrec.recommenders.policy import SB3Policy
from simrec.recommenders.sequential import SASRecRecommender
from simrec.recommenders.vae import MultVAERecommender

#: Names accepted by :func:`make_recommender` and the CLI.
RECOMMENDERS: dict[str, type[Recommender]] = {
    "random": RandomRecommender,
    "popular": PopularRecommender,
    "greedy": GreedyContentRecommender,
    "egreedy": EpsilonGreedyRecommender,
    "linucb": LinUCBRecommender,
    "mostpop": MostPopularRecommender,
    "random-unseen": RandomUnseenRecommender,
    "itemknn": ItemKNNRecommender,
    "als": ALSRecommender,
    "bpr": BPRRecommender,
    "ease": EASERecommender,
    "sasrec": SASRecRecommender,
    "multvae": MultVAERecommender,
    "bad": WorstOfRecommender,
    "oracle": OracleRecommender,
    "llm": LLMRankerRecommender,
}


def fitted_names() -> list[str]:
    """Names of the recommenders that must be fitted on logged interactions before they act."""
    return [n for n, c in RECOMMENDERS.items() if issubclass(c, FittedRecommender)]


def online_names() -> list[str]:
    """Names of the recommenders that act from the observation alone (no fit, no env access)."""
    return [n for n, c in RECOMMENDERS.items() if not issubclass(c, FittedRecommender) and not c.needs_env]


def make_recommender(name: str, action_space: spaces.Space, *, seed: int | None = None, **kwargs: Any) -> Recommender:
    """Build a registered recommender by name (see :data:`RECOMMENDERS`)."""
    try:
        cls = RECOMMENDERS[name]
    except KeyError:
        raise ValueError(f"unknown recommender {name!r}; choose one of {sorted(RECOMMENDERS)}") from None
    if getattr(cls, "wraps", None):  # a wrapper of another recommender (the 'bad' control): build that one first
        base = kwargs.pop("base", cls.wraps)
        if isinstance(base, str):
            base = make_recommender(base, action_space, seed=seed, **kwargs)
            kwargs = {}
        return cls(action_space, seed=seed, base=base, **kwargs)
    return cls(action_space, seed=seed, **kwargs)


__all__ = [
    "RECOMMENDERS", "Recommender", "make_recommender", "run_episodes", "slate_shape", "history_profile",
    "item_feedback", "bandit_features", "RandomRecommender", "PopularRecommender", "GreedyContentRecommender",
    "EpsilonGreedyRecommender", "LinUCBRecommender", "SB3Policy", "FittedRecommender", "Interactions",
    "ItemKNNRecommender", "ALSRecommender", "BPRRecommender", "EASERecommender", "WorstOfRecommender",
    "OracleRecommender", "LLMRankerRecommender", "MostPopularRecommender", "RandomUnseenRecommender",
    "SASRecRecommender", "MultVAERecommender", "fitted_names", "online_names",
]
