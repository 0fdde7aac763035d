"""Autoreset modes of the native vector env, checked against Gymnasium's own semantics.

``SAME_STEP`` (the default) returns the next user's first observation in the step that ends a session;
``NEXT_STEP`` (what RLlib assumes) returns the last observation and resets on the following step,
ignoring that slot's action. The same checkers run on Gymnasium's ``SyncVectorEnv`` over the single env,
so they encode Gymnasium's rules, not ours.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import simrec  # noqa: F401  (registers the ids)
from simrec.envs.vector_env import AutoresetMode, SlateVectorEnv, parse_autoreset_mode

ENV_ID = "simrec/Synthetic-v0"
PROGRESS = 2  # column of obs["user"]: t / max_steps


def native(n: int, mode: Any = None, **kw: Any) -> gym.vector.VectorEnv:
    extra = {} if mode is None else {"autoreset_mode": mode}
    return gym.make_vec(ENV_ID, num_envs=n, vectorization_mode="vector_entry_point", **extra, **kw)


def gymnasium_sync(n: int, mode: AutoresetMode) -> gym.vector.VectorEnv:
    return gym.make_vec(ENV_ID, num_envs=n, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode})


def slates(rng: np.random.Generator, n: int, c: int = 50, k: int = 5) -> np.ndarray:
    return np.argsort(rng.random((n, c)), axis=1)[:, :k]


def t_of(info: dict[str, Any], i: int) -> int | None:
    """``info["t"]`` of slot i, or None where the mask says the slot's info has no ``t``."""
    mask = info.get("_t")
    return None if mask is not None and not mask[i] else int(info["t"][i])


def check_next_step(env: gym.vector.VectorEnv, steps: int, seed: int = 0) -> int:
    """Gymnasium's NEXT_STEP rules, slot by slot; returns how many sessions ended."""
    n, max_steps = env.num_envs, 50
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    pending = np.zeros(n, bool)
    expect_t = np.zeros(n, int)
    ended = 0
    for _ in range(steps):
        obs, r, term, trunc, info = env.step(slates(rng, n))
        for i in range(n):
            if pending[i]:  # the reset step: first obs of a new session, nothing else
                assert r[i] == 0.0 and not term[i] and not trunc[i]
                assert t_of(info, i) == 0 and obs["user"][i, PROGRESS] == 0.0
                expect_t[i] = 0
            else:
                expect_t[i] += 1
                assert t_of(info, i) == expect_t[i]
                assert obs["user"][i, PROGRESS] == np.float32(expect_t[i] / max_steps)
        assert "final_obs" not in info, "NEXT_STEP returns the last observation itself"
        assert not np.any(term & trunc)
        pending = term | trunc
        ended += int(pending.sum())
    return ended


def check_same_step(env: gym.vector.VectorEnv, steps: int, seed: int = 0) -> int:
    """Gymnasium's SAME_STEP rules: a session's end step already shows the next session's first obs."""
    n, max_steps = env.num_envs, 50
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    expect_t = np.zeros(n, int)
    ended = 0
    for _ in range(steps):
        obs, r, term, trunc, info = env.step(slates(rng, n))
        done = term | trunc
        expect_t += 1
        for i in range(n):
            if done[i]:
                assert "final_obs" in info and info["_final_obs"][i]
                assert info["final_obs"][i]["user"][PROGRESS] == np.float32(expect_t[i] / max_steps)
                assert obs["user"][i, PROGRESS] == 0.0
            else:
                assert t_of(info, i) == expect_t[i]
        expect_t[done] = 0
        ended += int(done.sum())
    return ended


@pytest.mark.parametrize("make", [native, gymnasium_sync], ids=["native", "gymnasium-sync"])
def test_next_step_semantics(make) -> None:
    env = make(6, AutoresetMode.NEXT_STEP)
    assert env.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert check_next_step(env, 80) > 3  # the rules were exercised, not vacuous
    env.close()


@pytest.mark.parametrize("make", [native, gymnasium_sync], ids=["native", "gymnasium-sync"])
def test_same_step_semantics(make) -> None:
    env = make(6, AutoresetMode.SAME_STEP)
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert check_same_step(env, 80) > 3
    env.close()


def test_checkers_can_fail() -> None:
    """Each checker rejects the other mode: the rules they test are the ones that differ."""
    with pytest.raises(AssertionError):
        check_next_step(native(6, "same_step"), 80)
    with pytest.raises(AssertionError):
        check_same_step(native(6, "next_step"), 80)


def test_default_stays_same_step_and_modes_parse() -> None:
    assert native(2).metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
    for spelling in ("next_step", "NEXT_STEP", "NextStep", "next-step", AutoresetMode.NEXT_STEP):
        assert parse_autoreset_mode(spelling) is AutoresetMode.NEXT_STEP
    assert parse_autoreset_mode("SameStep") is AutoresetMode.SAME_STEP
    with pytest.raises(ValueError, match="use 'same_step'"):
        SlateVectorEnv(num_envs=2, autoreset_mode="sometimes")
    with pytest.raises(ValueError, match="not 'disabled'"):
        SlateVectorEnv(num_envs=2, autoreset_mode="disabled")
    # metadata is per instance: one env's mode does not leak into another's
    a, b = SlateVectorEnv(num_envs=2, autoreset_mode="next_step"), SlateVectorEnv(num_envs=2)
    assert a.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP and b.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
    assert SlateVectorEnv.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP


