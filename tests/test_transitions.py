"""Order-aware short-term interest (simrec.users.transitions) and the calibrated choice scale."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simrec.data.calibration import CalibrationConfig, calibrate
from simrec.data.log import InteractionLog, ItemTable, UserTable
from simrec.users.transitions import Transitions, push_recent


def test_fit_counts_successors_within_the_window_and_normalises_per_source():
    # item 0 is followed by 1 (twice: both sequences) and by 2 (once, two steps later)
    tr = Transitions.fit([np.array([0, 1, 2]), np.array([0, 1])], n_items=4, window=2)
    probs = dict(zip(tr.keys.tolist(), tr.probs.tolist()))
    assert probs[0 * 4 + 1] == pytest.approx(2 / 3) and probs[0 * 4 + 2] == pytest.approx(1 / 3)
    assert probs[1 * 4 + 2] == pytest.approx(1.0)
    assert 2 * 4 + 0 not in probs  # order matters: nothing follows the last item
    short = Transitions.fit([np.array([0, 1, 2])], n_items=4, window=1)
    assert 0 * 4 + 2 not in set(short.keys.tolist())  # two steps apart: outside a window of 1


def test_fit_keeps_the_strongest_successors_only():
    seqs = [np.array([0, 1]), np.array([0, 1]), np.array([0, 2]), np.array([0, 3])]
    tr = Transitions.fit(seqs, n_items=4, window=1, top=1)
    assert tr.keys.tolist() == [0 * 4 + 1]  # 0 -> 1 seen twice beats 0 -> 2 and 0 -> 3
    assert tr.probs.tolist() == [pytest.approx(0.5)]  # probabilities are over all successors, before pruning


def test_scores_follow_the_documented_formula():
    tr = Transitions.fit([np.array([0, 1, 2, 3])], n_items=5, window=3, decay=0.5, scale=10.0, recent=2)
    p = dict(zip(tr.keys.tolist(), tr.probs.tolist()))
    recent = np.array([[0, 1], [-1, 2], [-1, -1]])
    items = np.array([[3, 4], [3, 0], [1, 2]])
    got = tr.scores(recent, items)
    want0 = math.log1p(10.0 * (0.5 * p[0 * 5 + 3] + 1.0 * p[1 * 5 + 3]))  # newest (1) has age 0
    assert got[0, 0] == pytest.approx(want0)
    assert got[0, 1] == 0.0  # nothing ever followed by item 4
    assert got[1, 0] == pytest.approx(math.log1p(10.0 * p[2 * 5 + 3])) and got[1, 1] == 0.0
    assert np.all(got[2] == 0.0)  # no recent items: no sequence signal


def test_save_load_round_trip(tmp_path):
    tr = Transitions.fit([np.array([3, 1, 2, 0, 1])], n_items=4, weight=0.75, decay=0.6, recent=3)
    tr.save(tmp_path / "t.npz")
    back = Transitions.load(tmp_path / "t.npz")
    assert np.array_equal(back.keys, tr.keys) and np.array_equal(back.probs, tr.probs)
    assert (back.weight, back.decay, back.scale, back.recent, back.window) == (0.75, 0.6, tr.scale, 3, tr.window)


def test_push_recent_appends_newest_last():
    recent = np.array([[-1, -1, 5], [1, 2, 3]], np.int32)
    push_recent(recent, np.array([0]), np.array([7]))
    assert recent.tolist() == [[-1, 5, 7], [1, 2, 3]]
    assert Transitions.fit([], n_items=3).recent_of([np.array([4, 5])]).tolist() == [[-1] * 8 + [4, 5]]


ORDER_AWARE = CalibrationConfig(watch_iters=40, sequence=True, fit_temperature=True)


def _chain_log(n_users: int = 300, n_items: int = 60, length: int = 12, timed: bool = True, seed: int = 0):
    """Users walk item chains i -> i+1 -> i+2 ... from a random start (strong order, flat popularity)."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(n_users):
        start = int(rng.integers(0, n_items))
        for k in range(length):
            users.append(u)
            items.append((start + k) % n_items)
            ts.append(1_000_000 + 3600 * (u * length + k))
    n = len(users)
    genres = ["a", "b", "c"]
    items_t = ItemTable(ids=[str(k) for k in range(n_items)], titles=[f"Film {k}" for k in range(n_items)],
                        texts=[""] * n_items, genres=[[genres[k % 3]] for k in range(n_items)],
                        years=np.zeros(n_items, np.int32), genre_names=genres)
    return InteractionLog("chains", np.array(users), np.array(items), np.full(n, np.nan, np.float32),
                          np.ones(n, np.float32), np.array(ts, np.int64) if timed else np.arange(n, dtype=np.int64),
                          items_t, UserTable.anonymous([str(u) for u in range(n_users)]), timed=timed)


