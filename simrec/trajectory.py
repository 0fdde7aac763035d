"""Trajectory logs: record simrec runs as Parquet, read them back as pandas, replay them.

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

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from gymnasium.vector import VectorWrapper
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simrec.cognition.base import SOURCE_NAMES
from simrec.errors import SimrecError, format_validation_error

#: Version of the on-disk layout. Readers refuse logs with a newer version.
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TABLES = ("steps", "episodes", "calls")
_META_KEY = b"simrec.schema_version"


class TrajectoryFormatError(SimrecError, ValueError):
    """A trajectory log is missing, damaged, or written by an incompatible simrec."""


class TrajectoryWriteError(SimrecError, OSError):
    """Writing a trajectory part failed after retries; the rows are still buffered."""


# -- schemas --------------------------------------------------------------------------------------
STEP_FIELDS: list[pa.Field] = [
    pa.field("episode", pa.int64(), nullable=False),
    pa.field("t", pa.int32(), nullable=False),  # 1 for the first step of a session
    pa.field("user", pa.string()),  # persona user id
    pa.field("user_index", pa.int64()),  # population index
    pa.field("action", pa.list_(pa.int32())),  # candidate positions, top of the slate first
    pa.field("slate", pa.list_(pa.int64())),  # catalog indices shown
    pa.field("slate_ids", pa.list_(pa.string())),  # catalog item ids shown
    pa.field("clicked", pa.list_(pa.bool_())),
    pa.field("rating", pa.list_(pa.float32())),  # NaN = not rated
    pa.field("consumption", pa.list_(pa.float32())),
    pa.field("reward", pa.float64()),
    pa.field("terminated", pa.bool_()),  # the user left
    pa.field("truncated", pa.bool_()),
    pa.field("source", pa.string()),  # embedded | llm | fallback | cache
    pa.field("concept_shift", pa.bool_()),
    pa.field("reason", pa.string()),
    pa.field("candidates", pa.list_(pa.int64())),  # catalog indices the action indexed into
]
EPISODE_FIELDS: list[pa.Field] = [
    pa.field("episode", pa.int64(), nullable=False),
    pa.field("user", pa.string()),
    pa.field("user_index", pa.int64()),
    pa.field("env_index", pa.int32()),  # vector env slot (0 for SlateEnv)
    pa.field("reset_seed", pa.int64()),  # seed passed to reset(), null when the world continued
    pa.field("reset_options", pa.string()),  # JSON
    pa.field("steps", pa.int32()),
    pa.field("return", pa.float64()),
    pa.field("clicks", pa.int64()),
    pa.field("shown", pa.int64()),
    pa.field("rated", pa.int64()),
    pa.field("mean_rating", pa.float64()),
    pa.field("terminated", pa.bool_()),
    pa.field("truncated", pa.bool_()),
    pa.field("complete", pa.bool_()),  # false: the run ended mid-session
    pa.field("started", pa.timestamp("us", tz="UTC")),
    pa.field("ended", pa.timestamp("us", tz="UTC")),
    pa.field("latent_start", pa.string()),  # JSON snapshot at session start
]
CALL_FIELDS: list[pa.Field] = [
    pa.field("episode", pa.int64()),
    pa.field("t", pa.int32()),
    pa.field("call_id", pa.string()),
    pa.field("user", pa.int64()),
    pa.field("user_id", pa.string()),
    pa.field("kind", pa.string()),
    pa.field("model", pa.string()),
    pa.field("base_url", pa.string()),
    pa.field("params", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("messages", pa.string()),
    pa.field("raw_reply", pa.string()),
    pa.field("parsed", pa.string()),
    pa.field("parse_status", pa.string()),
    pa.field("audit", pa.string()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
    pa.field("latency_s", pa.float64()),
    pa.field("cost_usd", pa.float64()),
    pa.field("cache_hit", pa.bool_()),
    pa.field("fallback", pa.bool_()),
    pa.field("error", pa.string()),
    pa.field("extra", pa.string()),  # JSON of any keys beyond the contract, so nothing is lost
]
_CALL_KEYS = {f.name for f in CALL_FIELDS} - {"episode", "t", "extra"}


def _schema(fields: list[pa.Field], table: str) -> pa.Schema:
    return pa.schema(fields, metadata={_META_KEY: str(SCHEMA_VERSION).encode(), b"simrec.table": table.encode()})


def _latent_fields(snapshot: dict[str, Any]) -> list[pa.Field]:
    """Arrow fields ``latent_<key>`` for a latent-state snapshot (types fixed by the first one seen)."""
    out = []
    for k, v in snapshot.items():
        v = np.asarray(v)
        if v.ndim >= 1:
            t = pa.list_(pa.float32())
        elif v.dtype == np.bool_:
            t = pa.bool_()
        elif np.issubdtype(v.dtype, np.integer):
            t = pa.int64()
        else:
            t = pa.float64()
        out.append(pa.field(f"latent_{k}", t))
    return out


def _latent_values(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {f"latent_{k}": (np.asarray(v).reshape(-1).tolist() if np.ndim(v) else np.asarray(v).item())
            for k, v in snapshot.items()}


class RunManifest(BaseModel):
    """``manifest.json``: who wrote a log, with what, and how it ended."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = Field(ge=1)
    simrec_version: str
    run_id: str
    created: str = Field(description="ISO 8601 UTC time the recorder started.")
    closed: str | None = Field(None, description="ISO time of close(); null if the process died.")
    env_id: str
    spec: dict[str, Any] = Field(description="The full EnvSpec as JSON (EnvSpec.parse(spec) rebuilds it).")
    seed: int | None = Field(None, description="First seed passed to reset().")
    backend: str
    backend_stats: dict[str, Any] | None = None
    recommender: str | None = None
    vector: bool = False
    num_envs: int = 1
    flush_every: int = 1
    metadata: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    episodes: int = 0
    steps: int = 0
    calls: int = 0


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _versions() -> dict[str, str]:
    import gymnasium as gym

    from simrec import __version__

    return {"simrec": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "gymnasium": gym.__version__, "pyarrow": pa.__version__, "pandas": pd.__version__}


