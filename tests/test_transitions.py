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


def test_untimed_logs_get_no_sequence_model():
    cal = calibrate(_chain_log(timed=False), ORDER_AWARE, seed=0)
    assert cal.transitions is None and "sequence_weight" in cal.report and cal.report["sequence_weight"] == 0.0
    assert all(p.recent_items is None for p in cal.personas.personas)
    off = calibrate(_chain_log(), CalibrationConfig(watch_iters=40), seed=0)  # the defaults: both off
    assert off.transitions is None and off.choice == {} and "sequence_weight" not in off.report


def test_movielens_seq_spec_turns_both_on_and_movielens_v0_keeps_the_static_model():
    from simrec.envs.spec import resolve_spec

    seq, static = resolve_spec("movielensseq-v0"), resolve_spec("movielens-v0")
    assert seq.id == "simrec/MovieLensSeq-v0"
    assert seq.world.calibration["sequence"] and seq.world.calibration["fit_temperature"]
    assert seq.choice.temperature is None and seq.choice.sequence is None  # both from the world
    assert not CalibrationConfig(**static.world.calibration).sequence and static.choice.temperature == 1.0
    # the rest of the two specs is the same
    a, b = seq.model_dump(), static.model_dump()
    for d in (a, b):
        d.pop("id"), d.pop("description"), d["choice"].pop("temperature")
        d["world"]["calibration"].pop("sequence", None), d["world"]["calibration"].pop("fit_temperature", None)
    assert a == b


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
    fixed = resolve_spec("synthetic-v0").with_overrides(choice={"temperature": 2.5})
    assert fixed.for_world(calibrated).choice.temperature == 2.5
