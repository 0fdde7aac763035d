"""The fidelity harness: metric definitions, the protocols (checked with fake backends whose right
answers are known), the embedded and LLM backends through the same harness, and the CLI.

Structure tests use a small generic log written here; the comparison with baselines uses the first 150
users of MovieLens-100K (skipped when ../shared/datasets/ml-100k is absent).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llm_servers import fake_server  # noqa: F401,F811  (fixture)
from simrec.data.calibration import CalibratedWorld, MovieLensWorldConfig, build_calibrated_world
from simrec.cognition.base import JudgeBatch, ResponseBatch
from simrec.data.fidelity import (
    TABLE_METRICS,
    FidelityConfig,
    build_eval_set,
    classification_metrics,
    judge_pages,
    ks_distance,
    llm_factory,
    run_fidelity,
    spearman,
    star_histogram,
    total_variation,
)
from simrec.envs.spec import EnvSpec

ML100K = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-100k"
QUICK = {"watch_iters": 40, "rating_iters": 4, "choice_factors": 8}


def generic_log(d: Path, n_users: int = 40, n_items: int = 60, seed: int = 0) -> Path:
    """A small rating log from a low-rank model, in the generic CSV format."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    U, V = rng.normal(size=(n_users, 3)), rng.normal(size=(n_items, 3))
    rows, t = ["user,item,rating,timestamp"], 0
    for u in range(n_users):
        score = U[u] @ V.T
        for i in rng.choice(n_items, size=15, replace=False, p=np.exp(score) / np.exp(score).sum()):
            t += int(rng.integers(1, 5000))
            rows.append(f"p{u},it{i},{int(np.clip(np.rint(3 + score[i] + rng.normal(0, 0.7)), 1, 5))},{t}")
    (d / "interactions.csv").write_text("\n".join(rows) + "\n")
    items = "".join(f"it{i},Item {i},{'ab'[i % 2]}\n" for i in range(n_items))
    (d / "items.csv").write_text("id,title,genres\n" + items)
    return d


def spec_for(data_dir: Path) -> EnvSpec:
    return EnvSpec.builtin("movielens-v0").with_overrides(world={"data_dir": str(data_dir), "calibration": QUICK})


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[EnvSpec, dict[int, CalibratedWorld]]:
    d = generic_log(tmp_path_factory.mktemp("generic"))
    sp = spec_for(d)
    settings = MovieLensWorldConfig(data_dir=str(d), calibration=QUICK)
    return sp, {s: build_calibrated_world(settings, seed=s, choice=sp.choice) for s in (0, 1)}


# -- metric definitions -----------------------------------------------------------------------------


def test_spearman_ks_tv_histogram():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    ra, rb = np.array([0.5, 0.5, 2.0]), np.array([0.0, 1.0, 2.0])  # average ranks for the tie
    assert spearman([7, 7, 9], [1, 2, 3]) == pytest.approx(np.corrcoef(ra, rb)[0, 1])
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert ks_distance([1, 2, 3], [1, 2, 3]) == 0.0
    assert ks_distance([1, 2], [5, 6]) == 1.0
    assert ks_distance([1, 2, 3], [2, 3, 4]) == pytest.approx(1 / 3)
    assert star_histogram(np.array([1, 1, 5, np.nan, 4.6])).tolist() == [0.5, 0, 0, 0, 0.5]
    assert total_variation([0.5, 0.5, 0, 0, 0], [0, 0.5, 0.5, 0, 0]) == pytest.approx(0.5)


def test_classification_metrics_are_averaged_over_users():
    user = np.array([0, 0, 0, 0, 1, 1])
    label = np.array([1, 1, 0, 0, 1, 0])
    pred = np.array([1, 0, 1, 0, 0, 0])
    m = classification_metrics(user, label, pred, 2)
    # user 0: tp=1 fp=1 fn=1 tn=1 -> acc .5 prec .5 rec .5 f1 .5; user 1: tn=1 fn=1 -> acc .5, prec 0, rec 0, f1 0
    assert m == pytest.approx({"acc": 0.5, "prec": 0.25, "rec": 0.25, "f1": 0.25})


class Recorder:
    """Judges item parity; records every page it is shown."""

    name = "recorder"

    def __init__(self):
        self.pages: list[tuple[np.ndarray, np.ndarray]] = []

    def judge(self, pop, users, items, rng):
        self.pages.append((users.copy(), items.copy()))
        return JudgeBatch(items % 2 == 0, (items % 5 + 1).astype(np.float32), np.zeros(users.size, np.int8))