# -- writer ---------------------------------------------------------------------------------------
class TrajectoryWriter:
    """Buffers finished episodes and writes them as atomic Parquet parts (see the module docstring).

    Args:
        path: log directory, or ``None`` to keep everything in memory (see :meth:`trajectories`).
        manifest: fields of :class:`RunManifest` known at start.
        flush_every: write a part after this many finished episodes (and always on ``close``).
        overwrite: replace an existing log in ``path`` (otherwise refuse to touch it).
        fsync: fsync each part before renaming it (survives power loss, not only a killed process).
        retries: extra attempts of a failed write before raising.
    """

    def __init__(self, path: str | Path | None, manifest: dict[str, Any], *, flush_every: int = 1,
                 overwrite: bool = False, fsync: bool = False, retries: int = 2) -> None:
        if flush_every < 1:
            raise ValueError("flush_every must be >= 1")
        self.path = Path(path) if path is not None else None
        self.flush_every = flush_every
        self.fsync = fsync
        self.retries = retries
        self.manifest = dict(manifest)
        self.manifest.update(schema_version=SCHEMA_VERSION, run_id=uuid.uuid4().hex,
                             created=_now().isoformat(), closed=None, flush_every=flush_every, versions=_versions(),
                             episodes=0, steps=0, calls=0)
        self.manifest.setdefault("simrec_version", self.manifest["versions"]["simrec"])
        self._steps: list[dict] = []
        self._episodes: list[dict] = []
        self._calls: list[dict] = []
        self._latent: list[pa.Field] | None = None
        self._part = 0
        self._memory: dict[str, list[pa.Table]] = {t: [] for t in TABLES}
        self.closed = False
        if self.path is not None:
            self._prepare_dir(overwrite)
            self.write_manifest()

    def _prepare_dir(self, overwrite: bool) -> None:
        p = self.path
        assert p is not None
        if p.exists() and not p.is_dir():
            raise FileExistsError(f"{p}: exists and is not a directory")
        existing = [n for n in (MANIFEST, *TABLES) if (p / n).exists()]
        if existing:
            if not overwrite:
                raise FileExistsError(f"{p}: already holds a trajectory log ({', '.join(existing)}). "
                                      "Fix: choose another directory or pass overwrite=True (--overwrite).")
            for n in existing:  # only our own files; anything else in the directory is left alone
                (shutil.rmtree if (p / n).is_dir() else os.remove)(p / n)
        for t in TABLES:
            (p / t).mkdir(parents=True, exist_ok=True)

    # -- buffering ---------------------------------------------------------------------------------
    @property
    def step_schema(self) -> pa.Schema:
        return _schema(STEP_FIELDS + (self._latent or []), "steps")

    def commit_episode(self, steps: list[dict], episode: dict, calls: Iterable[dict] = ()) -> None:
        """Buffer one finished episode; flush if ``flush_every`` episodes are waiting."""
        self._check_open()
        if self._latent is None:
            snap = next((r["_latent"] for r in steps if r.get("_latent")), None)
            if snap is not None:
                self._latent = _latent_fields(snap)
        for r in steps:
            snap = r.pop("_latent", None)
            if snap is not None:
                r.update(_latent_values(snap))
        self._steps.extend(steps)
        self._episodes.append(episode)
        self._calls.extend(calls)
        self.manifest["episodes"] += 1
        self.manifest["steps"] += len(steps)
        if len(self._episodes) >= self.flush_every:
            self.flush()

    def add_calls(self, calls: Iterable[dict]) -> None:
        """Buffer calls that belong to an already committed episode (written with the next flush)."""
        self._check_open()
        self._calls.extend(calls)

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this trajectory writer is closed")

    # -- writing -----------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write everything buffered as one part (no-op when nothing is buffered)."""
        if not (self._steps or self._episodes or self._calls):
            return
        tables = {
            "steps": pa.Table.from_pylist(self._steps, schema=self.step_schema),
            "calls": pa.Table.from_pylist([_call_row(c) for c in self._calls], schema=_schema(CALL_FIELDS, "calls")),
            "episodes": pa.Table.from_pylist(self._episodes, schema=_schema(EPISODE_FIELDS, "episodes")),
        }
        if self.path is None:
            for k, tb in tables.items():
                self._memory[k].append(tb)
        else:
            name = _part_name(self._part)
            # episodes last: its part commits the flush (the reader skips parts without it)
            for k in ("steps", "calls", "episodes"):
                if k == "calls" and tables[k].num_rows == 0:
                    continue
                self._write_atomic(lambda f, tb=tables[k]: pq.write_table(tb, f, **_PARQUET), self.path / k / name)
        self.manifest["calls"] += len(self._calls)
        self._part += 1
        self._steps, self._episodes, self._calls = [], [], []

    def compact(self) -> None:
        """Merge the parts this writer wrote into one part per table (fewer files, faster reads).

        Crash-safe: the merged parts are named after the range they cover
        (``part-000000-000041.parquet``) and the reader prefers them over the parts they contain,
        so the originals can be deleted afterwards at leisure.
        """
        if self.path is None:
            return
        self.flush()
        names = committed_parts(self.path)
        if len(names) < 2:
            return
        lo, hi = _part_range(names[0])[0], _part_range(names[-1])[1]  # type: ignore[index]
        name = _part_name(lo, hi)
        schemas = {"steps": self.step_schema, "calls": _schema(CALL_FIELDS, "calls"),
                   "episodes": _schema(EPISODE_FIELDS, "episodes")}
        for k in ("steps", "calls", "episodes"):  # episodes last: it commits the merged part
            files = [f for f in (self.path / k / n for n in names) if f.is_file()]
            if not files:
                continue

            def merge(fh: Any, files: list[Path] = files, schema: pa.Schema = schemas[k]) -> None:
                with pq.ParquetWriter(fh, schema, **_PARQUET) as w:
                    chunk: list[pa.Table] = []
                    for f in files:  # row groups of ~50k rows: bounded memory, few groups
                        chunk.append(_align(pq.read_table(f), schema))
                        if sum(c.num_rows for c in chunk) >= 50_000:
                            w.write_table(pa.concat_tables(chunk))
                            chunk = []
                    if chunk:
                        w.write_table(pa.concat_tables(chunk))

            self._write_atomic(merge, self.path / k / name)
        for k in TABLES:
            for f in (self.path / k).glob("part-*.parquet"):
                r = _part_range(f.name)
                if f.name != name and r is not None and lo <= r[0] and r[1] <= hi:
                    f.unlink(missing_ok=True)

    def _write_atomic(self, write: Any, dest: Path) -> None:
        """``write(file)`` to a temporary name, then rename over ``dest``; retried, then raises."""
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        for attempt in range(self.retries + 1):
            try:
                with open(tmp, "wb") as fh:
                    write(fh)
                    if self.fsync:
                        fh.flush()
                        os.fsync(fh.fileno())
                os.replace(tmp, dest)
                return
            except OSError as e:
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass
                if attempt == self.retries:
                    raise TrajectoryWriteError(
                        f"could not write {dest} after {self.retries + 1} attempts: {e}. "
                        "The rows are still buffered; fix the problem (disk space, permissions) and call "
                        "flush() or close() again."
                    ) from e
                time.sleep(0.05 * 2**attempt)

    def write_manifest(self) -> None:
        if self.path is None:
            return
        text = json.dumps(self.manifest, indent=1, default=_json_default)
        tmp = self.path / f".{MANIFEST}.{os.getpid()}.tmp"
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, self.path / MANIFEST)

    def close(self, compact: bool = True, **manifest_updates: Any) -> None:
        """Flush, optionally :meth:`compact`, then finalise the manifest (``closed`` time plus
        ``manifest_updates``)."""
        if self.closed:
            return
        self.flush()
        if compact:
            self.compact()
        self.manifest.update(manifest_updates)
        self.manifest["closed"] = _now().isoformat()
        self.write_manifest()
        self.closed = True

    def trajectories(self) -> Trajectories:
        """The log so far (flushed parts only) as DataFrames."""
        if self.path is not None:
            return read_trajectories(self.path)
        return _assemble({k: v for k, v in self._memory.items()}, dict(self.manifest), None)