def test_calibration_fits_a_sequence_weight_where_order_predicts_the_next_item():
    log = _chain_log()
    cal = calibrate(log, ORDER_AWARE, seed=0)
    assert cal.transitions is not None and cal.report["sequence_weight"] > 0
    ll = cal.report["validation_choice_loglik"]
    assert ll[f"{cal.report['sequence_weight']:g}"] > ll["0"] + 0.1  # the order really is informative
    p = cal.personas.personas[0]
    assert p.recent_items and len(p.recent_items) <= cal.transitions.recent
    assert cal.choice["temperature"] == cal.report["temperature"] > 0


def test_the_sequence_weight_is_the_one_that_ranks_the_validation_slice_best():
    cal = calibrate(_chain_log(), ORDER_AWARE, seed=0)  # sequence_weight_by="ndcg", the default
    nd = cal.report["validation_sequence_ndcg@10"]
    w = f"{cal.report['sequence_weight']:g}"
    assert nd[w] > nd["0"] + 0.2  # on chains the next item is predictable from the last one
    assert nd[w] >= max(nd.values()) - 0.02  # the pick is (within the paired-SE rule) the best ranker
    by_ll = calibrate(_chain_log(), ORDER_AWARE.model_copy(update={"sequence_weight_by": "likelihood"}), seed=0)
    assert "validation_sequence_ndcg@10" not in by_ll.report and by_ll.report["sequence_weight"] > 0
    ll = by_ll.report["validation_choice_loglik"]
    assert ll[f"{by_ll.report['sequence_weight']:g}"] == pytest.approx(max(ll.values()), abs=1e-3)


