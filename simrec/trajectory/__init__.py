"""Trajectory logs: record simrec runs as Parquet, read them back as pandas, replay them.

Modules: ``schema`` (the on-disk format), ``recorder`` (writer and the Gymnasium wrappers), ``reader``
(DataFrames), ``replay``, ``export_minari`` (Minari datasets; the ``minari`` extra). This package may import ``simrec.envs`` and below; nothing below it imports it.

A log is a directory::

    manifest.json            run provenance (schema version, simrec version, env spec, seed, backend, stats)
    steps/part-000000.parquet     one row per step
    episodes/part-000000.parquet  one row per episode (session)
    calls/part-000000.parquet     one row per LLM call (LLM backends only)

Rows are buffered and each flush writes one part per table, each to a temporary name and then
``os.replace``-d into place, so a reader never sees half a file. The episodes part is written
last and commits the flush: the reader ignores steps/calls parts without it. Flushes happen at
every episode end by default, so a killed process loses at most the episode in progress. A failed
write is retried, then raises :class:`TrajectoryWriteError` with the rows still buffered (a later
``flush()``/``close()`` tries again); rows are never dropped.

``close()`` then merges the parts into one per table (crash-safe: a merged part is named after
the range it covers and readers prefer it over the parts inside it).

Replay: episodes store the reset seed and options and steps store the action as candidate
positions (and the catalog items shown), so :func:`replay` re-runs a log on a fresh env built from
the manifest's spec and reproduces it exactly with the embedded backend.
"""

from simrec.trajectory.reader import Trajectories, committed_parts, read_manifest, read_trajectories
from simrec.trajectory.recorder import Recorder, TrajectoryWriter, VectorRecorder
from simrec.trajectory.replay import replay
from simrec.trajectory.schema import (
    SCHEMA_VERSION,
    RunManifest,
    TrajectoryFormatError,
    TrajectoryWriteError,
)

__all__ = [
    "SCHEMA_VERSION", "RunManifest", "TrajectoryFormatError", "TrajectoryWriteError", "TrajectoryWriter",
    "Recorder", "VectorRecorder", "Trajectories", "committed_parts", "read_manifest", "read_trajectories", "replay",
]
