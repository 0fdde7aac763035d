"""Bounded episodic memory: ring-buffer records, retrieval (recency + relevance + importance) and the
running summary. Memory cost must stay O(capacity) per user however long the history grows."""

from __future__ import annotations

import numpy as np
import pytest

from simrec.envs.slate_env import SlateEnv
from simrec.users.memory import MemoryBank, MemoryRecord

T = 20  # topics in the default world


def _arrays(mem: MemoryBank) -> dict[str, tuple[tuple[int, ...], int]]:
    return {k: (v.shape, v.nbytes) for k, v in vars(mem).items() if isinstance(v, np.ndarray)}


def _write(mem: MemoryBank, catalog, users, chosen, t, rating=np.nan, consumption=0.8, feeling=0.5, shown=None):
    """One record per user; ``chosen`` is a catalog index or -1."""
    users = np.atleast_1d(np.asarray(users))
    b = users.size
    chosen = np.broadcast_to(np.asarray(chosen, np.int32), (b,)).copy()
    hit = chosen >= 0
    if shown is None:
        shown = np.tile(np.arange(mem.slate_size), (b, 1)) + 100
        shown[:, 0] = np.where(hit, chosen, shown[:, 0])
    tw = catalog.topic_weights[np.maximum(chosen, 0)] * hit[:, None]
    rating = np.where(hit, np.broadcast_to(np.asarray(rating, np.float32), (b,)), np.nan).astype(np.float32)
    cons = np.where(hit, consumption, 0.0).astype(np.float32)
    mem.write(users, np.asarray(shown), chosen, rating, cons, np.full(b, feeling, np.float32),
              np.full(b, float(t)), tw)


def test_array_sizes_are_constant_after_ten_times_capacity_writes(catalog):
    mem = MemoryBank(n_users=4, capacity=8, slate_size=5, n_topics=T)
    before = _arrays(mem)
    rng = np.random.default_rng(0)
    for t in range(80):
        _write(mem, catalog, np.arange(4), rng.integers(-1, len(catalog), 4), t, rating=4.0)
        assert _arrays(mem) == before
    np.testing.assert_array_equal(mem.count, 80)
    for u in range(4):
        recs = mem.records(u)
        assert len(recs) == 8  # only the last `capacity` records are kept verbatim
        assert [r.t for r in recs] == [float(t) for t in range(72, 80)]  # oldest first
    assert mem.summary(0, catalog.topic_names)["steps"] == 80  # the summary still counts everything


def test_records_hold_what_was_shown_chosen_rated_and_felt(catalog):
    mem = MemoryBank(n_users=2, capacity=4, slate_size=3, n_topics=T)
    mem.write(np.array([0, 1]), np.array([[5, 6, 7], [8, 9, 10]]), np.array([6, -1], np.int32),
              np.array([4.0, np.nan], np.float32), np.array([0.7, 0.0], np.float32),
              np.array([0.5, -0.3], np.float32), np.array([3.0, 4.0]),
              np.stack([catalog.topic_weights[6], np.zeros(T, np.float32)]))
    a, b = mem.records(0)[0], mem.records(1)[0]
    assert a == MemoryRecord(t=3.0, shown=(5, 6, 7), chosen=6, rating=4.0, consumption=pytest.approx(0.7),
                             feeling=pytest.approx(0.5), importance=pytest.approx(0.5 * 0.5 + 0.5 * 0.5))
    assert b.chosen == -1 and b.rating is None and b.consumption == 0.0 and b.shown == (8, 9, 10)
    assert b.feeling == pytest.approx(-0.3) and b.importance == pytest.approx(0.15)
    assert mem.summary(0, catalog.topic_names)["chosen"] == 1
    assert mem.summary(1, catalog.topic_names)["skipped"] == 1


@pytest.mark.parametrize("rating, feeling, importance", [
    (5.0, 1.0, 1.0), (1.0, -1.0, 1.0), (3.0, 0.0, 0.0), (4.0, 0.0, 0.25), (np.nan, 0.8, 0.4),
])
def test_importance_grows_with_extreme_ratings_and_strong_feelings(catalog, rating, feeling, importance):
    mem = MemoryBank(n_users=1, capacity=4, slate_size=5, n_topics=T)
    _write(mem, catalog, 0, 7, 0, rating=rating, feeling=feeling)
    assert mem.records(0)[0].importance == pytest.approx(importance)


def test_retrieve_returns_at_most_k_records_newest_first(catalog):
    mem = MemoryBank(n_users=1, capacity=16, slate_size=5, n_topics=T)
    q = catalog.features[:5]
    assert mem.retrieve(0, q, catalog, now=0.0, k=5) == []
    rng = np.random.default_rng(1)
    for t in range(160):
        _write(mem, catalog, 0, int(rng.integers(len(catalog))), t, rating=float(rng.integers(1, 6)),
               feeling=float(rng.uniform(-1, 1)))
    for k in (1, 5, 16, 100):
        got = mem.retrieve(0, q, catalog, now=160.0, k=k)
        assert len(got) == min(k, 16)
        ts = [r.t for r in got]
        assert ts == sorted(ts, reverse=True) and len(set(ts)) == len(ts)
        assert all(r.t >= 160 - 16 for r in got)  # only records still held


def test_a_highly_relevant_old_record_outranks_a_recent_irrelevant_one(catalog):
    target = 0
    sims = catalog.features @ catalog.features[target]
    far = np.flatnonzero(sims < -0.3)[:9]
    assert far.size == 9
    mem = MemoryBank(n_users=1, capacity=32, slate_size=5, n_topics=T)
    _write(mem, catalog, 0, target, t=0, rating=4.0, feeling=0.5)
    for t, item in enumerate(far, start=1):
        _write(mem, catalog, 0, int(item), t=t, rating=4.0, feeling=0.5)  # same importance, more recent
    best = mem.retrieve(0, catalog.features[[target]], catalog, now=10.0, k=1)
    assert [r.chosen for r in best] == [target]
    # a query like the recent items recalls the newest of them
    best = mem.retrieve(0, catalog.features[[int(far[-1])]], catalog, now=10.0, k=1)
    assert best[0].t == 9.0


