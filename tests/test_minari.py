"""Minari export: a recorded run round-trips into a Minari dataset; a log that does not replay is refused."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simrec.envs.slate_env import SlateEnv
from simrec.envs.spec import EnvSpec
from simrec.errors import SimrecError
from simrec.recommenders import make_recommender, run_episodes
from simrec.trajectory import Recorder, TrajectoryFormatError, VectorRecorder, read_trajectories
from simrec.trajectory.export_minari import (
    MinariNotInstalledError,
    ReplayMismatchError,
    add_arguments,
    default_dataset_id,
    run_cli,
    to_minari,
)

minari = pytest.importorskip("minari")

DS_ID = "simrec/synthetic-linucb-v0"


@pytest.fixture
def minari_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private Minari datasets root: nothing is read from or written to ~/.minari, nothing is downloaded."""
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def record(path: Path, episodes: int = 5, seed: int = 3, name: str = "linucb", max_steps: int = 8) -> None:
    env = Recorder(SlateEnv(max_steps=max_steps), path, recommender=name)
    run_episodes(env, make_recommender(name, env.action_space, seed=seed), episodes, seed=seed)
    env.close()


def check_against_fresh_env(ds, log: Path) -> None:
    """Stepping a fresh env from the log's spec with the dataset's actions gives the dataset's
    observations, starting with each episode's reset observation under the logged seed (sessions
    without steps are not in the dataset, but a fresh env must still be reset for them)."""
    tr = read_trajectories(log)
    env = SlateEnv(tr.spec)
    meta = {m["simrec_episode"]: m for m in ds.storage.get_episode_metadata(ds.episode_indices)}
    episodes = dict(zip(meta, ds.iterate_episodes()))
    for _, ep in tr.episodes.iterrows():
        if ep["episode"] not in meta:
            assert ep["steps"] == 0
            opts = ep["reset_options"]
            env.reset(seed=ep["reset_seed"], options=json.loads(opts) if isinstance(opts, str) else None)
            continue
        m, e = meta[ep["episode"]], episodes[ep["episode"]]
        assert m.get("seed") == ep["reset_seed"] and m["user_id"] == ep["user"]
        obs, info = env.reset(seed=m.get("seed"), options=m.get("options"))
        for k in range(len(e) + 1):
            for key, space in ds.observation_space.spaces.items():
                assert e.observations[key].dtype == np.float32
                assert space.contains(e.observations[key][k]), (key, k)
                np.testing.assert_array_equal(e.observations[key][k], obs[key], err_msg=f"{key} at {k}")
            np.testing.assert_array_equal(e.infos["candidate_items"][k], info["candidate_items"])
            if k < len(e):
                assert ds.action_space.contains(e.actions[k])
                obs, _, _, _, info = env.step(e.actions[k])
    env.close()


def test_round_trip(tmp_path: Path, minari_root: Path) -> None:
    record(tmp_path / "log")
    tr = read_trajectories(tmp_path / "log")
    ds = to_minari(tmp_path / "log", DS_ID, author="tests")
    assert (minari_root / DS_ID / "data").is_dir() and not list(minari_root.glob(".simrec-export-*"))

    ds = minari.load_dataset(DS_ID)
    assert ds.total_episodes == len(tr.episodes) == 5 and ds.total_steps == len(tr.steps) == 40
    steps = tr.steps.groupby("episode")
    for e, (_, s) in zip(ds.iterate_episodes(), steps):
        assert len(e) == len(s)
        np.testing.assert_array_equal(e.actions, np.stack(s["action"].to_numpy()))
        np.testing.assert_array_equal(e.rewards, s["reward"].to_numpy())
        np.testing.assert_array_equal(e.terminations, s["terminated"].to_numpy())
        np.testing.assert_array_equal(e.truncations, s["truncated"].to_numpy())
        assert e.terminations[-1] or e.truncations[-1]
        # infos: row k+1 holds step k's outcome; the action indexes the candidates of its own row
        np.testing.assert_array_equal(e.infos["slate_items"][1:], np.stack(s["slate"].to_numpy()))
        np.testing.assert_array_equal(e.infos["clicked"][1:], np.stack(s["clicked"].to_numpy()))
        np.testing.assert_array_equal(np.take_along_axis(e.infos["candidate_items"][:-1], e.actions, 1),
                                      e.infos["slate_items"][1:])
        assert (e.infos["slate_items"][0] == -1).all() and list(e.infos["t"]) == list(range(len(e) + 1))
    check_against_fresh_env(ds, tmp_path / "log")

    # the env can be recreated: from minari's env_spec and from the simrec spec in the metadata
    md = ds.storage.metadata
    assert EnvSpec.parse(md["simrec_spec"]) == tr.spec and md["simrec"]["run_id"] == tr.manifest["run_id"]
    assert md["algorithm_name"] == "linucb" and md["author"] == {"tests"}
    assert ds.env_spec.id == "simrec/Synthetic-v0"
    rec_env = ds.recover_environment()
    assert rec_env.unwrapped.sim_spec == tr.spec
    o1, _ = rec_env.reset(seed=3)
    o2, _ = SlateEnv(max_steps=8).reset(seed=3)
    assert all(np.array_equal(o1[k], o2[k]) for k in o2)
    rec_env.close()

    with pytest.raises(FileExistsError, match="already exists"):
        to_minari(tmp_path / "log", DS_ID)


