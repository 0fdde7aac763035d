"""On-disk cache of calibrated worlds: a hit gives the very same world without calibrating, any change
to an input misses, a damaged entry is recalibrated, and test rows never enter the key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simrec.data import calibration
from simrec.data.calibration import MovieLensWorldConfig, WorldCache, build_calibrated_world, default_cache_dir
from simrec.catalog import Catalog

from test_calibration import QUICK, _assert_same_world, _generic_log


def _settings(data: Path, cache_dir: Path, **extra) -> MovieLensWorldConfig:
    fields = {"data_dir": str(data), "variant": "generic", "calibration": QUICK, "cache_dir": str(cache_dir), **extra}
    return MovieLensWorldConfig(**fields)


@pytest.fixture
def data(tmp_path) -> Path:
    return _generic_log(tmp_path / "log", n_users=50, n_items=320)  # _assert_same_world: users < 43, items < 301


def _forbid_calibration(monkeypatch) -> None:
    def fail(*a, **k):
        raise AssertionError("calibrate() ran although the cache holds this world")

    monkeypatch.setattr(calibration, "calibrate", fail)


def test_a_hit_returns_the_same_world_without_calibrating(tmp_path, data, monkeypatch):
    first = build_calibrated_world(_settings(data, tmp_path / "c"), seed=0)
    assert first.report["cache"] == "stored"
    assert (tmp_path / "c" / "worlds" / first.report["cache_key"] / "catalog.json").is_file()
    _forbid_calibration(monkeypatch)
    again = build_calibrated_world(_settings(data, tmp_path / "c"), seed=0)
    assert again.report["cache"] == "hit"
    _assert_same_world(first, again)
    assert np.array_equal(first.user_index, again.user_index)
    assert again.report["validation_logit_shift"] == first.report["validation_logit_shift"]


@pytest.mark.parametrize("change", ["seed", "calibration", "choice", "train row"])
def test_any_changed_input_misses(tmp_path, data, change):
    base = build_calibrated_world(_settings(data, tmp_path / "c"), seed=0)
    if change == "seed":
        w = build_calibrated_world(_settings(data, tmp_path / "c"), seed=1)
    elif change == "calibration":
        w = build_calibrated_world(_settings(data, tmp_path / "c", calibration={**QUICK, "rating_reg": 0.3}), seed=0)
    elif change == "choice":
        w = build_calibrated_world(_settings(data, tmp_path / "c", choice={"affinity": 6.0, "rating_dims": 8}), seed=0)
    else:  # the first (train) interaction gets another rating
        f = data / "interactions.csv"
        lines = f.read_text().splitlines()
        u, i, r, t = lines[1].split(",")
        lines[1] = f"{u},{i},{1 if int(r) > 3 else 5},{t}"
        f.write_text("\n".join(lines) + "\n")
        w = build_calibrated_world(_settings(data, tmp_path / "c"), seed=0)
    assert w.report["cache"] == "stored" and w.report["cache_key"] != base.report["cache_key"]


def test_test_rows_do_not_enter_the_key(tmp_path, data):
    """Only the train split is fingerprinted: editing the last (test) interaction of a user keeps the key."""
    base = build_calibrated_world(_settings(data, tmp_path / "c"), seed=0)
    f = data / "interactions.csv"
    lines = f.read_text().splitlines()
    last = max(k for k, ln in enumerate(lines[1:], 1) if ln.startswith("p0,"))  # p0's latest row: in the test split
    u, i, r, t = lines[last].split(",")
    lines[last] = f"{u},{i},{1 if int(r) > 3 else 5},{t}"
    f.write_text("\n".join(lines) + "\n")
    w = build_calibrated_world(_settings(data, tmp_path / "c"), seed=0)
    assert w.report["cache"] == "hit" and w.report["cache_key"] == base.report["cache_key"]
    assert not np.array_equal(w.split.test.rating, base.split.test.rating)  # the edit did reach the test split


def test_a_damaged_entry_is_recalibrated(tmp_path, data):
    first = build_calibrated_world(_settings(data, tmp_path / "c"), seed=0)
    entry = tmp_path / "c" / "worlds" / first.report["cache_key"]
    (entry / "personas.json").write_text('{"name": "x", "personas": [{"id": 3}]}')
    with pytest.warns(RuntimeWarning, match="unreadable"):
        again = build_calibrated_world(_settings(data, tmp_path / "c"), seed=0)
    assert again.report["cache"] == "stored"
    _assert_same_world(first, again)
    assert json.loads((entry / "meta.json").read_text())["key"] == first.report["cache_key"]


def test_cache_can_be_switched_off(tmp_path, data, monkeypatch):
    w = build_calibrated_world(_settings(data, tmp_path / "c", cache=False), seed=0)
    assert "cache" not in w.report and not (tmp_path / "c").exists()
    monkeypatch.setenv("SIMREC_CACHE_DIR", "off")
    assert default_cache_dir() is None
    monkeypatch.setenv("SIMREC_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("SIMREC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "simrec"


def test_saved_calibrated_catalog_loads_unchanged(tmp_path, data):
    """Calibrated features are not unit vectors; Catalog.save marks its files so loading keeps them."""
    w = build_calibrated_world(_settings(data, tmp_path / "c", cache=False), seed=0)
    assert not np.allclose(np.linalg.norm(w.catalog.features, axis=1), 1.0)
    w.catalog.save(tmp_path / "cat.json")
    assert np.array_equal(Catalog.load(tmp_path / "cat.json").features, w.catalog.features)


def test_clear(tmp_path, data):
    build_calibrated_world(_settings(data, tmp_path / "c"), seed=0)
    build_calibrated_world(_settings(data, tmp_path / "c"), seed=1)
    assert WorldCache(tmp_path / "c").clear() == 2
    assert not (tmp_path / "c" / "worlds").exists()


def test_cache_command_lists_and_clears(tmp_path, data, capsys):
    from simrec.cli import main

    w = build_calibrated_world(_settings(data, tmp_path / "c"), seed=0)
    assert main(["cache", "--dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "1 calibrated world(s)" in out and w.report["cache_key"] in out and "50 users" in out
    assert main(["cache", "--dir", str(tmp_path / "c"), "--clear"]) == 0
    assert "removed 1 calibrated world(s)" in capsys.readouterr().out
    assert main(["cache", "--dir", str(tmp_path / "c")]) == 0
    assert "0 calibrated world(s)" in capsys.readouterr().out


def test_concurrent_writers_leave_one_complete_entry(tmp_path, data):
    """Vector-env workers may calibrate the same world at once: every writer succeeds, one entry remains."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as ex:
        worlds = list(ex.map(lambda _: build_calibrated_world(_settings(data, tmp_path / "c"), seed=0), range(3)))
    store = WorldCache(tmp_path / "c")
    assert [p.name for p in store.entries()] == [worlds[0].report["cache_key"]]
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # no temporary directories left
    for w in worlds[1:]:
        _assert_same_world(worlds[0], w)
    assert build_calibrated_world(_settings(data, tmp_path / "c"), seed=0).report["cache"] == "hit"
