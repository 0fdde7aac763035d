"""``--resume``/``--journal`` with ``--ray``: the driver journals each unit as its worker returns it, a rerun
dispatches only the units the journal lacks, and the result equals an uninterrupted run's.

The compare test kills the driver process itself (SIGKILL, a subprocess with its own Ray runtime) once the
journal holds a unit, then resumes with ``--resume`` on the module's local Ray runtime (2 CPUs). The fidelity
and stress tests resume across modes: a journal written without ``--ray`` resumed with it, and the other
way round. Tests that need no Ray (the journal path of ``run_grid`` on the local executor, the CLI checks)
also run without it; the others skip.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from test_distributed import fidelity_spec, ray_local  # noqa: F401,F811  (ray_local: the shared fixture)

from simrec.distributed import run_grid, verify_log
from simrec.resume import Journal
from simrec.trajectory import read_trajectories

ENV = "simrec/Synthetic-v0"
# 2 recommenders x 2 seeds; a unit takes about a second here, so the kill lands between units
CMP = ["compare", "--recommenders", "random,popular", "--seeds", "2", "--episodes", "60", "--max-steps", "10",
       "--fit-episodes", "20", "--no-progress"]
RAY = ["--ray", "--workers", "2"]
VOLATILE_INFO = ("timing", "distributed", "command", "seconds")


def stable(d: dict) -> dict:
    """A result's JSON without what differs between equal runs (timings, where units ran, the command)."""
    return {**d, "info": {k: v for k, v in d.get("info", {}).items() if k not in VOLATILE_INFO}}


def untimed(x):
    """``x`` without wall-clock values (keys naming seconds), recursively."""
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if "seconds" not in k and not k.endswith("_s")}
    return [untimed(v) for v in x] if isinstance(x, list) else x


def dumps(d: dict) -> str:
    return json.dumps(d, sort_keys=True, default=float)


def stamps(journal_dir: Path) -> dict[str, str]:
    """``{unit: finished}`` of a journal's entries (rewritten, with a new time, when a unit is recomputed)."""
    out = {}
    for f in glob.glob(str(journal_dir / "units" / "*.json")):
        rec = json.loads(Path(f).read_text())
        out[rec["unit"]] = rec["finished"]
    return out


def frames(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    t = read_trajectories(path)
    return t.steps, t.episodes.drop(columns=["started", "ended"])


# -- with Ray ---------------------------------------------------------------------------------------------
def test_compare_driver_killed_then_resumed_equals_uninterrupted(ray_local, tmp_path, capsys):
    from simrec.cli import main

    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(CMP + RAY + ["--out", str(ref), "--json", str(tmp_path / "ref.json")]) == 0

    # the same grid in a driver of its own (its own Ray runtime), killed once a unit is journaled
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "simrec", *CMP, *RAY, "--out", str(out),
                             "--json", str(tmp_path / "out.json")], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not stamps(out / "journal") and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:  # the killed driver's Ray processes (its raylet's agents outlive it)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    before = stamps(out / "journal")
    assert proc.returncode == -signal.SIGKILL, "the driver finished before it was killed: nothing was tested"
    assert 1 <= len(before) < 4 and not (tmp_path / "out.json").exists()
    capsys.readouterr()

    assert main(CMP + RAY + ["--out", str(out), "--json", str(tmp_path / "out.json"), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"resumed {len(before)} of 4 units from {out / 'journal'}; running {4 - len(before)}" in err
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("ref.json", "out.json"))
    assert dumps(stable(b)) == dumps(stable(a))  # the table's numbers, every run's metrics, the settings
    dist = b["info"]["distributed"]
    # the journaled units were not run again: not dispatched, and their journal entries untouched
    assert sorted(dist["resumed"]) == sorted(before)
    assert not {u["key"] for u in dist["units"]} & set(before) and len(dist["units"]) == 4 - len(before)
    assert {k: v for k, v in stamps(out / "journal").items() if k in before} == before
    # the merged log: the same episodes as the uninterrupted run's, verified
    assert verify_log(out).digest == verify_log(ref).digest == dist["digest"] == a["info"]["distributed"]["digest"]
    for x, y in zip(frames(out), frames(ref)):
        pd.testing.assert_frame_equal(x, y)
    # the killed driver's unfinished attempts are not merged
    assert all(".staging" in p for p in dist["discarded_attempts"])


def test_fidelity_resumes_across_ray_and_plain_runs(ray_local, tmp_path, capsys):
    from simrec.cli import main

    fidelity_spec(tmp_path / "log")
    base = ["fidelity", "--data", str(tmp_path / "log"), "--sessions-per-user", "2", "--no-cache", "--no-baselines"]
    whole = lambda name, *extra: main(base + ["--seeds", "2", "--json", str(tmp_path / name), *extra])  # noqa: E731
    assert whole("ray.json", "--quiet", *RAY) == 0

    # seed 0 journaled without --ray, resumed with it: only seed 1 runs
    assert main(base + ["--seeds", "1", "--quiet", "--journal", str(tmp_path / "j1")]) == 0
    t0 = stamps(tmp_path / "j1")
    capsys.readouterr()
    assert whole("resumed.json", "--resume", "--journal", str(tmp_path / "j1"), *RAY) == 0
    assert "resumed 1 of 2 seeds" in capsys.readouterr().err
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("ray.json", "resumed.json"))
    assert dumps(b["results"]) == dumps(a["results"]) and b["seeds"] == [0, 1]
    # eval sets, calibration reports, backend stats
    assert dumps(untimed(stable(b)["info"])) == dumps(untimed(stable(a)["info"]))
    assert b["info"]["distributed"]["resumed"] == ["fidelity/seed0"]
    assert [u["key"] for u in b["info"]["distributed"]["units"]] == ["fidelity/seed1"]
    assert stamps(tmp_path / "j1")["seed0"] == t0["seed0"]

    # and the other way round: seed 0 journaled by --ray, resumed without it
    assert main(base + ["--seeds", "1", "--quiet", "--journal", str(tmp_path / "j2"), *RAY]) == 0
    assert whole("plain.json", "--quiet") == 0
    assert whole("plain_resumed.json", "--quiet", "--resume", "--journal", str(tmp_path / "j2")) == 0
    c, d = (json.loads((tmp_path / f).read_text()) for f in ("plain.json", "plain_resumed.json"))
    assert dumps(d["results"]) == dumps(c["results"]) == dumps(a["results"])
    assert dumps(untimed(stable(d)["info"])) == dumps(untimed(stable(c)["info"])) == dumps(untimed(stable(a)["info"]))
    # a journal of other arguments is refused, naming the argument
    assert whole("x.json", "--quiet", "--resume", "--journal", str(tmp_path / "j2"), "--page-size", "7", *RAY) == 2
    assert "--page-size differs" in capsys.readouterr().err


