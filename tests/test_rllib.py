"""simrec on RLlib: the env wrapper (no Ray needed), then PPO and env runners on a local Ray runtime.

The Ray tests skip where Ray is not installed (the main CI env; see the README's second venv). They
check what a trial on RLlib 2.60 found broken: remote runners that cannot find the ids, repeated slate
indices from the MultiCategorical head, and (silently) episodes that lose their first transition when
the vector env resets in the same step.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st

from simrec.envs.vector_env import AutoresetMode
from simrec.envs.wrappers import repair_in_place, repair_slates
from simrec.errors import InvalidActionError
from simrec.rllib import RLlibSlateEnv, make_env

ENV_ID = "simrec/Synthetic-v0"


def repeating_slates(rng: np.random.Generator, n: int) -> np.ndarray:
    """What a MultiCategorical head emits: each position drawn independently, so items repeat."""
    return rng.integers(0, 50, size=(n, 5))


# -- the wrapper, without Ray -----------------------------------------------------------------------
def test_wrapper_flattens_like_gymnasium_and_repairs_what_it_counts() -> None:
    env = make_env({"num_envs": 6})
    raw = gym.make_vec(ENV_ID, num_envs=6, vectorization_mode="vector_entry_point", autoreset_mode="next_step",
                       log_latent=False)
    dict_space = raw.single_observation_space
    assert env.single_observation_space == spaces.flatten_space(dict_space)
    assert type(env.single_action_space) is spaces.MultiDiscrete  # repeats are legal here
    rng = np.random.default_rng(0)
    obs, info = env.reset(seed=4)
    ref, _ = raw.reset(seed=4)
    repaired = 0
    for step in range(120):
        assert env.observation_space.contains(obs)
        for i in range(6):
            np.testing.assert_array_equal(obs[i], spaces.flatten(dict_space, {k: v[i] for k, v in ref.items()}))
        live = ~raw.unwrapped.autoreset_pending
        a = repeating_slates(rng, 6)
        fixed, rep = repair_slates(a, 50)
        obs, r, term, trunc, info = env.step(a)  # would raise InvalidActionError unrepaired
        ref, r_ref, _, _, ref_info = raw.step(fixed)
        np.testing.assert_array_equal(r, r_ref)
        np.testing.assert_array_equal(info["slate_repairs"], rep * live)
        # the kept keys as Python ints (cheap for RLlib to store and pickle), equal to the vector env's
        for key in ("user", "t", "slate_repairs"):
            assert info[key].dtype == object and all(type(v) is int for v in info[key])
        assert info["user"].tolist() == ref_info["user"].tolist() and info["t"].tolist() == ref_info["t"].tolist()
        repaired += int((rep * live).sum())
        assert set(info) <= {"user", "t", "slate_repairs", "_t", "_user"}  # trimmed: RLlib copies every key
    assert repaired > 0 and env.slate_repairs == repaired
    assert 0 < env.slates_sent < 120 * 6  # reset steps show no slate
    assert not raw.unwrapped.autoreset_pending.all()
    with pytest.raises(InvalidActionError, match="repeats"):  # what the wrapper saved RLlib from
        raw.step(np.zeros((6, 5), np.int64))


def repair_row(row: list[int], num_candidates: int) -> tuple[list[int], int]:
    """The repair rule in plain Python, one slate: indices are clipped into range; a repeated index keeps its
    first position and later copies become the lowest index not on the slate."""
    row = [min(max(int(v), 0), num_candidates - 1) for v in row]
    repairs = 0
    for k in range(1, len(row)):
        if row[k] in row[:k]:
            used, v = set(row), 0
            while v in used:
                v += 1
            row[k] = v
            repairs += 1
    return row, repairs


@settings(max_examples=300, deadline=None)
@given(data=st.data(), k=st.integers(1, 8), c=st.integers(1, 12))
def test_fast_row_repair_is_repair_slates(data: st.DataObject, k: int, c: int) -> None:
    k = min(k, c)
    row = data.draw(st.lists(st.integers(-3, c + 3), min_size=k, max_size=k))
    fixed, reps = repair_slates(np.array([row]), c)
    assert repair_row(row, c) == (fixed[0].tolist(), int(reps[0]))


@pytest.mark.parametrize("rows", [1, 5, 12, 13, 64])
def test_row_repair_matches_the_rule_for_few_and_many_rows(rows: int) -> None:
    """repair_in_place repairs up to a dozen rows in Python and more with numpy: both follow the rule."""
    rng = np.random.default_rng(rows)
    a = rng.integers(0, 4, size=(rows, 5))  # 5 positions from 4 values: every row repeats, some several times
    fixed = a.copy()
    reps = repair_in_place(fixed)
    expect = [repair_row(row, 6) for row in a.tolist()]
    assert fixed.tolist() == [r for r, _ in expect]
    assert reps.tolist() == [n for _, n in expect]
    assert (reps > 0).all()


def test_wrapper_refuses_same_step_autoreset() -> None:
    venv = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="vector_entry_point")
    with pytest.raises(ValueError, match="autoreset_mode='next_step'"):
        RLlibSlateEnv(venv)
    with pytest.raises(TypeError, match="SlateVectorEnv"):
        RLlibSlateEnv(gym.make_vec("CartPole-v1", num_envs=2))


def test_scores_mode_shows_the_top_k() -> None:
    env = make_env({"num_envs": 4, "action": "scores", "info_keys": None})
    assert env.single_action_space == spaces.Box(-1.0, 1.0, (50,), np.float32)
    _, info = env.reset(seed=0)
    rng = np.random.default_rng(1)
    for _ in range(20):
        cands = info["candidate_items"]
        scores = rng.uniform(-1, 1, (4, 50)).astype(np.float32)
        pending = env.base.autoreset_pending
        _, _, _, _, info = env.step(scores)
        best = np.argsort(-scores, axis=1)[:, :5]
        for i in np.flatnonzero(~pending):
            assert info["slate_items"][i].tolist() == cands[i, best[i]].tolist()
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.full((4, 50), np.nan, np.float32))


def test_single_env_creator_for_sync_mode() -> None:
    env = make_env({"slate_size": 3})  # no num_envs: RLlib's sync/async modes build one env per slot
    assert isinstance(env.observation_space, spaces.Box) and env.action_space == spaces.MultiDiscrete([50, 50, 50])
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([7, 7, 7]))
    assert info["slate_repairs"] == 2


# -- RLlib on a local Ray runtime -------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.rllib")
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    # In-process runners and the learner run here: one torch thread, or they fight the remote runners for
    # the 2 cores (a tiny MLP's forward pass then costs milliseconds)
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
    torch.set_num_threads(threads)


def small(config: Any) -> Any:
    return (config.training(train_batch_size_per_learner=512, minibatch_size=128, num_epochs=1)
            .rl_module(model_config={"fcnet_hiddens": [32, 32]}).debugging(seed=0))


@pytest.mark.timeout(240)  # a hang guard (the stall the trial saw), not a speed assert
def test_ppo_trains_on_two_remote_env_runners(ray_runtime) -> None:
    import simrec.rllib

    n_runners, n_envs, batch = 2, 4, 512
    algo = small(simrec.rllib.ppo_config(ENV_ID, num_env_runners=n_runners, num_envs_per_env_runner=n_envs)).build_algo()
    try:
        total = 0
        for it in range(3):
            res = algo.train()
            runners, learner = res["env_runners"], res["learners"]["__all_modules__"]
            sampled = int(runners["num_env_steps_sampled"])
            # each runner stops at the first vector step reaching its share; resets add no timesteps
            assert batch <= sampled <= batch + n_runners * (n_envs - 1)
            assert int(runners["slates_sent"]) == sampled  # every timestep showed one slate: no lost transitions
            assert int(runners["slate_repairs"]) > 0  # the MultiCategorical head did repeat items ...
            assert res["fault_tolerance"]["num_remote_worker_restarts"] == 0  # ... and no runner crashed on it
            assert res["fault_tolerance"]["num_healthy_workers"] == n_runners
            assert 1 < runners["episode_len_mean"] <= 50
            if it == 0:  # first-iteration values are exact (later ones are smoothed)
                assert int(learner["learner_connector_sum_episodes_length_in"]) == sampled
            assert int(learner["num_module_steps_trained"]) >= sampled
            total += sampled
        assert int(res["env_runners"]["num_env_steps_sampled_lifetime"]) == total
    finally:
        algo.stop()


class Recorder:
    """What the env itself returned, keyed by (user, t): the truth RLlib's episodes must match."""

    def __init__(self, env: RLlibSlateEnv) -> None:
        self.obs: dict[tuple[int, int], list[Any]] = defaultdict(list)
        self.ended: dict[tuple[int, int], tuple[bool, bool]] = {}
        step, reset = env.step, env.reset

        def rec(obs: np.ndarray, info: dict, term: np.ndarray | None = None, trunc: np.ndarray | None = None) -> None:
            for i in range(env.num_envs):
                key = (int(info["user"][i]), int(info["t"][i]))
                self.obs[key].append({k: v[i].copy() for k, v in obs.items()} if isinstance(obs, dict) else obs[i].copy())
                if term is not None and (term[i] or trunc[i]):
                    self.ended[key] = (bool(term[i]), bool(trunc[i]))

        def rec_step(actions):
            out = step(actions)
            rec(out[0], out[4], out[2], out[3])
            return out

        def rec_reset(**kw):
            out = reset(**kw)
            rec(*out)
            return out

        env.step, env.reset = rec_step, rec_reset