def test_discrete_slates_incomplete_and_empty_sessions_and_options(tmp_path: Path, minari_root: Path) -> None:
    env = Recorder(SlateEnv(max_steps=6, slate_size=1), tmp_path / "log", recommender="random")
    rec = make_recommender("random", env.action_space, seed=0)
    for seed, opts, n in ((1, None, 99), (None, None, 0), (None, {"user_id": "u0007"}, 3)):
        obs, info = env.reset(seed=seed, options=opts)
        for _ in range(n):
            obs, _, term, trunc, info = env.step(rec.act(obs, info))
            if term or trunc:
                break
    env.close()  # the last session is cut short: logged incomplete
    tr = read_trajectories(tmp_path / "log")
    assert len(tr.episodes) == 3 and not tr.episodes["complete"].iloc[-1]

    ds = to_minari(tmp_path / "log", "simrec/discrete-v1", include_latent=True)
    assert ds.total_episodes == 2 and ds.total_steps == len(tr.steps)  # the session without steps is left out
    meta = list(ds.storage.get_episode_metadata([0, 1]))
    assert [m["simrec_episode"] for m in meta] == [0, 2] and meta[1]["options"] == {"user_id": "u0007"}
    assert meta[0]["seed"] == 1 and "seed" not in meta[1] and [m["complete"] for m in meta] == [True, False]
    assert ds.storage.metadata["simrec"]["episodes_without_steps"] == [1]
    last = ds[1]
    assert ds.action_space == minari.serialization.deserialize_space('{"type": "Discrete", "n": 50, "start": 0}')
    assert last.actions.shape == (3,) and list(last.actions) == [a[0] for a in tr.steps["action"].iloc[-3:]]
    assert not last.truncations[:-1].any() and last.truncations[-1] and not last.terminations.any()
    assert last.infos["latent_taste"].shape == (4, 16) and last.infos["latent_fatigue"].shape == (4,)
    check_against_fresh_env(ds, tmp_path / "log")


def _damage_reward(log: Path, episode: int, t: int) -> None:
    (part,) = (log / "steps").glob("part-*.parquet")
    tb = pq.read_table(part)
    ep, tt = tb.column("episode").to_numpy(), tb.column("t").to_numpy()
    reward = tb.column("reward").to_numpy().copy()
    reward[(ep == episode) & (tt == t)] += 1.0
    pq.write_table(tb.set_column(tb.schema.get_field_index("reward"), "reward", pa.array(reward)), part)


def test_mismatching_log_is_refused_and_leaves_existing_dataset(tmp_path: Path, minari_root: Path) -> None:
    record(tmp_path / "log")
    to_minari(tmp_path / "log", DS_ID)
    _damage_reward(tmp_path / "log", episode=2, t=3)
    with pytest.raises(ReplayMismatchError, match=r"episode 2 \(user u\d+\), step t=3: .*reward differs"):
        to_minari(tmp_path / "log", DS_ID, overwrite=True)
    with pytest.raises(ReplayMismatchError, match="episode 2"):
        to_minari(tmp_path / "log", "simrec/other-v0")
    # the failed exports wrote nothing and left the earlier dataset as it was
    assert not (minari_root / "simrec" / "other-v0").exists() and not list(minari_root.glob(".simrec-export-*"))
    assert minari.load_dataset(DS_ID).total_steps == 40

    # a log from another spec (here: another world) fails at its first step
    man = json.loads((tmp_path / "log" / "manifest.json").read_text())
    man["spec"]["world"]["seed"] = 99
    (tmp_path / "log" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ReplayMismatchError, match=r"episode 0 .*(user|candidates)"):
        to_minari(tmp_path / "log", "simrec/other-v0")


def test_llm_log_without_cache_and_vector_log_are_refused(tmp_path: Path, minari_root: Path) -> None:
    record(tmp_path / "log", episodes=1)
    man = json.loads((tmp_path / "log" / "manifest.json").read_text())
    man["spec"]["backend"], man["backend"] = "llm", "llm"
    (tmp_path / "log" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ReplayMismatchError, match="without a response cache"):
        to_minari(tmp_path / "log", "simrec/llm-v0")

    from simrec.envs.vector_env import SlateVectorEnv

    venv = VectorRecorder(SlateVectorEnv(num_envs=2, max_steps=3), tmp_path / "vlog")
    venv.reset(seed=0)
    venv.step(np.array([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]))
    venv.close()
    with pytest.raises(TrajectoryFormatError, match="vector"):
        to_minari(tmp_path / "vlog", "simrec/vec-v0")
    assert not (minari_root / "simrec" / "llm-v0").exists()


def test_missing_minari_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "minari", None)  # `import minari` now raises ImportError
    with pytest.raises(MinariNotInstalledError, match=r"pip install -e \.\[minari\]"):
        to_minari(tmp_path / "log", DS_ID)


def test_cli_glue(tmp_path: Path, minari_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record(tmp_path / "log", episodes=2)
    assert default_dataset_id(read_trajectories(tmp_path / "log").manifest) == DS_ID
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    other = tmp_path / "elsewhere"
    args = parser.parse_args([str(tmp_path / "log"), "--data-path", str(other), "--description", "two sessions"])
    assert run_cli(args) == 0
    out = capsys.readouterr().out
    assert "2 episodes, 16 steps" in out and DS_ID in out
    assert (other / DS_ID / "data").is_dir() and not minari_root.joinpath(DS_ID).exists()
    ds = minari.MinariDataset(other / DS_ID / "data")
    assert ds.total_episodes == 2 and ds.storage.metadata["description"] == "two sessions"
    args = parser.parse_args([str(tmp_path / "log"), "--dataset-id", "not an id"])
    with pytest.raises(SimrecError, match="bad Minari dataset id"):
        run_cli(args)
