"""Third-party checkers and learners accept the env: Gymnasium's and SB3's ``check_env``, PPO (Dict
and flattened observations, via the slate wrappers), DQN on single-item slates, and registration."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.wrappers import FlattenObservation

import simrec  # noqa: F401  (registers the envs)
from simrec.envs.slate_env import SlateEnv
from simrec.errors import InvalidActionError

sb3 = pytest.importorskip("stable_baselines3")
from stable_baselines3 import DQN, PPO  # noqa: E402
from stable_baselines3.common.env_checker import check_env as sb3_check_env  # noqa: E402

from simrec.envs.wrappers import RepairSlate, TopKScores  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _params(model) -> np.ndarray:
    return np.concatenate([p.detach().cpu().numpy().ravel() for p in model.policy.parameters()])


def _rollout(model, env: gymnasium.Env, steps: int = 30) -> None:
    """The trained policy drives the env without invalid actions."""
    obs, _ = env.reset(seed=1)
    for _ in range(steps):
        action, _ = model.predict(obs, deterministic=False)
        obs, r, term, trunc, _ = env.step(action)
        assert np.isfinite(r)
        if term or trunc:
            obs, _ = env.reset()


# -- checkers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("slate_size", [5, 1])
def test_gymnasium_check_env(slate_size):
    env = gymnasium.make("simrec/Synthetic-v0", slate_size=slate_size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Gymnasium's checker warns about real problems: none allowed
        gym_check_env(env.unwrapped)


@pytest.mark.parametrize("slate_size", [5, 1])
def test_sb3_check_env(slate_size):
    env = gymnasium.make("simrec/Synthetic-v0", slate_size=slate_size)
    with warnings.catch_warnings(record=True):  # SB3 recommends flattening 2-D Boxes: a warning, fine
        warnings.simplefilter("always")
        sb3_check_env(env)
        sb3_check_env(FlattenObservation(env))
    if slate_size > 1:
        sb3_check_env(RepairSlate(FlattenObservation(env)))


# -- slate wrappers ------------------------------------------------------------------------------

def test_repair_slate_exposes_plain_multidiscrete_and_repairs_deterministically():
    env = RepairSlate(SlateEnv())
    assert type(env.action_space) is spaces.MultiDiscrete
    np.testing.assert_array_equal(env.action_space.nvec, [50] * 5)
    _, info = env.reset(seed=0)
    for action in ([3, 3, 3, 3, 3], [7, 1, 7, 49, 1], [0, 1, 2, 3, 4], [9, 8, 7, 6, 5]):
        cands = info["candidate_items"]
        _, _, term, trunc, info = env.step(np.array(action))
        shown = info["slate_items"].tolist()
        assert len(set(shown)) == 5 and set(shown) <= set(cands.tolist())
        pos = [cands.tolist().index(i) for i in shown]
        first = {a: j for j, a in reversed(list(enumerate(action)))}
        for a, j in first.items():
            assert pos[j] == a  # first occurrences keep their place; only repeats change
        if len(set(action)) == 5:
            assert pos == action  # valid slates pass through untouched
        if term or trunc:
            _, info = env.reset()
    a = np.array([[4, 4, 2, 4, 0]])
    assert np.array_equal(env.action(a[0]), env.action(a[0].copy()))  # deterministic


def test_top_k_scores_shows_the_best_scored_candidates_in_order():
    for k in (5, 1):
        env = TopKScores(SlateEnv(slate_size=k))
        assert isinstance(env.action_space, spaces.Box) and env.action_space.shape == (50,)
        _, info = env.reset(seed=0)
        rng = np.random.default_rng(0)
        for _ in range(10):
            cands = info["candidate_items"]
            scores = rng.uniform(-1, 1, 50).astype(np.float32)
            _, _, term, trunc, info = env.step(scores)
            np.testing.assert_array_equal(info["slate_items"], cands[np.argsort(-scores)[:k]])
            if term or trunc:
                _, info = env.reset()


def test_raw_multidiscrete_agents_hit_the_distinctness_check():
    """PPO samples slate positions independently; without RepairSlate a repeat is soon rejected."""
    model = PPO("MultiInputPolicy", gymnasium.make("simrec/Synthetic-v0"), n_steps=64, seed=0)
    with pytest.raises(InvalidActionError, match="RepairSlate"):
        model.learn(64)


# -- learners ------------------------------------------------------------------------------------

def test_ppo_multi_input_policy_learns_on_dict_observations():
    env = RepairSlate(gymnasium.make("simrec/Synthetic-v0"))
    model = PPO("MultiInputPolicy", env, n_steps=1024, batch_size=256, n_epochs=2, seed=0)
    before = _params(model)
    model.learn(2048)
    assert model.num_timesteps >= 2048
    assert not np.allclose(before, _params(model))
    _rollout(model, env)


def test_ppo_mlp_policy_learns_on_flattened_observations():
    env = RepairSlate(FlattenObservation(gymnasium.make("simrec/Synthetic-v0")))
    assert isinstance(env.observation_space, spaces.Box) and env.observation_space.shape == (50 * 17 + 5 + 10 * 20,)
    model = PPO("MlpPolicy", env, n_steps=1024, batch_size=256, n_epochs=2, seed=0)
    before = _params(model)
    model.learn(2048)
    assert not np.allclose(before, _params(model))
    _rollout(model, env)


def test_ppo_with_top_k_scores():
    env = TopKScores(FlattenObservation(gymnasium.make("simrec/Synthetic-v0")))
    model = PPO("MlpPolicy", env, n_steps=256, batch_size=128, n_epochs=1, seed=0)
    model.learn(512)
    _rollout(model, env)


def test_dqn_learns_with_single_item_slates():
    env = gymnasium.make("simrec/Synthetic-v0", slate_size=1)
    assert isinstance(env.action_space, spaces.Discrete) and env.action_space.n == 50
    model = DQN("MultiInputPolicy", env, learning_starts=256, buffer_size=5_000, train_freq=8,
                target_update_interval=500, seed=0)
    before = _params(model)
    model.learn(2048)
    assert model.num_timesteps >= 2048
    assert not np.allclose(before, _params(model))
    _rollout(model, env)


# -- registration --------------------------------------------------------------------------------

def test_make_after_import():
    env = gymnasium.make("simrec/Synthetic-v0", slate_size=3, max_steps=7)
    assert env.spec.id == "simrec/Synthetic-v0"
    assert isinstance(env.unwrapped, SlateEnv) and env.unwrapped.sim_spec.max_steps == 7
    assert env.action_space.shape == (3,)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    env.close()


def test_make_with_module_prefix_in_a_fresh_interpreter():
    code = textwrap.dedent("""
        import sys
        import gymnasium
        assert "simrec" not in sys.modules
        env = gymnasium.make("simrec:simrec/Synthetic-v0", slate_size=2)
        obs, info = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        print(env.spec.id, type(env.unwrapped).__name__, env.action_space.shape)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["simrec/Synthetic-v0", "SlateEnv", "(2,)"]
