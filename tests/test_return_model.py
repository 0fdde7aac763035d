"""The return model (who starts the next session) and the tools that measure how far the fidelity
harness's raw ``activity_ks`` can go (``experiments/activity_ceiling.py``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from simrec.data.fidelity import _activity_ks
from simrec.envs.spec import EnvSpec

_PATH = Path(__file__).resolve().parents[1] / "experiments" / "activity_ceiling.py"


@pytest.fixture(scope="module")
def ceiling():
    spec = importlib.util.spec_from_file_location("activity_ceiling", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _synthetic_log(return_weight: float, users: int = 200, sessions: int = 25, seed: int = 0):
    """Sessions of three ratings a minute apart, all of one random star value; the gap to the next session is
    exponential with rate ``base_u x exp(return_weight x experience)`` (experience = (stars - 3) / 2), gaps of
    days, so few fall under the one-hour session cut."""
    rng = np.random.default_rng(seed)
    u, t, r = [], [], []
    for user in range(users):
        base = rng.lognormal(0.0, 0.5) / (10 * 86400.0)  # about one session every ten days
        now = 0.0
        for _ in range(sessions):
            stars = float(rng.integers(1, 6))
            for k in range(3):
                u.append(user), t.append(now + 60.0 * k), r.append(stars)
            now += 120.0 + rng.exponential(1.0 / (base * np.exp(return_weight * (stars - 3.0) / 2.0)))
    return np.array(u), np.array(t), np.array(r)


@pytest.mark.parametrize("true_weight", [0.0, 1.5])
def test_feedback_fit_recovers_a_known_return_weight(ceiling, true_weight):
    fit = ceiling.return_feedback_slope(*_synthetic_log(true_weight))
    assert 4500 < fit["pairs"] <= 200 * 24 and fit["users"] == 200  # a few gaps under an hour merge sessions
    assert 0 < fit["se"] < 0.1
    assert fit["return_weight"] == pytest.approx(true_weight, abs=4 * fit["se"])


def test_feedback_fit_without_repeat_sessions_is_nan(ceiling):
    u, t, r = np.array([0, 0, 1]), np.array([0.0, 60.0, 0.0]), np.array([4.0, 5.0, 3.0])
    assert np.isnan(ceiling.return_feedback_slope(u, t, r)["return_weight"])


def _real_counts(n: int = 900, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.maximum(4, np.round(20 * rng.lognormal(0.0, 0.9, n) / np.exp(0.9**2 / 2))).astype(float)


def test_ideal_simulator_ceiling_falls_with_sessions_but_not_to_zero(ceiling):
    real = _real_counts()
    clicks = np.random.default_rng(2).geometric(0.15, 5000)
    ks = {s: np.mean(ceiling.ceiling(real, clicks, s, "poisson", np.random.default_rng([3, s]), 5))
          for s in (10, 100, 1000)}
    assert ks[10] > ks[100] > ks[1000]
    assert ks[10] > 0.1  # 10 sessions of Poisson noise alone fail a 0.10 target
    assert ks[1000] > 0.01  # integer real counts (atoms) keep a floor
    # the simulated side at the real rates, without noise, is the real distribution: KS 0
    assert _activity_ks(real * 3.0, real) == 0.0


def test_harness_rounds_never_give_a_user_two_sessions_in_one_round(ceiling):
    rate = np.r_[np.full(31, 1.0), 400.0]  # one user who would take most sessions if sampled with replacement
    n_rounds = 50
    k, _ = ceiling.ideal_counts(rate, 2 * n_rounds / 32, np.ones(10), "rounds", np.random.default_rng(0))
    assert k.sum() == 100  # 32 // 16 = 2 users per round, 50 rounds
    assert k[-1] == n_rounds  # in every round, never twice
    k_p, _ = ceiling.ideal_counts(rate, 100 / 32, np.ones(10), "poisson", np.random.default_rng(0))
    assert k_p[-1] > 75  # Poisson scheduling has no such cap


@pytest.mark.parametrize("name", ["movielens-v0", "synthetic-v0"])
def test_builtin_specs_keep_satisfaction_driven_returns(name):
    # the raw activity KS would improve with return_weight 0, but satisfaction must keep driving returns
    assert EnvSpec.builtin(name).dynamics.satisfaction.return_weight > 0


def test_returns_follow_session_rate_at_equal_satisfaction_and_satisfaction_otherwise(make_sim):
    sim = make_sim(seed=0)
    n = sim.pop.n_users
    sim.pop.session_rate[:] = np.where(np.arange(n) < n // 2, 3.0, 1.0)
    sim.pop.state.satisfaction[:] = 0.0
    rng = np.random.default_rng(0)
    draws = np.concatenate([sim.pick_users(rng, 1) for _ in range(3000)])
    assert np.mean(draws < n // 2) == pytest.approx(0.75, abs=0.04)
    # the low-rate half, now much more satisfied, overtakes: exp(1.5 * 1.6) = 11 > 3
    sim.pop.state.satisfaction[:] = np.where(np.arange(n) < n // 2, -0.8, 0.8)
    draws = np.concatenate([sim.pick_users(rng, 1) for _ in range(3000)])
    assert np.mean(draws < n // 2) < 0.35
