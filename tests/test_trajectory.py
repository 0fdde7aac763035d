"""Trajectory logs: round trip, replay, crash safety, write failures, versions, calls, analysis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simrec.analysis import intra_list_diversity, novelty, per_user, summarize
from simrec.envs.slate_env import SlateEnv
from simrec.recommenders import make_recommender, run_episodes
from simrec.trajectory import (
    SCHEMA_VERSION,
    Recorder,
    TrajectoryFormatError,
    TrajectoryWriteError,
    VectorRecorder,
    committed_parts,
    read_trajectories,
    replay,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from llm_servers import CallingBackend  # noqa: E402


def record(path, episodes=6, seed=0, name="linucb", **kw) -> Recorder:
    env = Recorder(SlateEnv(max_steps=kw.pop("max_steps", 20), **kw.pop("env_kw", {})), path, recommender=name, **kw)
    rec = make_recommender(name, env.action_space, seed=seed)
    run_episodes(env, rec, episodes, seed=seed)
    env.close()
    return env


def steps_equal(a: pd.DataFrame, b: pd.DataFrame, cols) -> None:
    assert len(a) == len(b)
    for c in cols:
        for x, y in zip(a[c].to_numpy(), b[c].to_numpy()):
            x, y = np.asarray(x), np.asarray(y)
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), c


def test_round_trip_schema_and_consistency(tmp_path: Path) -> None:
    rec = record(tmp_path / "log", episodes=6, seed=3)
    tr = read_trajectories(tmp_path / "log")
    m = tr.manifest
    assert m["schema_version"] == SCHEMA_VERSION and m["env_id"] == "simrec/Synthetic-v0"
    assert m["seed"] == 3 and m["backend"] == "embedded" and m["closed"] and m["recommender"] == "linucb"
    assert m["backend_stats"]["decisions"] == len(tr.steps) == m["steps"]
    assert tr.spec.max_steps == 20
    assert len(tr.episodes) == 6 == m["episodes"] and tr.episodes["complete"].all()
    for col in ("episode", "t", "user", "action", "slate", "slate_ids", "clicked", "rating", "consumption",
                "reward", "terminated", "truncated", "candidates", "latent_taste", "latent_satisfaction"):
        assert col in tr.steps.columns, col
    cat = SlateEnv().catalog
    for _, r in tr.steps.iterrows():
        assert np.array_equal(np.asarray(r["candidates"])[r["action"]], r["slate"])  # positions -> items
        assert list(r["slate_ids"]) == [cat.ids[i] for i in r["slate"]]
        rated = ~np.isnan(r["rating"])
        assert not (rated & ~r["clicked"]).any() and r["reward"] == r["clicked"].sum()
    g = tr.steps.groupby("episode")
    assert (g["reward"].sum().to_numpy() == tr.episodes["return"].to_numpy()).all()
    assert (g["t"].max().to_numpy() == tr.episodes["steps"].to_numpy()).all()
    assert (g["t"].apply(lambda t: list(t) == list(range(1, len(t) + 1)))).all()
    ends = tr.steps[tr.steps["terminated"] | tr.steps["truncated"]]
    assert len(ends) == 6
    # close() merged the per-episode parts into one per table
    assert committed_parts(tmp_path / "log") == ["part-000000-000005.parquet"]
    assert rec.trajectories().steps.shape == tr.steps.shape


def test_replay_reproduces_embedded_run(tmp_path: Path) -> None:
    record(tmp_path / "log", episodes=5, seed=11, name="egreedy")
    tr = read_trajectories(tmp_path / "log")
    again = replay(tmp_path / "log", path=tmp_path / "replayed")
    steps_equal(tr.steps, again.steps, ["episode", "t", "user", "action", "slate", "candidates", "clicked", "rating",
                                        "consumption", "reward", "terminated", "truncated", "latent_taste",
                                        "latent_boredom", "latent_satisfaction", "latent_fatigue"])
    assert list(again.episodes["user"]) == list(tr.episodes["user"])
    assert read_trajectories(tmp_path / "replayed").manifest["metadata"]["replay_of"] == tr.manifest["run_id"]


def test_replay_handles_options_midrun_seeds_and_empty_sessions() -> None:
    env = Recorder(SlateEnv(max_steps=8), None)
    rec = make_recommender("random", env.action_space, seed=0)
    env.reset(seed=1)
    env.reset()  # a session with no steps still drew random numbers
    for seed, opts in ((None, {"user_id": "u0007"}), (5, None), (None, None)):
        obs, info = env.reset(seed=seed, options=opts)
        for _ in range(4):
            obs, _, term, trunc, info = env.step(rec.act(obs, info))
            if term or trunc:
                break
    env.close()
    tr = env.trajectories()
    assert len(tr.episodes) == 5 and not tr.episodes["complete"].iloc[-1]
    assert tr.episodes["user"].iloc[2] == "u0007" and tr.episodes["reset_seed"].tolist()[:4] == [1, None, None, 5]
    steps_equal(tr.steps, replay(tr).steps, ["user", "slate", "clicked", "reward", "latent_taste"])


def test_records_bare_env_positions_under_topk_wrapper(tmp_path: Path) -> None:
    from simrec.envs.wrappers import TopKScores

    env = Recorder(TopKScores(SlateEnv(max_steps=5)), None)
    env.reset(seed=0)
    scores = np.linspace(1, -1, 50)  # candidate 0 best
    env.step(scores)
    env.close()
    assert list(env.trajectories().steps["action"].iloc[0]) == [0, 1, 2, 3, 4]


def test_flush_every_and_killed_process_keeps_finished_episodes(tmp_path: Path) -> None:
    log = tmp_path / "log"
    script = textwrap.dedent(f"""
        import sys
        from simrec.envs.slate_env import SlateEnv
        from simrec.trajectory import Recorder
        from simrec.recommenders import make_recommender
        env = Recorder(SlateEnv(max_steps=10), {str(log)!r}, flush_every=2)
        rec = make_recommender("random", env.action_space, seed=0)
        obs, info = env.reset(seed=0)
        ep = 0
        while True:
            obs, r, term, trunc, info = env.step(rec.act(obs, info))
            if term or trunc:
                ep += 1
                print(ep, flush=True)
                obs, info = env.reset()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if int(line) >= 5:
                os.kill(proc.pid, signal.SIGKILL)  # no chance to close or clean up
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
    tr = read_trajectories(log)
    assert tr.manifest["closed"] is None
    # flush_every=2: episodes 0-3 are on disk for sure; the child may have run ahead before the kill,
    # but whatever is on disk is whole flushes of finished episodes
    assert len(tr.episodes) >= 4 and len(tr.episodes) % 2 == 0 and tr.episodes["complete"].all()
    assert list(tr.episodes["episode"]) == list(range(len(tr.episodes)))
    assert int(tr.episodes["steps"].sum()) == len(tr.steps)
    assert set(tr.steps["episode"]) == set(tr.episodes["episode"])


