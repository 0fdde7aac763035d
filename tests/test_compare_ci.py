"""``simrec compare --ci users``: a bootstrap over users within seeds for the per-session metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from simrec.cli import main
from simrec.errors import ConfigError
from simrec.evaluation.compare import (
    METRICS,
    USER_RATIOS,
    CompareResult,
    compare,
    make_env,
    record_run,
    run_metrics,
    user_schedule,
    user_stats,
)
from simrec.evaluation.stats import bootstrap_ratio, resample_counts
from simrec.recommenders import make_recommender
from test_resume import snapshot

SMALL = {"overrides": {"max_steps": 15}, "fit_episodes": 40, "progress": False}


def clicks_and_shown(n_users: int, seeds: int = 3, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-user clicks and shown items, users differing in CTR (0.05..0.3) and in how much they saw."""
    rng = np.random.default_rng(seed)
    num, den = [], []
    for _ in range(seeds):
        shown = rng.integers(20, 200, size=n_users).astype(float)
        num.append(rng.binomial(shown.astype(int), rng.uniform(0.05, 0.3, size=n_users)).astype(float))
        den.append(shown)
    return num, den


# -- the statistic -------------------------------------------------------------------------------------
def test_bootstrap_interval_holds_the_estimate_and_narrows_with_more_users() -> None:
    widths = []
    for n in (40, 400, 4000):
        num, den = clicks_and_shown(n)
        est, lo, hi = bootstrap_ratio(num, den, replicates=1000, seed=0)
        assert est == pytest.approx(np.mean([x.sum() / y.sum() for x, y in zip(num, den)]))
        assert lo < est < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2 and widths[2] < widths[1] / 2  # about 1 / sqrt(10) each time


def test_bootstrap_is_reproducible_with_its_seed_and_shares_resamples() -> None:
    num, den = clicks_and_shown(60)
    a = bootstrap_ratio(num, den, replicates=500, seed=4)
    assert bootstrap_ratio(num, den, replicates=500, seed=4) == a
    assert bootstrap_ratio(num, den, replicates=500, seed=5) != a
    # given counts are the resamples: the same counts give the same interval, the default seeds [seed, s]
    counts = [resample_counts(60, 500, [4, s]) for s in range(3)]
    assert bootstrap_ratio(num, den, counts=counts) == a
    assert all(c.sum(axis=1).tolist() == [60] * 500 for c in counts)


def test_bootstrap_edge_cases() -> None:
    assert all(math.isnan(v) for v in bootstrap_ratio([np.zeros(3)], [np.zeros(3)]))  # nothing rated
    est, lo, hi = bootstrap_ratio([np.ones(5)], [np.full(5, 2.0)])  # every user alike: a point
    assert est == lo == hi == 0.5
    with pytest.raises(ValueError, match="one length"):
        bootstrap_ratio([np.ones(3)], [np.ones(4)])
    with pytest.raises(ValueError, match="replicates"):
        resample_counts(3, 0, 0)


# -- compare ---------------------------------------------------------------------------------------------
def test_user_sums_reproduce_the_run_metrics() -> None:
    env = make_env("simrec/Synthetic-v0", {"max_steps": 15})
    users = user_schedule(env, 1, 25)
    traj = record_run(env, make_recommender("linucb", env.action_space, seed=1), 1, users, name="linucb")
    m, st = run_metrics(traj, env), user_stats(traj, env.sim_spec.dynamics.satisfaction.return_weight)
    assert st["user"] == sorted(set(users)) and sum(st["sessions"]) == 25
    for metric, (a, b) in USER_RATIOS.items():
        assert sum(st[a]) / sum(st[b]) == pytest.approx(m[metric], rel=1e-6), metric


@pytest.fixture(scope="module")
def two_sizes() -> tuple[CompareResult, CompareResult]:
    names = ["random", "linucb", "ease"]
    return (compare("simrec/Synthetic-v0", names, seeds=[0, 1], episodes=12, ci="users", **SMALL),
            compare("simrec/Synthetic-v0", names, seeds=[0, 1], episodes=96, ci="users", **SMALL))


