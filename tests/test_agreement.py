"""``simrec agreement`` end to end on a small slice of ML-100K (skipped where ../shared lacks it)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_calibration import QUICK, write_subset

from simrec.evaluation.agreement import OFFLINE, SIMULATED, agreement

RECS = ("random-unseen", "mostpop", "itemknn", "bad")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    data = write_subset(tmp_path_factory.mktemp("ml100k-agreement"), n_users=200)
    return agreement(data, RECS, seeds=(0,), users=60, max_steps=4, progress=False,
                     world={"calibration": QUICK, "cache": False})


def test_both_metric_sets_per_recommender_and_the_interval_in_the_json(result):
    d = json.loads(json.dumps(result.to_dict(), default=float))
    assert set(d["recommenders"]) == set(RECS)
    for r in d["recommenders"].values():
        assert set(r["offline"]) == set(OFFLINE) and set(r["simulated"]) == set(SIMULATED)
        assert all({"mean", "ci_low", "ci_high"} <= set(v) for v in (*r["offline"].values(), *r["simulated"].values()))
    assert -1.0 <= d["ci_low"] <= d["kendall_tau_b"] <= d["ci_high"] <= 1.0
    assert d["info"]["env"] == "simrec/MovieLensSeq-v1" and len(d["pairs"]) == len(OFFLINE) * len(SIMULATED)


def test_controls_bracket_the_order_offline_and_in_simulation(result):
    off = dict(zip(result.names, result.means("offline", "ndcg@10")[0]))
    sim = dict(zip(result.names, result.means("simulated", "ctr")[0]))
    # the bad control (the lowest-scored candidates of the best model) is last both ways; popularity beats random
    assert off["bad"] < off["random-unseen"] < off["mostpop"]
    assert sim["bad"] == min(sim.values()) and sim["mostpop"] > sim["random-unseen"]
    assert np.isfinite(result.agreement()["kendall_tau_b"])
