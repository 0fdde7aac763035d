"""The embedded synthetic world: deterministic from its seed, big and varied enough to be useful
(>= 1,000 items over ~20 topics, >= 200 personas with varied traits), and the population built on it."""

from __future__ import annotations

import numpy as np
import pytest

from simrec.users.persona import PersonaPack
from simrec.users.population import TRAIT_NAMES, Population
from simrec.envs.registration import build_world
from simrec.envs.spec import WorldConfig
from simrec.users.state import initial_taste, topic_directions
from simrec.users.world import TOPICS, World, synthetic_catalog, synthetic_personas, world_from_config


def _catalog_arrays(cat) -> dict[str, object]:
    return {
        "ids": cat.ids, "titles": cat.titles, "descriptions": cat.descriptions, "topics": cat.item_topics,
        "features": cat.features, "quality": cat.quality, "popularity": cat.popularity, "year": cat.year,
        "attributes": cat.attributes,
    }


def test_world_is_deterministic_from_its_seed():
    a, b, c = synthetic_catalog(0), synthetic_catalog(0), synthetic_catalog(1)
    np.testing.assert_equal(_catalog_arrays(a), _catalog_arrays(b))
    assert not np.allclose(a.features, c.features) and a.titles != c.titles
    assert synthetic_personas(0) == synthetic_personas(0)
    assert synthetic_personas(0) != synthetic_personas(1)


def test_catalog_size_topics_and_columns(catalog):
    n = len(catalog)
    assert n >= 1000
    assert catalog.n_topics == 20 and catalog.topic_names == TOPICS
    counts = np.bincount(catalog.topic, minlength=catalog.n_topics)
    assert counts.min() >= 15  # every topic is populated, some are niche
    assert counts.max() > 3 * counts.min()
    assert len(set(catalog.ids)) == n and len(set(catalog.titles)) == n
    assert all(d for d in catalog.descriptions)
    assert catalog.features.shape == (n, 16) and catalog.features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(catalog.features, axis=1), 1.0, rtol=1e-5)
    assert 0 <= catalog.quality.min() and catalog.quality.max() <= 1 and catalog.quality.std() > 0.1
    assert 0 <= catalog.popularity.min() and catalog.popularity.max() <= 1
    assert np.median(catalog.popularity) < 0.35  # long tail: few hits
    np.testing.assert_allclose(catalog.topic_weights.sum(axis=1), 1.0, rtol=1e-6)
    multi = np.mean([len(t) > 1 for t in catalog.item_topics])
    assert 0.1 < multi < 0.5
    assert ((catalog.year >= 1960) & (catalog.year <= 2026)).all()


def test_topics_are_separable_in_feature_space(catalog):
    directions = topic_directions(catalog)
    assert directions.shape == (20, 16)
    own = (catalog.features @ directions.T).argmax(axis=1) == catalog.topic
    assert own.mean() > 0.85


def test_catalog_item_view_round_trips(catalog):
    it = catalog.item(5)
    assert it.id == catalog.ids[5] and it.topics == catalog.item_topics[5]
    assert catalog.index_of(it.id) == 5
    np.testing.assert_allclose(it.features, catalog.features[5], rtol=1e-6)


def test_personas_are_many_and_varied(world):
    pack = world.personas
    assert len(pack) >= 200
    tr = pack.traits_array()
    assert tr.shape == (len(pack), 5)
    for j, name in enumerate(TRAIT_NAMES):
        col = tr[:, j]
        assert col.std() > 0.12, name
        assert col.min() < 0.2 and col.max() > 0.8, name
    assert abs(np.corrcoef(tr.T)[np.triu_indices(5, 1)]).max() < 0.3  # traits vary independently
    topics = set(pack.topics)
    fav = {max(p.interests, key=p.interests.get) for p in pack.personas}
    assert len(fav) == 20  # every topic is somebody's favourite
    for p in pack.personas:
        assert 1 <= len(p.interests) <= 3 and set(p.interests) <= topics
        assert p.description.startswith(p.name.split()[0])
    ages = np.array([p.age for p in pack.personas])
    assert ages.min() >= 16 and ages.max() <= 80 and ages.std() > 8
    assert len({p.occupation for p in pack.personas}) >= 10


