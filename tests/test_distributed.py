"""simrec.distributed: grids, seeds and population shards over a local Ray runtime (2 CPUs).

A 2-worker compare grid gives the metrics of ``compare()`` and, unit for unit, the same trajectory logs
(same digests), merged episode for episode like a single-process run; a worker killed mid-grid is re-run
by Ray and the merged log still holds every episode exactly once; stress and fidelity seeds and population
shards give the same results on any number of workers; the merge is verifiable. Tests that need no Ray
(the merge itself, the local executor) also run without it; the others skip.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from simrec.distributed import (
    DistributedError,
    PopulationConfig,
    UnitLog,
    log_digest,
    merge_logs,
    rollout_population,
    run_fidelity_seeds,
    run_grid,
    run_stress,
    unit_keys,
    verify_log,
)
from llm_servers import fake_server  # noqa: F401,F811  (fixture)
from simrec.trajectory import committed_parts, read_trajectories

ENV = "simrec/Synthetic-v0"
RECS = ["random", "popular", "linucb", "ease"]
GRID = {"seeds": [0, 1], "episodes": 8, "overrides": {"max_steps": 6}, "fit_episodes": 30, "progress": False}
WALL_CLOCK = ["started", "ended"]


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray runtime with 2 CPUs, shared by this module's Ray tests."""
    ray = pytest.importorskip("ray")
    cloudpickle = pytest.importorskip("ray.cloudpickle")
    # the kill hook below is defined in this test module, which Ray's workers cannot import: ship it by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The grid run by ``compare()`` itself (one log per run) and by the local executor (one merged log)."""
    from simrec.evaluation.compare import compare

    d = tmp_path_factory.mktemp("reference")
    ref = compare(ENV, RECS, out=d / "compare", **GRID)
    local = run_grid(ENV, RECS, out=d / "local", executor="local", **GRID)
    return ref, local, d


def same(a, b) -> bool:
    """Equal metrics, NaN equal to NaN."""
    return json.dumps(a, sort_keys=True, default=float) == json.dumps(b, sort_keys=True, default=float)


