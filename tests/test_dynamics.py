"""User-state dynamics (drift, assimilation, shifts, boredom, fatigue, satisfaction) and the embedded
choice model (utility, position bias, multinomial logit with no-click, ordinal ratings, leaving).

Each process is tested alone on hand-set state, then through the simulator where the effect is
behavioural (filter bubble, session length, who comes back). Statistical assertions use many
seeded draws and tolerances of several standard errors, so they are deterministic and not flaky.
"""

from __future__ import annotations

import numpy as np
import pytest

from simrec.users import dynamics as dyn
from simrec.catalog import Catalog
from simrec.cognition.base import SOURCE_EMBEDDED, ResponseBatch
from simrec.cognition.embedded import ChoiceConfig, EmbeddedCognition
from simrec.users.dynamics import (
    BoredomConfig,
    DriftConfig,
    Dynamics,
    DynamicsConfig,
    FatigueConfig,
    SatisfactionConfig,
)
from simrec.users.persona import Persona, PersonaPack, Traits
from simrec.users.population import Population
from simrec.users.state import UserState

D = 16  # feature dim of the default world


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _random_state(n: int, seed: int = 0, n_topics: int = 20) -> UserState:
    rng = np.random.default_rng(seed)
    return UserState.initial(_unit(rng.normal(size=(n, D))), n_topics)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ==================================================================================================
# Drift: Ornstein-Uhlenbeck around the anchor
# ==================================================================================================

def test_ou_drift_matches_ou_stationary_variance_and_autocorrelation():
    n = 4000
    st = _random_state(n)
    users = np.arange(n)
    cfg = DriftConfig(theta=0.1, sigma=0.05)
    rng = np.random.default_rng(1)
    for _ in range(200):  # ~40 relaxation times 1/(2 theta): stationary
        dyn.ou_drift(st, users, cfg, rng)
    dev0 = st.taste - st.anchor
    dyn.ou_drift(st, users, cfg, rng)
    dev1 = st.taste - st.anchor
    # Per-dim noise sigma/sqrt(d); renormalisation removes the radial dim -> (d-1)/d of the OU variance.
    expected_msd = (D - 1) / D * cfg.sigma**2 / (2 * cfg.theta)
    msd = float((dev1**2).sum(axis=1).mean())
    assert msd == pytest.approx(expected_msd, rel=0.05)
    lag1 = float((dev0 * dev1).sum() / (dev0 * dev0).sum())
    assert lag1 == pytest.approx(np.exp(-cfg.theta), abs=0.01)
    assert np.allclose(np.linalg.norm(st.taste, axis=1), 1.0, atol=1e-5)


def test_ou_drift_without_noise_reverts_to_anchor_exactly():
    n = 500
    st = _random_state(n)
    rng = np.random.default_rng(2)
    st.taste[:] = _unit(rng.normal(size=(n, D)))  # displaced far from the anchor
    users = np.arange(n)
    cfg = DriftConfig(theta=0.1, sigma=0.0)
    t0, a = st.taste.copy(), st.anchor.copy()
    dyn.ou_drift(st, users, cfg, rng)
    expected = _unit(a + (t0 - a) * np.exp(-cfg.theta))
    np.testing.assert_allclose(st.taste, expected, atol=1e-5)
    cos = [float((st.taste * st.anchor).sum(axis=1).mean())]
    for _ in range(80):
        dyn.ou_drift(st, users, cfg, rng)
        cos.append(float((st.taste * st.anchor).sum(axis=1).mean()))
    assert all(b > a_ for a_, b in zip(cos, cos[1:]) if a_ < 0.999)  # monotone approach
    assert cos[-1] > 0.99
    np.testing.assert_array_equal(st.anchor, a)  # drift never moves the anchor


def test_ou_drift_over_a_gap_is_the_exact_transition():
    n = 4000
    st = _random_state(n)
    users = np.arange(n)
    cfg = DriftConfig(theta=0.1, sigma=0.05)
    dt = np.where(users % 2 == 0, 5.0, 0.0)
    before = st.taste.copy()
    dyn.ou_drift(st, users, cfg, np.random.default_rng(3), dt=dt)
    msd = ((st.taste - st.anchor) ** 2).sum(axis=1)
    expected = (D - 1) / D * cfg.sigma**2 * (1 - np.exp(-2 * cfg.theta * 5.0)) / (2 * cfg.theta)
    assert float(msd[::2].mean()) == pytest.approx(expected, rel=0.05)
    np.testing.assert_allclose(st.taste[1::2], before[1::2], atol=1e-6)  # dt = 0: no time, no drift


def test_ou_drift_is_seeded_and_noop_when_disabled():
    users = np.arange(50)
    a, b, c = _random_state(50), _random_state(50), _random_state(50)
    cfg = DriftConfig(theta=0.05, sigma=0.1)
    dyn.ou_drift(a, users, cfg, np.random.default_rng(7))
    dyn.ou_drift(b, users, cfg, np.random.default_rng(7))
    dyn.ou_drift(c, users, cfg, np.random.default_rng(8))
    np.testing.assert_array_equal(a.taste, b.taste)
    assert not np.allclose(a.taste, c.taste)
    d = _random_state(50)
    before = d.taste.copy()
    dyn.ou_drift(d, users, DriftConfig(theta=0.0, sigma=0.0), np.random.default_rng(0))
    np.testing.assert_allclose(d.taste, before, atol=1e-6)  # at most a float32 renormalisation


