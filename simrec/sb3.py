"""Public short path for the stable-baselines3 adapter: ``from simrec.sb3 import SB3VecEnv``.

The code lives in :mod:`simrec.envs.sb3`; it needs the ``rl`` extra (``pip install -e .[rl]``).
"""

from simrec.envs.sb3 import SB3VecEnv

__all__ = ["SB3VecEnv"]