def test_world_from_config_and_cached_builds():
    cfg = WorldConfig(seed=0, n_items=300, n_topics=8, dim=8, personas=None, n_personas=40)
    w = world_from_config(cfg)
    assert isinstance(w, World) and len(w.catalog) == 300 and w.catalog.n_topics == 8 and w.catalog.dim == 8
    assert len(w.personas) == 40 and set(w.personas.topics) == set(TOPICS[:8])
    assert build_world(cfg) is build_world(WorldConfig(**cfg.model_dump()))  # read-only worlds are shared
    shipped = world_from_config(WorldConfig())
    assert shipped.personas == PersonaPack.builtin("synthetic-v0")
    with pytest.raises(ValueError, match="unknown world kind"):
        build_world(WorldConfig(kind="no-such-kind"))
    with pytest.raises(ValueError, match="n_topics"):
        synthetic_catalog(0, n_topics=21)


def test_initial_tastes_follow_interests(world, make_population):
    pop = make_population(seed=0)
    sims = pop.state.taste @ pop.directions.T  # (U, T)
    fav = np.array([pop.catalog.topic_names.index(max(p.interests, key=p.interests.get)) for p in pop.personas])
    rank = (sims > sims[np.arange(len(pop)), fav][:, None]).sum(axis=1)
    assert np.mean(rank <= 2) > 0.8  # the favourite topic is among the user's top 3 by taste
    np.testing.assert_allclose(np.linalg.norm(pop.state.taste, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(pop.state.anchor, pop.state.taste)
    # seeded: same seed same tastes, different seed different noise
    np.testing.assert_array_equal(make_population(seed=0).state.taste, pop.state.taste)
    assert not np.allclose(make_population(seed=1).state.taste, pop.state.taste)


def test_calibrated_taste_vector_is_used_and_checked(world, make_pack):
    pack = make_pack([{}])
    v = np.zeros(16, np.float32)
    v[3] = 2.0
    p = pack.personas[0].model_copy(update={"taste": v.tolist()})
    t = initial_taste(p, world.catalog, topic_directions(world.catalog), np.random.default_rng(0))
    np.testing.assert_allclose(t, v / 2.0)
    bad = pack.personas[0].model_copy(update={"taste": [1.0, 0.0]})
    with pytest.raises(ValueError, match="taste"):
        initial_taste(bad, world.catalog, topic_directions(world.catalog), np.random.default_rng(0))


def test_population_ids_and_instances(world, make_population):
    n = len(world.personas)
    pop = make_population(n_users=n + 10)
    assert len(pop) == n + 10
    assert pop.user_id(3) == world.personas.personas[3].id
    assert pop.user_id(n + 3) == f"{world.personas.personas[3].id}#1"
    for u in (0, 3, n - 1, n, n + 9):
        assert pop.index_of(pop.user_id(u)) == u
    assert pop.index_of(7) == 7
    np.testing.assert_array_equal(pop.traits[n + 3], pop.traits[3])
    assert not np.allclose(pop.state.taste[n + 3], pop.state.taste[3])  # own taste noise per instance
    np.testing.assert_array_equal(pop.trait("patience"), pop.traits[:, TRAIT_NAMES.index("patience")])
    with pytest.raises(ValueError, match="unknown user_id"):
        pop.index_of("nobody")
    with pytest.raises(ValueError, match="out of range"):
        pop.index_of(n + 10)


def test_default_population_is_the_pack(world):
    pop = Population(world.catalog, world.personas, None, 5)
    assert len(pop) == len(world.personas) and pop.memory.capacity == 32