def test_interrupted_flush_is_ignored(tmp_path: Path) -> None:
    log = tmp_path / "log"
    env = Recorder(SlateEnv(max_steps=5), log, compact=False)
    rec = make_recommender("random", env.action_space, seed=0)
    run_episodes(env, rec, 3, seed=0)
    before = read_trajectories(log)
    assert len(committed_parts(log)) == 3
    # a crash after the steps part but before its episodes part, and a stray temp file
    (log / "steps" / "part-000007.parquet").write_bytes((log / "steps" / "part-000000.parquet").read_bytes())
    (log / "episodes" / ".part-000008.parquet.123.tmp").write_bytes(b"partial")
    after = read_trajectories(log)
    assert after.steps.shape == before.steps.shape and len(after.episodes) == 3
    env.close()


def test_compaction_is_equivalent_and_crash_safe(tmp_path: Path) -> None:
    log = tmp_path / "log"
    env = Recorder(SlateEnv(max_steps=5), log, compact=False)
    run_episodes(env, make_recommender("random", env.action_space, seed=0), 4, seed=0)
    env.close()
    singles = read_trajectories(log)
    saved = {f: f.read_bytes() for f in (log / "steps").glob("*.parquet")}
    env.writer.closed = False
    env.writer.compact()
    assert committed_parts(log) == ["part-000000-000003.parquet"]
    for f, data in saved.items():  # as if the process died before deleting the merged parts
        f.write_bytes(data)
    merged = read_trajectories(log)
    steps_equal(singles.steps, merged.steps, ["episode", "t", "slate", "clicked", "latent_taste"])
    assert len(merged.episodes) == 4


def test_failed_write_raises_and_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import simrec.trajectory.recorder as T

    log = tmp_path / "log"
    env = Recorder(SlateEnv(max_steps=5), log, flush_every=100)
    env.writer.retries = 1
    run_episodes(env, make_recommender("random", env.action_space, seed=0), 3, seed=0)
    real = T.pq.write_table
    calls = {"n": 0}

    def broken(*a, **k):
        calls["n"] += 1
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(T.pq, "write_table", broken)
    with pytest.raises(TrajectoryWriteError, match="still buffered"):
        env.flush()
    assert calls["n"] == 2  # retried once
    assert not list((log / "steps").glob("*.tmp")) and read_trajectories(log).steps.empty
    monkeypatch.setattr(T.pq, "write_table", real)
    env.close()
    tr = read_trajectories(log)
    assert len(tr.episodes) == 3 and int(tr.episodes["steps"].sum()) == len(tr.steps)


def test_refuses_existing_log_and_bad_versions(tmp_path: Path) -> None:
    log = tmp_path / "log"
    record(log, episodes=1)
    with pytest.raises(FileExistsError, match="overwrite"):
        Recorder(SlateEnv(), log)
    Recorder(SlateEnv(), log, overwrite=True).close()
    assert read_trajectories(log).steps.empty
    m = json.loads((log / "manifest.json").read_text())
    for bad, msg in ((SCHEMA_VERSION + 1, "newer"), ("one", "unknown")):
        (log / "manifest.json").write_text(json.dumps(dict(m, schema_version=bad)))
        with pytest.raises(TrajectoryFormatError, match=msg):
            read_trajectories(log)
    with pytest.raises(TrajectoryFormatError, match="no manifest"):
        read_trajectories(tmp_path / "missing")


