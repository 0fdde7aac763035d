"""simrec: simulated users for training and stress-testing recommender systems.

Importing simrec registers its Gymnasium environments (``simrec/Synthetic-v0``, ``simrec/MovieLens-v0``).

The package, bottom layer first (each may import only the layers before it; ``tests/test_layers.py``
checks this): ``errors``/``version``/``resume``, ``catalog``, ``users``, ``llm``, ``cognition``, ``envs``, ``data``,
``trajectory``, ``recommenders``, ``analysis``, ``evaluation``, ``stress``, ``distributed``, then ``cli`` and this
facade. ``simrec.sb3`` and ``simrec.wrappers`` are short public paths into ``simrec.envs``; ``simrec.rllib`` (extra
``ray``) runs the envs in RLlib.
"""

from simrec.catalog import Catalog, Item
from simrec.envs.registration import register_envs
from simrec.envs.spec import EnvSpec
from simrec.users.persona import Persona, PersonaPack, Traits
from simrec.version import __version__

register_envs()

__all__ = ["Catalog", "Item", "Persona", "PersonaPack", "Traits", "EnvSpec", "register_envs", "__version__"]
