"""Public short path for the slate wrappers: ``from simrec.wrappers import RepairSlate, TopKScores``.

The code lives in :mod:`simrec.envs.wrappers`.
"""

from simrec.envs.wrappers import RepairSlate, TopKScores, repair_slates

__all__ = ["RepairSlate", "TopKScores", "repair_slates"]
