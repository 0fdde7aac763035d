"""Shared fixtures: the default synthetic world, small custom persona packs, populations and simulators.

Everything is seeded; nothing touches the network. The world is built once per test session (worlds
are read-only, so sharing it is safe); populations and simulators are fresh per test.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

from simrec.users.persona import Persona, PersonaPack, Traits
from simrec.users.population import Population
from simrec.envs.registration import build_world
from simrec.envs.simulator import Simulator
from simrec.envs.spec import EnvSpec
from simrec.users.world import World


@pytest.fixture(scope="session", autouse=True)
def no_world_cache():
    """Calibrated worlds are cached on disk by default; tests calibrate afresh unless they opt in
    (tests/test_world_cache.py), so that nothing is written to the home directory and no test
    compares a world with a cached copy of itself."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SIMREC_CACHE_DIR", "off")
    yield
    mp.undo()


@pytest.fixture(scope="session")
def spec() -> EnvSpec:
    """The built-in ``synthetic-v0`` spec."""
    return EnvSpec.builtin("synthetic-v0")


@pytest.fixture(scope="session")
def world(spec: EnvSpec) -> World:
    """The default synthetic world (1,200 items, 20 topics, the shipped 256-persona pack)."""
    return build_world(spec.world)


@pytest.fixture(scope="session")
def catalog(world: World):
    return world.catalog


@pytest.fixture
def make_pack(world: World) -> Callable[..., PersonaPack]:
    """Build a pack of personas that differ only in the given traits (others average, same interests).

    ``make_pack([{"pickiness": 0.1}, {"pickiness": 0.9}], interests={"drama": 1.0}, rating_bias=[0, 1])``
    """

    def _make(traits: list[dict[str, float]], interests: dict[str, float] | None = None,
              rating_bias: list[float] | None = None) -> PersonaPack:
        interests = interests or {world.catalog.topic_names[0]: 1.0}
        personas = [
            Persona(id=f"p{i}", name=f"Persona {i}", age=30, traits=Traits(**tr), interests=dict(interests),
                    rating_bias=0.0 if rating_bias is None else rating_bias[i])
            for i, tr in enumerate(traits)
        ]
        return PersonaPack(name="test-pack", topics=list(world.catalog.topic_names), personas=personas)

    return _make


@pytest.fixture
def make_population(world: World) -> Callable[..., Population]:
    """A population over the default catalog, reset from ``seed`` (default pack unless given)."""

    def _make(pack: PersonaPack | None = None, n_users: int | None = None, slate_size: int = 5,
              memory_capacity: int = 32, seed: int = 0) -> Population:
        pop = Population(world.catalog, pack or world.personas, n_users, slate_size, memory_capacity)
        pop.reset(np.random.default_rng(seed))
        return pop

    return _make


@pytest.fixture
def make_sim(spec: EnvSpec, world: World) -> Callable[..., Simulator]:
    """A simulator for ``synthetic-v0`` with spec overrides, its population reset from ``seed``."""

    def _make(seed: int = 0, population_size: int | None = None, pack: PersonaPack | None = None,
              **overrides: Any) -> Simulator:
        s = spec.with_overrides(**overrides) if overrides else spec
        w = world if pack is None else World(world.catalog, pack)
        sim = Simulator(s, w, population_size=population_size)
        sim.reset_population(np.random.default_rng(seed))
        return sim

    return _make


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run torch on one thread for the module (use with ``pytestmark = pytest.mark.usefixtures(...)``).

    SB3's networks here are tiny; on a shared 2-core machine extra intra-op threads only contend,
    making PPO/DQN smoke runs ~5x slower in wall time.
    """
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