def frames(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    t = read_trajectories(path)
    return t.steps, t.episodes.drop(columns=WALL_CLOCK)


class KillOnce:
    """``on_step`` hook: the first worker to reach step ``after`` of a unit claims ``marker`` and dies
    like a killed process (no cleanup, no exception); later attempts see the marker and carry on."""

    def __init__(self, marker: Path, after: int) -> None:
        self.marker, self.after, self.n = str(marker), after, 0

    def __call__(self, info: dict) -> None:
        self.n += 1
        if self.n != self.after:
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(1)


# -- without Ray ----------------------------------------------------------------------------------------
def test_local_grid_equals_compare_run_for_run(reference):
    ref, local, d = reference
    assert same(local.runs, ref.runs)
    report = verify_log(d / "local")
    assert [u["key"] for u in report.units] == [f"{r}/seed{s}" for s in GRID["seeds"] for r in RECS]
    for u in report.units:  # each unit's rows are exactly those compare() logged for that run
        assert u["digest"] == log_digest(d / "compare" / u["recommender"] / f"seed{u['seed']}")
    traj = read_trajectories(d / "local")
    assert len(traj.episodes) == len(RECS) * len(GRID["seeds"]) * GRID["episodes"]
    assert unit_keys(traj).tolist() == [u["key"] for u in report.units for _ in range(GRID["episodes"])]
    assert not (d / "local" / ".staging").exists()


def test_merged_log_replays_and_tampering_is_detected(reference, tmp_path):
    from simrec.trajectory import replay

    _, _, d = reference
    traj = read_trajectories(d / "local")
    again = replay(traj)  # every unit starts with reset(seed=...): the merged log is one valid run
    assert np.array_equal(again.steps["reward"], traj.steps["reward"])
    # a changed row in the merged log is found, and named
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(d / "local", bad)
    part = bad / "steps" / "part-000003.parquet"
    tb = pq.read_table(part)
    rewards = tb.column("reward").to_numpy().copy()
    rewards[0] += 1.0
    pq.write_table(tb.set_column(tb.column_names.index("reward"), "reward", [rewards]), part)
    with pytest.raises(DistributedError, match="ease/seed0"):
        verify_log(bad)


def test_merge_refuses_a_changed_unit_log_and_an_unclosed_one(reference, tmp_path):
    _, _, d = reference
    src = d / "compare" / "random" / "seed0"
    with pytest.raises(DistributedError, match="changed after its worker finished"):
        merge_logs([UnitLog("random/seed0", str(src), digest="0" * 64)], tmp_path / "m1")
    m = json.loads((src / "manifest.json").read_text())
    unclosed = tmp_path / "unclosed"
    import shutil

    shutil.copytree(src, unclosed)
    (unclosed / "manifest.json").write_text(json.dumps({**m, "closed": None}))
    with pytest.raises(DistributedError, match="was not closed"):
        merge_logs([UnitLog("random/seed0", str(unclosed))], tmp_path / "m2")
    with pytest.raises(FileExistsError, match="already holds"):
        run_grid(ENV, ["random"], out=d / "local", executor="local", **GRID)


def test_process_pool_gives_the_local_result_and_names_a_failing_unit(tmp_path):
    from simrec.distributed import Executor, ExecutorConfig
    from simrec.errors import ConfigError

    cfg = PopulationConfig(users=300, shard_users=128, num_envs=32, steps_per_user=2, overrides={"max_steps": 4})
    local = rollout_population(cfg, out=tmp_path / "local", executor="local", progress=False)
    with Executor({"kind": "process", "workers": 2}) as ex:  # one pool for both grids
        pooled = rollout_population(cfg, out=tmp_path / "mp", executor=ex, progress=False)
        assert len({u["pid"] for u in pooled.info["distributed"]["units"]} - {os.getpid()}) >= 1
        with pytest.raises(DistributedError, match=r"unit nope/seed0 failed in a worker process: ConfigError"):
            run_grid(ENV, ["nope"], executor=ex, **{**GRID, "seeds": [0]})
    assert pooled.shards == local.shards and pooled.log.digest == local.log.digest
    with pytest.raises(ConfigError, match="executor config"):
        ExecutorConfig.parse("threads")


# -- with Ray ---------------------------------------------------------------------------------------------
def test_two_worker_grid_equals_single_process_run(ray_local, reference, tmp_path):
    ref, _, d = reference
    dist = run_grid(ENV, RECS, out=tmp_path / "ray", executor="ray", workers=2, **GRID)
    assert same(dist.runs, ref.runs)
    info = dist.info["distributed"]
    assert info["executor"] == "ray" and info["workers"] == 2
    assert len({u["pid"] for u in info["units"]}) == 2 and os.getpid() not in {u["pid"] for u in info["units"]}
    # the merged log equals the single-process one episode for episode (wall-clock times aside)
    for a, b in zip(frames(tmp_path / "ray"), frames(d / "local")):
        pd.testing.assert_frame_equal(a, b)
    assert verify_log(tmp_path / "ray").digest == verify_log(d / "local").digest == info["digest"]
    assert info["discarded_attempts"] == []


def test_killed_worker_is_retried_and_every_episode_appears_once(ray_local, reference, tmp_path):
    _, _, d = reference
    marker = tmp_path / "killed"
    # 20 steps in, the unit's first sessions are already committed parts when it dies
    res = run_grid(ENV, RECS, out=tmp_path / "out", executor="ray", workers=2, keep_staging=True,
                   on_step=KillOnce(marker, after=20), **GRID)
    assert marker.is_file(), "no worker was killed: the test did not test anything"
    killed = int(marker.read_text())
    info = res.info["distributed"]
    assert killed not in {u["pid"] for u in info["units"]}  # the dead attempt returned nothing
    dead = [Path(p) for p in info["discarded_attempts"]]
    # its partial log (sessions are at most 6 steps: at least 3 committed) exists, and was not merged
    assert len(dead) == 1 and len(committed_parts(dead[0])) >= 3
    report = verify_log(tmp_path / "out")
    traj = read_trajectories(tmp_path / "out")
    counts = unit_keys(traj).value_counts()
    assert len(counts) == len(RECS) * len(GRID["seeds"]) and (counts == GRID["episodes"]).all()
    assert traj.episodes["episode"].tolist() == list(range(len(traj.episodes)))
    assert report.digest == verify_log(d / "local").digest  # the same episodes as a run nobody killed


def test_failing_unit_names_itself_and_is_not_retried(ray_local, tmp_path):
    with pytest.raises(DistributedError, match=r"unit nope/seed0 failed: ConfigError: unknown recommender"):
        run_grid(ENV, ["random", "nope"], executor="ray", workers=2, **{**GRID, "seeds": [0]})


def test_stress_and_fidelity_seeds_over_ray_equal_sequential(ray_local, tmp_path):
    from simrec.data.fidelity import run_fidelity
    from simrec.stress import run_stress_test

    cfg = {"seeds": [0, 1, 2], "episodes": 10, "overrides": {"max_steps": 8},
           "recommenders": ["random", "popular", "linucb"], "fit_episodes": 20, "progress": False}
    seq = run_stress_test("filter_bubble", cfg)
    dist = run_stress("filter_bubble", {**cfg, "out": tmp_path / "fb"}, executor="ray", workers=2, progress=False)
    assert same(dist.metrics, seq.metrics) and same(dist.curves, seq.curves)
    saved = json.loads((tmp_path / "fb" / "result.json").read_text())
    assert saved["info"]["distributed"]["workers"] == 2 and same(saved["recommenders"], seq.to_dict()["recommenders"])

    spec = fidelity_spec(tmp_path / "log")
    fcfg = {"seeds": [0, 1], "sessions_per_user": 2}
    seq_f = run_fidelity(spec, None, fcfg)
    dist_f = run_fidelity_seeds(spec, None, fcfg, executor="ray", workers=2, progress=False)
    assert same(dist_f.values, seq_f.values) and dist_f.seeds == [0, 1]
    assert len(dist_f.info["timing"]["calibration_s"]) == 2 and set(dist_f.info["eval"]) == {"0", "1"}


def test_fidelity_command_over_ray_writes_what_the_plain_command_writes(ray_local, tmp_path, capsys):
    from simrec.cli import main

    fidelity_spec(tmp_path / "log")
    base = ["fidelity", "--data", str(tmp_path / "log"), "--seeds", "2", "--sessions-per-user", "2", "--no-cache",
            "--no-baselines", "--quiet"]
    assert main(base + ["--json", str(tmp_path / "seq.json")]) == 0
    assert main(base + ["--json", str(tmp_path / "ray.json"), "--ray", "--workers", "2"]) == 0
    seq, dist = (json.loads((tmp_path / f).read_text()) for f in ("seq.json", "ray.json"))
    assert same(dist["results"], seq["results"]) and dist["seeds"] == [0, 1]
    assert dist["info"]["distributed"]["workers"] == 2 and "--ray" in dist["info"]["command"]
    # --ray --resume/--journal: tests/test_distributed_resume.py


def test_population_shards_do_not_depend_on_the_workers(ray_local, tmp_path):
    cfg = PopulationConfig(users=700, shard_users=256, num_envs=64, steps_per_user=3, overrides={"max_steps": 5})
    assert cfg.shards() == [256, 256, 188]
    one = rollout_population(cfg, out=tmp_path / "local", executor="local", progress=False)
    two = rollout_population(cfg, out=tmp_path / "ray", executor="ray", workers=2, progress=False)
    assert one.shards == two.shards and one.user_steps == sum(s["user_steps"] for s in one.shards) > 2000
    assert verify_log(tmp_path / "ray").digest == verify_log(tmp_path / "local").digest == two.log.digest
    traj = read_trajectories(tmp_path / "ray")
    assert traj.manifest["vector"] and len(traj.steps) == one.user_steps
    # user_index is global: shard j's users lie in [offset_j, offset_j + users_j)
    eps = traj.episodes.assign(unit=unit_keys(traj))
    lo = eps.groupby("unit")["user_index"].min().tolist()
    hi = eps.groupby("unit")["user_index"].max().tolist()
    assert lo[1] >= 256 and hi[0] < 256 and lo[2] >= 512 and hi[2] < 700


def test_llm_users_on_an_endpoint_pool_stay_within_each_limit_across_workers(ray_local, fake_server, tmp_path):
    a, b = fake_server(latency_s=0.02), fake_server(latency_s=0.02)
    llm = {"model": "fake", "timeout_s": 5.0, "reflect_every": 0, "reflect_at_session_end": False,
           "endpoints": [{"base_url": a.base_url, "concurrency": 4}, {"base_url": b.base_url, "concurrency": 4}]}
    # 2 workers x 16 concurrent sessions ask for up to 32 requests at once (long enough to overlap: without
    # the split each worker would send each server 4, 8 together); each server allows 4
    cfg = PopulationConfig(users=64, shard_users=32, num_envs=16, steps_per_user=10,
                           overrides={"backend": "llm", "backend_config": llm, "max_steps": 3})
    res = rollout_population(cfg, out=tmp_path / "pop", executor="ray", workers=2, progress=False)
    assert len({u["pid"] for u in res.info["distributed"]["units"]}) == 2
    assert a.max_inflight <= 4 and b.max_inflight <= 4 and a.counts["ok"] > 0 and b.counts["ok"] > 0
    stats = read_trajectories(tmp_path / "pop").manifest["backend_stats"]  # summed over the shards
    assert stats["fallbacks"] == 0 and stats["calls"] == res.user_steps == a.counts["ok"] + b.counts["ok"]
    assert stats["pool_served_0"] == a.counts["ok"] and stats["pool_served_1"] == b.counts["ok"]


def test_split_llm_pools_divides_each_endpoint_among_workers():
    from simrec.distributed.grid import split_llm_pools

    cfg = {"max_steps": 3, "backend_config": {"model": "m", "endpoints": [
        {"base_url": "http://a/v1", "concurrency": 9, "api_key": "sk-a"},
        {"base_url": "http://b/v1", "concurrency": 1}]}}
    out = split_llm_pools(cfg, 4)
    assert [e["concurrency"] for e in out["backend_config"]["endpoints"]] == [2, 1]
    assert out["backend_config"]["endpoints"][0]["api_key"] == "sk-a" and out["max_steps"] == 3
    assert cfg["backend_config"]["endpoints"][0]["concurrency"] == 9  # the caller's config is left alone


def test_cli_compare_with_ray(ray_local, tmp_path, capsys):
    from simrec.cli import main

    out, js = tmp_path / "cmp", tmp_path / "cmp.json"
    rc = main(["compare", "--recommenders", "random,popular", "--seeds", "2", "--episodes", "4", "--max-steps", "5",
               "--fit-episodes", "20", "--out", str(out), "--json", str(js), "--ray", "--workers", "2",
               "--no-progress"])
    assert rc == 0 and "| popular |" in capsys.readouterr().out
    assert verify_log(out).episodes == 16
    assert json.loads(js.read_text())["info"]["distributed"]["workers"] == 2


def test_cli_without_ray_says_how_to_get_it(monkeypatch, capsys):
    from simrec.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    rc = main(["compare", "--recommenders", "random", "--seeds", "1", "--episodes", "2", "--ray", "--no-progress"])
    assert rc == 2 and "pip install" in capsys.readouterr().err


def fidelity_spec(d: Path):
    """A small generic rating log (40 users, 60 items, low rank) and a quick-calibration movielens spec."""
    from simrec.envs.spec import EnvSpec

    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    U, V = rng.normal(size=(40, 3)), rng.normal(size=(60, 3))
    rows, t = ["user,item,rating,timestamp"], 0
    for u in range(40):
        score = U[u] @ V.T
        for i in rng.choice(60, size=15, replace=False, p=np.exp(score) / np.exp(score).sum()):
            t += int(rng.integers(1, 5000))
            rows.append(f"p{u},it{i},{int(np.clip(np.rint(3 + score[i] + rng.normal(0, 0.7)), 1, 5))},{t}")
    (d / "interactions.csv").write_text("\n".join(rows) + "\n")
    (d / "items.csv").write_text("id,title,genres\n" + "".join(f"it{i},Item {i},{'ab'[i % 2]}\n" for i in range(60)))
    return EnvSpec.builtin("movielens-v0").with_overrides(
        world={"data_dir": str(d), "calibration": {"watch_iters": 40, "rating_iters": 4, "choice_factors": 8}})
