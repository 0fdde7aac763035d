"""Baseline recommenders: valid slates, observation-only inputs, and learning that shows in CTR."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st

from simrec.envs.slate_env import SlateEnv
from simrec.recommenders import (
    LinUCBRecommender,
    SB3Policy,
    item_feedback,
    make_recommender,
    online_names,
    run_episodes,
)

NAMES = sorted(online_names())  # fitted ones and the oracle: tests/test_zoo.py


@pytest.fixture(scope="module")
def env() -> SlateEnv:
    return SlateEnv()


@pytest.fixture(scope="module")
def env1() -> SlateEnv:
    return SlateEnv(slate_size=1, num_candidates=20)


class NoLatent(dict):
    """An info dict that fails the test if anyone reads the hidden state."""

    def __getitem__(self, k):
        assert k != "latent", "a recommender read info['latent']"
        return super().__getitem__(k)

    def get(self, k, default=None):
        assert k != "latent", "a recommender read info['latent']"
        return super().get(k, default)


def _valid(action, space) -> bool:
    if isinstance(space, spaces.Discrete):
        return isinstance(action, int) and 0 <= action < space.n
    a = np.asarray(action)
    return a.shape == space.shape and np.unique(a).size == a.size and a.min() >= 0 and a.max() < space.nvec[0]


@pytest.mark.parametrize("name", NAMES)
def test_slates_valid_in_env_and_no_latent_read(name: str, env: SlateEnv, env1: SlateEnv) -> None:
    for e in (env, env1):
        rec = make_recommender(name, e.action_space, seed=0)
        obs, info = e.reset(seed=1)
        for _ in range(60):
            a = rec.act(obs, NoLatent(info))
            assert _valid(a, e.action_space), (name, a)
            assert e.action_space.contains(a)
            nxt, r, term, trunc, info = e.step(a)
            rec.update(obs, a, r, nxt, NoLatent(info))
            obs = nxt
            if term or trunc:
                obs, info = e.reset()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), name=st.sampled_from(NAMES), k=st.integers(1, 8), c=st.integers(8, 40))
def test_slates_valid_on_arbitrary_observations(seed: int, name: str, k: int, c: int) -> None:
    """Any observation in the space (random features, empty or full histories) gives a valid slate."""
    e = SlateEnv(slate_size=k, num_candidates=c, max_steps=5)
    e.observation_space.seed(seed)
    rec = make_recommender(name, e.action_space, seed=seed)
    for _ in range(3):
        obs = e.observation_space.sample()
        a = rec.act(obs, {})
        assert _valid(a, e.action_space)
        clicked = np.zeros(k, bool)
        clicked[seed % k] = bool(seed % 2)
        rec.update(obs, a, float(clicked.sum()), e.observation_space.sample(), {"clicked": clicked})


def test_reset_reseeds_random_recommender(env: SlateEnv) -> None:
    rec = make_recommender("random", env.action_space)
    obs, info = env.reset(seed=0)
    rec.reset(seed=5)
    first = [rec.act(obs, info).tolist() for _ in range(5)]
    rec.reset(seed=5)
    assert [rec.act(obs, info).tolist() for _ in range(5)] == first


def test_popular_ranks_by_popularity_column(env: SlateEnv) -> None:
    obs, info = env.reset(seed=0)
    a = make_recommender("popular", env.action_space, seed=0).act(obs, info)
    pop = obs["candidates"][:, -1]
    assert np.allclose(pop[a], np.sort(pop)[::-1][: len(a)])


def test_linucb_forgets_on_reset(env: SlateEnv) -> None:
    rec = LinUCBRecommender(env.action_space, seed=0)
    run_episodes(env, rec, 2, seed=0)
    assert rec.n_updates > 0 and np.abs(rec.theta).sum() > 0
    rec.reset(seed=0)
    obs, info = env.reset(seed=0)
    rec.act(obs, info)
    assert rec.n_updates == 0 and np.abs(rec.theta).sum() == 0


def test_item_feedback_from_history_matches_info(env: SlateEnv) -> None:
    """Without info['clicked'], the newest history row identifies the clicked candidate."""
    rec = make_recommender("popular", env.action_space, seed=0)
    obs, info = env.reset(seed=3)
    checked = 0
    for _ in range(80):
        a = rec.act(obs, info)
        nxt, r, term, trunc, info = env.step(a)
        labels = item_feedback(a, r, nxt, {}, obs)
        assert np.array_equal(labels, info["clicked"].astype(float))
        checked += int(info["clicked"].any())
        obs = nxt
        if term or trunc:
            obs, info = env.reset()
    assert checked > 5


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match="linucb"):
        make_recommender("nope", spaces.Discrete(3))


def _ctr(name: str, seed: int, episodes: int = 80, learn: bool = True) -> float:
    env = SlateEnv()
    rec = make_recommender(name, env.action_space, seed=seed)
    res = run_episodes(env, rec, episodes, seed=seed, learn=learn)
    return sum(r["clicks"] for r in res) / (sum(r["length"] for r in res) * env.sim_spec.slate_size)


@pytest.fixture(scope="module")
def ctrs() -> dict[str, float]:
    # Measured with 80 sessions (~3,000 steps) on seeds 0-4: random 0.120-0.129, popular 0.137-0.143,
    # greedy 0.143-0.148, egreedy 0.157-0.166, linucb 0.161-0.167 (min ratios to random 1.10, 1.14, 1.25, 1.26).
    return {n: _ctr(n, seed=2) for n in NAMES}


def test_bandits_beat_random_and_popular(ctrs: dict[str, float]) -> None:
    for n in ("egreedy", "linucb"):
        assert ctrs[n] > 1.15 * ctrs["random"], ctrs
        assert ctrs[n] > 1.05 * ctrs["popular"], ctrs


def test_popular_and_greedy_beat_random(ctrs: dict[str, float]) -> None:
    assert ctrs["popular"] > 1.05 * ctrs["random"], ctrs
    assert ctrs["greedy"] > 1.07 * ctrs["random"], ctrs


def test_bandits_learn() -> None:
    """The same bandits without updates: egreedy ranks at random, LinUCB by exploration width only
    (which already favours popular, profile-aligned items: measured 0.142 vs 0.162 learning)."""
    assert _ctr("egreedy", seed=4, episodes=60) > 1.2 * _ctr("egreedy", seed=4, episodes=60, learn=False)
    assert _ctr("linucb", seed=4, episodes=60) > 1.07 * _ctr("linucb", seed=4, episodes=60, learn=False)


def test_sb3_policy_adapter_gives_valid_slates() -> None:
    sb3 = pytest.importorskip("stable_baselines3")
    from gymnasium.wrappers import FlattenObservation

    from simrec.envs.wrappers import RepairSlate, TopKScores

    base = SlateEnv(max_steps=5)
    for wrap in (TopKScores, RepairSlate):
        train_env = FlattenObservation(wrap(SlateEnv(max_steps=5)))
        model = sb3.PPO("MlpPolicy", train_env, n_steps=16, batch_size=16, seed=0, device="cpu")
        pol = SB3Policy(model, train_env, deterministic=False)
        res = run_episodes(base, pol, 3, seed=0)
        assert sum(r["length"] for r in res) > 0  # every step passed SlateEnv's validation
