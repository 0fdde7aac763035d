"""The single env's scalar shortcuts give exactly what the slower routes they replace give."""

import copy
import pickle

import gymnasium as gym
import numpy as np
import pytest

import simrec  # noqa: F401
from simrec.cognition.embedded import EmbeddedCognition
from simrec.envs.candidates import CandidateGenerator


def _trajectory(env, steps: int, seed: int = 5) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        obs, reward, term, trunc, info = env.step(rng.permutation(env.unwrapped.sim_spec.num_candidates)[:5])
        out.append(([v.tobytes() for v in obs.values()], reward, term, trunc,
                     {k: v.tobytes() if isinstance(v, np.ndarray) else v for k, v in info.items()}))
        if term or trunc:
            env.reset()
    return out


class _OwnDecideOne(EmbeddedCognition):
    """Overrides decide_one, so the env must take the generic decide_one route."""

    def decide_one(self, pop, u, slate, rng):
        return super().decide_one(pop, u, slate, rng)


@pytest.mark.parametrize("overrides", [{}, {"reward": {"click": 1.0, "consumption": 0.5, "rating": 1.0, "leave": -1.0}}])
def test_scalar_route_matches_decide_one_route(overrides):
    fast = gym.make("simrec/Synthetic-v0", **overrides)
    slow = gym.make("simrec/Synthetic-v0", backend=_OwnDecideOne(), **overrides)
    fast.reset(seed=3)
    slow.reset(seed=3)
    assert slow.unwrapped.sim._scalar_decide() is None and fast.unwrapped.sim._scalar_decide() is not None
    assert _trajectory(fast, 300) == _trajectory(slow, 300)


def test_copied_env_continues_identically():
    """Scratch buffers holding views must not be split apart by copy or pickle."""
    env = gym.make("simrec/Synthetic-v0").unwrapped
    env.reset(seed=0)
    _trajectory(env, 50)
    copies = [copy.deepcopy(env), pickle.loads(pickle.dumps(env))]
    expected = _trajectory(env, 200)
    for c in copies:
        assert _trajectory(c, 200) == expected


def _reference_refill(rng, n, k, chunks=64):
    """The first k distinct values of each chunk, in order, by a plain loop (and the chunks that have k)."""
    take = k + 8 + k // 4
    block = rng.integers(0, n, size=(chunks, take))
    rows, ok = np.zeros((chunks, k), np.int64), []
    for c in range(chunks):
        seen: list[int] = []
        for v in block[c].tolist():
            if v not in seen:
                seen.append(v)
        ok.append(len(seen) >= k)
        if ok[-1]:
            rows[c] = seen[:k]
    return rows, ok


class _Catalog:
    def __init__(self, n):
        self.popularity = np.linspace(0, 1, n, dtype=np.float32)
        self._n = n

    def __len__(self):
        return self._n


@pytest.mark.parametrize("n,k", [(1200, 50), (1682, 50), (101, 50), (60, 25), (30, 5), (4000, 200)])
def test_refill_matches_plain_loop(n, k):
    gen = CandidateGenerator(_Catalog(n), k)
    for seed in range(4):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        for _ in range(3):
            gen._refill(a, n)
            rows, ok = _reference_refill(b, n, k)
            assert gen._ok == ok
            assert gen._rows.dtype == np.int64
            np.testing.assert_array_equal(gen._rows[ok], rows[ok])
        assert a.random() == b.random()  # the same stream consumed
