"""The single-user fast path (``Simulator.step_one``) must match the batched path (``Simulator.step``)."""

import copy

import gymnasium as gym
import numpy as np
import pytest

import simrec  # noqa: F401


def _fresh(seed: int, **kw):
    env = gym.make("simrec/Synthetic-v0", **kw).unwrapped
    env.reset(seed=seed)
    # a little history so memory, boredom and satisfaction are non-trivial
    for _ in range(15):
        _, _, te, tr, _ = env.step(np.arange(env.sim_spec.slate_size))
        if te or tr:
            env.reset()
    return env


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("overrides", [{}, {"reward": {"click": 1.0, "consumption": 0.5, "rating": 1.0, "leave": -1.0},
                                            "dynamics": {"drift": {"shift_rate": 0.3}}}])
def test_step_one_matches_batched_step(seed, overrides):
    env = _fresh(seed, **overrides)
    sim = env.sim
    u = env.user_index
    slate = env._cands[0, :5].copy()
    state0 = sim.pop.state.copy()
    mem0 = copy.deepcopy(sim.pop.memory)
    hist0 = sim._hist.copy()
    rng_state = copy.deepcopy(env.np_random.bit_generator.state)

    fast = sim.step_one(u, slate, env.np_random)
    fast_state, fast_mem, fast_hist = sim.pop.state.copy(), copy.deepcopy(sim.pop.memory), sim._hist.copy()

    sim.pop.state, sim.pop.memory, sim._hist = state0, mem0, hist0
    env.np_random.bit_generator.state = rng_state
    slow = sim.step(np.array([u]), slate[None, :], env.np_random)

    a, b = fast.response, slow.response
    np.testing.assert_array_equal(a.clicked, b.clicked)
    np.testing.assert_array_equal(a.leave, b.leave)
    np.testing.assert_allclose(a.consumption, b.consumption, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.isnan(a.rating), np.isnan(b.rating))
    np.testing.assert_allclose(np.nan_to_num(a.rating), np.nan_to_num(b.rating))
    np.testing.assert_allclose(fast.reward, slow.reward, rtol=1e-5)
    np.testing.assert_array_equal(fast.shifted, slow.shifted)
    st = sim.pop.state
    for name in ("taste", "anchor", "boredom", "fatigue", "satisfaction", "clock"):
        np.testing.assert_allclose(getattr(fast_state, name), getattr(st, name), rtol=1e-4, atol=1e-5, err_msg=name)
    for name in ("chosen", "shown", "count", "n_chosen", "n_skipped"):
        np.testing.assert_array_equal(getattr(fast_mem, name), getattr(sim.pop.memory, name), err_msg=name)
    for name in ("rating", "consumption", "feeling", "importance", "topic_consumed", "topic_rating_sum", "topic_rating_n"):
        np.testing.assert_allclose(getattr(fast_mem, name), getattr(sim.pop.memory, name), rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(fast_hist, sim._hist, rtol=1e-5, atol=1e-6)
    # and the random streams end in the same place
    assert env.np_random.random() == pytest.approx(_after(rng_state, sim, u, slate))


def _after(rng_state, sim, u, slate):
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = rng_state
    pop_state, mem, hist = sim.pop.state.copy(), copy.deepcopy(sim.pop.memory), sim._hist.copy()
    sim.step_one(u, slate, rng)
    sim.pop.state, sim.pop.memory, sim._hist = pop_state, mem, hist
    return rng.random()


def test_observe_one_matches_batched_observe():
    env = _fresh(7)
    sim, u = env.sim, env.user_index
    one = sim.observe_one(u, env._cands[0], 3, 2)
    many = sim.observe(np.array([u]), env._cands, np.array([3]), np.array([2]))
    for k in one:
        np.testing.assert_allclose(one[k], many[k][0], rtol=1e-6, err_msg=k)