def test_compare_user_intervals(two_sizes: tuple[CompareResult, CompareResult]) -> None:
    small, large = two_sizes
    agg = large.aggregate()
    seeds = CompareResult(large.runs, large.seeds, users=large.users).aggregate()
    for name, cells in agg.items():
        for m in METRICS:
            c = cells[m]
            assert c["mean"] == seeds[name][m]["mean"] and c["values"] == seeds[name][m]["values"]
            if m in USER_RATIOS:
                assert c["ci"] == "users" and c["ci_low"] < c["mean"] < c["ci_high"], (name, m)
                assert c["ci_low"] != seeds[name][m]["ci_low"]
            else:  # run-level metrics keep the t interval over seeds
                assert c["ci"] == "seeds" and c["ci_low"] == seeds[name][m]["ci_low"]
    for name in agg:  # eight times the users: a narrower interval for every per-session metric
        for m in ("ctr", "clicks_per_step", "mean_rating"):
            lo, hi = (r.aggregate()[name][m]["ci_high"] - r.aggregate()[name][m]["ci_low"] for r in (large, small))
            assert lo < hi / 1.5, (name, m)


def test_compare_user_intervals_are_seeded_and_paired(two_sizes: tuple[CompareResult, CompareResult]) -> None:
    _, res = two_sizes
    again = CompareResult(res.runs, res.seeds, users=res.users, ci="users")
    assert again.user_intervals() == res.user_intervals()
    other = CompareResult(res.runs, res.seeds, users=res.users, ci="users", bootstrap_seed=1)
    assert other.user_intervals() != res.user_intervals()
    # one set of resamples per seed serves every recommender: a copy of a row gets the same interval
    twin = CompareResult({**res.runs, "copy": res.runs["ease"]}, res.seeds,
                         users={**res.users, "copy": res.users["ease"]}, ci="users")
    iv = twin.user_intervals()
    assert iv["copy"] == iv["ease"] == res.user_intervals()["ease"]


def test_compare_refuses_unknown_intervals_and_runs_without_user_sums() -> None:
    with pytest.raises(ConfigError, match="--ci seeds"):
        compare("simrec/Synthetic-v0", ["random"], seeds=[0], episodes=1, ci="sessions", **SMALL)
    res = CompareResult({"random": [{"ctr": 0.1}]}, [0], users={"random": [None]}, ci="users")
    with pytest.raises(ConfigError, match="Fix: rerun them without --resume, or use --ci seeds"):
        res.aggregate()


def test_cli_records_the_interval_and_resumes_into_user_intervals(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    base = ["compare", "--recommenders", "random,popular", "--seeds", "2", "--episodes", "10", "--max-steps", "10",
            "--no-progress"]
    assert main(base + ["--json", str(tmp_path / "seeds.json"), "--out", str(tmp_path / "out")]) == 0
    assert "over seeds (t)" in capsys.readouterr().err
    seeds = json.loads((tmp_path / "seeds.json").read_text())
    assert seeds["ci"]["method"] == "seeds" and seeds["recommenders"]["random"]["ctr"]["ci"] == "seeds"
    users = base + ["--ci", "users", "--replicates", "300", "--bootstrap-seed", "7"]
    assert main(users + ["--json", str(tmp_path / "users.json")]) == 0
    assert "bootstrap over users within seeds (B=300, seed 7)" in capsys.readouterr().err
    fresh = json.loads((tmp_path / "users.json").read_text())
    assert fresh["ci"] == {**fresh["ci"], "method": "users", "replicates": 300, "seed": 7}
    assert fresh["recommenders"]["random"]["ctr"]["ci"] == "users"
    assert fresh["recommenders"]["random"]["novelty"]["ci"] == "seeds"
    # the journal of the --ci seeds run keeps every run's per-user sums: a resume runs nothing again
    before = snapshot(tmp_path / "out")
    assert main(users + ["--json", str(tmp_path / "resumed.json"), "--out", str(tmp_path / "out"), "--resume"]) == 0
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert json.dumps(resumed["recommenders"], sort_keys=True) == json.dumps(fresh["recommenders"], sort_keys=True)
    assert snapshot(tmp_path / "out") == before
