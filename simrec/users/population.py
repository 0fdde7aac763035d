"""A population of simulated users: who they are (personas) and how they are (state + memory)."""

from __future__ import annotations

import numpy as np

from simrec.catalog import Catalog
from simrec.users.memory import MemoryBank
from simrec.users.persona import Persona, PersonaPack
from simrec.users.state import UserState, initial_taste, topic_directions
from simrec.users.transitions import Transitions

TRAIT_NAMES = ("activity", "conformity", "diversity", "patience", "pickiness")


class Population:
    """``n_users`` users living in one catalog.

    User ``u`` plays persona ``u % len(pack)``: a population larger than its pack holds several
    independent instances of a persona (own taste noise, state and memory).

    Attributes:
        personas: the persona of each user.
        traits: ``(n_users, 5)`` float32, columns in :data:`TRAIT_NAMES` order.
        rating_bias: ``(n_users,)`` float32 calibrated rating offsets.
        session_rate: ``(n_users,)`` float64 relative chance of starting a session (``Persona.session_rate``,
            else ``(0.2 + activity) / 0.7``).
        state: the latent :class:`~simrec.users.state.UserState`.
        memory: the :class:`~simrec.users.memory.MemoryBank`.
        transitions: the world's order-aware short-term interest, or None; each user's recent items start
            as their persona's ``recent_items``.
    """

    def __init__(self, catalog: Catalog, pack: PersonaPack, n_users: int | None, slate_size: int,
                 memory_capacity: int = 32, transitions: Transitions | None = None) -> None:
        self.catalog = catalog
        self.pack = pack
        self.n_users = int(n_users or len(pack))
        self.personas: list[Persona] = [pack.personas[u % len(pack)] for u in range(self.n_users)]
        self._ids = [p.id if u < len(pack) else f"{p.id}#{u // len(pack)}" for u, p in enumerate(self.personas)]
        base = pack.traits_array()
        self.traits = base[np.arange(self.n_users) % len(pack)]
        self.rating_bias = np.array([p.rating_bias for p in self.personas], dtype=np.float32)
        self.session_rate = np.array([(0.2 + p.traits.activity) / 0.7 if p.session_rate is None else p.session_rate
                                      for p in self.personas], dtype=np.float64)
        self.directions = topic_directions(catalog)
        self.slate_size = slate_size
        self.memory_capacity = memory_capacity
        self.transitions = transitions
        self._recent = self._initial_recent()
        self.state = UserState.initial(np.zeros((self.n_users, catalog.dim), np.float32), catalog.n_topics,
                                       self._recent)
        self.memory = MemoryBank(self.n_users, memory_capacity, slate_size, catalog.n_topics)

    def __len__(self) -> int:
        return self.n_users

    def trait(self, name: str) -> np.ndarray:
        return self.traits[:, TRAIT_NAMES.index(name)]

    def reset(self, rng: np.random.Generator) -> None:
        """Give every user a fresh starting state and an empty memory, drawn from ``rng``."""
        tastes = np.stack([initial_taste(p, self.catalog, self.directions, rng) for p in self.personas])
        self.state = UserState.initial(tastes, self.catalog.n_topics, self._recent)
        self.memory = MemoryBank(self.n_users, self.memory_capacity, self.slate_size, self.catalog.n_topics)

    def _initial_recent(self) -> np.ndarray:
        tr = self.transitions
        if tr is None:
            return np.zeros((self.n_users, 0), np.int32)
        if tr.n_items != len(self.catalog):
            raise ValueError(f"the world's transitions cover {tr.n_items} items but its catalog has {len(self.catalog)}")
        for p in self.personas:
            if p.recent_items and max(p.recent_items) >= tr.n_items:
                raise ValueError(f"persona '{p.id}': recent_items {p.recent_items} go past the catalog's "
                                 f"{tr.n_items} items")
        return tr.recent_of([np.asarray(p.recent_items or [], np.int64) for p in self.personas])

    def user_id(self, u: int) -> str:
        """Stable external id of user ``u`` (persona id, plus an instance suffix past the pack size)."""
        return self._ids[u]

    def index_of(self, user_id: str | int) -> int:
        if isinstance(user_id, (int, np.integer)):
            if not 0 <= int(user_id) < self.n_users:
                raise ValueError(f"user index {user_id} out of range [0, {self.n_users})")
            return int(user_id)
        pid, _, inst = str(user_id).partition("#")
        for i, p in enumerate(self.pack.personas):
            if p.id == pid:
                u = i + len(self.pack) * (int(inst) if inst else 0)
                if u < self.n_users:
                    return u
        raise ValueError(f"unknown user_id {user_id!r}; ids look like {self.user_id(0)!r}")