# ==================================================================================================
# Assimilation: the filter-bubble mechanism
# ==================================================================================================

def test_assimilation_pulls_taste_fast_and_anchor_slowly(catalog, make_population):
    pop = make_population(n_users=256)
    st, users = pop.state, np.arange(256)
    topic = 3
    direction = pop.directions[topic]
    items = np.flatnonzero(catalog.topic == topic)
    rng = np.random.default_rng(0)
    cfg = DriftConfig()
    taste0, anchor0 = st.taste @ direction, st.anchor @ direction
    for _ in range(30):
        dyn.assimilate(st, users, catalog.features[rng.choice(items, users.size)], np.ones(users.size, np.float32), cfg)
    taste1, anchor1 = st.taste @ direction, st.anchor @ direction
    assert (taste1 > taste0).mean() > 0.95
    assert taste1.mean() > 0.7 > taste0.mean()
    assert (anchor1 - anchor0).mean() > 0.02  # the long-term anchor moves too...
    assert (anchor1 - anchor0).mean() < 0.5 * (taste1 - taste0).mean()  # ...but more slowly
    # no consumption, no pull
    before = st.taste.copy()
    dyn.assimilate(st, users, catalog.features[rng.choice(items, users.size)], np.zeros(users.size, np.float32), cfg)
    np.testing.assert_allclose(st.taste, before, atol=1e-6)


def _pick_topics(pop: Population, catalog: Catalog, seed: int, reps: int = 10) -> np.ndarray:
    """Topics of the items users pick from uniformly random slates (embedded model, no dynamics)."""
    rng = np.random.default_rng(seed)
    cog = EmbeddedCognition()
    users = np.arange(pop.n_users)
    picks = []
    for _ in range(reps):
        slates = np.argsort(rng.random((users.size, len(catalog))), axis=1)[:, :5]
        r = cog.decide(pop, users, slates, rng)
        rows, cols = np.nonzero(r.clicked)
        picks.append(catalog.topic[slates[rows, cols]])
    return np.concatenate(picks)


def _entropy(topics: np.ndarray, n: int) -> float:
    f = np.bincount(topics, minlength=n) / topics.size
    f = f[f > 0]
    return float(-(f * np.log(f)).sum())


def test_repeated_consumption_of_one_topic_narrows_what_users_pick(catalog, make_population):
    pop = make_population(n_users=1024, seed=1)
    topic = 3
    before = _pick_topics(pop, catalog, seed=11)
    items = np.flatnonzero(catalog.topic == topic)
    rng = np.random.default_rng(2)
    users = np.arange(pop.n_users)
    for _ in range(30):
        dyn.assimilate(pop.state, users, catalog.features[rng.choice(items, users.size)],
                       np.ones(users.size, np.float32), DriftConfig())
    after = _pick_topics(pop, catalog, seed=11)
    share_before, share_after = np.mean(before == topic), np.mean(after == topic)
    assert share_after > 1.8 * share_before
    assert _entropy(after, catalog.n_topics) < _entropy(before, catalog.n_topics) - 0.05