def test_judge_pages_keeps_rows_aligned_and_pages_per_user():
    rng = np.random.default_rng(0)
    user = np.repeat(np.arange(5), [3, 12, 1, 7, 10])
    item = rng.permutation(1000)[: user.size]
    rec = Recorder()
    out = judge_pages(rec, None, user, item, 4, rng)
    assert np.array_equal(out["watch"], item % 2 == 0) and np.array_equal(out["rating"], item % 5 + 1)
    assert np.array_equal(out["rating_sample"], out["rating"])  # no sample in meta: the stated rating
    shown = []
    for users, items in rec.pages:
        assert items.shape[1] <= 4
        for u, row in zip(users, items):
            assert set(row) <= set(item[user == u])  # one user's items per page
            shown += list(row)
    assert sorted(shown) == sorted(item.tolist())  # every item judged exactly once


# -- the protocols, checked with backends whose answers are known -----------------------------------


class FakeUser:
    """A protocol-complete backend: ``watch`` decides from (population user, item); ratings from ``rate``."""

    name = "fake"

    def __init__(self, watch, rate):
        self.watch, self.rate = watch, rate

    def judge(self, pop, users, items, rng):
        w = np.array([[self.watch(int(u), int(i)) for i in row] for u, row in zip(users, items)], bool)
        r = np.array([[self.rate(int(u), int(i)) for i in row] for u, row in zip(users, items)], np.float32)
        return JudgeBatch(w, r, np.zeros(users.size, np.int8))

    def decide(self, pop, users, slates, rng):
        resp = ResponseBatch.empty(*slates.shape)
        for b, (u, row) in enumerate(zip(users, slates)):
            for k, i in enumerate(row):
                if self.watch(int(u), int(i)):
                    resp.clicked[b, k] = True
                    resp.rating[b, k] = self.rate(int(u), int(i))
                    resp.consumption[b, k] = 1.0
                    break
        resp.leave[:] = rng.random(len(users)) < 0.3
        return resp.validate(*slates.shape)

    def end_session(self, pop, users):
        return None

    def stats(self):
        return {}

    def close(self):
        return None


def _truth(world: CalibratedWorld) -> dict[tuple[int, int], float]:
    to_pop = {int(lu): p for p, lu in enumerate(world.user_index)}
    t = world.split.test
    return {(to_pop[int(u)], int(i)): float(r) for u, i, r in zip(t.user, t.item, t.rating)}


def test_an_oracle_scores_perfectly_and_a_refuser_at_chance(small):
    sp, worlds = small
    truth = _truth(worlds[0])
    oracle = FakeUser(lambda u, i: (u, i) in truth, lambda u, i: truth.get((u, i), 1.0))
    never = FakeUser(lambda u, i: False, lambda u, i: 3.0)
    cfg = FidelityConfig(seeds=[0], ratios=[1, 3], simulate=True, sessions_per_user=2)
    res = run_fidelity(sp, {"oracle": lambda s: oracle, "never": lambda s: never}, cfg, worlds=worlds)
    o, n = res.values["oracle"], res.values["never"]
    for r in (1, 3):
        assert o[f"acc@1:{r}"] == [1.0] and o[f"f1@1:{r}"] == [1.0]
        assert n[f"rec@1:{r}"] == [0.0] and n[f"f1@1:{r}"] == [0.0]
    assert n["acc@1:1"][0] == pytest.approx(0.5) and n["acc@1:3"][0] == pytest.approx(0.75)
    assert o["rmse"] == [0.0] and o["mae"] == [0.0] and o["tv"] == [0.0]
    assert o["pop_spearman"][0] > 0.3  # the oracle clicks exactly the held-out items it is shown
    assert np.isnan(n["pop_spearman"][0])  # nothing clicked: no ranking at all


