"""Writing logs: ``TrajectoryWriter`` (parts, flushes, merges) and the ``Recorder`` / ``VectorRecorder`` wrappers."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from gymnasium.vector import VectorWrapper

from simrec.cognition.base import SOURCE_NAMES
from simrec.resume import ResumeError, check_same, without_transport
from simrec.trajectory.reader import Trajectories, _assemble, committed_parts, read_manifest, read_trajectories
from simrec.trajectory.schema import (
    _PARQUET,
    CALL_FIELDS,
    EPISODE_FIELDS,
    MANIFEST,
    SCHEMA_VERSION,
    STEP_FIELDS,
    TABLES,
    TrajectoryWriteError,
    _align,
    _call_row,
    _json_default,
    _latent_fields,
    _latent_values,
    _now,
    _part_name,
    _part_range,
    _schema,
    _versions,
)


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
        resume: continue the log already in ``path`` (see :meth:`_resume`): keep its complete
            episodes (:attr:`resumed_from` of them) and append after them. Without a log there, start one.
    """

    def __init__(self, path: str | Path | None, manifest: dict[str, Any], *, flush_every: int = 1,
                 overwrite: bool = False, fsync: bool = False, retries: int = 2, resume: bool = False) -> None:
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
        #: complete episodes kept from the log this writer resumed (0 for a new log)
        self.resumed_from = 0
        self.resumed = False
        self._was_closed = False  # the resumed log had been closed
        self._reopened = False  # the resumed log's manifest has been rewritten as open
        self._lock: int | None = None
        if self.path is not None:
            if resume:  # a resumable log has one writer at a time: two would number their parts alike
                self.path.mkdir(parents=True, exist_ok=True)
                self._lock = _lock_dir(self.path)
            try:
                if resume and (self.path / MANIFEST).is_file():
                    self._resume()
                else:
                    self._prepare_dir(overwrite or (resume and not _has_parts(self.path)))
                    self.write_manifest()
            except BaseException:
                self.release()
                raise

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

    # -- resuming ----------------------------------------------------------------------------------
    def _resume(self) -> None:
        """Reopen the log in ``path`` to append to it.

        Refuses (:class:`~simrec.resume.ResumeError`) when it was made with another spec, recommender or
        metadata (``metadata["arguments"]`` first, so the message names the command-line argument).
        Keeps the leading complete episodes (a run interrupted by Ctrl-C ends with an incomplete one,
        which is cut off), removes what no reader uses (temporary files, parts of an interrupted flush
        or merge, parts a merge covers) and numbers new parts after the kept ones. Nothing is written
        when the log is complete as it is: the manifest is rewritten as open only before the first new
        part, so resuming a finished run that has nothing left to do leaves it untouched.
        """
        p = self.path
        assert p is not None
        old = read_manifest(p)
        _check_resumable(old, self.manifest, p)
        if old.get("vector"):
            raise ResumeError(f"{p}: vector-env logs cannot be resumed. Fix: record with Recorder around a SlateEnv.")
        names = committed_parts(p)
        keep = set(names)
        for tmp in p.glob(f".{MANIFEST}.*.tmp"):
            tmp.unlink(missing_ok=True)
        for t in TABLES:  # everything else is garbage of a killed writer; a later part may reuse its name
            (p / t).mkdir(parents=True, exist_ok=True)
            for f in (p / t).iterdir():
                if f.name.endswith(".tmp") or (f.name.startswith("part-") and f.name not in keep):
                    f.unlink(missing_ok=True)
        eps = _read_columns(p, names, "episodes", ["episode", "complete"])
        e = np.asarray(eps["episode"], np.int64)
        order = np.argsort(e, kind="stable")
        e, complete = e[order], np.asarray(eps["complete"], bool)[order]
        if not np.array_equal(e, np.arange(e.size)):
            raise ResumeError(f"{p}: episodes are not numbered 0..{e.size - 1} (damaged or edited log); cannot "
                              "resume. Fix: start again with --overwrite (overwrite=True).")
        k = int(np.argmin(complete)) if not complete.all() else int(e.size)
        names = self._truncate(names, k)
        self.resumed, self.resumed_from = True, k
        steps = _read_columns(p, names, "steps", ["episode"])
        calls = _read_columns(p, names, "calls", ["episode"])
        if names:
            first = next((p / "steps" / n for n in names if (p / "steps" / n).is_file()), None)
            if first is not None:  # merging later must keep the kept parts' latent columns
                self._latent = [f for f in pq.read_schema(first) if f.name.startswith("latent_")] or None
            self._part = max(_part_range(n)[1] for n in names) + 1  # type: ignore[index]
        run_id = uuid.uuid4().hex
        self._was_closed = old.get("closed") is not None
        fresh = self.manifest
        self.manifest = dict(old)
        self.manifest.update(episodes=k, steps=len(steps["episode"]), calls=len(calls["episode"]),
                             flush_every=self.flush_every)
        self.manifest["resumes"] = list(old.get("resumes") or []) + [
            {"at_episode": k, "run_id": run_id, "time": _now().isoformat(), "versions": fresh["versions"]}]
        if k < e.size:  # the log changed: say so in the manifest now
            self._reopen()

    def _truncate(self, names: list[str], k: int) -> list[str]:
        """Drop the rows of episodes ``>= k`` from the committed parts; the names of the parts left.

        A part losing all its rows is deleted (episodes file first: that uncommits it); one losing some
        is rewritten under its own name (episodes file last). Either way a kill in between leaves a log
        that the next resume truncates the same way.
        """
        p = self.path
        assert p is not None
        left = []
        for name in names:
            tables, changed = {}, False
            for t in TABLES:
                f = p / t / name
                if not f.is_file():
                    continue
                tb = pq.read_table(f)
                col = tb.column("episode")
                keep = pc.fill_null(pc.less(col, k), True)  # calls without an episode stay with their part
                if not pc.all(keep).as_py():
                    tb, changed = tb.filter(keep), True
                tables[t] = tb
            if not changed:
                left.append(name)
            elif all(tb.num_rows == 0 for tb in tables.values()):
                for t in ("episodes", "steps", "calls"):
                    (p / t / name).unlink(missing_ok=True)
            else:
                for t in ("steps", "calls", "episodes"):
                    if t in tables:
                        self._write_atomic(lambda fh, tb=tables[t]: pq.write_table(tb, fh, **_PARQUET), p / t / name)
                left.append(name)
        return left

    def release(self) -> None:
        """Let another writer resume this log (done by :meth:`close`)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _reopen(self) -> None:
        """Mark a resumed log as open (``closed`` null) before it changes."""
        if self.resumed and not self._reopened:
            self.manifest["closed"] = None
            self.write_manifest()
            self._reopened = True

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
            self._reopen()
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
        if self.resumed and self._was_closed and not self._reopened:
            self.closed = True  # a finished log with nothing new: leave it exactly as it was
            self.release()
            return
        if compact:
            self.compact()
        self.manifest.update(manifest_updates)
        self.manifest["closed"] = _now().isoformat()
        self.write_manifest()
        self.closed = True
        self.release()

    def trajectories(self) -> Trajectories:
        """The log so far (flushed parts only) as DataFrames."""
        if self.path is not None:
            return read_trajectories(self.path)
        return _assemble({k: v for k, v in self._memory.items()}, dict(self.manifest), None)


def _lock_dir(path: Path) -> int | None:
    """An exclusive advisory lock on the directory ``path`` (released by closing the returned descriptor,
    or when the process dies, ``kill -9`` included); None where the OS has no ``flock``."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; keeping to one resuming process is then up to the user
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ResumeError(f"{path}: another process is writing this log. Fix: wait for it to finish (or stop it), "
                          "then resume.") from None
    return fd


