"""Property tests for ``SlateEnv``: observations stay in their spaces, rewards in their bounds, seeds
reproduce trajectories exactly, invalid actions are rejected clearly, and users persist across
sessions. Example counts are modest so the file runs in well under a minute."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from gymnasium import spaces
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simrec.envs.slate_env import SlateEnv
from simrec.envs.spaces import SlateSpace
from simrec.errors import InvalidActionError

N_CAND = 50
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

slate_sizes = st.sampled_from([1, 2, 5, 10])
weights = st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False)
rewards = st.fixed_dictionaries({"click": weights, "consumption": weights, "rating": weights, "leave": weights})
seeds = st.integers(0, 2**31 - 1)


def _slate(data: st.DataObject, k: int) -> Any:
    idx = data.draw(st.lists(st.integers(0, N_CAND - 1), min_size=k, max_size=k, unique=True), label="slate")
    return idx[0] if k == 1 else np.array(idx, dtype=np.int64)


def _rng_slates(seed: int, k: int, n: int) -> list[Any]:
    rng = np.random.default_rng(seed)
    out = [rng.choice(N_CAND, k, replace=False) for _ in range(n)]
    return [int(a[0]) for a in out] if k == 1 else out


def _expected_reward(info: dict[str, Any], w: dict[str, float]) -> float:
    rated = info["rating"] > 0  # 0 = not rated
    return (w["click"] * info["clicked"].sum() + w["consumption"] * info["consumption"].sum()
            + w["rating"] * ((info["rating"][rated] - 3.0) / 2.0).sum() + w["leave"] * info["leave"])


# -- spaces and bounds ---------------------------------------------------------------------------

@SETTINGS
@given(k=slate_sizes, reward=rewards, seed=seeds, data=st.data())
def test_observations_in_space_and_rewards_in_bounds(k, reward, seed, data):
    env = SlateEnv(slate_size=k, reward=reward, max_steps=12)
    assert isinstance(env.action_space, spaces.Discrete if k == 1 else SlateSpace)
    lo, hi = env.unwrapped.reward_bounds
    obs, info = env.reset(seed=seed)
    assert env.observation_space.contains(obs)
    n_steps = data.draw(st.integers(1, 30), label="n_steps")
    for _ in range(n_steps):
        obs, r, term, trunc, info = env.step(_slate(data, k))
        assert env.observation_space.contains(obs), {key: (v.min(), v.max()) for key, v in obs.items()}
        assert isinstance(r, float) and lo - 1e-9 <= r <= hi + 1e-9
        assert r == pytest.approx(_expected_reward(info, reward), abs=1e-5)
        assert info["slate_items"].shape == (k,) and len(set(info["slate_items"].tolist())) == k
        assert info["clicked"].shape == info["rating"].shape == info["consumption"].shape == (k,)
        assert set(np.unique(info["rating"])) <= {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}
        assert ((info["consumption"] > 0) <= info["clicked"]).all()
        assert obs["user"][2] == pytest.approx(info["t"] / 12)
        assert term == info["leave"] and not (term and trunc)
        assert trunc == (info["t"] >= 12 and not term)
        if term or trunc:
            obs, info = env.reset()
            assert env.observation_space.contains(obs)


@SETTINGS
@given(k=slate_sizes, seed=seeds)
def test_history_observation_tracks_the_users_steps(k, seed):
    env = SlateEnv(slate_size=k, history_window=6, max_steps=50)
    obs, info = env.reset(seed=seed, options={"user_id": "u0002"})
    d = env.catalog.dim
    total = 0
    for a in _rng_slates(seed, k, 9):
        assert obs["history"][:, d + 3].sum() == min(total, 6)  # valid rows
        obs, _, term, trunc, info = env.step(a)
        total += 1
        last = obs["history"][-1]  # newest row is last
        assert last[d + 3] == 1.0 and last[d] == float(info["clicked"].any())
        if info["clicked"].any():
            item = info["slate_items"][info["clicked"]][0]
            np.testing.assert_allclose(last[:d], env.catalog.features[item], rtol=1e-6)
        if term or trunc:
            obs, info = env.reset(options={"user_id": "u0002"})


# -- determinism ---------------------------------------------------------------------------------

def _trajectory(env: SlateEnv, seed: int, actions: list[Any], user: str | None = None) -> list[Any]:
    opts = {"user_id": user} if user else None
    out: list[Any] = [env.reset(seed=seed, options=opts)]
    for a in actions:
        step = env.step(a)
        out.append(step)
        if step[2] or step[3]:
            out.append(env.reset(options=opts))  # next session in the same world
    return out


@SETTINGS
@given(k=slate_sizes, seed=seeds, action_seed=seeds,
       shift=st.sampled_from([0.0, 0.2]))
def test_same_seed_same_trajectory(k, seed, action_seed, shift):
    kw = {"slate_size": k, "max_steps": 8, "dynamics": {"drift": {"shift_rate": shift}}}
    actions = _rng_slates(action_seed, k, 25)
    a = _trajectory(SlateEnv(**kw), seed, actions)
    b = _trajectory(SlateEnv(**kw), seed, actions)
    np.testing.assert_equal(a, b)  # obs, rewards, flags and infos (incl. latent state) all equal
    env = SlateEnv(**kw)
    _trajectory(env, seed + 1, actions[:7])
    np.testing.assert_equal(_trajectory(env, seed, actions), a)  # reset(seed) restarts everything
    c = _trajectory(SlateEnv(**kw), seed + 1, actions)
    assert any(not np.array_equal(x[0]["candidates"], y[0]["candidates"]) for x, y in zip(a, c))


@SETTINGS
@given(seed=seeds, data=st.data())
def test_single_user_fast_path_matches_the_batched_simulator(seed, data):
    """SlateEnv steps one user through a fast path; it must equal Simulator.step on that user."""
    env_a, env_b = SlateEnv(), SlateEnv()
    env_a.reset(seed=seed, options={"user_id": 5})
    env_b.reset(seed=seed, options={"user_id": 5})
    sim_b = env_b.sim
    for _ in range(data.draw(st.integers(1, 15), label="n")):
        a = _slate(data, 5)
        _, r_a, term, _, info = env_a.step(a)
        slate = env_b._cands[0, a]
        res = sim_b.step(np.array([5]), slate[None, :], env_b.np_random)
        env_b._cands = sim_b.candidates.draw(env_b.np_random, 1)
        assert r_a == pytest.approx(float(res.reward[0]))
        np.testing.assert_array_equal(info["clicked"], res.response.clicked[0])
        np.testing.assert_allclose(info["consumption"], res.response.consumption[0], rtol=1e-5)
        assert info["leave"] == bool(res.response.leave[0])
        for key, v in vars(env_a.sim.pop.state).items():
            np.testing.assert_allclose(v, getattr(sim_b.pop.state, key), rtol=1e-5, atol=1e-6, err_msg=key)
        ra, rb = env_a.sim.pop.memory.records(5), sim_b.pop.memory.records(5)
        assert [(r.t, r.shown, r.chosen, r.rating) for r in ra] == [(r.t, r.shown, r.chosen, r.rating) for r in rb]
        np.testing.assert_allclose([(r.consumption, r.feeling, r.importance) for r in ra],
                                   [(r.consumption, r.feeling, r.importance) for r in rb], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(env_a.sim.observe_one(5, env_a._cands[0], 1, 0)["history"],
                                   sim_b.observe(np.array([5]), env_b._cands, np.array([1]), np.array([0]))["history"][0],
                                   rtol=1e-5, atol=1e-6)
        if term:
            break


# -- invalid actions -----------------------------------------------------------------------------

@SETTINGS
@given(k=st.sampled_from([2, 5, 10]), seed=seeds, data=st.data())
def test_invalid_slates_raise_clear_errors_and_change_nothing(k, seed, data):
    env, ref = SlateEnv(slate_size=k), SlateEnv(slate_size=k)
    env.reset(seed=seed)
    ref.reset(seed=seed)
    good = _slate(data, k)
    kind = data.draw(st.sampled_from(["duplicate", "high", "negative", "short", "long", "2d", "float", "scalar",
                                      "bool", "string"]), label="kind")
    bad: Any = good.copy()
    if kind == "duplicate":
        i, j = data.draw(st.lists(st.integers(0, k - 1), min_size=2, max_size=2, unique=True), label="pair")
        bad[j] = bad[i]
        match = "distinct"
    elif kind == "high":
        bad[data.draw(st.integers(0, k - 1))] = data.draw(st.integers(N_CAND, 10**6))
        match = "out of range"
    elif kind == "negative":
        bad[data.draw(st.integers(0, k - 1))] = data.draw(st.integers(-(10**6), -1))
        match = "out of range"
    elif kind == "short":
        bad, match = good[:-1], "shape"
    elif kind == "long":
        bad, match = np.append(good, [g for g in range(N_CAND) if g not in good][0]), "shape"
    elif kind == "2d":
        bad, match = np.stack([good, good]), "shape"
    elif kind == "float":
        bad, match = good.astype(np.float64), "integer"
    elif kind == "scalar":
        bad, match = int(good[0]), "shape"
    elif kind == "bool":
        bad, match = np.ones(k, dtype=bool), "integer"
    else:
        bad, match = "abc", "integer"
    with pytest.raises(InvalidActionError, match=match):
        env.step(bad)
    # the rejected action consumed no randomness and changed no state
    np.testing.assert_equal(env.step(good), ref.step(good))


@pytest.mark.parametrize("bad, match", [
    (N_CAND, "out of range"), (-1, "out of range"), (np.array([N_CAND + 3]), "out of range"),
    (1.5, "integer"), (np.array([1, 2]), "shape"), (np.array([[3]]), None), (None, "integer"),
])
def test_invalid_discrete_actions(bad, match):
    env = SlateEnv(slate_size=1)
    env.reset(seed=0)
    if match is None:  # a (1, 1) array holds one valid index; accepting it like Discrete would is fine
        env.step(bad)
        return
    with pytest.raises(InvalidActionError, match=match):
        env.step(bad)
    env.step(np.int64(3))
    env.step(np.array(4))


def test_step_before_reset_is_an_error():
    with pytest.raises(RuntimeError, match="reset"):
        SlateEnv().step(np.arange(5))


def test_slate_space_samples_and_contains_distinct_slates():
    space = SlateSpace(N_CAND, 5, seed=0)
    for _ in range(200):
        s = space.sample()
        assert space.contains(s) and len(set(s.tolist())) == 5
    assert not space.contains(np.array([1, 1, 2, 3, 4]))
    assert not space.contains(np.array([1, 2, 3, 4, N_CAND]))
    with pytest.raises(ValueError):
        SlateSpace(3, 5)


# -- users across sessions -----------------------------------------------------------------------

@SETTINGS
@given(seed=seeds, user=st.integers(0, 255), n_sessions=st.integers(2, 4))
def test_user_state_persists_across_sessions(seed, user, n_sessions):
    env = SlateEnv(max_steps=4)
    uid = env.sim.pop.user_id(user)
    obs, info = env.reset(seed=seed, options={"user_id": uid})
    assert info["user_id"] == uid and env.user_index == user
    mem = env.sim.pop.memory
    steps = 0
    for session in range(1, n_sessions + 1):
        assert info["latent"]["sessions"] == session
        assert info["latent"]["steps_total"] == steps == mem.count[user]
        if session > 1:
            assert obs["user"][4] > 0  # time passed since the last session
            assert obs["history"][:, -1].sum() == min(steps, env.sim_spec.history_window)  # history carried over
        done = False
        while not done:
            obs, _, term, trunc, info = env.step(env.action_space.sample())
            steps += 1
            done = term or trunc
        clock = info["latent"]["clock"]
        obs, info = env.reset(options={"user_id": uid})
        assert info["latent"]["clock"] >= clock  # a gap passes between sessions, never negative
    assert len(mem.records(user)) == min(steps, env.sim_spec.memory_capacity)


def test_reset_with_seed_restarts_the_population():
    env = SlateEnv()
    _, first = env.reset(seed=3, options={"user_id": "u0010"})
    for _ in range(10):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset(options={"user_id": "u0010"})
    assert env.sim.pop.memory.count.sum() == 10
    _, again = env.reset(seed=3, options={"user_id": "u0010"})
    np.testing.assert_equal(again, first)
    assert env.sim.pop.memory.count.sum() == 0 and env.sim.pop.state.steps_total.sum() == 0
    fresh = SlateEnv()
    fresh.reset(seed=3, options={"user_id": "u0010"})
    for k, v in vars(fresh.sim.pop.state).items():
        np.testing.assert_array_equal(getattr(env.sim.pop.state, k), v, err_msg=k)


def test_options_user_id_picks_that_user():
    env = SlateEnv(population_size=300)
    for uid in ("u0000", "u0123", "u0255", "u0004#1", 42, np.int64(7)):
        _, info = env.reset(seed=0, options={"user_id": uid})
        expected = env.sim.pop.user_id(int(uid)) if not isinstance(uid, str) else uid
        assert info["user_id"] == expected
        _, _, _, _, step_info = env.step(env.action_space.sample())
        assert step_info["user_id"] == expected
    with pytest.raises(ValueError, match="unknown user_id"):
        env.reset(options={"user_id": "nobody"})
    with pytest.raises(ValueError):
        env.reset(options={"user_id": 300})


def test_reset_without_options_draws_many_users():
    env = SlateEnv()
    env.reset(seed=0)
    users = {env.reset()[1]["user_id"] for _ in range(60)}
    assert len(users) > 30


class _CountingBackend:
    """The embedded backend, counting ``end_session`` calls per user."""

    name = "counting"

    def __init__(self) -> None:
        from simrec.cognition.embedded import EmbeddedCognition

        self.inner = EmbeddedCognition()
        self.ended: list[int] = []

    def decide(self, pop, users, slates, rng):
        return self.inner.decide(pop, users, slates, rng)

    def judge(self, pop, users, items, rng):
        return self.inner.judge(pop, users, items, rng)

    def end_session(self, pop, users) -> None:
        self.ended.extend(int(u) for u in np.atleast_1d(users))

    def stats(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        pass


def test_end_session_is_called_once_per_session():
    backend = _CountingBackend()
    env = SlateEnv(backend=backend, max_steps=3)
    env.reset(seed=0, options={"user_id": 4})
    assert backend.ended == []
    finished = 0
    for _ in range(3):  # sessions that run to their end, then reset() for the next one
        done = False
        while not done:
            _, _, term, trunc, _ = env.step(env.action_space.sample())
            done = term or trunc
        finished += 1
        assert backend.ended == [4] * finished
        env.reset(options={"user_id": 4})
        assert backend.ended == [4] * finished  # reset() after a finished session ends nothing more
    env.step(env.action_space.sample())
    env.reset(options={"user_id": 9})  # abandoning a session mid-way ends it once
    assert backend.ended == [4] * (finished + 1)
    env.reset(options={"user_id": 9})  # nothing was shown in that session: nothing to end
    assert backend.ended == [4] * (finished + 1)