def test_stress_ray_resumes_a_plain_journal(ray_local, tmp_path, capsys):
    from simrec.cli import main

    base = ["stress", "run", "filter_bubble", "--episodes", "10", "--max-steps", "8", "--recommenders",
            "random,popular", "--fit-episodes", "20", "--no-progress"]
    assert main(base + ["--seeds", "2", "--out", str(tmp_path / "ref"), *RAY]) == 0
    assert main(base + ["--seeds", "1", "--out", str(tmp_path / "out")]) == 0  # seed 0, without --ray
    capsys.readouterr()
    assert main(base + ["--seeds", "2", "--out", str(tmp_path / "out"), "--resume", *RAY]) == 0
    assert "resumed 1 of 2 seeds of filter_bubble" in capsys.readouterr().err
    a, b = (json.loads((tmp_path / d / "filter_bubble" / "result.json").read_text()) for d in ("ref", "out"))
    assert dumps(b["recommenders"]) == dumps(a["recommenders"])
    assert b["info"]["distributed"]["resumed"] == ["filter_bubble/seed0"]
    assert [u["key"] for u in b["info"]["distributed"]["units"]] == ["filter_bubble/seed1"]


# -- without Ray ------------------------------------------------------------------------------------------
def test_run_grid_journal_on_the_local_executor(tmp_path):
    """The journal path of run_grid, whatever the executor: a journal of compare() resumed by run_grid, its
    logs merged from where compare() wrote them; and run_grid's own journal resumed."""
    from simrec.evaluation import compare as cmp

    grid = {"episodes": 6, "overrides": {"max_steps": 5}, "fit_episodes": 20, "progress": False}
    recs = ["random", "popular"]
    fp = {"--env": ENV, "test": "local"}
    ref = run_grid(ENV, recs, seeds=[0, 1], out=tmp_path / "ref", executor="local",
                   journal=Journal(tmp_path / "ref" / "journal", fp, resume=False, command="compare"), **grid)
    # seed 0 by compare() itself (one log per run under out/, its journal in out/journal)
    j = Journal(tmp_path / "out" / "journal", fp, resume=False, command="compare")
    cmp.compare(ENV, recs, seeds=[0], out=tmp_path / "out", journal=j, **grid)
    lines: list[str] = []
    res = run_grid(ENV, recs, seeds=[0, 1], out=tmp_path / "out", executor="local", overwrite=True, log=lines.append,
                   journal=Journal(tmp_path / "out" / "journal", fp, resume=True, command="compare"), **grid)
    assert lines == [f"resumed 2 of 4 units from {tmp_path / 'out' / 'journal'}; running 2"]
    assert res.info["distributed"]["resumed"] == ["random/seed0", "popular/seed0"]
    assert dumps(res.runs) == dumps(ref.runs) and dumps(res.users) == dumps(ref.users)
    assert verify_log(tmp_path / "out").digest == verify_log(tmp_path / "ref").digest
    assert (tmp_path / "out" / "popular" / "seed1" / "manifest.json").is_file()  # kept for the next resume
    # everything journaled: nothing runs; a journaled run whose log is gone runs again
    import shutil

    shutil.rmtree(tmp_path / "out" / "random" / "seed1")
    lines.clear()
    again = run_grid(ENV, recs, seeds=[0, 1], out=tmp_path / "out", executor="local", overwrite=True,
                     log=lines.append,
                     journal=Journal(tmp_path / "out" / "journal", fp, resume=True, command="compare"), **grid)
    assert [u["key"] for u in again.info["distributed"]["units"]] == ["random/seed1"]
    assert "random/seed1: journaled, but its log" in lines[0] and "resumed 3 of 4" in lines[1]
    assert dumps(again.runs) == dumps(ref.runs)
    assert verify_log(tmp_path / "out").digest == verify_log(tmp_path / "ref").digest
    # --ci users works on the grid's result (it carries every run's per-user sums)
    assert set(again.user_intervals(["ctr"])) == set(recs)


def test_cli_resume_with_ray_needs_out(capsys):
    from simrec.cli import main

    assert main(CMP + RAY + ["--resume"]) == 2
    assert "--resume reuses the runs journaled in --out DIR" in capsys.readouterr().err
