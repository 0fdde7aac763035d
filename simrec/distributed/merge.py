"""One trajectory log from many: the units' own logs merged in unit order, with digests to verify it.

Every unit of a grid records its episodes with the ordinary :class:`~simrec.trajectory.Recorder` (or
``VectorRecorder``) into its own *attempt directory*, ``STAGING/<unit key>/<attempt id>/``: a fresh one per
attempt, so a worker killed halfway leaves its partial parts in a directory nobody merges. A unit that
finishes returns the path of its attempt; only those are merged, which makes every episode appear exactly
once however many attempts died.

:func:`merge_logs` writes an ordinary log (``read_trajectories`` reads it; ``simrec inspect`` and
``replay`` work on it): unit ``i`` becomes part ``part-<i>.parquet`` of each table, its episode numbers
shifted by the episodes of the units before it, so the order is the grid's order, not the order units
finished in. The manifest's ``metadata.distributed.units`` lists, per unit, its key, episode range
``[lo, hi)``, row counts, the settings it ran with and a **content digest**: SHA-256 over every column
except wall-clock ones (episode ``started``/``ended``, call ``latency_s``, random ``call_id``), with episode
numbers relative to the unit. The same run done in one process has the same digests, and
:func:`verify_log` recomputes them from the merged parts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from simrec.distributed.executor import DistributedError
from simrec.trajectory import TrajectoryFormatError, committed_parts, read_manifest

TABLES = ("steps", "episodes", "calls")
#: Columns left out of digests: wall-clock times and random ids differ between otherwise identical runs.
VOLATILE: dict[str, frozenset[str]] = {"steps": frozenset(), "episodes": frozenset({"started", "ended"}),
                                       "calls": frozenset({"call_id", "latency_s"})}
MANIFEST = "manifest.json"
# same settings as the recorder's parts: small parts are faster and smaller without dictionaries
_PARQUET = {"compression": "zstd", "use_dictionary": False}


@dataclass
class UnitLog:
    """A finished unit's log, to merge: its attempt directory and what to record about it."""

    key: str
    path: str
    meta: dict[str, Any] = field(default_factory=dict)
    digest: str | None = None  # as computed by the worker; checked again before merging
    user_offset: int = 0  # added to user_index (population shards number their users from 0)


@dataclass
class MergeReport:
    """What a merge wrote (or :func:`verify_log` found)."""

    path: str
    units: list[dict[str, Any]]
    episodes: int
    steps: int
    calls: int
    digest: str
    discarded: list[str] = field(default_factory=list)  # attempt directories of dead attempts, not merged

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- reading and digests ------------------------------------------------------------------------------
def read_tables(path: str | Path, parts: Sequence[str] | None = None) -> dict[str, pa.Table | None]:
    """A log's committed parts (or the named ``parts``) as one Arrow table per table name (None: no rows)."""
    p = Path(path)
    names = committed_parts(p) if parts is None else list(parts)
    out: dict[str, pa.Table | None] = {}
    for t in TABLES:
        files = [p / t / n for n in names if (p / t / n).is_file()]
        tabs = [pq.read_table(f) for f in files]
        out[t] = pa.concat_tables(tabs, promote_options="default") if tabs else None
    return out


def table_digest(tb: pa.Table | None, table: str, *, episode_offset: int = 0, user_offset: int = 0) -> str:
    """SHA-256 of ``tb``'s content in (episode, t) order, wall-clock columns excluded (see the module);
    ``episode_offset``/``user_offset`` are subtracted first, so a merged slice hashes like the unit's own log."""
    h = hashlib.sha256(table.encode())
    if tb is None or tb.num_rows == 0:
        return h.hexdigest()
    keys = [(k, "ascending") for k in ("episode", "t") if k in tb.column_names]
    if keys:
        tb = tb.take(pc.sort_indices(tb, sort_keys=keys))  # stable: calls of one step keep their order
    for name in sorted(set(tb.column_names) - VOLATILE[table]):
        col = tb.column(name).combine_chunks()
        if name == "episode" and episode_offset:
            col = pc.subtract(col, pa.scalar(episode_offset, col.type))
        if name in ("user_index", "user") and user_offset and pa.types.is_integer(col.type):
            col = pc.subtract(col, pa.scalar(user_offset, col.type))
        h.update(f"\x1d{name}:{col.type}".encode())
        _hash_array(h, col)
    return h.hexdigest()