_PARQUET = {"compression": "zstd", "use_dictionary": False}  # small parts: faster and smaller without dictionaries


def _part_name(a: int, b: int | None = None) -> str:
    return f"part-{a:06d}.parquet" if b is None or a == b else f"part-{a:06d}-{b:06d}.parquet"


def _part_range(name: str) -> tuple[int, int] | None:
    stem = name[len("part-"):-len(".parquet")] if name.startswith("part-") and name.endswith(".parquet") else ""
    nums = stem.split("-")
    if not 1 <= len(nums) <= 2 or not all(n.isdigit() for n in nums):
        return None
    return int(nums[0]), int(nums[-1])


def _align(tb: pa.Table, schema: pa.Schema) -> pa.Table:
    """``tb`` with ``schema``'s columns in order (missing ones null), for merging parts."""
    cols = [tb.column(f.name).cast(f.type) if f.name in tb.column_names else pa.nulls(tb.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def _call_row(c: dict[str, Any]) -> dict[str, Any]:
    row = {k: c.get(k) for k in _CALL_KEYS}
    row["episode"], row["t"] = c.get("episode"), c.get("t")
    extra = {k: v for k, v in c.items() if k not in _CALL_KEYS and k not in ("episode", "t")}
    row["extra"] = json.dumps(extra, default=_json_default) if extra else None
    for k in ("params", "messages", "parsed", "audit"):  # the contract says JSON strings; accept objects too
        if row[k] is not None and not isinstance(row[k], str):
            row[k] = json.dumps(row[k], default=_json_default)
    return row


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, datetime):
        return o.isoformat()
    return str(o)


def _drain(backend: Any) -> list[dict]:
    fn = getattr(backend, "drain_calls", None)
    return list(fn()) if callable(fn) else []


def _stats(backend: Any) -> dict[str, Any] | None:
    try:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in backend.stats().items()}
    except Exception as e:  # noqa: BLE001 -- stats are provenance, never worth losing the log over
        return {"error": f"stats() failed: {e}"}