def _hit_log(n_users: int = 240, n_groups: int = 5, group_items: int = 20, taste_share: float = 0.9, seed: int = 0):
    """Taste groups with disjoint blocks of the catalog; a ``taste_share`` of each user's items come from
    their group's block (the rest uniformly), up to 16 distinct items each, one per hour."""
    rng = np.random.default_rng(seed)
    n_items = n_groups * group_items
    users, items, ts = [], [], []
    for u in range(n_users):
        own = np.arange(group_items) + group_items * (u % n_groups)
        pool = np.where(rng.random(16) < taste_share, rng.choice(own, 16), rng.integers(0, n_items, 16))
        for k, i in enumerate(dict.fromkeys(pool.tolist())):
            users.append(u)
            items.append(i)
            ts.append(1_000_000 + 3600 * (u * 16 + k))
    n = len(users)
    genres = [f"g{g}" for g in range(n_groups)]
    items_t = ItemTable(ids=[str(k) for k in range(n_items)], titles=[f"Film {k}" for k in range(n_items)],
                        texts=[""] * n_items, genres=[[genres[k // group_items]] for k in range(n_items)],
                        years=np.zeros(n_items, np.int32), genre_names=genres)
    return InteractionLog("hits", np.array(users), np.array(items), np.full(n, np.nan, np.float32),
                          np.ones(n, np.float32), np.array(ts, np.int64), items_t,
                          UserTable.anonymous([str(u) for u in range(n_users)]), timed=True)


SLATE_FIT = CalibrationConfig(watch_iters=60, fit_temperature=True, fit_slate_no_click=True)


def test_slate_no_click_reproduces_the_validation_hit_rate_and_rises_when_slates_hit_less():
    sharp = calibrate(_hit_log(taste_share=0.95), SLATE_FIT, seed=0)
    hits = sharp.report["validation_slate_hits"]
    real, fitted = np.array(list(hits.values())).T
    # the intercept of a logistic fit: the mean fitted click probability is the mean real hit rate
    assert fitted.mean() == pytest.approx(real.mean(), abs=0.02)
    assert hits["ranks 1-5"][0] > hits["random"][0] + 0.2  # the top of the ranking does hit more often
    assert hits["ranks 1-5"][1] > hits["random"][1]
    assert sharp.choice["slate_no_click"] == sharp.report["slate_no_click"]
    # users whose later items are mostly random hit the same slates less often: they must be choosier
    blunt = calibrate(_hit_log(taste_share=0.3), SLATE_FIT, seed=0)
    assert blunt.report["validation_slate_hits"]["ranks 1-5"][0] < hits["ranks 1-5"][0]
    assert blunt.report["slate_no_click"] > sharp.report["slate_no_click"]
    off = calibrate(_hit_log(), CalibrationConfig(watch_iters=60), seed=0)
    assert "slate_no_click" not in off.choice and "validation_slate_hits" not in off.report


def _drift_log(n_users: int = 300, n_items: int = 80, ordered: bool = True, seed: int = 0):
    """Users pick 16 distinct items by Zipf popularity; with ``ordered`` they watch the popular ones first, so
    each user's later items are the less popular ones (the drift ML-100K's temporal split shows)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1) ** 0.8
    users, items, ts = [], [], []
    for u in range(n_users):
        picked = rng.choice(n_items, 16, replace=False, p=p / p.sum())
        picked = np.sort(picked) if ordered else picked  # item id = popularity rank
        for k, i in enumerate(picked.tolist()):
            users.append(u)
            items.append(i)
            ts.append(1_000_000 + 3600 * (u * 16 + k))
    n = len(users)
    genres = ["a", "b"]
    items_t = ItemTable(ids=[str(k) for k in range(n_items)], titles=[f"Film {k}" for k in range(n_items)],
                        texts=[""] * n_items, genres=[[genres[k % 2]] for k in range(n_items)],
                        years=np.zeros(n_items, np.int32), genre_names=genres)
    return InteractionLog("drift", np.array(users), np.array(items), np.full(n, np.nan, np.float32),
                          np.ones(n, np.float32), np.array(ts, np.int64), items_t,
                          UserTable.anonymous([str(u) for u in range(n_users)]), timed=True)


POP_FIT = CalibrationConfig(watch_iters=60, fit_popularity_shift=True)


def test_popularity_shift_is_negative_where_later_items_are_less_popular():
    drift = calibrate(_drift_log(), POP_FIT, seed=0)
    nd = drift.report["validation_popularity_shift_ndcg@10"]
    g, q = drift.report["popularity_shift"], drift.report["popularity_knee"]
    picked = nd[f"{g:g} above {q:g}"]
    assert g < 0 and picked > nd["0 above -0.5"] + 0.02 and picked == max(nd.values())
    assert drift.choice["popularity_shift"] == g and drift.choice["popularity_knee"] == q
    # the same users in random order: later items are as popular as earlier ones, so the shift is not negative
    # (this short fit under-weights popularity, and the validation slice says so: the shift is positive)
    flat = calibrate(_drift_log(ordered=False), POP_FIT, seed=0)
    assert flat.report["popularity_shift"] > 0 > g
    assert "popularity_shift" not in calibrate(_drift_log(), CalibrationConfig(watch_iters=60), seed=0).choice


def test_popularity_shift_adds_its_hinge_to_every_users_utility():
    from simrec.cognition.embedded import EmbeddedCognition
    from simrec.envs.simulator import Simulator
    from simrec.envs.spec import resolve_spec
    from simrec.users.world import World, build_world

    w = build_world(seed=0, n_items=200, n_topics=5, dim=8, n_personas=20)
    spec = resolve_spec("synthetic-v0").with_overrides(world={"n_items": 200, "n_topics": 5, "dim": 8, "n_personas": 20},
                                                       choice={"popularity_shift": None, "popularity_knee": None})
    sim = Simulator(spec, World(w.catalog, w.personas, None, {"popularity_shift": -2.0, "popularity_knee": 0.1}))
    assert (sim.spec.choice.popularity_shift, sim.spec.choice.popularity_knee) == (-2.0, 0.1)
    sim.reset_population(np.random.default_rng(1))
    users, slates = np.arange(20), np.tile(np.arange(0, 40, 4), (20, 1))
    on = EmbeddedCognition(sim.spec.choice)
    off = EmbeddedCognition(sim.spec.choice.model_copy(update={"popularity_shift": 0.0}))
    diff = on.utilities(sim.pop, users, slates) - off.utilities(sim.pop, users, slates)
    hinge = np.maximum(w.catalog.popularity[slates] - 0.5 - 0.1, 0.0)
    assert (hinge == 0).any() and (hinge > 0).any()  # items on both sides of the knee
    np.testing.assert_allclose(diff, -2.0 * hinge, rtol=1e-5, atol=1e-5)
    one = on.utilities_one(sim.pop, 3, slates[3]) - off.utilities_one(sim.pop, 3, slates[3])
    np.testing.assert_allclose(one, diff[3], rtol=1e-5, atol=1e-5)  # the single-user path too
    linear = EmbeddedCognition(sim.spec.choice.model_copy(update={"popularity_knee": -0.5}))
    d_lin = linear.utilities(sim.pop, users, slates) - off.utilities(sim.pop, users, slates)
    np.testing.assert_allclose(d_lin, -2.0 * w.catalog.popularity[slates], rtol=1e-5, atol=1e-5)


def test_slate_no_click_makes_users_choosier_among_slates_but_not_in_judgements():
    from simrec.cognition.embedded import EmbeddedCognition
    from simrec.envs.simulator import Simulator
    from simrec.envs.spec import resolve_spec
    from simrec.users.world import World, build_world

    w = build_world(seed=0, n_items=200, n_topics=5, dim=8, n_personas=40)
    over = {"world": {"n_items": 200, "n_topics": 5, "dim": 8, "n_personas": 40}}
    clicks, watched = {}, {}
    for v in (0.0, 3.0):
        spec = resolve_spec("synthetic-v0").with_overrides(**over, choice={"slate_no_click": None})
        sim = Simulator(spec, World(w.catalog, w.personas, None, {"slate_no_click": v}))
        assert sim.spec.choice.slate_no_click == v  # None in the spec: the world's value
        sim.reset_population(np.random.default_rng(1))
        users, slates = np.arange(40), np.tile(np.arange(5), (40, 1))
        rng = np.random.default_rng(2)
        model = EmbeddedCognition(sim.spec.choice)
        clicks[v] = np.mean([model.decide(sim.pop, users, slates, rng).clicked.any(axis=1).mean() for _ in range(50)])
        watched[v] = model.judge(sim.pop, users, slates, rng).watch.mean()
        # the single-user fast path applies the same offset
        fast = np.mean([model.decide_one(sim.pop, u, slates[0], rng).clicked.any() for u in range(40) for _ in range(10)])
        assert fast == pytest.approx(clicks[v], abs=0.06)
    assert clicks[3.0] < clicks[0.0] - 0.1
    assert watched[3.0] == watched[0.0]


def test_untimed_logs_get_no_sequence_model():
    cal = calibrate(_chain_log(timed=False), ORDER_AWARE, seed=0)
    assert cal.transitions is None and "sequence_weight" in cal.report and cal.report["sequence_weight"] == 0.0
    assert all(p.recent_items is None for p in cal.personas.personas)
    off = calibrate(_chain_log(), CalibrationConfig(watch_iters=40), seed=0)  # the defaults: both off
    assert off.transitions is None and off.choice == {} and "sequence_weight" not in off.report


def test_movielens_seq_specs_turn_the_fits_on_and_movielens_v0_keeps_the_static_model():
    from simrec.envs.spec import resolve_spec

    v1, v0, static = resolve_spec("movielensseq-v1"), resolve_spec("movielensseq-v0"), resolve_spec("movielens-v0")
    assert (v1.id, v0.id) == ("simrec/MovieLensSeq-v1", "simrec/MovieLensSeq-v0")
    fits = ("sequence", "fit_temperature", "fit_slate_no_click", "fit_popularity_shift")
    open_choice = ("temperature", "sequence", "slate_no_click", "popularity_shift", "popularity_knee")
    v1_cal, v0_cal = CalibrationConfig(**v1.world.calibration), CalibrationConfig(**v0.world.calibration)
    assert all(getattr(v1_cal, k) for k in fits) and v1_cal.sequence_weight_by == "ndcg" and v1_cal.choice_scales is None
    assert all(getattr(v1.choice, k) is None for k in open_choice)
    # v0 keeps what its published numbers were made with: weight by likelihood, the coarse scale grid, no choosiness
    assert v0_cal.sequence and v0_cal.fit_temperature and not v0_cal.fit_slate_no_click
    assert not v0_cal.fit_popularity_shift and v0.choice.popularity_shift == 0.0
    assert v0_cal.sequence_weight_by == "likelihood" and v0_cal.choice_scales == [round(0.3 + 0.1 * k, 1) for k in range(13)]
    assert v0.choice.slate_no_click == 0.0
    static_cal = CalibrationConfig(**static.world.calibration)
    assert not any(getattr(static_cal, k) for k in fits)
    assert static.choice.temperature == 1.0 and static.choice.slate_no_click == 0.0
    # the rest of the three specs is the same
    dumps = [v1.model_dump(), v0.model_dump(), static.model_dump()]
    for d in dumps:
        d.pop("id"), d.pop("description")
        for k in ("temperature", "slate_no_click", "popularity_shift", "popularity_knee"):
            d["choice"].pop(k)
        for k in fits + ("sequence_weight_by", "choice_scales"):
            d["world"]["calibration"].pop(k, None)
    assert dumps[0] == dumps[1] == dumps[2]


# -- in the simulator ------------------------------------------------------------------------------


def _sim_with_transitions(weight: float = 1.0, sequence: float | None = None):
    import copy as _copy

    from simrec.envs.simulator import Simulator
    from simrec.envs.spec import resolve_spec
    from simrec.users.world import World, build_world

    base = build_world(seed=0, n_items=200, n_topics=5, dim=8, n_personas=20)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 40, 30) for _ in range(50)]  # a few items with strong successor structure
    tr = Transitions.fit(seqs, n_items=200, weight=weight, recent=4)
    personas = _copy.deepcopy(base.personas)
    for k, p in enumerate(personas.personas):
        p.recent_items = [int(x) for x in seqs[k][-3:]]
    spec = resolve_spec("synthetic-v0").with_overrides(
        world={"n_items": 200, "n_topics": 5, "dim": 8, "n_personas": 20}, choice={"sequence": sequence})
    sim = Simulator(spec, World(base.catalog, personas, tr))
    sim.reset_population(np.random.default_rng(1))
    return sim, seqs


def test_users_start_from_their_recent_items_and_clicks_push_new_ones():
    sim, seqs = _sim_with_transitions()
    recent = sim.pop.state.recent
    assert recent.shape == (20, 4)
    assert recent[0].tolist() == [-1] + seqs[0][-3:].tolist()
    rng = np.random.default_rng(5)
    for _ in range(30):  # batched steps until user 0 clicks something
        slates = np.tile(np.arange(0, 5), (20, 1))
        res = sim.step(np.arange(20), slates, rng)
        if res.response.clicked[0].any():
            break
    assert res.response.clicked[0].any()
    assert sim.pop.state.recent[0, -1] == slates[0, int(np.argmax(res.response.clicked[0]))]


def test_the_sequence_term_adds_weight_times_the_score_to_the_utility():
    from simrec.cognition.embedded import EmbeddedCognition

    sim, _ = _sim_with_transitions(weight=0.8)
    assert sim.spec.choice.sequence == 0.8  # None in the spec: the world's weight (EnvSpec.for_world)
    users, slates = np.arange(20), np.tile(np.arange(0, 40, 4), (20, 1))
    on = EmbeddedCognition(sim.spec.choice).utilities(sim.pop, users, slates)
    off = EmbeddedCognition(sim.spec.choice.model_copy(update={"sequence": 0.0})).utilities(sim.pop, users, slates)
    extra = sim.pop.transitions.scores(sim.pop.state.recent[users], slates)
    assert np.abs(extra).max() > 0.5  # the toy sequences do predict these items
    np.testing.assert_allclose(on - off, 0.8 * extra, rtol=1e-5, atol=1e-5)
    forced, _ = _sim_with_transitions(weight=0.8, sequence=0.0)
    assert forced.spec.choice.sequence == 0.0  # an explicit spec value wins over the world's


def test_single_user_fast_path_matches_the_batched_path_with_transitions():
    import copy as _copy

    sim, _ = _sim_with_transitions()
    rng = np.random.default_rng(3)
    for seed in range(8):
        u, slate = seed % 20, np.arange(seed, seed + 5)
        st0, mem0, hist0 = sim.pop.state.copy(), _copy.deepcopy(sim.pop.memory), sim._hist.copy()
        rs = _copy.deepcopy(rng.bit_generator.state)
        fast = sim.step_one(u, slate, rng)
        fast_recent = sim.pop.state.recent.copy()
        sim.pop.state, sim.pop.memory, sim._hist = st0, mem0, hist0
        rng.bit_generator.state = rs
        slow = sim.step(np.array([u]), slate[None, :], rng)
        np.testing.assert_array_equal(fast.response.clicked, slow.response.clicked)
        np.testing.assert_array_equal(fast_recent, sim.pop.state.recent)


def test_for_world_fills_only_what_the_spec_leaves_open():
    from simrec.envs.spec import resolve_spec
    from simrec.users.world import World, build_world

    w = build_world(seed=0, n_items=50, n_topics=3, dim=4, n_personas=5)
    spec = resolve_spec("synthetic-v0").with_overrides(choice={"temperature": None})
    calibrated = World(w.catalog, w.personas, None, {"temperature": 1.7})
    assert spec.for_world(calibrated).choice.temperature == 1.7
    assert spec.for_world(w).choice.temperature == 1.0  # no calibrated value: the default scale
    assert spec.for_world(w).choice.sequence == 0.0
    assert spec.for_world(w).choice.slate_no_click == 0.0  # synthetic-v0 sets 0.0; None would ask the world
    open_nc = resolve_spec("synthetic-v0").with_overrides(choice={"slate_no_click": None})
    assert open_nc.for_world(World(w.catalog, w.personas, None, {"slate_no_click": 4.2})).choice.slate_no_click == 4.2
    assert open_nc.for_world(w).choice.slate_no_click == 0.0
    fixed = resolve_spec("synthetic-v0").with_overrides(choice={"temperature": 2.5})
    assert fixed.for_world(calibrated).choice.temperature == 2.5


def test_simrec_agreement_defaults_to_the_order_aware_env():
    import argparse
    import inspect

    from simrec.evaluation.agreement import add_arguments, agreement

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert p.parse_args([]).env == "simrec/MovieLensSeq-v1"
    assert inspect.signature(agreement).parameters["env_id"].default == "simrec/MovieLensSeq-v1"