def _hash_array(h: Any, arr: pa.Array) -> None:
    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        lengths = pc.fill_null(pc.list_value_length(arr), -1)
        h.update(np.asarray(lengths, dtype=np.int64).tobytes())
        _hash_array(h, arr.flatten())
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        vals = arr.to_pylist()
        h.update(np.array([-1 if v is None else len(v) for v in vals], dtype=np.int64).tobytes())
        h.update("".join(v for v in vals if v is not None).encode())
    else:
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            arr = arr.cast(pa.int64())
        h.update(np.packbits(np.asarray(arr.is_valid(), dtype=bool)).tobytes())
        vals = np.asarray(arr.fill_null(pa.scalar(False if pa.types.is_boolean(t) else 0, arr.type)))
        if vals.dtype.kind == "f":
            vals = np.where(np.isnan(vals), np.nan, vals)  # one NaN bit pattern
        h.update(np.ascontiguousarray(vals).tobytes())


def tables_digest(tables: dict[str, pa.Table | None], **offsets: int) -> str:
    """One digest over the three tables (see :func:`table_digest`)."""
    return hashlib.sha256("".join(table_digest(tables.get(t), t, **offsets) for t in TABLES).encode()).hexdigest()


def log_digest(path: str | Path) -> str:
    """The content digest of a log directory (equal for equal runs, whichever process wrote them)."""
    return tables_digest(read_tables(path))


# -- merging ------------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _write_atomic(tb: pa.Table, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    pq.write_table(tb, tmp, **_PARQUET)
    os.replace(tmp, dest)


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    tmp = out / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory")
    existing = [n for n in (MANIFEST, *TABLES) if (out / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out}: already holds a trajectory log ({', '.join(existing)}). "
                              "Fix: choose another directory or pass overwrite=True (--overwrite).")
    for n in existing:  # only a log's own entries; the staging directory and anything else stay
        (shutil.rmtree if (out / n).is_dir() else os.remove)(out / n)
    for t in TABLES:
        (out / t).mkdir(parents=True, exist_ok=True)


def _shift(tb: pa.Table, episode_offset: int, user_offset: int, table: str) -> pa.Table:
    meta = tb.schema.metadata
    for name, off in (("episode", episode_offset), ("user_index", user_offset),
                      ("user", user_offset if table == "calls" else 0)):
        if off and name in tb.column_names and pa.types.is_integer(tb.schema.field(name).type):
            i = tb.column_names.index(name)
            col = tb.column(i)
            tb = tb.set_column(i, tb.schema.field(i), pc.add(col, pa.scalar(off, col.type)))
    return tb.replace_schema_metadata(meta)  # keeps the schema version the reader checks