def _has_parts(path: Path) -> bool:
    return any(any((path / t).glob("part-*.parquet")) for t in TABLES if (path / t).is_dir())


def _read_columns(path: Path, names: list[str], table: str, columns: list[str]) -> dict[str, list]:
    """``columns`` of ``table`` over the parts ``names`` (missing files skipped), as Python lists."""
    tbs = [pq.read_table(f, columns=columns) for f in (path / table / n for n in names) if f.is_file()]
    if not tbs:
        return {c: [] for c in columns}
    tb = pa.concat_tables(tbs, promote_options="default")
    return {c: tb.column(c).to_pylist() for c in columns}


def _resume_key(m: dict[str, Any]) -> dict[str, Any]:
    """What must match between a log and the run resuming it (besides ``metadata["arguments"]``)."""
    spec = dict(m.get("spec") or {})
    spec["backend_config"] = without_transport(spec.get("backend_config"))
    meta = {k: v for k, v in (m.get("metadata") or {}).items() if k != "arguments"}
    return {"spec": spec, "recommender": m.get("recommender"), "backend": m.get("backend"), "metadata": meta}


def _check_resumable(old: dict[str, Any], new: dict[str, Any], where: Path) -> None:
    oa, na = (old.get("metadata") or {}).get("arguments"), (new.get("metadata") or {}).get("arguments")
    restart = "start again with --overwrite (overwrite=True)"
    if oa is not None and na is not None:  # first, so that the message names a command-line argument
        check_same(oa, na, where, restart=restart)
    check_same(_resume_key(old), _resume_key(new), where, restart=restart)


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
    """Record every step of a :class:`~simrec.envs.slate_env.SlateEnv` to a trajectory log.

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
        resume: continue the log in ``path`` (a new one if there is none): the first
            :attr:`resumed_from` episodes are already logged, and are *replayed* rather than recorded.

    Resuming: drive the env and the recommender exactly as the interrupted run did, from its first
    ``reset(seed=...)``. While the episodes already in the log are replayed, nothing is written;
    every step is checked against the log (candidates, slate, clicks, reward, episode end), so the env
    (population, RNG, LLM notes) and the recommender (learned model, RNG) reach the state they had
    after those episodes, and a run that does not reproduce raises
    :class:`~simrec.resume.ResumeError` instead of silently continuing differently. Recording
    resumes with episode ``resumed_from``. With an LLM backend, replayed calls come from its cache.
    """

    def __init__(self, env: gymnasium.Env, path: str | Path | None, *, flush_every: int = 1,
                 overwrite: bool = False, log_latent: bool = True, log_candidates: bool = True,
                 recommender: str | None = None, metadata: dict[str, Any] | None = None,
                 fsync: bool = False, compact: bool = True, resume: bool = False) -> None:
        super().__init__(env)
        base = _unwrapped_sim(env)
        self._base = base
        self.compact = compact
        self.log_latent = log_latent
        self.log_candidates = log_candidates
        self.writer = TrajectoryWriter(path, _manifest_base(base, recommender, metadata), flush_every=flush_every,
                                       overwrite=overwrite, fsync=fsync, resume=resume)
        self._replay = _LoggedRun(self.writer) if self.writer.resumed_from else None
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

    @property
    def resumed_from(self) -> int:
        """Episodes already in the resumed log (replayed, not recorded); 0 for a new log."""
        return self.writer.resumed_from

    @property
    def replaying(self) -> bool:
        """True while the episode in progress is one of the resumed log's (see the class docstring)."""
        return self._replay is not None and 0 <= self._episode < self.resumed_from

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if self._replay is not None and self._episode + 1 <= self.resumed_from:
            if self._episode >= 0:
                self._replay.check_end(self._episode)
            if self._episode + 1 < self.resumed_from:
                return self._replay_reset(seed, options)
        # An unfinished session is committed as incomplete, even with no steps: its reset drew
        # random numbers, so replay must repeat it.
        if self._ep is not None and not self._ep["done"]:
            self._commit(complete=False)
        prev = self._episode
        prev_t = self._ep["last_t"] if self._ep is not None else (self._replay.t if self._replay is not None else 0)
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

    def _replay_reset(self, seed: int | None, options: dict[str, Any] | None):
        obs, info = self.env.reset(seed=seed, options=options)
        _drain(self.backend)  # calls of a replayed episode are in the log already
        self._episode += 1
        assert self._replay is not None
        user = str(info.get("user_id", self._base.sim.pop.user_id(self._base.user_index)))
        self._replay.check_reset(self._episode, user, seed)
        self._cands = np.asarray(info["candidate_items"], dtype=np.int64)
        return obs, info

    def _replay_step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        _drain(self.backend)
        assert self._replay is not None
        self._replay.check_step(self._episode, self._cands, np.asarray(info["slate_items"], np.int64).reshape(-1),
                                np.asarray(info["clicked"], bool).reshape(-1), float(reward), bool(terminated),
                                bool(truncated))
        self._cands = np.asarray(info["candidate_items"], dtype=np.int64)
        return obs, reward, terminated, truncated, info

    def step(self, action: Any):
        if self.replaying:
            return self._replay_step(action)
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
        if self._replay is not None and self._replay.diverged:
            # the run did not reproduce the log: leave the log as the interrupted run left it
            self.writer.closed = True
            self.writer.release()
        else:
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