def _unwrapped_sim(env: Any) -> Any:
    base = env.unwrapped
    if not hasattr(base, "sim_spec") or not hasattr(base, "sim"):
        raise TypeError(f"the recorder needs a simrec env (SlateEnv / SlateVectorEnv), got {type(base).__name__}")
    return base


def _manifest_base(base: Any, recommender: str | None, metadata: dict | None, **extra: Any) -> dict[str, Any]:
    spec = base.sim_spec
    return {"env_id": spec.id, "spec": spec.model_dump(mode="json"), "seed": None,
            "backend": getattr(base.sim.backend, "name", type(base.sim.backend).__name__),
            "recommender": recommender, "metadata": dict(metadata or {}), **extra}


# -- the Gymnasium wrapper --------------------------------------------------------------------------
class Recorder(gymnasium.Wrapper):
    """Record every step of a :class:`~simrec.env.SlateEnv` to a trajectory log.

    Wrap the env *the recommender acts on* or any wrapper of it: positions are recovered from the
    catalog items shown, so the log holds bare-env actions even under ``TopKScores``.

    Args:
        env: a SlateEnv, possibly wrapped.
        path: log directory (created), or ``None`` to keep the log in memory.
        flush_every: episodes per Parquet part; a killed process loses at most the episodes since
            the last flush (default 1: only the one in progress).
        overwrite: replace an existing log in ``path``.
        log_latent: include the hidden-state snapshot (``info["latent"]``) as ``latent_*`` columns.
        log_candidates: include each step's candidate set (catalog indices).
        recommender, metadata: recorded in the manifest.
        fsync: fsync each part before its rename (also survive power loss; slower).
        compact: merge the parts into one per table on ``close()``.
    """

    def __init__(self, env: gymnasium.Env, path: str | Path | None, *, flush_every: int = 1,
                 overwrite: bool = False, log_latent: bool = True, log_candidates: bool = True,
                 recommender: str | None = None, metadata: dict[str, Any] | None = None,
                 fsync: bool = False, compact: bool = True) -> None:
        super().__init__(env)
        base = _unwrapped_sim(env)
        self._base = base
        self.compact = compact
        self.log_latent = log_latent
        self.log_candidates = log_candidates
        self.writer = TrajectoryWriter(path, _manifest_base(base, recommender, metadata), flush_every=flush_every,
                                       overwrite=overwrite, fsync=fsync)
        self._episode = -1
        self._rows: list[dict] = []
        self._calls: list[dict] = []
        self._ep: dict[str, Any] | None = None
        self._cands = np.zeros(0, np.int64)
        self._closed = False

    @property
    def path(self) -> Path | None:
        return self.writer.path

    @property
    def backend(self) -> Any:
        return self._base.sim.backend

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        # An unfinished session is committed as incomplete, even with no steps: its reset drew
        # random numbers, so replay must repeat it.
        if self._ep is not None and not self._ep["done"]:
            self._commit(complete=False)
        prev, prev_t = self._episode, (self._ep or {}).get("last_t", 0)
        obs, info = self.env.reset(seed=seed, options=options)
        # calls made while resetting (e.g. reflection at the end of the previous session) belong to it
        pending = _drain(self.backend)
        new_calls: list[dict] = []
        if pending and prev >= 0:
            self.writer.add_calls(dict(c, episode=prev, t=prev_t) for c in pending)
        elif pending:
            new_calls = [dict(c, episode=0, t=0) for c in pending]
        if seed is not None and self.writer.manifest.get("seed") is None:
            self.writer.manifest["seed"] = int(seed)
            self.writer.write_manifest()
        self._episode += 1
        u = self._base.user_index
        self._ep = {
            "episode": self._episode, "user": str(info.get("user_id", self._base.sim.pop.user_id(u))),
            "user_index": u, "env_index": 0, "reset_seed": None if seed is None else int(seed),
            "reset_options": json.dumps(options, default=_json_default) if options else None,
            "started": _now(), "latent_start": (json.dumps(info["latent"], default=_json_default)
                                                 if self.log_latent and "latent" in info else None),
            "done": False, "last_t": 0,
        }
        self._rows, self._calls = [], new_calls
        self._cands = np.asarray(info["candidate_items"], dtype=np.int64)
        return obs, info

    def step(self, action: Any):
        if self._ep is None:
            raise RuntimeError("call reset() before step()")
        obs, reward, terminated, truncated, info = self.env.step(action)
        slate = np.asarray(info["slate_items"], dtype=np.int64).reshape(-1)
        t = int(info["t"])
        row = {
            "episode": self._episode, "t": t, "user": self._ep["user"], "user_index": self._ep["user_index"],
            "action": _positions(self._cands, slate, action).tolist(), "slate": slate.tolist(),
            "slate_ids": [self._base.catalog.ids[i] for i in slate],
            "clicked": np.asarray(info["clicked"], bool).reshape(-1).tolist(),
            "rating": _ratings(info["rating"]),
            "consumption": np.asarray(info["consumption"], np.float32).reshape(-1).tolist(),
            "reward": float(reward), "terminated": bool(terminated), "truncated": bool(truncated),
            "source": SOURCE_NAMES.get(int(info.get("source", 0)), str(info.get("source"))),
            "concept_shift": bool(info.get("concept_shift", False)), "reason": info.get("reason"),
            "candidates": self._cands.tolist() if self.log_candidates else None,
        }
        if self.log_latent and "latent" in info:
            row["_latent"] = info["latent"]
        self._rows.append(row)
        self._calls.extend(dict(c, episode=self._episode, t=t) for c in _drain(self.backend))
        self._ep["last_t"] = t
        self._cands = np.asarray(info["candidate_items"], dtype=np.int64)
        if terminated or truncated:
            self._ep.update(terminated=bool(terminated), truncated=bool(truncated))
            self._commit(complete=True)
        return obs, reward, terminated, truncated, info

    def _commit(self, complete: bool) -> None:
        ep = self._ep
        assert ep is not None
        ep["done"] = True
        self.writer.commit_episode(self._rows, _episode_row(ep, self._rows, complete), self._calls)
        self._rows, self._calls = [], []

    def flush(self) -> None:
        """Write finished episodes now (the one in progress is written when it ends or on close)."""
        self.writer.flush()

    def close(self) -> None:
        if self._closed:
            return
        if self._ep is not None and self._rows and not self._ep["done"]:
            self._commit(complete=False)
        late = _drain(self.backend)
        if late and self._ep is not None:
            self.writer.add_calls(dict(c, episode=self._episode, t=self._ep["last_t"]) for c in late)
        self.writer.close(compact=self.compact, backend_stats=_stats(self.backend))
        self._closed = True
        self.env.close()

    def trajectories(self) -> Trajectories:
        """What has been written so far (everything, after ``close()``)."""
        return self.writer.trajectories()


