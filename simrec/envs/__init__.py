"""The Gymnasium environments: specs, the simulator loop, single and vector envs, spaces, wrappers.

``spec`` (pydantic ``EnvSpec``, the files in ``envs/``), ``candidates`` (candidate generators),
``simulator`` (one step: slate -> cognition -> response -> dynamics, for any batch of users),
``spaces`` (``SlateSpace`` and its Gymnasium vector-utility registrations), ``slate_env`` (``SlateEnv``,
one user's session), ``vector_env`` (``SlateVectorEnv``, N sessions in one numpy pass), ``wrappers``
(``RepairSlate``, ``TopKScores``), ``sb3`` (the SB3 ``VecEnv`` adapter; needs the ``rl`` extra),
``registration`` (Gymnasium ids and world building). This package may import ``simrec.cognition``,
``simrec.llm``, ``simrec.users`` and below. World kinds backed by data (``movielens``) are named by
``"module:function"`` strings in ``registration.WORLD_BUILDERS`` and imported on use, like Gymnasium's
entry points, so ``simrec.envs`` never imports ``simrec.data``.
"""

from simrec.envs.slate_env import SlateEnv
from simrec.envs.spaces import SlateSpace, slate_action_space, validate_slates
from simrec.envs.spec import EnvSpec, resolve_spec
from simrec.envs.vector_env import SlateVectorEnv

__all__ = ["EnvSpec", "resolve_spec", "SlateEnv", "SlateVectorEnv", "SlateSpace", "slate_action_space", "validate_slates"]
