"""Reading logs back as pandas DataFrames, committed parts only."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from simrec.errors import format_validation_error
from simrec.trajectory.schema import (
    _META_KEY,
    CALL_FIELDS,
    EPISODE_FIELDS,
    MANIFEST,
    SCHEMA_VERSION,
    STEP_FIELDS,
    TABLES,
    RunManifest,
    TrajectoryFormatError,
    _part_range,
)


# -- reading --------------------------------------------------------------------------------------
@dataclass
class Trajectories:
    """A trajectory log as DataFrames: ``steps`` (one row per step), ``episodes``, ``calls``, and
    the run ``manifest`` (see :class:`RunManifest`)."""

    steps: pd.DataFrame
    episodes: pd.DataFrame
    calls: pd.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def spec(self) -> Any:
        """The :class:`~simrec.envs.spec.EnvSpec` the log was recorded with."""
        from simrec.envs.spec import EnvSpec

        return EnvSpec.parse(self.manifest["spec"], source=f"{self.path or 'trajectory'}/{MANIFEST} field 'spec'")

    def __repr__(self) -> str:
        return (f"Trajectories({self.manifest.get('env_id')}, episodes={len(self.episodes)}, steps={len(self.steps)}, "
                f"calls={len(self.calls)}, backend={self.manifest.get('backend')})")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check ``manifest.json`` of a log directory."""
    p = Path(path)
    mp = p / MANIFEST
    if not mp.is_file():
        hint = "" if p.is_dir() else " (the directory does not exist)"
        raise TrajectoryFormatError(f"{mp}: no manifest{hint}. Fix: pass a directory written by simrec's Recorder.")
    try:
        raw = json.loads(mp.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TrajectoryFormatError(f"{mp}: not valid JSON (line {e.lineno}): {e.msg}") from None
    _check_version(raw.get("schema_version") if isinstance(raw, dict) else None, mp)
    try:
        return RunManifest.model_validate(raw).model_dump()
    except ValidationError as e:
        err = format_validation_error(mp, e, hint="Fix: the manifest was edited or damaged; restore it from the writer.")
        raise TrajectoryFormatError(str(err)) from None


def _check_version(v: Any, where: Path | str) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise TrajectoryFormatError(f"{where}: unknown trajectory schema version {v!r}; this simrec reads "
                                    f"version {SCHEMA_VERSION}. Fix: is this a simrec trajectory log?")
    if v > SCHEMA_VERSION:
        raise TrajectoryFormatError(f"{where}: trajectory schema version {v} is newer than this simrec supports "
                                    f"({SCHEMA_VERSION}). Fix: upgrade simrec (pip install -U simrec).")


def _read_part(f: Path) -> pa.Table:
    try:
        tb = pq.read_table(f)
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as e:
        raise TrajectoryFormatError(f"{f}: unreadable Parquet part: {e}") from None
    meta = tb.schema.metadata or {}
    raw = meta.get(_META_KEY)
    _check_version(int(raw) if raw is not None and raw.isdigit() else raw, f)
    return tb


def committed_parts(path: str | Path) -> list[str]:
    """Names of the parts a reader uses: those with an episodes part (the commit), merged parts
    preferred over the single parts they cover."""
    ranges = sorted((r[0], -r[1], f.name) for f in (Path(path) / "episodes").glob("part-*.parquet")
                    if (r := _part_range(f.name)) is not None)
    out, last = [], -1
    for a, neg_b, name in ranges:
        if a > last:
            out.append(name)
            last = -neg_b
    return out


def read_trajectories(path: str | Path) -> Trajectories:
    """Read a log directory into :class:`Trajectories`. Parts of an interrupted flush are skipped."""
    p = Path(path)
    manifest = read_manifest(p)
    for attempt in range(3):  # a writer compacting concurrently may delete parts we listed
        try:
            tables: dict[str, list[pa.Table]] = {t: [] for t in TABLES}
            for name in committed_parts(p):
                tables["episodes"].append(_read_part(p / "episodes" / name))
                for t in ("steps", "calls"):
                    f = p / t / name
                    if f.is_file():
                        tables[t].append(_read_part(f))
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
    return _assemble(tables, manifest, p)


_EMPTY = {"steps": STEP_FIELDS, "episodes": EPISODE_FIELDS, "calls": CALL_FIELDS}


def _assemble(tables: dict[str, list[pa.Table]], manifest: dict[str, Any], path: Path | None) -> Trajectories:
    frames = {}
    for t in TABLES:
        tb = (pa.concat_tables(tables[t], promote_options="default") if tables[t]
              else pa.schema(_EMPTY[t]).empty_table())
        df = tb.to_pandas()
        for col in ("reset_seed", "seed"):  # keep seeds exact Python ints (float64 would round big seeds)
            if col in df.columns and t != "steps":
                df[col] = pd.Series(tb.column(col).to_pylist(), index=df.index, dtype=object)
        keys = [k for k in ("episode", "t") if k in df.columns]
        if len(df) and keys:
            df = df.sort_values(keys, kind="stable").reset_index(drop=True)
        frames[t] = df
    return Trajectories(frames["steps"], frames["episodes"], frames["calls"], manifest, path)