def _positions(cands: np.ndarray, slate: np.ndarray, action: Any) -> np.ndarray:
    """Candidate positions of the shown catalog items (falls back to the raw action)."""
    if cands.size:
        order = np.argsort(cands, kind="stable")
        idx = np.searchsorted(cands[order], slate)
        idx = np.minimum(idx, cands.size - 1)
        pos = order[idx]
        if np.array_equal(cands[pos], slate):
            return pos.astype(np.int64)
    return np.asarray(action, dtype=np.int64).reshape(-1)


def _ratings(r: Any) -> list[float]:
    """Stars as logged: NaN where not rated (the env's info uses 0 for that)."""
    r = np.asarray(r, np.float32).reshape(-1)
    return np.where(r >= 1.0, r, np.nan).tolist()


def _episode_row(ep: dict[str, Any], rows: list[dict], complete: bool) -> dict[str, Any]:
    clicks = sum(sum(r["clicked"]) for r in rows)
    ratings = [x for r in rows for x in r["rating"] if not math.isnan(x)]
    return {
        "episode": ep["episode"], "user": ep["user"], "user_index": ep["user_index"], "env_index": ep["env_index"],
        "reset_seed": ep["reset_seed"], "reset_options": ep["reset_options"], "steps": len(rows),
        "return": float(sum(r["reward"] for r in rows)), "clicks": int(clicks),
        "shown": int(sum(len(r["slate"]) for r in rows)), "rated": len(ratings),
        "mean_rating": float(np.mean(ratings)) if ratings else None,
        "terminated": bool(ep.get("terminated", False)), "truncated": bool(ep.get("truncated", False)),
        "complete": complete, "started": ep["started"], "ended": _now(), "latent_start": ep["latent_start"],
    }


