"""simrec: simulated users for training and stress-testing recommender systems.

Importing simrec registers its Gymnasium environments (``simrec/Synthetic-v0``, ...).
"""

from simrec.catalog import Catalog, Item
from simrec.persona import Persona, PersonaPack, Traits
from simrec.registration import register_envs
from simrec.spec import EnvSpec

__version__ = "0.1.0"

register_envs()

__all__ = ["Catalog", "Item", "Persona", "PersonaPack", "Traits", "EnvSpec", "register_envs", "__version__"]
