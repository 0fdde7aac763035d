"""Stress tests that inject something mid-run or into the training data: cold_start (new items) and shilling
(fake users), and the candidate-pool restriction (``CandidateGenerator.set_available``) cold_start needs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from simrec.envs.candidates import CandidateGenerator
from simrec.envs.spec import CandidateConfig
from simrec.stress import STRESS_TESTS, StressConfig, get_stress_test
from simrec.stress.cold_start import ColdStart, with_clicks
from simrec.stress.shilling import Shilling, degsim_flags, fake_profiles, pick_targets, poison
from simrec.users.world import synthetic_catalog

SMALL = {"seeds": [0], "fit_episodes": 100, "overrides": {"max_steps": 25}, "progress": False}


@pytest.fixture(scope="module")
def catalog():
    return synthetic_catalog(seed=0, n_items=300)


def _mask(n: int, seed: int = 0, hide: int = 120) -> np.ndarray:
    m = np.ones(n, dtype=bool)
    m[np.random.default_rng(seed).choice(n, size=hide, replace=False)] = False
    return m


# -- set_available ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["uniform", "popular_mix"])
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("k", [20, 100])  # 100 of 180 available: the dense (permutation) path of one row
def test_masked_draws_only_hold_available_items_and_cover_them(catalog, kind, batch, k):
    gen = CandidateGenerator(catalog, k, CandidateConfig(kind=kind))
    mask = _mask(len(catalog))
    gen.set_available(mask)
    rng = np.random.default_rng(1)
    rows = np.concatenate([gen.draw(rng, batch) for _ in range(300)])
    assert rows.shape == (300 * batch, k)
    assert mask[rows].all(), "a masked draw returned an unavailable item"
    assert all(len(set(r)) == k for r in rows.tolist()), "candidates within a row must be distinct"
    assert set(np.unique(rows)) == set(np.flatnonzero(mask)), "some available items are never drawn"
    gen.set_available(None)  # lifted: the hidden items come back
    back = np.concatenate([gen.draw(rng, batch) for _ in range(300)])
    assert (~mask[back]).any()


@pytest.mark.parametrize("kind", ["uniform", "popular_mix"])
@pytest.mark.parametrize("batch", [1, 7])
def test_no_mask_leaves_the_random_stream_unchanged(catalog, kind, batch):
    def stream(setup) -> tuple[np.ndarray, int]:
        gen = CandidateGenerator(catalog, 20, CandidateConfig(kind=kind))
        setup(gen)
        rng = np.random.default_rng(5)
        out = np.concatenate([gen.draw(rng, batch) for _ in range(200)])
        return out, int(rng.integers(1 << 30))

    plain, after = stream(lambda g: None)
    for setup in (lambda g: g.set_available(None), lambda g: g.set_available(np.ones(len(catalog), bool)),
                  lambda g: (g.set_available(_mask(len(catalog))), g.set_available(None))):
        rows, nxt = stream(setup)
        assert np.array_equal(rows, plain) and nxt == after
    assert CandidateGenerator(catalog, 20).available is None


def test_masked_popular_mix_consumes_the_same_random_numbers(catalog):
    """popular_mix under a mask draws the same random numbers, so what follows a masked step is unchanged."""
    ends = []
    for mask in (None, _mask(len(catalog))):
        gen = CandidateGenerator(catalog, 20, CandidateConfig(kind="popular_mix", popular_fraction=0.4))
        gen.set_available(mask)
        rng = np.random.default_rng(3)
        for _ in range(20):
            gen.draw(rng, 4)
        ends.append(rng.integers(1 << 30))
    assert ends[0] == ends[1]


def test_set_available_refuses_what_it_cannot_honour(catalog):
    with pytest.raises(ValueError, match="catalog"):
        CandidateGenerator(catalog, len(catalog), CandidateConfig(kind="catalog")).set_available(_mask(len(catalog)))
    CandidateGenerator(catalog, len(catalog), CandidateConfig(kind="catalog")).set_available(None)  # no-op is fine
    gen = CandidateGenerator(catalog, 50)
    with pytest.raises(ValueError, match="fewer than num_candidates"):
        gen.set_available(_mask(len(catalog), hide=260))
    with pytest.raises(ValueError, match="entries"):
        gen.set_available(np.ones(10, bool))


def test_a_masked_env_never_offers_a_hidden_item_across_resets():
    from simrec.evaluation.compare import make_env

    env = make_env("simrec/Synthetic-v0", {"max_steps": 10})
    mask = _mask(len(env.catalog), hide=600)
    env.sim.candidates.set_available(mask)
    seen = []
    for ep in range(30):
        _, info = env.reset(seed=0 if ep == 0 else None)
        seen.append(info["candidate_items"])
        done = False
        while not done:
            _, _, term, trunc, info = env.step(np.arange(5))
            seen.append(info["candidate_items"])
            assert mask[info["slate_items"]].all()
            done = term or trunc
    assert mask[np.concatenate(seen)].all()


# -- cold_start -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cold():
    cs = ColdStart(StressConfig(episodes=80, recommenders=["random", "greedy", "linucb", "mostpop", "ease"], **SMALL))
    inj = cs.setup(0, cs.recommenders)
    return cs, inj, cs.run()


def test_cold_start_is_registered():
    assert STRESS_TESTS["cold_start"] and get_stress_test("cold_start") is ColdStart
    assert len(ColdStart.default_recommenders) >= 6 and ColdStart.question and ColdStart.metric


def test_new_items_are_absent_before_the_injection_and_shown_after_it(cold):
    cs, inj, _ = cold
    assert inj.new.size == round(0.05 * inj.n_items)
    assert not np.isin(inj.fit.item, inj.new).any(), "the fit data must hold no held-out item"
    r = cs.serve(0, "random", inj)
    assert r.pre_impressions == 0
    assert r.post_steps > 300 and r.new_impressions > 0
    assert np.mean(r.first_shown >= 0) > 0.9, "random should reach nearly every new item"
    # the fitted models were retrained after the injection (every 20 sessions of the 40 after it)
    assert cs.serve(0, "mostpop", inj).refits == 1


def test_cold_start_metrics_are_sane(cold):
    res = cold[2]
    agg = res.aggregate()
    assert set(agg) == {"random", "greedy", "linucb", "mostpop", "ease"}
    for row in agg.values():
        assert 0.0 <= row["never_shown"]["mean"] <= 1.0
        assert row["impression_parity"]["mean"] >= 0.0
        assert 0.0 < row["old_ctr"]["mean"] < 1.0
    rnd = {m: v["mean"] for m, v in agg["random"].items()}
    assert 0.7 < rnd["impression_parity"] < 1.3 and rnd["never_shown"] < 0.1
    assert 0 < rnd["first_exposure"] < math.inf and 0.0 < rnd["new_ctr"] < 1.0
    curve = res.mean_curves()["new items ever shown"]["random"]
    assert curve[0] <= curve[-1] and all(a <= b for a, b in itertools.pairwise(curve))
    assert "| random |" in res.markdown()


def test_content_aware_recommenders_reach_new_items_that_fitted_ones_never_show(cold):
    agg = cold[2].aggregate()
    get = lambda rec, m: agg[rec][m]["mean"]
    for content in ("greedy", "linucb"):
        assert get(content, "impression_parity") > 0.5
        assert get(content, "first_exposure") < math.inf
        for fitted in ("mostpop", "ease"):
            assert get(content, "never_shown") + 0.3 < get(fitted, "never_shown"), (content, fitted)
            assert get(fitted, "impression_parity") < 0.2
    assert get("mostpop", "never_shown") == 1.0  # no data, no popularity: a new item cannot outrank an old one


def test_with_clicks_appends_after_the_fit(cold):
    fit = cold[1].fit
    more = with_clicks(fit, [fit.user_ids[0], "newcomer"], [3, 4])
    assert len(more) == len(fit) + 2 and more.n_users == fit.n_users + 1
    assert more.timestamp[-2] > fit.timestamp.max() and more.user_ids[more.user[-1]] == "newcomer"


# -- shilling ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shill():
    sh = Shilling(StressConfig(episodes=30, recommenders=["random", "mostpop", "itemknn", "ease"],
                               **{**SMALL, "fit_episodes": 150}))
    return sh, sh.run()


def test_shilling_is_registered():
    assert get_stress_test("shilling") is Shilling
    assert len(Shilling.default_recommenders) >= 6 and Shilling.protocol


def test_fake_profiles_hold_the_targets_and_nest(cold):
    fit = cold[1].fit
    targets = pick_targets(fit, 0, 10)
    assert targets.size == 10 and np.percentile(fit.popularity(), 40) >= fit.popularity()[targets].max()
    small, big = fake_profiles(fit, targets, 3, 0), fake_profiles(fit, targets, 6, 0)
    assert all(np.array_equal(a, b) for a, b in zip(small, big))
    assert all(np.isin(targets, p).all() and len(set(p.tolist())) == p.size for p in big)
    data = poison(fit, big)
    assert data.n_users == fit.n_users + 6 and len(data) == len(fit) + sum(p.size for p in big)


def test_a_ten_percent_attack_lifts_the_targets_under_fitted_models_only(shill):
    agg = shill[1].aggregate()
    get = lambda rec, m: agg[rec][m]["mean"]
    for rec in ("ease", "itemknn", "mostpop"):
        assert get(rec, "lift@10%") > 2.0, rec
        assert get(rec, "exposure@10%") > 2.0 * get(rec, "exposure@0%") + 0.5, rec
    assert get("ease", "lift@10%") > 5.0
    assert get("random", "lift@10%") == 1.0 and get("random", "exposure@0%") == get("random", "exposure@10%")
    assert 0.5 < get("random", "exposure@0%") < 2.0  # the targets get about their fair share from random
    assert all(0.0 <= get(r, "target_ctr") <= 1.0 for r in ("random", "ease"))
    lift = shill[1].mean_curves()["exposure lift"]
    assert lift["ease"][0] == 1.0 and lift["ease"][-1] > lift["ease"][0]


def test_the_detector_beats_chance(shill):
    res = shill[1]
    det = res.aggregate()["detector"]
    chance = 0.10 / 1.10  # the fakes' share of all users at a 10% attack
    assert det["precision"]["mean"] > 3 * chance and det["recall"]["mean"] >= 0.8
    assert "| detector |" in res.markdown()


def test_the_detector_flags_few_real_users(cold):
    fit = cold[1].fit
    assert degsim_flags(fit).mean() < 0.05
