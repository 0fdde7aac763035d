"""Runs that survive a crash: ``--resume`` of ``simrec run``, ``compare``, ``stress run`` and ``fidelity``.

Each crash test starts the real command in a subprocess (``python -m simrec ...``), kills it with
SIGKILL mid-run, reruns it with ``--resume`` and checks that the final log or result equals an
uninterrupted run with the same seed.

What is left out of the comparisons, and why (everything else must be equal):

* episodes ``started`` / ``ended``: wall-clock times of each session;
* for LLM users, steps ``source`` and calls ``cache_hit``, ``latency_s``, ``cost_usd``, ``call_id``: how a call
  was answered (the server, or the cache for calls the killed run had made), its timing, and a random id;
* the manifest (run id, creation time, backend stats of the process) and, in result JSON, ``timing`` /
  ``seconds`` / ``fit_seconds`` / ``backend_stats`` / ``command`` / ``out`` (run times, per-process call
  counters, the command line, which says ``--resume``, and the output directory, which differs by design).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from llm_servers import fake_server  # noqa: F401  (fixture)
from simrec.resume import Journal, ResumeError, apply_changes, changes, to_json_value
from simrec.trajectory import read_trajectories

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300  # a safety net for a hung subprocess, never a measurement

WALL_CLOCK = {"started", "ended"}
LLM_ANSWER = {"steps": {"source"}, "calls": {"cache_hit", "latency_s", "cost_usd", "call_id"}}
RESULT_PROVENANCE = {"timing", "seconds", "fit_seconds", "backend_stats", "command", "out"}


# -- helpers --------------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMREC_LLM_", "OPENAI_"))}
    env["SIMREC_CACHE_DIR"] = "off"  # calibrate afresh: no test compares a world with a cached copy
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def simrec(*args: Any) -> list[str]:
    return [sys.executable, "-m", "simrec", *map(str, args)]


def run_ok(cmd: list[str]) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=TIMEOUT_S,
                         check=False)
    assert out.returncode == 0, f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}"
    return out


def run_fails(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=TIMEOUT_S,
                         check=False)
    assert out.returncode == 2, f"{' '.join(cmd)} should have been refused:\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
    return out.stderr


def kill_when(cmd: list[str], ready: Callable[[], bool] | None = None, *, after_s: float | None = None) -> int | None:
    """Start ``cmd``, SIGKILL it once ``ready()`` holds (or ``after_s`` after the start); its exit status."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - t0 < TIMEOUT_S:
            if (ready is not None and ready()) or (after_s is not None and time.monotonic() - t0 >= after_s):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        else:
            if proc.poll() is None:
                pytest.fail(f"{' '.join(cmd)}: never ready within {TIMEOUT_S}s")
        rc = proc.wait(timeout=TIMEOUT_S)
        if ready is not None and rc != -signal.SIGKILL:
            pytest.fail(f"{' '.join(cmd)} ended ({rc}) before it was ready to be killed")
        return rc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def parts(d: Path, table: str = "episodes") -> int:
    return len(list((d / table).glob("part-*.parquet"))) if (d / table).is_dir() else 0


def assert_same_log(a: Path, b: Path, *, llm: bool = False) -> None:
    """The logs in ``a`` and ``b`` are equal episode for episode (all columns but the module docstring's)."""
    ta, tb = read_trajectories(a), read_trajectories(b)
    assert len(ta.episodes) == len(tb.episodes) and len(ta.steps) == len(tb.steps) and len(ta.calls) == len(tb.calls)
    for table in ("steps", "episodes", "calls"):
        x, y = getattr(ta, table), getattr(tb, table)
        assert list(x.columns) == list(y.columns), table
        skip = (WALL_CLOCK if table == "episodes" else set()) | (LLM_ANSWER.get(table, set()) if llm else set())
        cols = [c for c in x.columns if c not in skip]
        try:
            pd.testing.assert_frame_equal(x[cols], y[cols], obj=table)
        except AssertionError:
            for ep in sorted(set(x["episode"].dropna())):  # episode by episode: the failure names the first
                xe = x.loc[x["episode"] == ep, cols].reset_index(drop=True)
                ye = y.loc[y["episode"] == ep, cols].reset_index(drop=True)
                pd.testing.assert_frame_equal(xe, ye, obj=f"{table} of episode {ep}")
            raise