def _sum_stats(stats: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Numeric backend stats summed over units (non-numeric ones kept when every unit agrees)."""
    present = [s for s in stats if s]
    if not present:
        return None
    out: dict[str, Any] = {}
    for s in present:
        for k, v in s.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
            elif k not in out:
                out[k] = v
            elif out[k] != v:
                out[k] = "mixed"
    return out


def merge_unit(u: UnitLog, index: int, lo: int, expect: tuple[int, int], out: str) -> dict[str, Any]:
    """Write unit ``u`` as part ``index`` of the merged log at ``out``, its episodes starting at ``lo``;
    returns its manifest record. Runs wherever the executor puts it (the merge of a big grid runs on the
    workers, one unit each; the driver writes only the manifest)."""
    tables = read_tables(u.path)
    digest = tables_digest(tables)
    if u.digest is not None and u.digest != digest:
        raise DistributedError(f"unit {u.key}: its log at {u.path} changed after its worker finished "
                               f"(digest {digest[:12]} != {u.digest[:12]}). Fix: rerun the grid; never share a "
                               "staging directory between runs.")
    counts = {t: (tables[t].num_rows if tables[t] is not None else 0) for t in TABLES}
    if (counts["episodes"], counts["steps"]) != tuple(expect):
        raise DistributedError(f"unit {u.key}: {u.path} holds {counts['episodes']} episodes / {counts['steps']} "
                               f"steps but its manifest says {expect[0]} / {expect[1]}. Fix: rerun the unit.")
    n_ep = counts["episodes"]
    if n_ep:
        eps = np.asarray(tables["episodes"].column("episode"))
        if not np.array_equal(np.sort(eps), np.arange(n_ep)):
            raise DistributedError(f"unit {u.key}: episodes are not numbered 0..{n_ep - 1}; was it written by one "
                                   "Recorder?")
    name = f"part-{index:06d}.parquet"
    for t in ("steps", "calls", "episodes"):  # episodes last: its part commits the unit (as in the recorder)
        tb = tables[t]
        if tb is not None and tb.num_rows:
            _write_atomic(_shift(tb, lo, u.user_offset, t), Path(out) / t / name)
    return {"key": u.key, "index": index, "episodes": [lo, lo + n_ep], "steps": counts["steps"],
            "calls": counts["calls"], "digest": digest, "user_offset": u.user_offset}


def merge_logs(units: Sequence[UnitLog], out: str | Path, *, overwrite: bool = False,
               metadata: dict[str, Any] | None = None, staging: str | Path | None = None,
               keep_staging: bool = False, executor: Any = None) -> MergeReport:
    """Merge ``units`` (in this order) into one log at ``out``; see the module docstring.

    ``metadata`` goes into the manifest next to ``distributed``. With ``staging``, attempt directories
    under it that are not in ``units`` are reported as discarded, and the staging directory is removed
    after the merge unless ``keep_staging``. ``executor`` (a :class:`~simrec.distributed.Executor`) runs
    the per-unit rewrites (:func:`merge_unit`) on its workers; without one they run here.
    """
    outp = Path(out)
    if not units:
        raise ValueError("merge_logs needs at least one unit")
    manifests = []
    for u in units:
        try:
            manifests.append(read_manifest(u.path))
        except TrajectoryFormatError as e:
            raise DistributedError(
                f"unit {u.key}: its log at {u.path} cannot be read on this machine ({e}). Fix: write the grid's "
                "output (or staging=) to storage every worker node and the driver mount.") from None
    spec0 = manifests[0]["spec"]
    for u, m in zip(units, manifests):
        if m["spec"] != spec0:
            raise DistributedError(f"unit {u.key} ran a different env spec than unit {units[0].key}; one log holds "
                                   "one spec. Fix: merge the units of each spec separately.")
        if m.get("closed") is None:
            raise DistributedError(f"unit {u.key}: its log at {u.path} was not closed (the attempt did not finish). "
                                   "Fix: merge only attempts whose unit returned.")
    _prepare(outp, overwrite)
    first = manifests[0]
    same = lambda k: first.get(k) if all(m.get(k) == first.get(k) for m in manifests) else None  # noqa: E731
    manifest: dict[str, Any] = {
        "schema_version": first["schema_version"], "simrec_version": first["simrec_version"],
        "run_id": uuid.uuid4().hex, "created": _now(), "closed": None, "env_id": first["env_id"], "spec": spec0,
        "seed": same("seed"), "backend": same("backend") or "mixed", "backend_stats": None,
        "recommender": same("recommender"), "vector": any(m.get("vector") for m in manifests),
        "num_envs": first.get("num_envs", 1), "flush_every": first.get("flush_every", 1),
        "metadata": {**(metadata or {})}, "versions": first.get("versions", {}), "episodes": 0, "steps": 0, "calls": 0,
    }
    _write_manifest(outp, manifest)  # closed: null until every part is in place
    # offsets from the units' manifests, so every unit can be rewritten independently (and in parallel)
    starts = np.concatenate([[0], np.cumsum([m["episodes"] for m in manifests])[:-1]]).astype(int).tolist()
    args = [(u, i, lo, (m["episodes"], m["steps"]), str(outp))
            for i, (u, m, lo) in enumerate(zip(units, manifests, starts))]
    if executor is None:
        records = [merge_unit(*a) for a in args]
    else:
        records = executor.map(merge_unit, args, keys=[f"merge {u.key}" for u in units])
    for r, u, m in zip(records, units, manifests):
        r.update({"run_id": m["run_id"], "seed": m.get("seed"), "recommender": m.get("recommender"),
                  "backend_stats": m.get("backend_stats"), **u.meta})
    total = {"episodes": sum(m["episodes"] for m in manifests), "steps": sum(r["steps"] for r in records),
             "calls": sum(r["calls"] for r in records)}
    merged_digest = _combined([r["digest"] for r in records])
    manifest.update(total, backend_stats=_sum_stats([m.get("backend_stats") for m in manifests]), closed=_now())
    manifest["metadata"]["distributed"] = {"units": records, "digest": merged_digest}
    _write_manifest(outp, manifest)
    discarded: list[str] = []
    if staging is not None and Path(staging).is_dir():
        used = {Path(u.path).resolve() for u in units}
        discarded = sorted(str(a) for d in Path(staging).iterdir() if d.is_dir()
                           for a in d.iterdir() if a.is_dir() and a.resolve() not in used)
        if not keep_staging:
            shutil.rmtree(staging, ignore_errors=True)
    return MergeReport(str(outp), records, total["episodes"], total["steps"], total["calls"], merged_digest, discarded)


def _combined(digests: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def verify_unit(path: str, record: dict[str, Any]) -> None:
    """Check one unit of a merged log against its manifest record (see :func:`verify_log`)."""
    p = Path(path)
    lo, hi = record["episodes"]
    tables = read_tables(p, [f"part-{record['index']:06d}.parquet"])
    n_ep = tables["episodes"].num_rows if tables["episodes"] is not None else 0
    if n_ep != hi - lo:
        raise DistributedError(f"{p}: unit {record['key']} has {n_ep} episodes in its part, the manifest says "
                               f"{hi - lo}. Fix: the merged log is incomplete or damaged; merge again from the "
                               "staging logs.")
    digest = tables_digest(tables, episode_offset=lo, user_offset=record.get("user_offset", 0))
    if digest != record["digest"]:
        raise DistributedError(f"{p}: unit {record['key']}'s rows differ from what its worker wrote "
                               f"(digest {digest[:12]} != {record['digest'][:12]}). Fix: merge again from the "
                               "staging logs.")


def verify_log(path: str | Path, *, executor: Any = None) -> MergeReport:
    """Recompute every unit's digest and counts from a merged log's parts; raises
    :class:`DistributedError` naming the first unit that differs from the manifest. ``executor`` checks
    the units on its workers."""
    p = Path(path)
    m = read_manifest(p)
    units = ((m.get("metadata") or {}).get("distributed") or {}).get("units")
    if not units:
        raise DistributedError(f"{p}: not a merged log (its manifest has no metadata.distributed.units). "
                               "Fix: pass a directory written by simrec.distributed.")
    expect_lo = 0
    for r in units:
        if r["episodes"][0] != expect_lo:
            raise DistributedError(f"{p}: unit {r['key']} starts at episode {r['episodes'][0]}, expected {expect_lo}")
        expect_lo = r["episodes"][1]
    if expect_lo != m["episodes"]:
        raise DistributedError(f"{p}: units cover {expect_lo} episodes, the manifest says {m['episodes']}")
    args = [(str(p), r) for r in units]
    if executor is None:
        for a in args:
            verify_unit(*a)
    else:
        executor.map(verify_unit, args, keys=[f"verify {r['key']}" for r in units])
    return MergeReport(str(p), units, m["episodes"], m["steps"], m["calls"], _combined([r["digest"] for r in units]))


def unit_keys(traj: Any) -> Any:
    """For a merged log's :class:`~simrec.trajectory.Trajectories`, each episode's unit key
    (a pandas Series indexed like ``traj.episodes``); group by it for per-recommender/seed/shard analysis."""
    import pandas as pd

    units = ((traj.manifest.get("metadata") or {}).get("distributed") or {}).get("units") or []
    if not units:
        raise DistributedError("not a merged log: its manifest has no metadata.distributed.units")
    bounds = np.array([u["episodes"][1] for u in units])
    keys = np.array([u["key"] for u in units], dtype=object)
    idx = np.searchsorted(bounds, traj.episodes["episode"].to_numpy(), side="right")
    return pd.Series(keys[idx], index=traj.episodes.index, name="unit")