def test_recency_breaks_ties_between_equally_relevant_and_important_records(catalog):
    mem = MemoryBank(n_users=1, capacity=8, slate_size=5, n_topics=T)
    for t in range(6):
        _write(mem, catalog, 0, 3, t=t, rating=4.0, feeling=0.5)
    got = mem.retrieve(0, catalog.features[[3]], catalog, now=6.0, k=2)
    assert [r.t for r in got] == [5.0, 4.0]


def test_importance_breaks_ties_between_equally_relevant_and_recent_records(catalog):
    mem = MemoryBank(n_users=1, capacity=8, slate_size=5, n_topics=T)
    _write(mem, catalog, 0, 3, t=5, rating=5.0, feeling=1.0)  # memorable
    _write(mem, catalog, 0, 3, t=5, rating=3.0, feeling=0.0)  # forgettable
    got = mem.retrieve(0, catalog.features[[3]], catalog, now=5.0, k=1)
    assert got[0].rating == 5.0


def test_summary_reflects_consumed_topics_beyond_the_ring(catalog):
    mem = MemoryBank(n_users=1, capacity=8, slate_size=5, n_topics=T)
    pure = np.flatnonzero(catalog.topic_weights.max(axis=1) == 1.0)  # single-topic items
    a_items = pure[catalog.topic[pure] == 2][:20]
    b_items = pure[catalog.topic[pure] == 5][:5]
    t = 0
    for i in a_items:
        _write(mem, catalog, 0, int(i), t, rating=5.0, consumption=1.0)
        t += 1
    for i in b_items:
        _write(mem, catalog, 0, int(i), t, rating=1.0, consumption=0.3)
        t += 1
    for _ in range(80):  # 10x capacity of skipped steps push every consumption out of the ring
        _write(mem, catalog, 0, -1, t)
        t += 1
    assert all(r.chosen == -1 for r in mem.records(0))
    s = mem.summary(0, catalog.topic_names)
    names = catalog.topic_names
    assert s["most_watched_topics"][:2] == [names[2], names[5]]
    assert names[2] in s["liked_topics"] and names[5] not in s["liked_topics"]
    assert names[5] in s["disliked_topics"] and names[2] not in s["disliked_topics"]
    assert (s["steps"], s["chosen"], s["skipped"]) == (105, 25, 80)


def test_topic_novelty_is_low_for_consumed_topics(catalog):
    mem = MemoryBank(n_users=2, capacity=8, slate_size=5, n_topics=T)
    pure = np.flatnonzero(catalog.topic_weights.max(axis=1) == 1.0)
    item = int(pure[catalog.topic[pure] == 1][0])
    other = int(pure[catalog.topic[pure] == 4][0])
    for t in range(5):
        _write(mem, catalog, 0, item, t)
    nov = mem.topic_novelty(np.array([0, 1]), catalog.topic_weights[[[item, other], [item, other]]])
    assert nov[0, 0] == pytest.approx(0.0, abs=1e-6) and nov[0, 1] == pytest.approx(1.0)
    assert nov.min() >= 0 and nov.max() <= 1 + 1e-6


def test_recent_slots_pad_short_histories(catalog):
    mem = MemoryBank(n_users=2, capacity=4, slate_size=5, n_topics=T)
    for t in range(3):
        _write(mem, catalog, 0, t, t)
    for t in range(9):
        _write(mem, catalog, 1, t, t)
    slots, valid = mem.recent_slots(np.array([0, 1]), window=6)
    np.testing.assert_array_equal(valid[0], [False] * 3 + [True] * 3)
    np.testing.assert_array_equal(valid[1], [False] * 2 + [True] * 4)  # never more than capacity
    np.testing.assert_array_equal(mem.chosen[0, slots[0, 3:]], [0, 1, 2])  # oldest first
    np.testing.assert_array_equal(mem.chosen[1, slots[1, 2:]], [5, 6, 7, 8])


def test_reset_users_forgets_only_them(catalog):
    mem = MemoryBank(n_users=3, capacity=4, slate_size=5, n_topics=T)
    for t in range(6):
        _write(mem, catalog, np.arange(3), 7, t, rating=4.0)
    mem.reset_users(np.array([1]))
    assert mem.records(1) == [] and mem.count[1] == 0 and mem.topic_consumed[1].sum() == 0
    assert len(mem.records(0)) == 4 and mem.summary(2, catalog.topic_names)["steps"] == 6


def test_env_memory_grows_then_stays_bounded_across_sessions():
    env = SlateEnv(memory_capacity=4, max_steps=5)
    env.reset(seed=0, options={"user_id": "u0007"})
    u = env.user_index
    mem = env.sim.pop.memory
    shapes = _arrays(mem)
    steps = 0
    for _ in range(6):  # several sessions of the same user
        done = False
        while not done:
            _, _, term, trunc, _ = env.step(env.action_space.sample())
            steps += 1
            done = term or trunc
            assert mem.count[u] == steps
            assert len(mem.records(u)) == min(steps, 4)
        env.reset(options={"user_id": "u0007"})
    assert env.sim.pop.memory is mem and _arrays(mem) == shapes
    recs = mem.records(u)
    assert [r.t for r in recs] == sorted(r.t for r in recs)
    assert len(mem.retrieve(u, env.catalog.features[:5], env.catalog, now=recs[-1].t, k=3)) == 3