def run_to_first_end(env: gym.vector.VectorEnv, seed: int) -> tuple[list[tuple], np.ndarray, dict]:
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    out = []
    while True:
        obs, r, term, trunc, info = env.step(slates(rng, env.num_envs))
        out.append((obs, r, term, trunc, info))
        if (term | trunc).any():
            return out, rng, info


def test_modes_agree_until_the_first_session_ends() -> None:
    """Up to the first end the modes are the same env; there NEXT_STEP's obs is SAME_STEP's final_obs."""
    same, _, _ = run_to_first_end(native(8, "same_step"), seed=3)
    nxt, _, _ = run_to_first_end(native(8, "next_step"), seed=3)
    assert len(same) == len(nxt)
    for (o1, r1, te1, tr1, i1), (o2, r2, te2, tr2, i2) in zip(same, nxt):
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(te1, te2)
        np.testing.assert_array_equal(tr1, tr2)
        np.testing.assert_array_equal(i1["user"], i2["user"])
    o1, _, te, tr, i1 = same[-1]
    o2 = nxt[-1][0]
    for i in np.flatnonzero(te | tr):
        for k in o2:
            np.testing.assert_array_equal(o2[k][i], i1["final_obs"][i][k])
    live = ~(te | tr)
    for k in o2:
        np.testing.assert_array_equal(o1[k][live], o2[k][live])


def test_next_step_ignores_the_resetting_slots_action() -> None:
    """Whatever a resetting slot is sent, even an invalid slate, the step comes out the same."""
    results = []
    for variant in range(3):
        env = native(8, "next_step")
        _, rng, info = run_to_first_end(env, seed=5)
        done = env.unwrapped.autoreset_pending
        assert done.any()
        ended_users = info["user"][done]
        a = slates(rng, 8)
        if variant == 1:
            a[done] = slates(np.random.default_rng(99), int(done.sum()))
        elif variant == 2:
            a[done] = 0  # repeated indices: would raise InvalidActionError on a live slot
        results.append(env.step(a))
        assert not env.unwrapped.autoreset_pending[done].any()
    (o0, r0, te0, tr0, i0), *others = results
    for o, r, te, tr, i in others:
        for k in o0:
            np.testing.assert_array_equal(o[k], o0[k])
        np.testing.assert_array_equal(r, r0)
        np.testing.assert_array_equal(i["user"], i0["user"])
    # the reset step's info for that slot is a reset info: per-step keys masked out
    assert not i0["_clicked"][done].any() and i0["_clicked"][~done].all()
    assert np.all(i0["t"][done] == 0) and np.all(i0["slate_items"][done] == -1)
    assert not np.isin(i0["user"][done], ended_users).any()  # 256 users: the next one is someone else


def test_invalid_action_on_a_live_slot_still_raises_in_next_step_mode() -> None:
    from simrec.errors import InvalidActionError

    env = native(8, "next_step")
    _, rng, _ = run_to_first_end(env, seed=5)
    live = ~env.unwrapped.autoreset_pending
    a = slates(rng, 8)
    a[np.flatnonzero(live)[0]] = 0
    with pytest.raises(InvalidActionError, match="repeats"):
        env.step(a)


def test_every_session_ends_once_and_users_hold_one_slot() -> None:
    """end_session runs once per session in NEXT_STEP mode, including across reset() with a pending slot."""
    env = native(6, "next_step")
    u = env.unwrapped
    ended: list[int] = []
    real = u.sim.backend.end_session
    u.sim.backend.end_session = lambda pop, users: (ended.extend(np.asarray(users).tolist()), real(pop, users))[1]
    _, rng, _ = run_to_first_end(env, seed=7)
    first = list(ended)
    assert len(first) == int(u.autoreset_pending.sum()) > 0
    env.reset()  # the pending slots' sessions are over already; only the others end here
    assert len(ended) == 6
    assert sorted(ended) == sorted(set(ended))
    ends = 0
    for _ in range(150):
        _, _, term, trunc, info = env.step(slates(rng, 6))
        assert np.unique(info["user"]).size == 6
        ends += int((term | trunc).sum())
    assert ends > 0 and len(ended) == 6 + ends  # a session ends in the step that ends it, never again


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))
def test_next_step_invariants(n: int, seed: int) -> None:
    env = native(n, "next_step", reward={"click": 1.0, "leave": -1.0})
    lo, hi = env.unwrapped.reward_bounds
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    pending = np.zeros(n, bool)
    for _ in range(60):
        obs, r, term, trunc, info = env.step(slates(rng, n))
        assert env.observation_space.contains(obs)
        assert np.all((r >= lo) & (r <= hi))
        assert np.all(r[pending] == 0) and not (term[pending] | trunc[pending]).any()
        assert np.unique(info["user"]).size == n
        pending = term | trunc