class _LoggedRun:
    """The episodes of a resumed log, to check their replay against (see :class:`Recorder`)."""

    def __init__(self, writer: TrajectoryWriter) -> None:
        p = writer.path
        assert p is not None
        self.path = p
        names = committed_parts(p)
        eps = _read_columns(p, names, "episodes", ["episode", "user", "reset_seed", "steps"])
        order = np.argsort(eps["episode"], kind="stable")
        self.user = [eps["user"][i] for i in order]
        self.reset_seed = [eps["reset_seed"][i] for i in order]
        self.n_steps = np.asarray(eps["steps"], np.int64)[order]
        cols = ["episode", "t", "slate", "clicked", "reward", "terminated", "truncated", "candidates"]
        tbs = [pq.read_table(f, columns=cols) for f in (p / "steps" / n for n in names) if f.is_file()]
        tb = (pa.concat_tables(tbs, promote_options="default") if tbs else pa.schema(
            [f for f in STEP_FIELDS if f.name in cols]).empty_table())
        tb = tb.sort_by([("episode", "ascending"), ("t", "ascending")])
        self.episode = tb.column("episode").to_numpy()
        self.start = np.searchsorted(self.episode, np.arange(len(self.user) + 1))
        self.slate = _rows(tb.column("slate"))
        self.clicked = _rows(tb.column("clicked"))
        self.candidates = _rows(tb.column("candidates"))
        self.reward = tb.column("reward").to_numpy(zero_copy_only=False)
        self.terminated = tb.column("terminated").to_pylist()
        self.truncated = tb.column("truncated").to_pylist()
        self.t = 0  # steps replayed in the current episode
        self.diverged = False

    def _fail(self, episode: int, what: str, logged: Any, now: Any) -> None:
        self.diverged = True
        raise ResumeError(
            f"cannot resume {self.path}: replaying its {len(self.user)} logged episodes (to rebuild the env and "
            f"recommender state) gave a different {what} in episode {episode}, step {self.t} "
            f"(log: {logged}, now: {now}). "
            "The run does not reproduce: other arguments or code versions, an LLM backend without its cache, "
            "or a recommender with unseeded randomness. Fix: start again with --overwrite (overwrite=True)."
        )

    def check_reset(self, episode: int, user: str, seed: int | None) -> None:
        self.t = 0
        if user != self.user[episode]:
            self._fail(episode, "user", self.user[episode], user)
        if seed != self.reset_seed[episode]:
            self._fail(episode, "reset seed", self.reset_seed[episode], seed)

    def check_step(self, episode: int, cands: np.ndarray, slate: np.ndarray, clicked: np.ndarray, reward: float,
                   terminated: bool, truncated: bool) -> None:
        i = int(self.start[episode]) + self.t
        self.t += 1
        if i >= self.start[episode + 1]:
            self._fail(episode, "session length", int(self.n_steps[episode]), f"more than {self.t - 1} steps")
        if self.candidates[i] is not None and not np.array_equal(cands, self.candidates[i]):
            self._fail(episode, "candidate set", self.candidates[i], cands.tolist())
        if not np.array_equal(slate, self.slate[i]):
            self._fail(episode, "slate", self.slate[i], slate.tolist())
        if not np.array_equal(clicked, self.clicked[i]):
            self._fail(episode, "clicks", self.clicked[i], clicked.tolist())
        if reward != self.reward[i] or terminated != self.terminated[i] or truncated != self.truncated[i]:
            self._fail(episode, "reward or episode end", (self.reward[i], self.terminated[i], self.truncated[i]),
                       (reward, terminated, truncated))

    def check_end(self, episode: int) -> None:
        """The replayed ``episode`` had as many steps as the logged one."""
        if self.t != self.n_steps[episode]:
            self._fail(episode, "session length", int(self.n_steps[episode]), self.t)


def _rows(col: pa.ChunkedArray) -> Any:
    """A list column as a 2-d array when every row has the same length (compact for long logs), else a
    list of lists; None per row where the column is null (e.g. candidates not logged)."""
    arr = col.combine_chunks()
    if len(arr) and arr.null_count == 0:
        lengths = pc.list_value_length(arr).to_numpy()
        if (lengths == lengths[0]).all():
            return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), int(lengths[0]))
    return arr.to_pylist()


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
    """Record a :class:`~simrec.envs.vector_env.SlateVectorEnv` (same-step autoreset) to a trajectory log.

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
