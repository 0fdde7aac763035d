"""Distributed runs: compare grids, stress-test and fidelity seeds, and population rollouts spread over
Ray workers (or a process pool), each unit writing its own trajectory log, merged into one verified log.

``executor`` (:class:`Executor`, :class:`ExecutorConfig`: local, process pool or Ray tasks with retries on
lost workers), ``units`` (what a unit returns, attempt directories), ``merge`` (deterministic merge of the
units' logs, content digests, :func:`verify_log`), ``grid`` (:func:`run_grid` for ``simrec compare``,
:func:`run_stress`, :func:`run_fidelity_seeds`), ``population`` (:func:`rollout_population`), ``cli``
(``--ray``/``--workers``/``--ray-address`` of ``simrec compare``, ``simrec stress run`` and ``simrec fidelity``;
they combine with ``--resume``: the grid functions take the commands' :class:`~simrec.resume.Journal`).
This package may import ``simrec.stress``, ``simrec.evaluation`` and below; only the CLI and the facade
import it. ``ray`` itself is imported inside functions, on first use, so simrec works without it.
"""

from simrec.distributed.executor import DistributedError, Executor, ExecutorConfig
from simrec.distributed.grid import run_fidelity_seeds, run_grid, run_stress
from simrec.distributed.merge import MergeReport, UnitLog, log_digest, merge_logs, unit_keys, verify_log
from simrec.distributed.population import PopulationConfig, PopulationResult, rollout_population
from simrec.distributed.units import UnitResult

__all__ = [
    "DistributedError", "Executor", "ExecutorConfig", "MergeReport", "PopulationConfig", "PopulationResult",
    "UnitLog", "UnitResult", "log_digest", "merge_logs", "rollout_population", "run_fidelity_seeds", "run_grid",
    "run_stress", "unit_keys", "verify_log",
]
