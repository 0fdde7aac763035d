"""Slate spaces under Gymnasium's vector utilities: a random agent on a vector env never repeats an item.

A random agent is the first thing users run on a vector env, and RL libraries sample from these spaces
too, so ``envs.step(envs.action_space.sample())`` must work in every vectorization mode.
"""

from __future__ import annotations

import copy
import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector.utils import batch_differing_spaces, batch_space, concatenate, create_empty_array, iterate
from hypothesis import given, settings
from hypothesis import strategies as st

import simrec  # noqa: F401  (registers the ids)
from simrec.envs.spaces import SlateSpace

ENV_ID = "simrec/Synthetic-v0"


@pytest.mark.parametrize("mode,num_envs", [("vector_entry_point", 64), ("sync", 4), ("async", 3)])
def test_random_agent_steps_a_vector_env_in_every_mode(mode: str, num_envs: int) -> None:
    envs = gym.make_vec(ENV_ID, num_envs=num_envs, vectorization_mode=mode)
    try:
        assert isinstance(envs.action_space, SlateSpace)
        assert envs.action_space.shape == (num_envs, 5)
        assert envs.action_space == batch_space(envs.single_action_space, num_envs)
        envs.action_space.seed(0)
        envs.reset(seed=0)
        clicks = 0
        for _ in range(1_000):
            action = envs.action_space.sample()
            assert envs.action_space.contains(action)
            _, _, _, _, info = envs.step(action)
            if mode == "vector_entry_point":
                clicks += int(np.asarray(info["clicked"]).sum())
        if mode == "vector_entry_point":
            assert clicks > 0  # the steps were real: users clicked something
    finally:
        envs.close()


def test_slate_of_one_vector_env_samples_validly() -> None:
    envs = gym.make_vec(ENV_ID, num_envs=8, vectorization_mode="sync", slate_size=1)
    envs.reset(seed=1)
    for _ in range(200):
        envs.step(envs.action_space.sample())
    envs.close()


def test_gymnasium_batches_of_plain_multidiscrete_would_repeat() -> None:
    """Why the registration matters: Gymnasium turns a MultiDiscrete into a Box, whose rows repeat."""
    box = batch_space(spaces.MultiDiscrete(np.full(5, 50)), 64)
    box.seed(0)
    rows = box.sample()
    assert isinstance(box, spaces.Box)
    assert any(np.unique(r).size < 5 for r in rows)


@settings(max_examples=150, deadline=None)
@given(num_candidates=st.integers(1, 60), slate=st.integers(1, 12), n=st.integers(1, 16), m=st.integers(1, 3),
       seed=st.integers(0, 2**31 - 1))
def test_every_sampled_batch_is_in_its_space(num_candidates: int, slate: int, n: int, m: int, seed: int) -> None:
    k = min(slate, num_candidates)
    single = SlateSpace(num_candidates, k, seed=seed)
    batched = batch_space(single, n)
    assert isinstance(batched, SlateSpace) and batched.shape == (n, k)
    x = batched.sample()
    assert x.shape == (n, k) and x.dtype == batched.dtype
    assert batched.contains(x) and x in batched
    assert all(np.unique(row).size == k for row in x) and x.min() >= 0 and x.max() < num_candidates
    rows = list(iterate(batched, x))
    assert len(rows) == n and all(single.contains(r) for r in rows)
    out = create_empty_array(single, n)
    assert out.shape == (n, k)
    assert batched.contains(concatenate(single, rows, out))
    assert batched[0] == single
    twice = batch_space(batched, m)  # a batch of vector envs
    assert twice.shape == (m, n, k) and twice.contains(twice.sample())
    if k >= 2:  # a repeat anywhere leaves the space
        bad = x.copy()
        bad[n - 1, 1] = bad[n - 1, 0]
        assert not batched.contains(bad)
    assert not batched.contains(x[:, :k - 1] if k > 1 else x[: n - 1])  # wrong shape
    assert not batched.contains(np.full((n, k), num_candidates))  # out of range


def test_batched_sampling_is_seeded_and_uniform() -> None:
    a, b = batch_space(SlateSpace(10, 3, seed=7), 500), batch_space(SlateSpace(10, 3, seed=7), 500)
    xa = a.sample()
    assert np.array_equal(xa, b.sample())
    counts = np.bincount(xa[:, 0], minlength=10)  # the top slot is uniform over candidates
    assert counts.min() > 25 and counts.max() < 80


def test_slate_space_copies_pickles_and_compares() -> None:
    s = batch_space(SlateSpace(50, 5, seed=0), 4)
    for clone in (copy.deepcopy(s), pickle.loads(pickle.dumps(s))):
        assert clone == s and isinstance(clone, SlateSpace) and clone.contains(clone.sample())
    assert s != SlateSpace(50, 5, batch_shape=(5,))
    assert s != spaces.MultiDiscrete(np.full((4, 5), 50))
    assert repr(s) == "SlateSpace(4 x 5 of 50)"
    assert batch_differing_spaces([SlateSpace(50, 5)] * 3) == SlateSpace(50, 5, batch_shape=(3,))
    with pytest.raises(ValueError, match="different slate spaces"):
        batch_differing_spaces([SlateSpace(50, 5), SlateSpace(40, 5)])
