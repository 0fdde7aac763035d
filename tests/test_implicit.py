"""Implicit-feedback logs as first-class input: the ratings-to-implicit transform, play counts as
confidence and in persona descriptions, traits that stay meaningful without spread, measures that
stay valid on sparse long-tail catalogs, and no test-split leakage through the generic loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from llm_servers import fake_server  # noqa: F401,F811  (fixture)
from test_calibration import _assert_same_world, need_ml100k

from simrec.cognition.base import SOURCE_FALLBACK
from simrec.cognition.embedded import ChoiceConfig, EmbeddedCognition
from simrec.data.calibration import (
    CalibrationConfig,
    MovieLensWorldConfig,
    _positive_pairs,
    _statistics,
    build_calibrated_world,
    calibrate,
    trait_percentiles,
)
from simrec.data.datasets import load_dataset, split_log
from simrec.data.fidelity import (
    FidelityResult,
    _activity_ks,
    choice_popularity,
    matched_activity_ks,
    popularity_measures,
    spearman,
)
from simrec.data.generic import load_generic, write_generic
from simrec.data.implicit import to_implicit
from simrec.data.log import InteractionLog, ItemTable, UserTable
from simrec.data.synthetic import synthetic_log
from simrec.errors import ConfigError
from simrec.llm.prompting import build_judge_messages
from simrec.llm.sanitize import Sanitizer
from simrec.users.population import Population

QUICK = {"watch_iters": 40, "rating_iters": 4, "choice_factors": 8, "validate_split": False}
TRAITS = ("activity", "conformity", "diversity", "patience", "pickiness")


# -- the transform and the generic format -----------------------------------------------------------


@pytest.mark.data
def test_ml100k_turned_implicit():
    log = load_dataset(need_ml100k())
    imp = to_implicit(log, {"min_rating": 4})
    assert len(imp) == int((log.rating >= 4).sum()) and not imp.has_ratings and not imp.timed
    assert set(np.unique(imp.weight).tolist()) == {4.0, 5.0}  # weights are the stars
    assert np.array_equal(imp.timestamp, np.arange(len(imp)))
    assert not imp.weights_are_counts  # stars are not play counts: never "watched X 5 times"
    with pytest.raises(ConfigError, match="implicit already"):
        to_implicit(imp)


def test_generic_round_trip_keeps_weights_and_words(tmp_path):
    log = synthetic_log("longtail", 4000, seed=3)
    back = load_generic(write_generic(log, tmp_path / "lt"))
    assert len(back) == len(log) and not back.has_ratings and not back.timed
    assert back.weights_are_counts and back.vocabulary.did == "listened to"
    a = sorted(zip(np.array(log.users.ids)[log.user], np.array(log.items.ids)[log.item], log.weight))
    b = sorted(zip(np.array(back.users.ids)[back.user], np.array(back.items.ids)[back.item], back.weight))
    assert a == b


# -- play counts: confidence and words ---------------------------------------------------------------


def test_play_counts_weigh_pairs_and_unit_weights_change_nothing():
    log = synthetic_log("longtail", 3000, seed=1)
    keys, w = _positive_pairs(log, CalibrationConfig())
    plays = pd.Series(log.weight).groupby(log.user.astype(np.int64) * log.n_items + log.item).sum()
    assert np.array_equal(plays.index.to_numpy(), keys)
    assert spearman(w, plays.to_numpy()) > 0.99 and w.mean() == pytest.approx(1.0, abs=1e-5)
    _, flat = _positive_pairs(log, CalibrationConfig(watch_confidence=0))
    assert np.all(flat == 1)
    ones = InteractionLog(log.name, log.user, log.item, log.rating, np.ones(len(log)), log.timestamp, log.items,
                          log.users, timed=False)
    a = calibrate(ones, QUICK)
    b = calibrate(ones, {**QUICK, "watch_confidence": 0.0})
    assert np.array_equal(a.catalog.features, b.catalog.features)


def _persona_part(messages: list[dict[str, str]]) -> str:
    return " ".join(m["content"] for m in messages if m["role"] == "system")


def test_descriptions_and_prompts_say_play_counts_not_stars():
    cal = calibrate(synthetic_log("longtail", 6000, seed=2), QUICK)
    desc = cal.personas.personas[0].description
    assert "listened to" in desc and " times in all" in desc and "Most listened to:" in desc
    assert not any(w in desc.lower() for w in ("star", "rated", "loved", "recently"))
    pop = Population(cal.catalog, cal.personas, None, 5)
    pop.reset(np.random.default_rng(0))
    text = json.dumps(build_judge_messages(pop, 0, [0, 1, 2], Sanitizer.for_population(pop)))
    assert "times in all" in text and "Listens" in text


@pytest.mark.data
def test_ml_implicit_descriptions_have_no_stars_and_no_invented_counts():
    log = to_implicit(load_dataset(need_ml100k()).select(load_dataset(need_ml100k()).user < 60))
    cal = calibrate(log, QUICK)
    for p in cal.personas.personas[:20]:
        d = p.description
        assert "star" not in d and "Rates" not in d and "times" not in d and "Most recently" not in d
        assert "who has watched" in d and "among others" in d


# -- traits without spread ---------------------------------------------------------------------------


def _log(users, items, rating=None, ts=None, genres=None, n_items=None) -> InteractionLog:
    users, items = np.asarray(users), np.asarray(items)
    ni = n_items or int(items.max()) + 1
    nu = int(users.max()) + 1
    gs = genres or [["Drama"] if k % 2 else ["Comedy"] for k in range(ni)]
    names = sorted({g for g in gs for g in g})
    table = ItemTable([str(k) for k in range(ni)], [f"t{k}" for k in range(ni)], [""] * ni, gs,
                      np.zeros(ni, np.int32), names)
    r = np.full(users.size, np.nan) if rating is None else np.asarray(rating, float)
    t = np.arange(users.size) if ts is None else np.asarray(ts)
    return InteractionLog("toy", users, items, r, np.ones(users.size), t, table,
                          UserTable.anonymous([str(k) for k in range(nu)]), timed=ts is not None)


def _traits(log: InteractionLog) -> dict[str, np.ndarray]:
    st = _statistics(log, CalibrationConfig())
    return {n: st.traits[:, k] for k, n in enumerate(TRAITS)} | {"session_rate": st.session_rate}


def _spread_log(rng, n_users=60, n_items=200) -> InteractionLog:
    """A log where every statistic varies a lot across users (the positive control): counts, genres (every
    third user sees comedies only), ratings (harsh and generous users) and session lengths."""
    counts = rng.integers(3, 60, n_users)
    u = np.repeat(np.arange(n_users), counts)
    pools = [np.arange(0, n_items, 2) if k % 3 == 0 else np.arange(n_items) for k in range(n_users)]
    i = np.concatenate([rng.choice(pools[k], size=c, replace=False) for k, c in enumerate(counts)])
    r = np.clip(np.rint(rng.normal(1.5 + 3 * (u % 2), 0.5)), 1, 5)
    gap = np.where(u % 2, 60, 7200)
    t = np.concatenate([np.cumsum(gap[u == k]) for k in range(n_users)])
    return _log(u, i, r, t)


def test_traits_spread_on_a_log_with_spread():
    tr = _traits(_spread_log(np.random.default_rng(0)))
    for n in TRAITS:
        assert tr[n].std() > 0.15, n  # so the flat cases below can fail


@pytest.mark.parametrize("trait", TRAITS)
def test_a_trait_without_spread_gives_every_user_the_middle(trait):
    """Every user with the same value of the trait's statistic: no arbitrary ranking, everyone 0.5."""
    rng = np.random.default_rng(1)
    n_users, n_items, k = 40, 60, 12
    u = np.repeat(np.arange(n_users), k)
    if trait == "activity":  # same count; ratings and items vary
        i = np.concatenate([rng.choice(n_items, k, replace=False) for _ in range(n_users)])
        log = _log(u, i, rng.integers(1, 6, u.size))
    elif trait in ("conformity", "pickiness"):  # every rating equals every item's mean
        i = np.concatenate([rng.choice(n_items, k, replace=False) for _ in range(n_users)])
        log = _log(u, i, np.full(u.size, 3.0))
    elif trait == "diversity":  # one genre only
        i = np.concatenate([rng.choice(n_items, k, replace=False) for _ in range(n_users)])
        log = _log(u, i, genres=[["Drama"]] * n_items)
    else:  # patience: every user has sessions of 3 items, 2 hours apart
        i = np.concatenate([rng.choice(n_items, k, replace=False) for _ in range(n_users)])
        t = np.tile((np.arange(k) // 3) * 7200 + (np.arange(k) % 3) * 60, n_users)
        log = _log(u, i, ts=t + 10**6)
    tr = _traits(log)
    np.testing.assert_allclose(tr[trait], 0.5, atol=1e-9)


def test_near_constant_counts_give_no_activity_ranking():
    """Counts that differ by less than sampling noise (every user kept ~50 items) rank nobody."""
    rng = np.random.default_rng(2)
    counts = rng.integers(48, 53, 200)
    u = np.repeat(np.arange(200), counts)
    i = np.concatenate([rng.choice(400, c, replace=False) for c in counts])
    tr = _traits(_log(u, i))
    np.testing.assert_allclose(tr["activity"], 0.5)
    np.testing.assert_allclose(tr["session_rate"], 1.0)
    assert trait_percentiles(np.arange(200.0), np.full(200, 1.0)).std() > 0.25  # real spread survives


# -- measures on sparse catalogs --------------------------------------------------------------------


def test_popularity_curve_sees_through_a_sparse_test_split():
    rng = np.random.default_rng(3)
    p = np.exp(-1.1 * np.log1p(rng.permutation(20_000)))
    p /= p.sum()
    real = rng.multinomial(3_000, p)  # most items: 0 or 1 held-out interactions
    train = rng.multinomial(12_000, p)
    sims = {"oracle": p, "flatter": p**0.5, "sharper": p**1.5, "uniform": np.ones_like(p)}
    m = {k: popularity_measures(rng.multinomial(30_000, q / q.sum()), real, train, rng) for k, q in sims.items()}
    oracle = rng.multinomial(30_000, p)
    assert spearman(oracle, real) < 0.5  # the per-item measure fails even the perfect simulator
    assert m["oracle"]["pop_curve"] > 0.95
    for bad in ("flatter", "sharper", "uniform"):
        assert m[bad]["pop_curve"] < 0.6, bad
    assert m["oracle"]["pop_reliability"] < 0.6  # and says why: the test counts barely rank the items


def test_matched_activity_ks_accepts_equal_rates_and_rejects_unequal_ones():
    rng = np.random.default_rng(4)
    n, sessions = 1000, 10_000
    real = np.full(n, 10.0)  # every real user kept the same number of items
    per_session = rng.geometric(0.4, 50_000) - 1

    def simulate(rates: np.ndarray) -> np.ndarray:
        k = rng.poisson(rates / rates.mean() * sessions / n)
        return np.bincount(np.repeat(np.arange(n), k), rng.choice(per_session, k.sum()), n)

    same = simulate(np.ones(n))
    spread = simulate(np.exp(rng.normal(0, 1.0, n)))
    assert _activity_ks(same, real) > 0.3  # raw KS fails a simulator whose users are all alike
    assert matched_activity_ks(same, real, per_session, sessions, rng) < 0.08
    assert matched_activity_ks(spread, real, per_session, sessions, rng) > 0.2


def test_free_choice_popularity_is_one_pick_per_user_among_unseen_items():
    cal = calibrate(synthetic_log("longtail", 6000, seed=2), QUICK)
    pop = Population(cal.catalog, cal.personas, None, 5)
    pop.reset(np.random.default_rng(0))
    users = np.arange(0, len(pop), 3)
    excluded = np.zeros((users.size, len(cal.catalog)), bool)
    excluded[:, :50] = True
    share = choice_popularity(EmbeddedCognition(ChoiceConfig()), pop, users, excluded, chunk=7)
    assert share.sum() == pytest.approx(users.size) and np.all(share[:50] == 0)
    # the picks follow utility: the most popular train items draw far more than their share of choices
    top = np.argsort(-cal.catalog.popularity)[:200]
    top = top[top >= 50]
    assert share[top].mean() > 3 * share[50:].mean()

    class NoUtilities:
        pass

    assert choice_popularity(NoUtilities(), pop, users, excluded) is None


def test_rating_metrics_are_skipped_with_a_line_on_implicit_logs():
    res = FidelityResult(seeds=[0])
    res.add("embedded", {"acc@1:1": 0.8, "rmse": float("nan"), "mae": float("nan"), "tv": float("nan")})
    res.info = {"log": "synthetic-longtail", "has_ratings": False}
    md = res.markdown(("acc@1:1", "rmse", "mae", "tv"))
    assert "rmse, mae, tv: not applicable, synthetic-longtail has no ratings" in md
    res.info["has_ratings"] = True
    assert "not applicable" not in res.markdown(("acc@1:1", "rmse"))


# -- leakage through the generic loader and the random split ----------------------------------------


def _write_log(dest: Path, log: InteractionLog, items_file: bool) -> Path:
    write_generic(log, dest)
    if not items_file:
        (dest / "items.csv").unlink()
        fmt = json.loads((dest / "format.json").read_text())
        fmt["items"] = None
        (dest / "format.json").write_text(json.dumps(fmt))
    return dest


def _with_interactions(src: Path, dest: Path, df: pd.DataFrame) -> Path:
    """A copy of the log in ``src`` with its interactions replaced by ``df``."""
    dest.mkdir()
    for f in ("items.csv", "format.json"):
        if (src / f).is_file():
            (dest / f).write_bytes((src / f).read_bytes())
    df.to_csv(dest / "interactions.csv", index=False)
    return dest


def _world(path: Path):
    settings = MovieLensWorldConfig(data_dir=str(path), variant="generic", split={"kind": "random"},
                                    calibration={**QUICK, "validate_split": True}, cache=False)
    return build_calibrated_world(settings, seed=0, choice=ChoiceConfig())


@pytest.mark.parametrize("items_file", [True, False])
def test_random_split_test_rows_never_reach_the_world(tmp_path, items_file):
    """Rewrite every test row of a generic log split at random (other item, other play count; rows stay
    where they are, so the split is the same): catalog, personas and prompts stay bit-identical."""
    log = synthetic_log("longtail", 5000, n_users=80, n_items=600, seed=5)
    base = _world(_write_log(tmp_path / "a", log, items_file))
    test = split_log(load_generic(tmp_path / "a"), {"kind": "random"}).test_mask
    rng = np.random.default_rng(9)
    df = pd.read_csv(tmp_path / "a" / "interactions.csv", dtype=str)
    rows = np.flatnonzero(test)
    if items_file:  # any other catalog item
        df.loc[rows, "item"] = [str(x) for x in rng.integers(1, 601, rows.size)]
    else:  # without an items file the catalog is the log's items: shuffle them among the test rows
        df.loc[rows, "item"] = df.loc[rows, "item"].to_numpy()[rng.permutation(rows.size)]
    df.loc[rows, "weight"] = [str(x) for x in rng.integers(1, 99, rows.size)]
    other = _world(_with_interactions(tmp_path / "a", tmp_path / "b", df))
    assert not np.array_equal(other.split.test.item, base.split.test.item)
    assert np.array_equal(other.split.train.item, base.split.train.item)
    _assert_same_world(base, other)
    # and the identity is not vacuous: one train row's play count changes the world
    train_row = int(np.flatnonzero(~test)[0])
    df2 = pd.read_csv(tmp_path / "a" / "interactions.csv", dtype=str)
    df2.loc[train_row, "weight"] = "500"
    assert not np.array_equal(_world(_with_interactions(tmp_path / "a", tmp_path / "c", df2)).catalog.features,
                              base.catalog.features)


def test_measure_validity_script_separates_right_from_wrong_simulators(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "v.json"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(root / "experiments" / "measure_validity.py"), "--json", str(out)],
                   check=True, capture_output=True, cwd=root)
    res = json.loads(out.read_text())
    for r in res["popularity"]:
        if r["simulator"].startswith("oracle"):
            assert r["pop_curve"] > 0.95 and r["spearman"] < 0.5
        else:
            assert r["pop_curve"] < 0.6
    act = {(r["real"], r["simulator"]): r for r in res["activity"]}
    assert act[("equal counts", "equal rates")]["activity_ks_matched"] < 0.1
    assert act[("equal counts", "equal rates")]["activity_ks"] > 0.4
    assert act[("equal counts", "log-normal rates (sd 0.8)")]["activity_ks_matched"] > 0.2


# -- LLM users in a world without ratings ------------------------------------------------------------


def test_implicit_world_prompts_and_schemas_ask_for_no_stars(tmp_path):
    from simrec.catalog import Catalog
    from simrec.cognition.llm import decision_schema, judge_schema
    from simrec.llm.prompting import (
        JudgeReply,
        build_decision_messages,
        judge_to_arrays,
    )

    cal = calibrate(synthetic_log("longtail", 6000, seed=2), QUICK)
    d = cal.catalog.domain
    assert (d.do, d.item, d.ratings) == ("listen to", "track", False)
    cal.catalog.save(tmp_path / "catalog.json")
    assert Catalog.load(tmp_path / "catalog.json").domain == d  # the world cache keeps it
    pop = Population(cal.catalog, cal.personas, None, 5)
    pop.reset(np.random.default_rng(0))
    san = Sanitizer.for_population(pop)
    text = " ".join(m["content"] for m in build_decision_messages(pop, 0, [0, 1, 2], san)
                    + build_judge_messages(pop, 0, [0, 1], san))
    assert "star" not in text and "watch it" not in text and "would listen to it" in text
    assert '"rating": null' in text
    for schema in (decision_schema(3, "tight", 200, False), judge_schema(3, "tight", 200, False),
                   judge_schema(3, "portable", 200, False)):
        assert '"enum": [1, 2, 3, 4, 5' not in json.dumps(schema) and '"type": "integer"}' not in json.dumps(
            schema).split('"rating"')[1][:30]
    reply = JudgeReply.model_validate_json('{"items": [{"item": 1, "watch": true, "rating": null}, '
                                           '{"item": 2, "watch": false, "rating": null}]}')
    watch, rating = judge_to_arrays(reply, 2, ratings=False)
    assert watch.tolist() == [True, False] and np.isnan(rating).all()
    with pytest.raises(ValueError, match="whole stars"):
        judge_to_arrays(reply, 2)  # a rated world still needs stars


def test_llm_user_judges_an_implicit_world_without_fallbacks(fake_server):
    from simrec.cognition.llm import LLMCognition

    cal = calibrate(synthetic_log("longtail", 6000, seed=2), QUICK)
    pop = Population(cal.catalog, cal.personas, None, 5)
    pop.reset(np.random.default_rng(0))
    srv = fake_server()
    be = LLMCognition({"base_url": srv.base_url, "model": "fake", "reflect_every": 0,
                       "reflect_at_session_end": False}, env={})
    try:
        jb = be.judge(pop, np.array([0, 1]), np.array([[1, 2, 3], [4, 5, 6]]), np.random.default_rng(0))
    finally:
        be.close()
    assert SOURCE_FALLBACK not in jb.source.tolist() and np.isnan(jb.rating).all()  # parsed, no stars invented