class TrajectoryCallingBackend(CallingBackend):
    """Every call-record field of the contract, plus one beyond it (``server``) that must land in ``extra``."""

    def record(self, pop, u: int, kind: str) -> dict:
        return {"model": "fake", "base_url": "http://127.0.0.1:1/v1", "params": {"temperature": 0.2},
                "seed": 7, "messages": "[]", "raw_reply": "{}", "parsed": "{}", "parse_status": "ok",
                "audit": "{}", "prompt_tokens": 100, "completion_tokens": 20, "latency_s": 0.01,
                "cost_usd": 0.0, "cache_hit": False, "fallback": False, "error": None, "server": "x"}

    def stats(self) -> dict:
        return {"calls": self.n, "prompt_tokens": 100 * self.n}


def test_calls_table_links_calls_to_steps(tmp_path: Path) -> None:
    backend = TrajectoryCallingBackend()
    env = Recorder(SlateEnv(max_steps=6, backend=backend), tmp_path / "log")
    run_episodes(env, make_recommender("popular", env.action_space, seed=0), 4, seed=0)
    env.close()
    tr = read_trajectories(tmp_path / "log")
    c = tr.calls
    assert len(c) == backend.n and tr.manifest["backend"] == "fake-llm" and tr.manifest["backend_stats"]["calls"] == backend.n
    dec = c[c["kind"] == "decide"]
    assert len(dec) == len(tr.steps)
    linked = dec.merge(tr.steps, on=["episode", "t"])
    assert len(linked) == len(dec) and (linked["user_x"] == linked["user_index"]).all()
    refl = c[c["kind"] == "reflect"]
    assert len(refl) >= 4 and set(refl["episode"]) <= set(tr.episodes["episode"])
    assert json.loads(c["params"].iloc[0]) == {"temperature": 0.2} and json.loads(c["extra"].iloc[0]) == {"server": "x"}
    assert c["seed"].iloc[0] == 7
    s = summarize(tr)
    assert s["llm_calls"] == backend.n and s["prompt_tokens"] == 100 * backend.n


def test_vector_recorder(tmp_path: Path) -> None:
    from simrec.envs.vector_env import SlateVectorEnv

    venv = VectorRecorder(SlateVectorEnv(num_envs=4, max_steps=6), tmp_path / "vlog")
    rng = np.random.default_rng(0)
    venv.reset(seed=0)
    for _ in range(20):
        venv.step(np.stack([rng.choice(50, 5, replace=False) for _ in range(4)]))
    venv.close()
    tr = read_trajectories(tmp_path / "vlog")
    assert tr.manifest["vector"] and tr.manifest["num_envs"] == 4 and tr.manifest["seed"] == 0
    assert len(tr.steps) == 80 and int(tr.episodes["steps"].sum()) == 80
    assert tr.episodes["complete"].sum() >= 4
    for _, g in tr.steps.groupby("episode"):
        assert list(g["t"]) == list(range(1, len(g) + 1)) and g["user"].nunique() == 1
        assert not (g["terminated"] | g["truncated"]).iloc[:-1].any()
    with pytest.raises(TrajectoryFormatError, match="vector"):
        replay(tr)


def test_summary_metrics_match_manual_computation(tmp_path: Path) -> None:
    record(tmp_path / "log", episodes=5, seed=1, name="random")
    tr = read_trajectories(tmp_path / "log")
    s = summarize(tr)
    clicked = np.stack(tr.steps["clicked"].to_numpy())
    rating = np.stack(tr.steps["rating"].to_numpy())
    slates = np.stack(tr.steps["slate"].to_numpy())
    assert s["ctr"] == pytest.approx(clicked.mean())
    assert s["clicks_per_step"] == pytest.approx(clicked.sum(1).mean())
    assert s["mean_rating"] == pytest.approx(np.nanmean(rating))
    assert s["mean_session_length"] == pytest.approx(len(tr.steps) / 5)
    assert s["catalog_coverage"] == pytest.approx(np.unique(slates).size / 1200)
    assert 0 < s["intra_list_diversity"] <= 2 and s["novelty"] > 0
    u = per_user(tr)
    assert u["sessions"].sum() == 5 and u["clicks"].sum() == clicked.sum()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 30), k=st.integers(2, 6))
def test_intra_list_diversity_matches_pairwise_definition(seed: int, n: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(40, 4))
    slates = np.stack([rng.choice(40, k, replace=False) for _ in range(n)])
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    brute = np.mean([1 - f[s[i]] @ f[s[j]] for s in slates for i in range(k) for j in range(k) if i != j])
    assert intra_list_diversity(slates, feats) == pytest.approx(brute)
    pop = rng.random(40)
    assert novelty(slates, pop) == pytest.approx(np.mean(-np.log2(np.maximum(pop, 1 / 40))[slates]))
