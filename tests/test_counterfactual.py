"""Counterfactual controls: simulated engagement follows recommendation quality, not injected traits."""

from __future__ import annotations

import numpy as np
import pytest

from simrec.evaluation.counterfactual import DilutedRecommender, activity_injection, slate_dilution
from simrec.envs.slate_env import SlateEnv
from simrec.recommenders import make_recommender

pytest.importorskip("implicit")


def test_random_items_in_the_slate_lower_engagement_monotonically() -> None:
    r = slate_dilution("simrec/Synthetic-v0", "ease", seeds=[0], episodes=60)
    ctr = [float(np.mean(r["k"][k]["ctr"])) for k in range(6)]
    length = [float(np.mean(r["k"][k]["session_length"])) for k in range(6)]
    assert all(a > b for a, b in zip(ctr, ctr[1:])), ctr
    assert length[0] > length[5]
    assert ctr[0] > 1.15 * ctr[5]


def test_activity_trait_does_not_raise_ratings_or_satisfaction() -> None:
    r = activity_injection("simrec/Synthetic-v0", levels=(0.05, 0.95), seeds=[0, 1], users=40, steps=8)
    low, high = r["levels"][0.05], r["levels"][0.95]
    assert np.mean(high["mean_rating"]) <= np.mean(low["mean_rating"]) + 1e-9
    assert np.mean(high["final_satisfaction"]) <= np.mean(low["final_satisfaction"]) + 1e-9


def test_diluted_recommender_keeps_slates_valid() -> None:
    env = SlateEnv()
    obs, info = env.reset(seed=0)
    base = make_recommender("popular", env.action_space, seed=0)
    for k in range(6):
        a = DilutedRecommender(env.action_space, base, k, seed=0).act(obs, info)
        assert env.action_space.contains(np.asarray(a))
        assert len(set(np.asarray(a).tolist()) & set(np.asarray(base.act(obs, info)).tolist())) >= 5 - k
    with pytest.raises(ValueError):
        DilutedRecommender(env.action_space, base, 6)