def check_episodes(episodes: list, rec: Recorder) -> int:
    """Every RLlib episode chunk is one user's session, step for step as the env's ``info["t"]`` says."""
    started = 0
    for ep in episodes:
        infos, obs, t0 = ep.get_infos(), ep.get_observations(), ep.t_started
        assert [int(i["t"]) for i in infos] == list(range(t0, t0 + len(ep) + 1)), "episode steps != env's t"
        users = {int(i["user"]) for i in infos}
        assert len(users) == 1, f"one episode spans users {users}"
        u = users.pop()
        for j, o in enumerate(obs):
            assert any(np.array_equal(o, x) for x in rec.obs[(u, t0 + j)]), f"obs {j} of user {u}'s episode is not the env's"
        t_end = t0 + len(ep)
        assert (ep.is_terminated, ep.is_truncated) == rec.ended.get((u, t_end), (False, False))
        started += t0 == 0
    return started


def in_process_runner(**kw: Any) -> Any:
    import simrec.rllib
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    cfg = small(simrec.rllib.ppo_config(ENV_ID, num_env_runners=0, num_envs_per_env_runner=4, **kw))
    return SingleAgentEnvRunner(config=cfg)


def wrapper_of(runner: Any) -> RLlibSlateEnv:
    env = runner.env
    while not isinstance(env, RLlibSlateEnv):
        env = env.env
    return env


