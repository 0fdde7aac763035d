"""The preference-shift stress test: the shift happens to the same users for every recommender and hurts
recommenders that rank from the user's recent history."""

from __future__ import annotations

import json
import math

import numpy as np

from simrec.stress import StressConfig, get_stress_test
from simrec.stress.preference_shift import recovery_steps


def test_recovery_steps() -> None:
    ctr = np.r_[np.full(100, 0.2), np.full(50, 0.05), np.full(200, 0.2)]
    assert recovery_steps(ctr, 100, 0.199, window=20) == 50  # the first all-recovered window starts at 50
    assert recovery_steps(ctr, 100, 0.18, window=20) == 48  # two low steps of 20 still average 0.185
    assert recovery_steps(np.full(300, 0.2), 100, 0.18, window=20) == 0
    assert math.isinf(recovery_steps(np.r_[np.full(100, 0.2), np.full(200, 0.05)], 100, 0.18, window=20))


def test_shift_hurts_history_based_recommenders_more_than_random(tmp_path) -> None:
    res = get_stress_test("preference_shift")(StressConfig(seeds=[0, 1, 2], recommenders=["random", "greedy"],
                                                          out=tmp_path, progress=False)).run()
    agg = res.aggregate()
    for rec in ("random", "greedy"):
        assert 0 < agg[rec]["pre_ctr"]["mean"] < 1 and 0 < agg[rec]["post_ctr"]["mean"] < 1
    # measured: greedy drops 0.12 of its pre-shift CTR, random -0.02 (it never knew the old taste)
    assert agg["greedy"]["drop"]["mean"] > agg["random"]["drop"]["mean"] + 0.05
    assert agg["greedy"]["pre_ctr"]["mean"] > agg["random"]["pre_ctr"]["mean"]
    saved = json.loads((tmp_path / "result.json").read_text())
    assert set(saved["recommenders"]) == {"random", "greedy"} and (tmp_path / "table.md").exists()
    assert list(tmp_path.glob("*.png"))
