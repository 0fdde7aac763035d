"""Who a simulated user is and how they change: the user model, without any notion of a recommender.

``persona`` (static traits, interests, description; persona packs), ``state`` (taste, anchor, per-topic
boredom, fatigue, satisfaction: the source of truth), ``dynamics`` (drift, exposure assimilation, concept
shifts, boredom, fatigue, satisfaction), ``memory`` (bounded episodic memory with retrieval and a running
summary), ``population`` (N users' personas, state and memory as arrays), ``world`` (a catalog plus a
persona pack). This package may import only ``simrec.catalog`` and ``simrec.errors``.
"""

from simrec.users.persona import Persona, PersonaPack, Traits
from simrec.users.population import Population
from simrec.users.state import UserState
from simrec.users.world import World

__all__ = ["Persona", "PersonaPack", "Traits", "UserState", "Population", "World"]