def without_timing(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k not in RESULT_PROVENANCE}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def same_json(a: Path, b: Path) -> None:
    # NaN != NaN, so compare the text of both after dropping the timing keys
    ja, jb = (json.dumps(without_timing(json.loads(p.read_text())), sort_keys=True) for p in (a, b))
    assert ja == jb


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}


# -- simrec run ------------------------------------------------------------------------------------
RUN = ("run", "--recommender", "linucb", "--episodes", 60, "--seed", 7, "--no-progress")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "uninterrupted"
    run_ok(simrec(*RUN, "--out", out))
    return out


def test_run_killed_after_its_first_episodes_resumes_to_the_same_log(uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    rc = kill_when(simrec(*RUN, "--out", out, "--resume"), lambda: parts(out) >= 3)
    assert rc == -signal.SIGKILL
    kept = len(read_trajectories(out).episodes)
    assert 3 <= kept < 60 and read_trajectories(out).manifest["closed"] is None
    run_ok(simrec(*RUN, "--out", out, "--resume"))
    assert_same_log(uninterrupted, out)
    m = read_trajectories(out).manifest
    assert m["closed"] is not None and [r["at_episode"] for r in m["resumes"]] == [kept]


def test_run_killed_at_random_moments_twice_resumes_to_the_same_log(uninterrupted: Path, tmp_path: Path) -> None:
    # the second kill may land while the first episodes are replayed; either kill may come before
    # anything is written (then --resume just runs)
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    delays = [rng.uniform(0.3, 3.0), rng.uniform(0.3, 3.0)]
    out = tmp_path / "killed"
    for d in delays:
        kill_when(simrec(*RUN, "--out", out, "--resume"), after_s=d)
    run_ok(simrec(*RUN, "--out", out, "--resume"))
    try:
        assert_same_log(uninterrupted, out)
    except AssertionError as e:
        raise AssertionError(f"kills after {delays} s: {e}") from None


def test_run_interrupted_by_ctrl_c_drops_the_cut_episode_and_resumes(uninterrupted: Path, tmp_path: Path) -> None:
    # Ctrl-C closes the log: the episode in progress is kept as incomplete and the parts are merged;
    # resuming cuts that episode out of the merged part and replays the rest
    from simrec.cli import main
    from simrec.recommenders import bandits

    out = tmp_path / "interrupted"
    act, calls = bandits.LinUCBRecommender.act, {"n": 0}

    def interrupting(self: Any, obs: Any, info: Any = None) -> Any:
        calls["n"] += 1
        if calls["n"] == 400:
            raise KeyboardInterrupt
        return act(self, obs, info)

    args = [str(a) for a in RUN] + ["--out", str(out)]
    mp = pytest.MonkeyPatch()
    mp.setattr(bandits.LinUCBRecommender, "act", interrupting)
    try:
        assert main(args) == 130
    finally:
        mp.undo()
    cut = read_trajectories(out)
    assert not cut.episodes["complete"].iloc[-1] and cut.manifest["closed"] is not None
    assert parts(out) == 1  # merged on close
    assert main(args + ["--resume"]) == 0
    assert_same_log(uninterrupted, out)


def test_run_resume_without_a_log_runs_and_of_a_complete_log_changes_nothing(tmp_path: Path) -> None:
    args = ("run", "--recommender", "egreedy", "--episodes", 8, "--seed", 1, "--no-progress", "--json")
    run_ok(simrec(*args, "--out", tmp_path / "plain"))
    first = run_ok(simrec(*args, "--out", tmp_path / "resumed", "--resume"))
    assert_same_log(tmp_path / "plain", tmp_path / "resumed")
    before = snapshot(tmp_path / "resumed")
    again = run_ok(simrec(*args, "--out", tmp_path / "resumed", "--resume"))
    assert snapshot(tmp_path / "resumed") == before  # not a byte changed, manifest included
    assert json.loads(again.stdout)["summary"] == json.loads(first.stdout)["summary"]
    # more episodes extend the finished run, as if it had been asked for them from the start
    run_ok(simrec(*args[:4], 12, *args[5:], "--out", tmp_path / "resumed", "--resume"))
    run_ok(simrec(*args[:4], 12, *args[5:], "--out", tmp_path / "twelve"))
    assert_same_log(tmp_path / "twelve", tmp_path / "resumed")
    err = run_fails(simrec(*args[:4], 5, *args[5:], "--out", tmp_path / "resumed", "--resume"))
    assert "already holds 12 episodes" in err and "Fix:" in err


def test_run_resume_with_other_arguments_is_refused(tmp_path: Path) -> None:
    base = {"--recommender": "linucb", "--episodes": 3, "--seed": 1}
    out = tmp_path / "log"
    run_ok(simrec("run", *[x for kv in base.items() for x in kv], "--no-progress", "--out", out))
    before = snapshot(out)
    for flag, value in (("--seed", 2), ("--recommender", "random"), ("--max-steps", 9)):
        err = run_fails(simrec("run", *[x for kv in {**base, flag: value}.items() for x in kv], "--no-progress",
                               "--out", out, "--resume"))
        assert f"{flag} differs" in err and "Fix:" in err and str(out) in err
        assert snapshot(out) == before


def test_resume_and_overwrite_exclude_each_other(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from simrec.cli import main

    assert main(["run", "--episodes", "1", "--resume", "--overwrite", "--out", str(tmp_path / "x")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["run", "--episodes", "1", "--resume"]) == 2
    assert "--out" in capsys.readouterr().err


def test_a_run_that_does_not_reproduce_its_log_is_refused_and_the_log_kept(tmp_path: Path) -> None:
    # same arguments as far as the log can tell, but the recommender is seeded differently: the replay
    # of the logged episodes diverges, which must be an error rather than a silently different run
    from simrec.envs.slate_env import SlateEnv
    from simrec.recommenders import make_recommender, run_episodes
    from simrec.trajectory import Recorder

    def go(rec_seed: int, n: int) -> None:
        env = SlateEnv("synthetic-v0", max_steps=8)
        rec = make_recommender("egreedy", env.action_space, seed=rec_seed)
        r = Recorder(env, tmp_path / "log", resume=True, recommender="egreedy")
        rec.reset(seed=rec_seed)
        try:
            run_episodes(r, rec, n, seed=0)
        finally:
            r.close()

    go(0, 4)
    before = snapshot(tmp_path / "log")
    with pytest.raises(ResumeError, match="does not reproduce"):
        go(1, 8)
    assert snapshot(tmp_path / "log") == before


def test_one_writer_at_a_time_resumes_a_log(tmp_path: Path) -> None:
    from simrec.envs.slate_env import SlateEnv
    from simrec.trajectory import Recorder

    first = Recorder(SlateEnv("synthetic-v0"), tmp_path / "log", resume=True)
    with pytest.raises(ResumeError, match="another process is writing"):
        Recorder(SlateEnv("synthetic-v0"), tmp_path / "log", resume=True)
    first.close()
    Recorder(SlateEnv("synthetic-v0"), tmp_path / "log", resume=True).close()  # free again once closed


def test_sb3_policy_run_resumes_to_the_same_log(tmp_path: Path) -> None:
    sb3 = pytest.importorskip("stable_baselines3")
    from gymnasium.wrappers import FlattenObservation

    from simrec.cli import main
    from simrec.envs.slate_env import SlateEnv
    from simrec.envs.wrappers import TopKScores

    model = sb3.PPO("MlpPolicy", FlattenObservation(TopKScores(SlateEnv())), n_steps=16, batch_size=16, device="cpu")
    model.save(tmp_path / "ppo.zip")
    args = ["run", "--policy", str(tmp_path / "ppo.zip"), "--max-steps", "6", "--seed", "2", "--no-progress"]
    assert main(args + ["--episodes", "6", "--out", str(tmp_path / "plain")]) == 0
    assert main(args + ["--episodes", "3", "--out", str(tmp_path / "resumed")]) == 0
    assert main(args + ["--episodes", "6", "--out", str(tmp_path / "resumed"), "--resume"]) == 0
    assert_same_log(tmp_path / "plain", tmp_path / "resumed")


# -- simrec run with LLM users --------------------------------------------------------------------
def test_llm_run_resumes_from_the_cache_without_paying_again(tmp_path: Path, fake_server: Any) -> None:  # noqa: F811
    srv = fake_server(latency_s=0.02)
    args = ("run", "--backend", "llm", "--base-url", srv.base_url, "--model", "fake-model", "--recommender", "linucb",
            "--episodes", 14, "--max-steps", 4, "--seed", 3, "--no-progress")
    run_ok(simrec(*args, "--out", tmp_path / "plain"))
    total = srv.counts["requests"]
    assert total == len(read_trajectories(tmp_path / "plain").calls) > 0
    out = tmp_path / "killed"
    assert kill_when(simrec(*args, "--out", out), lambda: parts(out) >= 4) == -signal.SIGKILL
    killed = srv.counts["requests"] - total
    run_ok(simrec(*args, "--out", out, "--resume"))
    resumed = srv.counts["requests"] - total - killed
    assert_same_log(tmp_path / "plain", out, llm=True)
    # the replayed episodes came from the cache in OUT: at most the call in flight at the kill is paid twice
    assert killed + resumed <= total + 2, (killed, resumed, total)
    assert resumed <= total - len(read_trajectories(out).calls.query("episode < 4"))


# -- simrec compare ---------------------------------------------------------------------------------
COMPARE = ("compare", "--recommenders", "random,linucb,itemknn", "--seeds", 2, "--episodes", 12, "--fit-episodes", 30,
           "--max-steps", 20, "--no-progress")


def test_compare_killed_after_a_finished_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    run_ok(simrec(*COMPARE, "--out", tmp_path / "plain", "--json", tmp_path / "plain.json"))
    out = tmp_path / "killed"
    units = out / "journal" / "units"
    rc = kill_when(simrec(*COMPARE, "--out", out, "--json", tmp_path / "killed.json"),
                   lambda: len(list(units.glob("*.json"))) >= 2 if units.is_dir() else False)
    assert rc == -signal.SIGKILL and not (tmp_path / "killed.json").exists()
    finished = {f: f.stat().st_mtime_ns for f in units.glob("*.json")}
    logs = {f: out / json.loads(f.read_text())["unit"] / "manifest.json" for f in finished}  # unit = rec/seedS
    manifests = {f: m.read_bytes() for f, m in logs.items()}
    run_ok(simrec(*COMPARE, "--out", out, "--json", tmp_path / "killed.json", "--resume"))
    same_json(tmp_path / "plain.json", tmp_path / "killed.json")
    # finished runs were reused, not run again: their journal entries and logs are untouched
    assert {f: f.stat().st_mtime_ns for f in finished} == finished
    assert {f: m.read_bytes() for f, m in logs.items()} == manifests
    for rec in ("random", "linucb", "itemknn"):
        assert_same_log(tmp_path / "plain" / rec / "seed1", out / rec / "seed1")
    err = run_fails(simrec(*COMPARE[:6], 13, *COMPARE[7:], "--out", out, "--resume"))
    assert "--episodes differs" in err


# -- simrec stress run ------------------------------------------------------------------------------
STRESS = ("stress", "run", "fatigue_retention", "--seeds", 2, "--episodes", 30, "--recommenders", "random,linucb",
          "--no-progress")


def test_stress_killed_after_a_finished_seed_resumes_to_the_same_result(tmp_path: Path) -> None:
    run_ok(simrec(*STRESS, "--out", tmp_path / "plain"))
    units = tmp_path / "killed" / "fatigue_retention" / "journal" / "units"
    rc = kill_when(simrec(*STRESS, "--out", tmp_path / "killed"),
                   lambda: any(units.glob("*.json")) if units.is_dir() else False)
    assert rc == -signal.SIGKILL
    finished = {f.name: f.read_bytes() for f in units.glob("*.json")}
    run_ok(simrec(*STRESS, "--out", tmp_path / "killed", "--resume"))
    same_json(tmp_path / "plain" / "fatigue_retention" / "result.json",
              tmp_path / "killed" / "fatigue_retention" / "result.json")
    assert {f: units.joinpath(f).read_bytes() for f in finished} == finished
    err = run_fails(simrec(*STRESS[:8], "random", *STRESS[9:], "--out", tmp_path / "killed", "--resume"))
    assert "--recommenders differs" in err


# -- simrec fidelity with the LLM backend --------------------------------------------------------------
def test_fidelity_llm_resumes_per_seed_without_calling_the_server_for_finished_seeds(
        tmp_path: Path, fake_server: Any) -> None:  # noqa: F811
    from test_fidelity import generic_log

    data = generic_log(tmp_path / "data")
    srv = fake_server(latency_s=0.01)
    args = ("fidelity", "--data", data, "--backend", "llm", "--base-url", srv.base_url, "--model", "fake-model",
            "--api-key", "x", "--max-users", 3, "--max-positives", 2, "--sessions-per-user", 1, "--no-baselines",
            "--quiet")

    def requests() -> int:
        return srv.counts["requests"]

    run_ok(simrec(*args, "--seeds", 1, "--json", tmp_path / "one.json", "--resume"))
    seed0 = requests()
    run_ok(simrec(*args, "--seeds", 2, "--json", tmp_path / "plain.json", "--resume"))
    both = requests() - seed0
    assert 0 < seed0 < both

    units = tmp_path / "killed.journal" / "units"
    rc = kill_when(simrec(*args, "--seeds", 2, "--json", tmp_path / "killed.json", "--resume"),
                   lambda: any(units.glob("*.json")) if units.is_dir() else False)
    assert rc == -signal.SIGKILL and not (tmp_path / "killed.json").exists()
    start = requests()
    run_ok(simrec(*args, "--seeds", 2, "--json", tmp_path / "killed.json", "--resume"))
    assert requests() - start <= both - seed0  # seed 0 was not asked again; seed 1 partly came from the cache
    same_json(tmp_path / "plain.json", tmp_path / "killed.json")

    start = requests()  # everything finished: the server is not called at all
    run_ok(simrec(*args, "--seeds", 2, "--json", tmp_path / "again.json", "--journal", tmp_path / "killed.journal",
                  "--resume"))
    assert requests() == start
    same_json(tmp_path / "plain.json", tmp_path / "again.json")
    err = run_fails(simrec(*args[:-2], "--seeds", 2, "--journal", tmp_path / "killed.journal", "--resume"))
    assert "--no-baselines differs" in err


# -- the journal itself ------------------------------------------------------------------------------
def test_journal_keeps_units_refuses_other_arguments_and_starts_afresh_without_resume(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j", {"--episodes": 10}, resume=True, command="compare")
    assert not j.resumed and j.get("a/seed0") is None
    j.put("a/seed0", {"ctr": np.float64(0.5), "n": np.int64(3), "nan": float("nan")})
    j.put("b:sb3/seed 1", [1, 2])
    (tmp_path / "j" / "units" / ".x.json.123.tmp").write_text("{half")  # a killed writer's leftover
    j2 = Journal(tmp_path / "j", {"--episodes": 10}, resume=True, command="compare")
    assert j2.resumed and sorted(j2.units()) == ["a/seed0", "b:sb3/seed 1"]
    v = j2.get("a/seed0")
    assert v["ctr"] == 0.5 and v["n"] == 3 and np.isnan(v["nan"]) and j2.get("b:sb3/seed 1") == [1, 2]
    assert not list((tmp_path / "j" / "units").glob(".*.tmp"))
    with pytest.raises(ResumeError, match=r"--episodes differs \(it was made with 10, this command has 11\)"):
        Journal(tmp_path / "j", {"--episodes": 11}, resume=True, command="compare")
    with pytest.raises(ResumeError, match="not of `simrec stress run`"):
        Journal(tmp_path / "j", {"--episodes": 10}, resume=True, command="stress run")
    fresh = Journal(tmp_path / "j", {"--episodes": 11}, resume=False, command="compare")
    assert not fresh.resumed and fresh.units() == []


def test_changes_replay_what_a_unit_added() -> None:
    before = {"values": {"llm": {"acc": [0.5]}}, "info": {"eval": {"0": {"users": 3}}, "timing": {"s": [1.0]}}}
    after = to_json_value(before)
    after["values"]["llm"]["acc"].append(0.75)
    after["values"]["base"] = {"acc": [0.1]}
    after["info"]["eval"]["1"] = {"users": 4}
    after["info"]["timing"]["s"].append(2.0)
    target = to_json_value(before)
    apply_changes(target, to_json_value(changes(before, after)))  # through JSON, as the journal keeps them
    assert target == after and list(target["values"]) == ["llm", "base"]