def test_eval_set_positives_and_negatives(small):
    _, worlds = small
    w = worlds[0]
    ev = build_eval_set(w, FidelityConfig(ratios=[1, 3]), np.random.default_rng(0))
    truth = _truth(w)
    assert set(zip(ev.pos_user.tolist(), ev.pos_item.tolist())) == set(truth)
    for ratio in (1, 3):
        nu_, ni_ = ev.negatives[ratio]
        observed = np.zeros((len(w.user_index), len(w.catalog)), dtype=bool)  # the same pairs, as a matrix
        observed[ev.observed.keys // len(w.catalog), ev.observed.keys % len(w.catalog)] = True
        assert not observed[nu_, ni_].any()  # never an item the user has in train or test
        assert not ev.observed.contains(nu_, ni_).any()
        assert len(set(zip(nu_.tolist(), ni_.tolist()))) == nu_.size  # distinct per user
        n_pos = np.bincount(ev.pos_user, minlength=observed.shape[0])
        n_neg = np.bincount(nu_, minlength=observed.shape[0])
        free = (~observed).sum(axis=1)
        assert np.array_equal(n_neg, np.minimum(ratio * n_pos, free) * (n_pos > 0))
    capped = build_eval_set(w, FidelityConfig(max_users=5, max_positives=2), np.random.default_rng(0))
    assert capped.users.size == 5 and np.bincount(capped.pos_user).max() <= 2


# -- the real backends -------------------------------------------------------------------------------


def test_embedded_results_shape_and_json(small):
    sp, worlds = small
    res = run_fidelity(sp, None, FidelityConfig(seeds=[0, 1], sessions_per_user=2), worlds=worlds)
    summ = res.summary()
    assert {"embedded", "popularity", "global mean", "item mean", "user mean", "train history"} <= set(summ)
    for m in TABLE_METRICS:
        s = summ["embedded"][m]
        assert len(s["values"]) == 2 and s["mean"] == pytest.approx(np.mean(s["values"]))
        assert s["std"] == pytest.approx(np.std(s["values"]))
    assert 0 <= summ["embedded"]["tv"]["mean"] <= 1 and summ["embedded"]["fallback_rate"]["mean"] == 0
    d = json.loads(json.dumps(res.to_dict()))
    assert d["metrics"] == list(TABLE_METRICS) and d["seeds"] == [0, 1]
    table = res.markdown()
    assert table.splitlines()[0].startswith("| system | acc@1:1 ↑") and "| popularity |" in table


@pytest.mark.data
def test_embedded_beats_the_baselines_on_movielens(tmp_path):
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"MovieLens-100K not found at ../shared/datasets/ml-100k ({ML100K})")
    d = tmp_path / "ml"
    d.mkdir()
    for f in ("u.item", "u.user", "u.genre"):
        (d / f).write_bytes((ML100K / f).read_bytes())
    lines = [ln for ln in (ML100K / "u.data").read_text(encoding="latin-1").splitlines()
             if int(ln.split("\t")[0]) <= 200]
    (d / "u.data").write_text("\n".join(lines) + "\n", encoding="latin-1")
    res = run_fidelity(spec_for(d), None, FidelityConfig(seeds=[0], sessions_per_user=3)).summary()
    emb = res["embedded"]
    assert emb["acc@1:1"]["mean"] > res["popularity"]["acc@1:1"]["mean"] + 0.03
    assert emb["rmse"]["mean"] < res["global mean"]["rmse"]["mean"]
    assert emb["tv"]["mean"] < 0.1 and emb["pop_spearman"]["mean"] > 0.5


def test_llm_backend_through_the_same_harness(small, fake_server):
    sp, worlds = small
    srv = fake_server()
    factory = llm_factory({"base_url": srv.base_url, "model": "fake-model", "api_key": "x", "max_retries": 0})
    cfg = FidelityConfig(seeds=[0], ratios=[1], max_users=3, max_positives=2, sessions_per_user=1)
    res = run_fidelity(sp, {"llm": factory}, cfg, baselines=False, worlds=worlds)
    row = res.summary()["llm"]
    assert set(TABLE_METRICS) - {"acc@1:3", "f1@1:3", "acc@1:9", "f1@1:9"} <= set(row)
    assert 0 <= row["acc@1:1"]["mean"] <= 1 and row["fallback_rate"]["mean"] < 1
    assert srv.counts["requests"] > 0 and res.info["backend_stats"]["llm"][0]["judge_calls"] > 0


# -- command line ------------------------------------------------------------------------------------


def test_cli_writes_json_with_the_table_metrics(tmp_path, capsys):
    from simrec.cli import main

    d = generic_log(tmp_path / "g")
    out = tmp_path / "res" / "fidelity.json"
    code = main(["fidelity", "--data", str(d), "--seeds", "2", "--json", str(out), "--sessions-per-user", "1",
                 "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| embedded |" in printed and "acc@1:1" in printed
    d = json.loads(out.read_text())
    r = d["results"]["embedded"]
    for m in TABLE_METRICS:
        assert set(r[m]) == {"mean", "std", "values"} and len(r[m]["values"]) == 2
    assert d["info"]["world"]["data_dir"] == str(tmp_path / "g")


def test_cli_missing_data_is_a_clear_error(tmp_path, capsys):
    from simrec.cli import main

    assert main(["fidelity", "--data", str(tmp_path / "missing"), "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and str(tmp_path / "missing") in err and "Fix:" in err