@pytest.mark.timeout(180)
def test_env_runner_episodes_are_the_envs_sessions(ray_runtime) -> None:
    runner = in_process_runner()
    try:
        rec = Recorder(wrapper_of(runner))
        episodes = runner.sample(num_timesteps=200) + runner.sample(num_timesteps=200)  # chunks continue across calls
        # 4 slots x 100 steps, sessions <= 50 steps: every slot was refilled at least once
        assert check_episodes(episodes, rec) >= 8
        assert any(ep.t_started > 0 for ep in episodes) and any(ep.is_done for ep in episodes)
        # the check catches the silent bug: the same runner on same-step autoreset fails it
        wrapper_of(runner).base.autoreset_mode = AutoresetMode.SAME_STEP
        episodes = runner.sample(num_timesteps=400, force_reset=True)
        with pytest.raises(AssertionError, match="episode steps != env's t"):
            check_episodes(episodes, rec)
    finally:
        runner.stop()


@pytest.mark.timeout(180)
def test_repeated_indices_do_not_stall_a_runner(ray_runtime) -> None:
    runner = in_process_runner()
    try:
        env = wrapper_of(runner)
        episodes = runner.sample(num_timesteps=400, random_actions=True)  # Box samples: repeats galore
        assert sum(len(ep) for ep in episodes) >= 400
        assert env.slate_repairs > 0 and env.slates_sent >= 400
        assert runner.get_metrics()["slate_repairs"] == env.slate_repairs
    finally:
        runner.stop()


@pytest.mark.timeout(180)
def test_dict_observations_go_through_rllibs_flatten_connector(ray_runtime) -> None:
    runner = in_process_runner(observation="dict")
    try:
        env = wrapper_of(runner)
        assert isinstance(env.single_observation_space, spaces.Dict)
        flat = spaces.flatten_space(env.single_observation_space).shape
        rec = Recorder(env)
        episodes = runner.sample(num_timesteps=100)
        assert all(ep.get_observations().shape[1:] == flat for ep in episodes)
        ep = max(episodes, key=len)
        u, t0 = int(ep.get_infos()[0]["user"]), ep.t_started
        raw = rec.obs[(u, t0)][0]  # a Dict here; RLlib's connector flattened it like gymnasium does
        np.testing.assert_array_equal(ep.get_observations()[0], spaces.flatten(env.single_observation_space, raw))
    finally:
        runner.stop()


def test_ppo_config_fails_early_with_simrecs_message(ray_runtime) -> None:
    import simrec.rllib

    with pytest.raises(ValueError, match="action must be 'repair' or 'scores'"):
        simrec.rllib.ppo_config(ENV_ID, action="argmax")
    with pytest.raises(ValueError, match="slate_size"):
        simrec.rllib.ppo_config(ENV_ID, slate_size=60)
    cfg = simrec.rllib.ppo_config("simrec:simrec/Synthetic-v0", num_env_runners=3, num_envs_per_env_runner=5)
    assert (cfg.num_env_runners, cfg.num_envs_per_env_runner) == (3, 5)
    assert cfg.env == simrec.rllib.ENV_NAME and cfg.env_config["env_id"] == "simrec:simrec/Synthetic-v0"


def readme_rllib_block(text: str) -> str | None:
    """The first python block of the README's "Scale-out on RLlib" section, or None."""
    section = re.search(r"^## Scale-out on RLlib\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    block = section and re.search(r"^```python\n(.*?)^```", section.group(1), re.S | re.M)
    return block.group(1) if block else None


def test_readme_block_finder() -> None:
    text = "## A\n```python\nno\n```\n## Scale-out on RLlib\ntext\n```bash\nx\n```\n```python\nyes()\n```\n## B\n"
    assert readme_rllib_block(text) == "yes()\n"
    assert readme_rllib_block("## Scale-out on RLlib\nnone here\n## B\n```python\nno\n```\n") is None


@pytest.mark.timeout(600)
def test_readme_rllib_block_runs(tmp_path: Path) -> None:
    """The README's "Scale-out on RLlib" code, as written, in a fresh interpreter (the main CI env has no Ray)."""
    pytest.importorskip("ray")
    code = readme_rllib_block((Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8"))
    if code is None:
        pytest.skip("README.md has no 'Scale-out on RLlib' section with a python block")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"README RLlib block failed:\n{code}\n--- stderr:\n{r.stderr[-4000:]}"
