"""The ``simrec`` command line, called in-process through ``main([...])`` (plus one subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from simrec.catalog import Catalog
from simrec.cli import main
from simrec.users.persona import PersonaPack
from simrec.envs.spec import EnvSpec
from simrec.trajectory import read_trajectories

ROOT = Path(__file__).resolve().parents[1]


def test_python_m_simrec_help() -> None:
    out = subprocess.run([sys.executable, "-m", "simrec", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    for cmd in ("demo", "run", "envs", "world", "inspect", "replay", "fidelity"):
        assert cmd in out.stdout


def test_demo_writes_logs_and_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--episodes", "4", "--max-steps", "10", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    for s in ("CTR", "mean rating", "mean session length", "catalog coverage", "linucb vs random", str(out / "linucb")):
        assert s in text
    for name in ("linucb", "random"):
        tr = read_trajectories(out / name)
        assert len(tr.episodes) == 4 and tr.manifest["recommender"] == name and tr.manifest["seed"] == 0
    # the demo directory is reused on the next run
    assert main(["demo", "--episodes", "2", "--max-steps", "5", "--out", str(out), "--no-progress",
                 "--recommender", "popular", "--baseline", "none"]) == 0
    assert len(read_trajectories(out / "popular").episodes) == 2


def test_run_with_overrides_json_and_refusal(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    args = ["run", "--env", "simrec/Synthetic-v0", "--recommender", "popular", "--episodes", "3", "--seed", "4",
            "--slate-size", "1", "--max-steps", "7", "--out", str(out), "--no-progress", "--json"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["recommender"] == "popular" and 0 <= res["summary"]["ctr"] <= 1
    tr = read_trajectories(out)
    assert tr.spec.slate_size == 1 and tr.spec.max_steps == 7 and tr.manifest["seed"] == 4
    assert tr.steps["t"].max() <= 7 and res["summary"]["steps"] == len(tr.steps)
    assert main(args) == 2  # the log exists
    assert "overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_run_names_every_recommender_but_the_llm_ranker() -> None:
    from simrec.cli import FITTED_NAMES, FIT_MODULES, RECOMMENDER_NAMES, RUN_RECOMMENDERS
    from simrec.recommenders import RECOMMENDERS, fitted_names, online_names

    assert set(RUN_RECOMMENDERS) == set(RECOMMENDERS) - {"llm"}  # the fitted ones: tests/test_run_fitted.py
    assert set(FITTED_NAMES) == set(fitted_names()) and set(RECOMMENDER_NAMES) == set(online_names())
    assert set(FIT_MODULES) <= set(FITTED_NAMES)


def test_run_custom_spec_file_and_bad_spec(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = EnvSpec.builtin("synthetic-v0").model_dump(mode="json")
    spec.update(id="simrec/Tiny-v0", slate_size=3, num_candidates=10, max_steps=4)
    f = tmp_path / "tiny.json"
    f.write_text(json.dumps(spec))
    assert main(["run", "--spec", str(f), "--recommender", "greedy", "--episodes", "2", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "simrec/Tiny-v0" in text and "CTR" in text
    spec["slate_size"] = 0
    f.write_text(json.dumps(spec))
    assert main(["run", "--spec", str(f), "--episodes", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and "slate_size" in err
    assert main(["run", "--env", "simrec/Nope-v0", "--episodes", "1"]) == 2
    assert "simrec envs" in capsys.readouterr().err


def test_envs(capsys: pytest.CaptureFixture) -> None:
    assert main(["envs"]) == 0
    assert "simrec/Synthetic-v0" in capsys.readouterr().out
    assert main(["envs", "--json"]) == 0
    specs = json.loads(capsys.readouterr().out)
    assert specs["simrec/Synthetic-v0"]["slate_size"] == 5


def test_world_export(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["world", "--export", str(tmp_path / "w")]) == 0
    cat = Catalog.load(tmp_path / "w" / "catalog.json")
    pack = PersonaPack.load(tmp_path / "w" / "personas.json")
    assert len(cat) == 1200 and cat.n_topics == 20 and len(pack) == 256
    assert pack == PersonaPack.builtin("synthetic-v0")


def test_inspect_and_replay(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    log = tmp_path / "log"
    assert main(["run", "--recommender", "egreedy", "--episodes", "3", "--max-steps", "8", "--out", str(log),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(log)]) == 0
    text = capsys.readouterr().out
    assert "egreedy" in text and "3 episodes" in text and "CTR" in text
    assert main(["inspect", str(log), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["episodes"] == 3
    assert main(["replay", str(log)]) == 0
    assert "reproduced exactly" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "no manifest" in capsys.readouterr().err


def test_fidelity_delegates_or_explains(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    fake = types.ModuleType("simrec.data.fidelity")
    seen = {}
    fake.add_arguments = lambda p: p.add_argument("--ratings", required=True)  # type: ignore[attr-defined]
    fake.run_cli = lambda args: seen.setdefault("ratings", args.ratings) and 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "simrec.data.fidelity", fake)
    assert main(["fidelity", "--ratings", "r.csv"]) == 0 and seen == {"ratings": "r.csv"}
    monkeypatch.setitem(sys.modules, "simrec.data.fidelity", None)  # import fails
    assert main(["fidelity", "--anything"]) == 2
    assert "simrec.data.fidelity" in capsys.readouterr().err


def test_llm_demo_without_local_llm_names_the_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                                   tmp_path: Path) -> None:
    for var in ("SIMREC_LLM_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(sys.modules, "simrec.llm.local_server", None)
    assert main(["demo", "--backend", "llm", "--out", str(tmp_path / "d"), "--no-progress"]) == 2
    assert "pip install -e .[local-llm]" in capsys.readouterr().err


def test_llm_run_against_fake_server_logs_calls(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("simrec.cognition.llm")
    sys.path.insert(0, str(ROOT / "tests"))
    from llm_servers import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        assert main(["run", "--backend", "llm", "--base-url", server.base_url, "--model", "fake-model",
                     "--episodes", "2", "--max-steps", "3", "--out", str(tmp_path / "llm"), "--no-progress"]) == 0
    tr = read_trajectories(tmp_path / "llm")
    assert tr.manifest["backend"] != "embedded" and len(tr.calls) >= len(tr.steps)
    linked = tr.calls[tr.calls["kind"] == "decide"].merge(tr.steps[["episode", "t"]], on=["episode", "t"])
    assert len(linked) == len(tr.steps)


def test_run_saved_sb3_policy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sb3 = pytest.importorskip("stable_baselines3")
    from gymnasium.wrappers import FlattenObservation

    from simrec.envs.slate_env import SlateEnv
    from simrec.envs.wrappers import TopKScores

    model = sb3.PPO("MlpPolicy", FlattenObservation(TopKScores(SlateEnv())), n_steps=16, batch_size=16, device="cpu")
    model.save(tmp_path / "ppo.zip")
    assert main(["run", "--policy", str(tmp_path / "ppo.zip"), "--episodes", "2", "--max-steps", "5",
                 "--no-progress"]) == 0
    assert "sb3:ppo.zip" in capsys.readouterr().out
    assert main(["run", "--policy", str(tmp_path / "ppo.zip"), "--num-candidates", "20", "--episodes", "1"]) == 2
    assert "shape" in capsys.readouterr().err
