"""``simrec run`` with the fitted recommenders and the oracle: fitted as ``simrec compare`` fits them, logged,
and resumable (the fit is rebuilt from the seed, so a resumed run equals an uninterrupted one)."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from simrec.cli import main
from simrec.trajectory import read_trajectories
from test_resume import assert_same_log, kill_when, parts, run_fails, run_ok, simrec

SMALL = ["--episodes", "30", "--max-steps", "20", "--seed", "3", "--fit-episodes", "100", "--no-progress"]


def run_json(capsys: pytest.CaptureFixture, *args: str) -> dict[str, Any]:
    assert main(["run", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def replayed_slates(log: Path, name: str, fit_episodes: int) -> list[list[int]]:
    """The slates ``name``, fitted as ``simrec compare`` fits it, shows on the log's env, seed and episodes."""
    from simrec.envs.slate_env import SlateEnv
    from simrec.evaluation.compare import build_recommender, fit_interactions
    from simrec.recommenders import run_episodes
    from simrec.trajectory import Recorder

    tr = read_trajectories(log)
    seed, episodes = int(tr.manifest["seed"]), len(tr.episodes)
    env = SlateEnv(tr.spec)
    rec = build_recommender(name, env, seed, fit_interactions(tr.spec, None, seed, fit_episodes=fit_episodes))
    mem = Recorder(env, None, recommender=name, flush_every=10**9)
    rec.reset(seed=seed)
    run_episodes(mem, rec, episodes, seed=seed)
    mem.close()
    return [list(map(int, s)) for s in mem.trajectories().steps["slate"]]


def slates(log: Path) -> list[list[int]]:
    return [list(map(int, s)) for s in read_trajectories(log).steps["slate"]]


@pytest.mark.parametrize("name", ["ease", "itemknn"])
def test_run_fits_the_recommender_and_logs_it(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if name == "itemknn":
        pytest.importorskip("implicit")
    out = tmp_path / name
    res = run_json(capsys, "--recommender", name, *SMALL, "--out", str(out))
    rnd = run_json(capsys, "--recommender", "random", *SMALL, "--out", str(tmp_path / "random"))
    tr = read_trajectories(out)
    assert res["recommender"] == name and tr.manifest["recommender"] == name and len(tr.episodes) == 30
    meta = tr.manifest["metadata"]
    assert meta["arguments"]["--fit-episodes"] == 100 and meta["arguments"]["--fit-policy"] == "random"
    assert meta["fit"]["interactions"] > 0 and meta["fit"]["items"] == 1200  # the synthetic catalog
    assert res["summary"]["ctr"] != rnd["summary"]["ctr"]
    assert slates(out) != slates(tmp_path / "random")
    # the fitted model drove the run: compare's fit and build on the same seed reproduce every slate,
    # and a model fitted on other data would not
    assert replayed_slates(out, name, 100) == slates(out)
    assert replayed_slates(out, name, 40) != slates(out)


def test_run_oracle_beats_random_on_the_same_users(capsys: pytest.CaptureFixture) -> None:
    oracle = run_json(capsys, "--recommender", "oracle", *SMALL)["summary"]
    rnd = run_json(capsys, "--recommender", "random", *SMALL)["summary"]
    assert oracle["ctr"] > rnd["ctr"] + 0.02 and oracle["mean_rating"] > rnd["mean_rating"]


def test_online_runs_do_not_record_fit_flags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # None, as in logs written before the flags existed, so those still resume
    run_json(capsys, "--recommender", "popular", "--episodes", "2", "--max-steps", "5", "--no-progress",
             "--out", str(tmp_path / "p"))
    meta = read_trajectories(tmp_path / "p").manifest["metadata"]
    assert meta["arguments"]["--fit-episodes"] is None and "fit" not in meta


def test_run_without_an_extra_names_it_before_any_fit(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    import simrec.evaluation.compare as cmp

    def no_fit(*a: Any, **k: Any) -> Any:
        raise AssertionError("fit data collected for a recommender that cannot be built")

    monkeypatch.setattr(cmp, "fit_interactions", no_fit)
    for name, module in (("itemknn", "implicit"), ("sasrec", "torch")):
        monkeypatch.setitem(sys.modules, module, None)  # the import fails
        assert main(["run", "--recommender", name, "--episodes", "1", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"needs {module}" in err and ".[zoo]" in err and "Fix:" in err


def test_run_refuses_a_bad_fit_size_and_the_llm_ranker(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--recommender", "ease", "--fit-episodes", "0", "--episodes", "1", "--no-progress"]) == 2
    assert "--fit-episodes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--recommender", "llm", "--episodes", "1"])
    assert "invalid choice" in capsys.readouterr().err


def test_data_is_compares_name_for_data_dir() -> None:
    from simrec.cli import build_parser

    args = build_parser(["run"]).parse_args(["run", "--recommender", "ease", "--data", "some/dir"])
    assert args.data_dir == "some/dir" and args.fit_episodes == 300 and args.fit_policy == "random"


# -- --resume ----------------------------------------------------------------------------------------
RUN = ("run", "--recommender", "ease", "--episodes", 40, "--max-steps", 30, "--seed", 5, "--fit-episodes", 150,
       "--no-progress")


def test_fitted_run_killed_mid_run_resumes_to_the_uninterrupted_log(tmp_path: Path) -> None:
    run_ok(simrec(*RUN, "--out", tmp_path / "plain"))
    out = tmp_path / "killed"
    assert kill_when(simrec(*RUN, "--out", out, "--resume"), lambda: parts(out) >= 3) == -signal.SIGKILL
    kept = len(read_trajectories(out).episodes)
    assert 3 <= kept < 40
    run_ok(simrec(*RUN, "--out", out, "--resume"))
    assert_same_log(tmp_path / "plain", out)
    m = read_trajectories(out).manifest
    assert [r["at_episode"] for r in m["resumes"]] == [kept]
    assert m["metadata"]["fit"] == read_trajectories(tmp_path / "plain").manifest["metadata"]["fit"]
    # another fit is another run: refused, the log kept
    err = run_fails(simrec(*RUN[:10], 149, *RUN[11:], "--out", out, "--resume"))
    assert "--fit-episodes differs" in err and "Fix:" in err
    assert len(read_trajectories(out).episodes) == 40


def test_fitted_run_resumed_in_process_extends_to_the_same_log(tmp_path: Path) -> None:
    args = ["run", "--recommender", "bad", "--max-steps", "10", "--seed", "2", "--fit-episodes", "60", "--no-progress"]
    assert main(args + ["--episodes", "12", "--out", str(tmp_path / "plain")]) == 0
    assert main(args + ["--episodes", "5", "--out", str(tmp_path / "resumed")]) == 0
    assert main(args + ["--episodes", "12", "--out", str(tmp_path / "resumed"), "--resume"]) == 0
    assert_same_log(tmp_path / "plain", tmp_path / "resumed")
    assert [r["at_episode"] for r in read_trajectories(tmp_path / "resumed").manifest["resumes"]] == [5]