class VectorRecorder(VectorWrapper):
    """Record a :class:`~simrec.vector.SlateVectorEnv` (same-step autoreset) to a trajectory log.

    Each slot's session becomes one episode (numbered in the order sessions end). Actions are
    recorded as candidate positions; the candidate sets and session-start snapshots are not
    available from the vector env, so vector logs are for analysis rather than :func:`replay`.
    """

    def __init__(self, env: Any, path: str | Path | None, *, flush_every: int = 1, overwrite: bool = False,
                 log_latent: bool = True, recommender: str | None = None,
                 metadata: dict[str, Any] | None = None, fsync: bool = False, compact: bool = True) -> None:
        super().__init__(env)
        base = _unwrapped_sim(env)
        self._base = base
        self.compact = compact
        self.log_latent = log_latent
        n = env.num_envs
        self.writer = TrajectoryWriter(path, _manifest_base(base, recommender, metadata, vector=True, num_envs=n),
                                       flush_every=flush_every, overwrite=overwrite, fsync=fsync)
        self._rows: list[list[dict]] = [[] for _ in range(n)]
        self._calls: list[list[dict]] = [[] for _ in range(n)]
        self._eps: list[dict | None] = [None] * n
        self._next_episode = 0
        self._seed: int | None = None
        self._options: dict | None = None
        self._closed = False

    @property
    def path(self) -> Path | None:
        return self.writer.path

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        ended: dict[int, tuple[int, int]] = {}
        for i in range(self.num_envs):
            ep = self._eps[i]
            if ep is not None and self._rows[i]:
                self._commit(i, complete=False)
                ended[ep["user_index"]] = (ep["episode"], ep["last_t"])
        obs, info = self.env.reset(seed=seed, options=options)
        # calls made while resetting (end-of-session reflection) belong to the sessions just cut short
        late = _drain(self._base.sim.backend)
        if late:
            self.writer.add_calls(dict(c, episode=ended.get(int(c.get("user", -1)), (None, 0))[0],
                                       t=ended.get(int(c.get("user", -1)), (None, 0))[1]) for c in late)
        if seed is not None and self.writer.manifest.get("seed") is None:
            self.writer.manifest["seed"] = int(seed)
            self.writer.write_manifest()
        users = np.asarray(info["user"], dtype=np.int64)
        for i in range(self.num_envs):
            self._start(i, int(users[i]), seed if i == 0 else None, options)
        return obs, info

    def _start(self, i: int, u: int | None, seed: int | None, options: dict | None) -> None:
        user = None if u is None else self._base.sim.pop.user_id(u)
        self._eps[i] = {"episode": None, "user": user, "user_index": u, "env_index": i,
                        "reset_seed": None if seed is None else int(seed),
                        "reset_options": json.dumps(options, default=_json_default) if options else None,
                        "started": _now(), "latent_start": None, "done": False, "last_t": 0}
        self._rows[i], self._calls[i] = [], []

    def step(self, actions: Any):
        if any(e is None for e in self._eps):
            raise RuntimeError("call reset() before step()")
        obs, reward, terminated, truncated, info = self.env.step(actions)
        a = np.asarray(actions, dtype=np.int64).reshape(self.num_envs, -1)
        slates = np.asarray(info["slate_items"], dtype=np.int64)
        users = np.asarray(info["user"], dtype=np.int64)
        lat = info.get("latent") if self.log_latent else None
        ids = self._base.catalog.ids
        for i in range(self.num_envs):
            t = int(info["t"][i])
            ep = self._eps[i]
            if ep["user_index"] is None:  # a slot refilled by autoreset: its user shows up now
                ep["user_index"] = int(users[i])
                ep["user"] = self._base.sim.pop.user_id(int(users[i]))
            row = {
                "episode": -1, "t": t, "user": ep["user"], "user_index": int(users[i]),
                "action": a[i].tolist(), "slate": slates[i].tolist(), "slate_ids": [ids[j] for j in slates[i]],
                "clicked": np.asarray(info["clicked"][i], bool).tolist(),
                "rating": _ratings(info["rating"][i]),
                "consumption": np.asarray(info["consumption"][i], np.float32).tolist(),
                "reward": float(reward[i]), "terminated": bool(terminated[i]), "truncated": bool(truncated[i]),
                "source": SOURCE_NAMES.get(int(info["source"][i]), str(info["source"][i])),
                "concept_shift": bool(info["concept_shift"][i]), "reason": None, "candidates": None,
            }
            if lat is not None:
                row["_latent"] = {k: np.asarray(v[i]) for k, v in lat.items()}
            self._rows[i].append(row)
            self._eps[i]["last_t"] = t
        calls = _drain(self._base.sim.backend)
        if calls:  # decisions of this step and reflections of sessions that just ended
            slot_of = {int(u): i for i, u in enumerate(users)}
            for c in calls:
                i = slot_of.get(int(c.get("user", -1)), 0)
                self._calls[i].append(dict(c, t=int(info["t"][i])))
        done = np.asarray(terminated) | np.asarray(truncated)
        for i in np.flatnonzero(done):
            self._eps[i].update(terminated=bool(terminated[i]), truncated=bool(truncated[i]))
            self._commit(int(i), complete=True)
            self._start(int(i), None, None, None)
        return obs, reward, terminated, truncated, info

    def _commit(self, i: int, complete: bool) -> None:
        ep = self._eps[i]
        assert ep is not None
        ep["episode"] = self._next_episode
        self._next_episode += 1
        for r in self._rows[i]:
            r["episode"] = ep["episode"]
        calls = [dict(c, episode=ep["episode"]) for c in self._calls[i]]
        ep["done"] = True
        self.writer.commit_episode(self._rows[i], _episode_row(ep, self._rows[i], complete), calls)
        self._rows[i], self._calls[i] = [], []

    def close(self, **kwargs: Any) -> None:
        if self._closed:
            return
        for i in range(self.num_envs):
            if self._eps[i] is not None and self._rows[i]:
                self._commit(i, complete=False)
        self.writer.close(compact=self.compact, backend_stats=_stats(self._base.sim.backend))
        self._closed = True
        self.env.close(**kwargs)

    def trajectories(self) -> Trajectories:
        return self.writer.trajectories()


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
        """The :class:`~simrec.spec.EnvSpec` the log was recorded with."""
        from simrec.spec import EnvSpec

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


