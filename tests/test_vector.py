"""The native batched population env and its SB3 adapter."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import simrec  # noqa: F401
from simrec.errors import InvalidActionError
from simrec.envs.wrappers import repair_slates


def make(n=32, **kw):
    return gym.make_vec("simrec/Synthetic-v0", num_envs=n, vectorization_mode="vector_entry_point", **kw)


def random_slates(rng, n, c=50, k=5):
    return np.argsort(rng.random((n, c)), axis=1)[:, :k]


def test_make_vec_is_native_batched():
    env = make(16)
    from simrec.envs.vector_env import SlateVectorEnv

    assert isinstance(env.unwrapped, SlateVectorEnv)
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert len(set(info["user"].tolist())) == 16, "a user holds at most one slot"


def test_steps_stay_in_spaces_and_bounds_and_autoreset():
    env = make(32, reward={"click": 1.0, "consumption": 1.0, "rating": 0.5, "leave": -2.0})
    lo, hi = env.unwrapped.reward_bounds
    rng = np.random.default_rng(1)
    obs, _ = env.reset(seed=1)
    ended = 0
    for _ in range(120):
        obs, r, term, trunc, info = env.step(random_slates(rng, 32))
        assert env.observation_space.contains(obs)
        assert np.all((r >= lo) & (r <= hi))
        assert not np.any(term & trunc)
        assert np.all(info["t"][~(term | trunc)] >= 1)
        busy = info["user"]
        if (term | trunc).any():
            ended += int((term | trunc).sum())
            assert info["_final_obs"].sum() == (term | trunc).sum()
            for i in np.flatnonzero(term | trunc):
                assert env.unwrapped.single_observation_space.contains(info["final_obs"][i])
        # after autoreset no user is in two slots
        assert len(set(env.unwrapped._users.tolist())) == 32
        assert busy.shape == (32,)
    assert ended > 0
    # truncation at max_steps
    assert np.all(env.unwrapped._t < env.unwrapped.sim_spec.max_steps)


def test_same_seed_same_trajectory():
    def run(seed):
        env = make(8)
        rng = np.random.default_rng(5)
        obs, _ = env.reset(seed=seed)
        out = []
        for _ in range(60):
            obs, r, term, trunc, info = env.step(random_slates(rng, 8))
            out.append((r.copy(), term.copy(), info["user"].copy(), obs["history"].copy()))
        return out

    a, b, c = run(3), run(3), run(4)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def test_invalid_actions_raise():
    env = make(4)
    env.reset(seed=0)
    bad = np.tile(np.arange(5), (4, 1))
    bad[2, 3] = bad[2, 0]
    with pytest.raises(InvalidActionError, match="repeats"):
        env.step(bad)
    with pytest.raises(InvalidActionError, match="out of range"):
        env.step(np.full((4, 5), 50))
    with pytest.raises(ValueError, match="expected actions for 4 envs"):
        env.step(np.tile(np.arange(5), (3, 1)))


def test_population_must_fit_slots():
    from simrec.envs.vector_env import SlateVectorEnv

    with pytest.raises(ValueError, match="population_size"):
        SlateVectorEnv(num_envs=10, population_size=5)


def test_slate_size_one_is_discrete():
    env = make(8, slate_size=1)
    assert isinstance(env.unwrapped.single_action_space, gym.spaces.Discrete)
    env.reset(seed=0)
    obs, r, *_ = env.step(np.arange(8))
    assert r.shape == (8,)


def test_repair_slates_is_deterministic_and_minimal():
    a = np.array([[3, 3, 3, 1, 0], [4, 2, 0, 1, 3], [0, 0, 0, 0, 0]])
    fixed, rep = repair_slates(a, 50)
    assert fixed.tolist()[1] == [4, 2, 0, 1, 3]
    assert rep.tolist() == [2, 0, 4]
    for row in fixed:
        assert len(set(row.tolist())) == 5
    assert fixed[0, 0] == 3 and fixed[0, 3] == 1 and fixed[0, 4] == 0  # first occurrences kept


def test_sb3_adapter_trains_ppo_on_the_batched_population():
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO

    from simrec.envs.sb3 import SB3VecEnv

    venv = SB3VecEnv.make("simrec/Synthetic-v0", num_envs=8, seed=0)
    assert venv.num_envs == 8
    model = PPO("MultiInputPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=0, verbose=0)
    model.learn(512)
    flat = SB3VecEnv.make("simrec/Synthetic-v0", num_envs=4, seed=0, flatten=True, action="scores")
    obs = flat.reset()
    assert obs.shape == (4,) + flat.observation_space.shape
    PPO("MlpPolicy", flat, n_steps=32, batch_size=64, n_epochs=1, seed=0, verbose=0).learn(256)


def test_sb3_adapter_flattening_matches_gymnasium():
    pytest.importorskip("stable_baselines3")
    from gymnasium import spaces

    from simrec.envs.sb3 import SB3VecEnv

    flat = SB3VecEnv.make("simrec/Synthetic-v0", num_envs=3, seed=2, flatten=True)
    obs = flat.reset()
    raw, _ = flat.venv.reset(seed=2)
    for i in range(3):
        ref = spaces.flatten(flat.venv.single_observation_space, {k: v[i] for k, v in raw.items()})
        np.testing.assert_allclose(obs[i], ref)
    # terminal observations are flattened too
    for _ in range(200):
        flat.step_async(np.tile(np.arange(5), (3, 1)))
        o, r, done, infos = flat.step_wait()
        for i in np.flatnonzero(done):
            assert infos[i]["terminal_observation"].shape == flat.observation_space.shape