def test_a_one_topic_diet_moves_taste_through_the_simulator(make_sim, catalog):
    topic = 0

    def diet(items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sim = make_sim(seed=3)
        users = np.arange(sim.pop.n_users)
        rng = np.random.default_rng(4)
        sim.start_sessions(users, rng)
        direction = sim.pop.directions[topic]
        start = sim.pop.state.taste @ direction
        for _ in range(30):
            slates = np.stack([rng.choice(items, 5, replace=False) for _ in users])
            sim.step(users, slates, rng)
        return start, sim.pop.state.taste @ direction, sim.pop.state.anchor @ direction

    start, taste_on, anchor_on = diet(np.flatnonzero(catalog.topic == topic))
    start_c, taste_off, anchor_off = diet(np.flatnonzero(catalog.topic != topic))
    np.testing.assert_array_equal(start, start_c)  # same users, same starting tastes
    assert taste_on.mean() > start.mean() + 0.04
    assert taste_on.mean() > taste_off.mean() + 0.05
    assert anchor_on.mean() > anchor_off.mean()


# ==================================================================================================
# Concept shift: sudden anchor moves, scheduled or at random
# ==================================================================================================

def test_scheduled_shift_happens_exactly_on_schedule(make_population):
    pop = make_population(n_users=64)
    st = pop.state
    users = np.arange(64)
    cfg = DynamicsConfig(drift=DriftConfig(theta=0, sigma=0, assimilation=0, anchor_assimilation=0,
                                           shift_schedule=[3], shift_magnitude=1.0))
    d = Dynamics(cfg)
    rng = np.random.default_rng(0)
    zeros = np.zeros((64, pop.catalog.n_topics), np.float32)
    masks, anchors = [], [st.anchor.copy()]
    for _ in range(5):
        m = d.step(st, users, chosen_features=np.zeros((64, D), np.float32), consumption=np.zeros(64, np.float32),
                   consumed_topics=zeros, shown_topics=zeros, best_utility=np.zeros(64),
                   experience=np.zeros(64, np.float32), rng=rng, directions=pop.directions)
        masks.append(m)
        anchors.append(st.anchor.copy())
    assert [bool(m.all()) for m in masks] == [False, False, True, False, False]
    assert not any(m.any() for i, m in enumerate(masks) if i != 2)
    np.testing.assert_array_equal(anchors[2], anchors[0])
    np.testing.assert_array_equal(anchors[5], anchors[3])
    # magnitude 1: the new anchor *is* a topic direction
    sims = anchors[3] @ pop.directions.T
    np.testing.assert_allclose(sims.max(axis=1), 1.0, atol=1e-5)


def test_random_shifts_happen_at_the_configured_hazard(make_population):
    pop = make_population(n_users=2000)
    st, users = pop.state, np.arange(2000)
    cfg = DriftConfig(shift_rate=0.05, shift_magnitude=0.7)
    rng = np.random.default_rng(5)
    total = 0
    for _ in range(10):
        before = st.anchor.copy()
        m = dyn.concept_shift(st, users, cfg, rng, pop.directions)
        moved = np.abs(st.anchor - before).max(axis=1) > 1e-6
        np.testing.assert_array_equal(moved, m)  # exactly the shifted users' anchors move
        total += int(m.sum())
    n = 10 * 2000
    assert abs(total / n - 0.05) < 4 * np.sqrt(0.05 * 0.95 / n)
    none = dyn.concept_shift(st, users, DriftConfig(), rng, pop.directions)
    assert not none.any()


# ==================================================================================================
# Boredom: grows with repeated topics, decays with time and between sessions
# ==================================================================================================

def test_boredom_grows_with_a_repeated_topic_toward_its_fixed_point():
    st = _random_state(1)
    users = np.array([0])
    cfg = BoredomConfig(growth=0.25, exposure=0.0, decay=0.05)
    consumed = np.zeros((1, 20), np.float32)
    consumed[0, 4] = 1.0
    levels = []
    for _ in range(200):
        dyn.update_boredom(st, users, consumed, np.zeros_like(consumed), cfg)
        levels.append(float(st.boredom[0, 4]))
    assert all(b > a for a, b in zip(levels, levels[1:]))
    assert levels[-1] == pytest.approx(cfg.growth / cfg.decay, rel=1e-3)  # b* = g / decay
    assert np.count_nonzero(st.boredom[0]) == 1  # other topics untouched


def test_boredom_exposure_alone_adds_a_little():
    st = _random_state(1)
    shown = np.zeros((1, 20), np.float32)
    shown[0, 2] = 5.0  # five items of topic 2 on the slate
    dyn.update_boredom(st, np.array([0]), np.zeros_like(shown), shown, BoredomConfig())
    assert st.boredom[0, 2] == pytest.approx(5 * BoredomConfig().exposure)


def test_boredom_decays_with_time_and_between_sessions():
    st = _random_state(3)
    st.boredom[:] = 2.0
    cfg = BoredomConfig(decay=0.05)
    dyn.decay_boredom(st, np.arange(3), cfg, np.array([0.0, 1.0, 10.0]))
    np.testing.assert_allclose(st.boredom[:, 0], 2.0 * 0.95 ** np.array([0.0, 1.0, 10.0]), rtol=1e-5)

    d = Dynamics(DynamicsConfig(boredom=cfg))
    st = _random_state(200)
    users = np.arange(200)
    st.boredom[:] = 2.0
    gap = d.between_sessions(st, users, np.full(200, 0.5), np.random.default_rng(0))
    np.testing.assert_array_equal(gap, 0.0)  # a user's first session follows no gap
    np.testing.assert_array_equal(st.boredom, 2.0)
    gap = d.between_sessions(st, users, np.full(200, 0.5), np.random.default_rng(1))
    assert (gap > 0).all()
    np.testing.assert_allclose(st.boredom[:, 0], 2.0 * 0.95**gap, rtol=1e-4)
    assert st.boredom.mean() < 0.5  # a typical gap (~200 steps) nearly resets boredom


def test_boredom_lowers_the_chance_of_picking_that_topic(make_population, catalog):
    pop = make_population(n_users=256, seed=2)
    users = np.arange(256)
    cog = EmbeddedCognition()
    rng = np.random.default_rng(0)
    topic_items = np.flatnonzero(catalog.topic == 0)
    other_items = np.flatnonzero(catalog.topic != 0)
    slates = np.concatenate([rng.choice(topic_items, (256, 1)), rng.choice(other_items, (256, 4))], axis=1)

    def topic_click_rate() -> float:
        r = cog.decide(pop, np.repeat(users, 40), np.repeat(slates, 40, axis=0), np.random.default_rng(1))
        return float(r.clicked[:, 0].mean())

    fresh = topic_click_rate()
    pop.state.boredom[:, 0] = 2.0
    assert topic_click_rate() < 0.6 * fresh


# ==================================================================================================
# Fatigue: grows within a session, more with poor slates; drives leaving
# ==================================================================================================

def test_fatigue_grows_every_step_and_faster_with_poor_slates():
    st = _random_state(3)
    users = np.arange(3)
    cfg = FatigueConfig()
    best = np.array([3.0, 0.0, -3.0])  # great, middling, poor best item on the slate
    traj = []
    for _ in range(10):
        dyn.update_fatigue(st, users, best, np.zeros(3, np.float32), cfg)
        traj.append(st.fatigue.copy())
    traj = np.array(traj)
    assert (np.diff(traj, axis=0) > 0).all()
    assert traj[-1, 0] < traj[-1, 1] < traj[-1, 2]
    assert traj[-1, 2] == pytest.approx(10 * (cfg.base + cfg.poor_slate / (1 + np.exp(-6.0))), rel=1e-4)
    for _ in range(100):
        dyn.update_fatigue(st, users, best, np.zeros(3, np.float32), cfg)
    assert st.fatigue.max() <= 1.0
    # a good pick brings relief
    st.fatigue[:] = 0.5
    dyn.update_fatigue(st, users, np.full(3, 3.0), np.array([0.0, 1.0, 0.0], np.float32), cfg)
    assert st.fatigue[1] < st.fatigue[0]


def test_fatigue_mostly_recovers_between_sessions():
    st = _random_state(10)
    users = np.arange(10)
    d = Dynamics()
    d.between_sessions(st, users, np.full(10, 0.5), np.random.default_rng(0))
    st.fatigue[:] = 0.8
    d.between_sessions(st, users, np.full(10, 0.5), np.random.default_rng(0))
    np.testing.assert_allclose(st.fatigue, 0.8 * (1 - d.config.fatigue.recovery), rtol=1e-5)
    np.testing.assert_array_equal(st.sessions, 2)


def _session_lengths(sim, mode: str, seed: int = 0) -> tuple[np.ndarray, float]:
    """Run one session for every user showing the 5 best or 5 worst of 50 candidates (by the model's
    own utilities); return the session lengths and the mean fatigue after 5 steps."""
    rng = np.random.default_rng(seed)
    users = np.arange(sim.pop.n_users)
    sim.start_sessions(users, rng)
    length = np.zeros(users.size, int)
    alive = np.ones(users.size, bool)
    fatigue5 = np.nan
    for t in range(sim.spec.max_steps):
        u = users[alive]
        if not u.size:
            break
        cands = sim.candidates.draw(rng, u.size)
        util = sim.backend.utilities(sim.pop, u, cands)
        order = np.argsort(-util if mode == "good" else util, axis=1)[:, : sim.spec.slate_size]
        res = sim.step(u, np.take_along_axis(cands, order, axis=1), rng)
        length[u] += 1
        if t == 4:
            fatigue5 = float(sim.pop.state.fatigue[u].mean())
        alive[u[res.response.leave]] = False
    return length, fatigue5


def test_sessions_with_bad_slates_end_sooner(make_sim):
    good, fat_good = _session_lengths(make_sim(seed=0), "good")
    bad, fat_bad = _session_lengths(make_sim(seed=0), "bad")
    assert fat_bad > fat_good + 0.2
    assert bad.mean() < 0.5 * good.mean()
    assert bad.mean() < good.mean() - 10 * np.sqrt((bad.var() + good.var()) / bad.size)


def test_poor_slate_fatigue_is_what_drives_the_early_exit(make_sim):
    with_fatigue, _ = _session_lengths(make_sim(seed=0), "bad", seed=1)
    no_poor_fatigue, _ = _session_lengths(make_sim(seed=0, dynamics={"fatigue": {"poor_slate": 0.0}}), "bad", seed=1)
    assert no_poor_fatigue.mean() > 1.5 * with_fatigue.mean()


# ==================================================================================================
# Satisfaction: tracks experience; raises return odds and patience
# ==================================================================================================

def test_experience_maps_ratings_consumption_and_no_click():
    cfg = SatisfactionConfig()
    rating = np.array([5.0, 1.0, 3.0, np.nan, np.nan], np.float32)
    cons = np.array([1.0, 0.2, 0.5, 0.9, 0.0], np.float32)
    clicked = np.array([True, True, True, True, False])
    np.testing.assert_allclose(dyn.experience_of(rating, cons, clicked, cfg), [1.0, -1.0, 0.0, 0.8, cfg.no_click],
                               atol=1e-6)


def test_satisfaction_is_an_exponential_average_of_experience():
    st = _random_state(2)
    users = np.arange(2)
    cfg = SatisfactionConfig(rate=0.1)
    exp = np.array([1.0, -1.0], np.float32)
    dyn.update_satisfaction(st, users, exp, cfg)
    np.testing.assert_allclose(st.satisfaction, [0.1, -0.1], atol=1e-6)
    for _ in range(100):
        dyn.update_satisfaction(st, users, exp, cfg)
    np.testing.assert_allclose(st.satisfaction, [1 - 0.9**101, -(1 - 0.9**101)], atol=1e-5)
    assert st.satisfaction.min() >= -1 and st.satisfaction.max() <= 1


def test_good_slates_raise_satisfaction_and_bad_ones_lower_it(make_sim):
    sim_g, sim_b = make_sim(seed=0), make_sim(seed=0)
    _session_lengths(sim_g, "good")
    _session_lengths(sim_b, "bad")
    assert sim_g.pop.state.satisfaction.mean() > 0.2
    assert sim_b.pop.state.satisfaction.mean() < -0.1


def test_satisfied_users_are_picked_more_often(make_sim):
    sim = make_sim(seed=0)
    n = sim.pop.n_users
    happy = np.arange(n) % 2 == 0
    sim.pop.state.satisfaction[:] = np.where(happy, 0.8, -0.8)
    rng = np.random.default_rng(0)
    draws = np.array([sim.pick_users(rng, 1)[0] for _ in range(4000)])
    w = sim.dynamics.return_weights(sim.pop.state, sim.pop.session_rate)
    expected = w[happy].sum() / w.sum()
    share = happy[draws].mean()
    assert share > 0.85
    assert share == pytest.approx(float(expected), abs=4 * float(np.sqrt(expected * (1 - expected) / draws.size)))
    # at equal satisfaction, the same users are picked about half the time
    sim.pop.state.satisfaction[:] = 0.0
    draws = np.array([sim.pick_users(rng, 1)[0] for _ in range(4000)])
    assert 0.4 < happy[draws].mean() < 0.6
    many = sim.pick_users(rng, 100, exclude=np.arange(10))
    assert len(set(many.tolist())) == 100 and many.min() >= 10


# ==================================================================================================
# Dynamics as a whole
# ==================================================================================================

def test_dynamics_step_is_seeded(make_sim):
    def run(seed: int) -> UserState:
        sim = make_sim(seed=0, dynamics={"drift": {"shift_rate": 0.05}})
        rng = np.random.default_rng(seed)
        users = np.arange(sim.pop.n_users)
        sim.start_sessions(users, rng)
        for _ in range(5):
            sim.step(users, sim.candidates.draw(rng, users.size)[:, :5], rng)
        return sim.pop.state

    a, b, c = run(1), run(1), run(2)
    for k in a.__dict__:
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    assert not np.array_equal(a.taste, c.taste)


def _step_by_processes(dynamics: Dynamics, state: UserState, users: np.ndarray, rng: np.random.Generator,
                       **kw) -> np.ndarray:
    """Dynamics.step as the composition of the module's processes (the reference its inlined version must match)."""
    c = dynamics.config
    state.clock[users] += 1.0
    state.steps_total[users] += 1
    t = dyn._ou_mean_and_noise(state, users, c.drift, rng, 1.0)
    a = (c.drift.assimilation * kw["consumption"])[:, None]
    state.taste[users] = dyn._normalize_rows(t + a * (kw["chosen_features"] - t))
    an = state.anchor[users]
    state.anchor[users] = dyn._normalize_rows(
        an + (c.drift.anchor_assimilation * kw["consumption"])[:, None] * (kw["chosen_features"] - an))
    shifted = dyn.concept_shift(state, users, c.drift, rng, kw["directions"])
    dyn.update_boredom(state, users, kw["consumed_topics"], kw["shown_topics"], c.boredom)
    dyn.update_fatigue(state, users, kw["best_utility"], kw["experience"] > 0, c.fatigue)
    dyn.update_satisfaction(state, users, kw["experience"], c.satisfaction)
    return shifted


@pytest.mark.parametrize("wide", [False, True])  # float32 inputs, as the simulator passes, or float64 ones
@pytest.mark.parametrize("drift", [{}, {"shift_rate": 0.3}, {"theta": 0.0, "sigma": 0.0}])
def test_the_inlined_step_is_the_processes_bit_for_bit(drift: dict, wide: bool) -> None:
    dynamics = Dynamics({"drift": drift})
    rng = np.random.default_rng(3)
    n, users = 40, np.array([3, 17, 5, 30, 0, 22, 9, 11])
    dt = np.float64 if wide else np.float32
    consumption = (rng.random(users.size) * (rng.random(users.size) < 0.6)).astype(dt)
    kw = {"chosen_features": _unit(rng.normal(size=(users.size, D))), "consumption": consumption,
          "consumed_topics": rng.random((users.size, 20)).astype(np.float32),
          "shown_topics": rng.random((users.size, 20)).astype(np.float32),
          "best_utility": rng.normal(size=users.size).astype(dt),
          "experience": (2 * rng.random(users.size) - 1).astype(np.float32),
          "directions": _unit(rng.normal(size=(20, D)))}
    for step in range(3):
        a, b = _random_state(n, seed=step), _random_state(n, seed=step)
        a.fatigue[:] = b.fatigue[:] = rng.random(n).astype(np.float32)
        a.satisfaction[:] = b.satisfaction[:] = (2 * rng.random(n) - 1).astype(np.float32)
        a.boredom[:] = b.boredom[:] = rng.random(a.boredom.shape).astype(np.float32)
        shifted = dynamics.step(a, users, rng=np.random.default_rng(step), **kw)
        expect = _step_by_processes(dynamics, b, users, np.random.default_rng(step), **kw)
        np.testing.assert_array_equal(shifted, expect)
        for k in a.__dict__:
            np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    assert not np.array_equal(a.taste, _random_state(n, seed=2).taste)


@pytest.mark.parametrize("fn", [dyn.ou_drift, dyn.assimilate, dyn.concept_shift, dyn.update_boredom,
                                dyn.decay_boredom, dyn.update_fatigue, dyn.update_satisfaction,
                                dyn.experience_of, Dynamics.step, Dynamics.between_sessions,
                                Dynamics.return_weights])
def test_every_process_is_documented(fn):
    assert fn.__doc__ and len(fn.__doc__.strip()) > 20


# ==================================================================================================
# Embedded choice model
# ==================================================================================================

@pytest.fixture
def tiny():
    """A hand-built 2-topic catalog where items differ in exactly one attribute each."""
    e0, e1 = np.eye(4, dtype=np.float32)[:2]
    feats = np.stack([e0, e0, e0, e0, e1, e1])
    cat = Catalog(
        ids=[f"i{k}" for k in range(6)], titles=[f"T{k}" for k in range(6)], descriptions=[""] * 6,
        topic_names=["a", "b"], item_topics=[["a"], ["a"], ["a"], ["b"], ["a"], ["b"]], features=feats,
        quality=np.array([0.5, 0.9, 0.5, 0.5, 0.5, 0.5]), popularity=np.array([0.5, 0.5, 0.9, 0.5, 0.5, 0.5]),
        name="tiny",
    )

    def make(traits: list[dict[str, float]], rating_bias: list[float] | None = None) -> Population:
        personas = [Persona(id=f"p{i}", name=f"P{i}", age=30, traits=Traits(**t), interests={"a": 1.0},
                            rating_bias=0.0 if rating_bias is None else rating_bias[i])
                    for i, t in enumerate(traits)]
        pop = Population(cat, PersonaPack(name="tiny", topics=["a", "b"], personas=personas), None, 5)
        pop.reset(np.random.default_rng(0))
        pop.state.taste[:] = e0
        pop.state.anchor[:] = e0
        return pop

    return cat, make


def test_utility_terms_each_move_utility_the_documented_way(tiny):
    cat, make = tiny
    c = ChoiceConfig()
    pop = make([{"conformity": 0.0}, {"conformity": 1.0}])
    cog = EmbeddedCognition(c)
    u = cog.utilities(pop, np.array([0, 1]), np.tile(np.arange(6), (2, 1)))
    assert u[0, 0] - u[0, 4] == pytest.approx(c.affinity, rel=1e-5)  # taste x features
    assert u[0, 1] - u[0, 0] == pytest.approx(c.quality * 0.4, rel=1e-5)  # quality
    assert u[0, 2] == pytest.approx(u[0, 0], abs=1e-6)  # popularity ignored by a non-conformist...
    assert u[1, 2] - u[1, 0] == pytest.approx(c.conformity * 0.4, rel=1e-5)  # ...valued by a conformist
    # boredom subtracts, per topic
    pop.state.boredom[0] = [1.0, 0.0]
    u2 = cog.utilities(pop, np.array([0]), np.arange(6)[None])
    np.testing.assert_allclose(u[0] - u2[0], c.boredom * np.array([1, 1, 1, 0, 1, 0]), atol=1e-5)


def test_novelty_is_signed_by_the_diversity_trait(tiny):
    cat, make = tiny
    pop = make([{"diversity": 1.0}, {"diversity": 0.0}, {"diversity": 0.5}])
    users = np.arange(3)
    # everyone has consumed only topic "a"
    for _ in range(3):
        pop.memory.write(users, np.tile(np.arange(5), (3, 1)), np.zeros(3, np.int32), np.full(3, 4.0, np.float32),
                         np.ones(3, np.float32), np.ones(3, np.float32), np.zeros(3), cat.topic_weights[[0, 0, 0]])
    u = EmbeddedCognition().utilities(pop, users, np.tile(np.array([0, 3]), (3, 1)))  # same features, topic a vs b
    nov = EmbeddedCognition().config.novelty  # novelty of topic b is 1, of topic a is 0
    assert u[0, 1] - u[0, 0] == pytest.approx(nov, rel=1e-5)  # diversity seeker prefers the novel topic
    assert u[1, 1] - u[1, 0] == pytest.approx(-nov, rel=1e-5)  # a creature of habit avoids it
    assert u[2, 1] == pytest.approx(u[2, 0], abs=1e-5)


def _mnl_probs(cog: EmbeddedCognition, pop: Population, users: np.ndarray, slates: np.ndarray) -> np.ndarray:
    """Choice probabilities (B, K+1) of the documented model; last column is 'no click'."""
    c = cog.config
    K = slates.shape[1]
    util = cog.utilities(pop, users, slates)
    tr = pop.traits[users]
    nc = c.no_click + c.no_click_pickiness * (tr[:, 4] - 0.5) + c.no_click_fatigue * pop.state.fatigue[users]
    z = np.concatenate([util / c.temperature - c.position_decay * np.log1p(np.arange(K)), (nc / c.temperature)[:, None]], 1)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def test_choice_is_multinomial_logit_with_a_no_click_option(make_population):
    pop = make_population(n_users=8, seed=3)
    cog = EmbeddedCognition()
    rng = np.random.default_rng(0)
    slates = rng.choice(len(pop.catalog), (8, 5), replace=False)
    reps = 5000
    users = np.repeat(np.arange(8), reps)
    r = cog.decide(pop, users, np.repeat(slates, reps, axis=0), rng)
    assert r.clicked.sum(axis=1).max() <= 1  # one choice (or none) per step
    choice = np.where(r.clicked.any(axis=1), r.clicked.argmax(axis=1), 5).reshape(8, reps)
    emp = np.stack([np.bincount(row, minlength=6) / reps for row in choice])
    p = _mnl_probs(cog, pop, np.arange(8), slates)
    np.testing.assert_allclose(emp, p, atol=4 * np.sqrt(0.25 / reps))
    assert p[:, 5].min() > 0.01  # no-click is always a live option


def test_position_bias_same_item_is_clicked_more_at_the_top(make_population):
    pop = make_population(n_users=1, seed=0)
    cog = EmbeddedCognition()
    rng = np.random.default_rng(1)
    util = cog.utilities(pop, np.array([0]), np.arange(len(pop.catalog))[None])[0]
    order = np.argsort(-util)
    target, fillers = order[40], order[41:45]  # a good but not dominant item among similar ones
    top = np.concatenate([[target], fillers])
    bottom = np.concatenate([fillers, [target]])
    n = 20000
    users = np.zeros(n, int)
    at_top = cog.decide(pop, users, np.tile(top, (n, 1)), rng).clicked[:, 0].mean()
    at_bottom = cog.decide(pop, users, np.tile(bottom, (n, 1)), rng).clicked[:, 4].mean()
    se = np.sqrt(0.25 / n)
    assert at_top > at_bottom + 10 * se
    p_top = _mnl_probs(cog, pop, np.array([0]), top[None])[0, 0]
    p_bottom = _mnl_probs(cog, pop, np.array([0]), bottom[None])[0, 4]
    assert at_top == pytest.approx(p_top, abs=4 * se)
    assert at_bottom == pytest.approx(p_bottom, abs=4 * se)
    # no position decay -> no position effect
    flat = EmbeddedCognition(ChoiceConfig(position_decay=0.0))
    a = flat.decide(pop, users, np.tile(top, (n, 1)), rng).clicked[:, 0].mean()
    b = flat.decide(pop, users, np.tile(bottom, (n, 1)), rng).clicked[:, 4].mean()
    assert abs(a - b) < 5 * se


def test_pickier_users_rate_the_same_items_lower(tiny, make_pack, make_population):
    pack = make_pack([{"pickiness": 0.1}, {"pickiness": 0.9}, {"pickiness": 0.5}, {"pickiness": 0.5}],
                     rating_bias=[0.0, 0.0, -1.0, 1.0])
    pop = make_population(pack=pack)
    pop.state.taste[:] = pop.state.taste[0]  # same taste: only pickiness / bias differ
    cog = EmbeddedCognition()
    items = np.random.default_rng(0).choice(len(pop.catalog), 3000)
    slates = np.tile(items, (4, 1))
    util = cog.utilities(pop, np.arange(4), slates)
    np.testing.assert_allclose(util, util[[0]].repeat(4, 0), atol=1e-5)
    noisy = cog.ratings(pop, np.arange(4), slates, util, np.random.default_rng(1))
    exact = cog.ratings(pop, np.arange(4), slates, util, None)
    assert noisy[0].mean() > noisy[1].mean() + 0.3  # lenient > picky
    assert noisy[3].mean() > noisy[2].mean() + 1.0  # per-user bias
    assert (exact[0] >= exact[1]).all() and (exact[3] >= exact[2]).all()
    for r in (noisy, exact):
        assert set(np.unique(r)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    # better items get better ratings
    assert np.corrcoef(util[0], noisy[0])[0, 1] > 0.5


def test_ratings_and_consumption_in_decide(make_population):
    pop = make_population(n_users=256, seed=4)
    cog = EmbeddedCognition()
    rng = np.random.default_rng(2)
    users = np.repeat(np.arange(256), 40)
    slates = np.argsort(rng.random((users.size, len(pop.catalog))), axis=1)[:, :5]
    r = cog.decide(pop, users, slates, rng).validate(users.size, 5)
    clicked = r.clicked
    assert np.isnan(r.rating[~clicked]).all() and (r.consumption[~clicked] == 0).all()
    assert ((r.consumption[clicked] > 0) & (r.consumption[clicked] < 1)).all()
    assert np.mean(~np.isnan(r.rating[clicked])) == pytest.approx(cog.config.rate_prob, abs=0.02)
    assert (r.source == SOURCE_EMBEDDED).all()
    util = r.meta["utility"]
    assert np.corrcoef(util[clicked], r.consumption[clicked])[0, 1] > 0.3  # liked items are consumed more


def test_leave_model_rises_with_fatigue_and_falls_with_satisfaction_and_patience(make_pack, make_population):
    pack = make_pack([{"patience": 0.5}] * 4 + [{"patience": 0.0}, {"patience": 1.0}])
    pop = make_population(pack=pack)
    pop.state.taste[:] = pop.state.taste[0]
    pop.state.fatigue[:] = [0.2, 0.8, 0.8, 0.8, 0.6, 0.6]
    pop.state.satisfaction[:] = [0.0, 0.0, 1.0, -1.0, 0.0, 0.0]
    cog = EmbeddedCognition()
    c = cog.config
    reps = 20000
    users = np.repeat(np.arange(6), reps)
    slate = np.random.default_rng(0).choice(len(pop.catalog), 5, replace=False)
    r = cog.decide(pop, users, np.tile(slate, (users.size, 1)), np.random.default_rng(3))
    rate = r.leave.reshape(6, reps).mean(axis=1)
    # documented model: sigmoid(l0 + lf (fatigue - threshold(patience)) - ls sat + lnc [no click])
    p_nc = _mnl_probs(cog, pop, np.arange(6), np.tile(slate, (6, 1)))[:, 5]
    thr = 0.35 + 0.5 * pop.trait("patience")
    base = c.leave_base + c.leave_fatigue * (pop.state.fatigue - thr) - c.leave_satisfaction * pop.state.satisfaction
    expected = p_nc * _sigmoid(base + c.leave_no_click) + (1 - p_nc) * _sigmoid(base)
    np.testing.assert_allclose(rate, expected, atol=4 * np.sqrt(0.25 / reps))
    assert rate[1] > rate[0]  # more tired -> leaves sooner
    assert rate[3] > rate[1] > rate[2]  # more satisfied -> more patient
    assert rate[4] > rate[5]  # the patience trait


def test_backends_do_not_mutate_state(make_population):
    pop = make_population(n_users=32, seed=5)
    before = pop.state.copy()
    mem_before = pop.memory.count.copy()
    cog = EmbeddedCognition()
    slates = np.random.default_rng(0).choice(len(pop.catalog), (32, 5))
    cog.decide(pop, np.arange(32), slates, np.random.default_rng(1))
    j = cog.judge(pop, np.arange(32), slates, np.random.default_rng(1))
    for k, v in before.__dict__.items():
        np.testing.assert_array_equal(getattr(pop.state, k), v, err_msg=k)
    np.testing.assert_array_equal(pop.memory.count, mem_before)
    assert j.watch.shape == (32, 5) and j.watch.dtype == bool
    assert not np.isnan(j.rating).any() and set(np.unique(j.rating)) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def _good_batch() -> ResponseBatch:
    r = ResponseBatch.empty(2, 3)
    r.clicked[0, 1] = True
    r.rating[0, 1] = 4.0
    r.consumption[0, 1] = 0.7
    return r


@pytest.mark.parametrize("corrupt, match", [
    (lambda r: setattr(r, "clicked", np.zeros((2, 4), bool)), "clicked"),
    (lambda r: setattr(r, "clicked", r.clicked.astype(int)), "clicked"),
    (lambda r: setattr(r, "rating", np.full((3, 3), np.nan, np.float32)), "rating"),
    (lambda r: setattr(r, "consumption", np.zeros((2,), np.float32)), "consumption"),
    (lambda r: setattr(r, "leave", np.zeros(3, bool)), "leave"),
    (lambda r: setattr(r, "leave", np.zeros(2, np.int64)), "leave"),
    (lambda r: r.rating.__setitem__((0, 1), 6.0), "whole stars"),
    (lambda r: r.rating.__setitem__((0, 1), 0.0), "whole stars"),
    (lambda r: r.rating.__setitem__((0, 1), 3.5), "whole stars"),
    (lambda r: r.rating.__setitem__((1, 0), 3.0), "not clicked"),
    (lambda r: r.consumption.__setitem__((0, 1), 1.5), "consumption"),
    (lambda r: r.consumption.__setitem__((0, 1), -0.1), "consumption"),
    (lambda r: r.consumption.__setitem__((0, 1), np.nan), "consumption"),
    (lambda r: r.consumption.__setitem__((1, 2), 0.3), "consumption"),
])
def test_response_batch_validate_rejects_bad_shapes_and_ranges(corrupt, match):
    assert _good_batch().validate(2, 3) is not None
    r = _good_batch()
    corrupt(r)
    with pytest.raises(ValueError, match=match):
        r.validate(2, 3)


def test_the_simulator_step_is_the_same_with_and_without_the_backends_choice(make_sim):
    """The embedded model hands the chosen position on (``meta["choice"]``); without it the simulator finds it in
    the response. Both routes must give the same state, memory, history and rewards."""

    class Searching(EmbeddedCognition):
        def decide(self, pop, users, slates, rng):
            resp = super().decide(pop, users, slates, rng)
            del resp.meta["choice"]
            return resp

    def run(searching: bool):
        sim = make_sim(seed=0, reward={"click": 1.0, "consumption": 0.5, "rating": 0.3, "leave": -1.0})
        if searching:
            sim.backend = Searching(sim.spec.choice)
        rng = np.random.default_rng(7)
        users = np.arange(0, sim.pop.n_users, 3)
        sim.start_sessions(users, rng)
        rewards = [sim.step(users, sim.candidates.draw(rng, users.size)[:, :5], rng).reward for _ in range(30)]
        return sim, np.array(rewards)

    (a, ra), (b, rb) = run(False), run(True)
    np.testing.assert_array_equal(ra, rb)
    assert ra.any()
    for k in a.pop.state.__dict__:
        np.testing.assert_array_equal(getattr(a.pop.state, k), getattr(b.pop.state, k), err_msg=k)
    for k in ("_rec", "_topics", "shown", "chosen", "count", "n_chosen", "n_skipped"):
        np.testing.assert_array_equal(getattr(a.pop.memory, k), getattr(b.pop.memory, k), err_msg=k)
    np.testing.assert_array_equal(a._hist, b._hist)