# -- replay ---------------------------------------------------------------------------------------
def replay(source: Trajectories | str | Path, *, env: gymnasium.Env | None = None, backend: Any = None,
           path: str | Path | None = None, overwrite: bool = False) -> Trajectories:
    """Re-run a log's actions on a fresh env built from its spec and return the new log.

    Each episode is reset with its recorded seed and options and stepped with its recorded
    candidate positions. With the embedded backend the result equals the original (same users,
    candidates, responses, rewards and latent states). ``path`` writes the replay to disk.
    """
    traj = source if isinstance(source, Trajectories) else read_trajectories(source)
    if traj.manifest.get("vector"):
        raise TrajectoryFormatError("vector-env logs cannot be replayed step by step (no candidate sets); "
                                    "record with Recorder around a SlateEnv to replay.")
    if env is None:
        from simrec.env import SlateEnv

        env = SlateEnv(traj.spec, backend=backend)
    rec = Recorder(env, path, overwrite=overwrite, recommender=f"replay of {traj.manifest.get('run_id')}",
                   metadata={"replay_of": traj.manifest.get("run_id")}, fsync=False)
    discrete = traj.spec.slate_size == 1
    by_ep = dict(tuple(traj.steps.groupby("episode", sort=True))) if len(traj.steps) else {}
    try:
        for _, ep in traj.episodes.sort_values("episode").iterrows():
            seed = ep["reset_seed"]
            opts = json.loads(ep["reset_options"]) if isinstance(ep["reset_options"], str) else None
            rec.reset(seed=None if seed is None or pd.isna(seed) else int(seed), options=opts)
            steps = by_ep.get(ep["episode"])
            if steps is None:
                continue
            for a in steps.sort_values("t")["action"]:
                a = np.asarray(a, dtype=np.int64)
                rec.step(int(a[0]) if discrete else a)
    finally:
        rec.close()
    return rec.trajectories()
