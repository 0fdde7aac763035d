"""Resuming killed commands: a journal of finished units of work, and the same-arguments check.

A long command splits its work into independent *units* whose results do not depend on each other:
a (recommender, seed) run of ``simrec compare``, a (test, seed) of ``simrec stress run``, a seed of
``simrec fidelity``. A :class:`Journal` keeps each finished unit's result as one JSON file, written
to a temporary name and ``os.replace``-d into place, so after ``kill -9`` at any moment a unit file
is either absent or complete. A rerun with ``--resume`` reuses the finished units and computes the
others; the merged result equals an uninterrupted run's, since every unit is a pure function of the
command's arguments and its own key (seed, recommender).

The journal also keeps the command's *fingerprint*: the arguments that shape every unit's result
(the unit dimensions themselves, such as the number of seeds, are left out, so a rerun may add units).
Resuming with other arguments refuses with an error naming the first one that differs
(:func:`check_same`).

``simrec run --resume`` continues a trajectory log episode by episode instead
(``simrec.trajectory.Recorder(..., resume=True)``) and uses the same check.

This module imports only the standard library and :mod:`simrec.errors`, so every layer may use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from simrec.errors import SimrecError

JOURNAL_FORMAT = 1
JOURNAL_FILE = "journal.json"
UNITS_DIR = "units"
#: Name of the LLM response cache a resumable command keeps next to its journal or log.
LLM_CACHE_FILE = "llm_cache.sqlite"
#: LLM backend settings that say where and how calls travel, not what they answer (the cache key
#: leaves them out for the same reason): they may differ between a run and its resumption.
TRANSPORT_KEYS = frozenset({"base_url", "api_key", "cache_path", "cache_mode", "call_log_path", "timeout_s",
                            "concurrency", "max_retries", "backoff_base_s", "backoff_max_s", "retry_after_max_s"})


class ResumeError(SimrecError):
    """A run cannot be resumed: it was made with other arguments, it is damaged, or it diverged."""


# -- helpers --------------------------------------------------------------------------------------
def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):  # numpy scalars and arrays, without importing numpy here
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if isinstance(o, (Path, datetime)):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")


def to_json_value(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, numpy scalars Python numbers)."""
    return json.loads(json.dumps(obj, default=_json_default))


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = False) -> None:
    """Write ``text`` to ``path`` so that a reader (or a killed writer) sees the old file or the new one, whole."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, p)


def without_transport(backend_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """An LLM backend config without :data:`TRANSPORT_KEYS` (what must match for a run to resume)."""
    return {k: v for k, v in (backend_config or {}).items() if k not in TRANSPORT_KEYS}


def with_llm_cache(config: Mapping[str, Any] | None, directory: str | Path) -> dict[str, Any]:
    """An LLM config whose calls are recorded in ``directory/llm_cache.sqlite``, unless it (or
    ``SIMREC_LLM_CACHE_PATH``) names a cache already. A resumed run replays its finished calls from it."""
    cfg = dict(config or {})
    if cfg.get("cache_path") or os.environ.get("SIMREC_LLM_CACHE_PATH") or cfg.get("cache_mode") == "off":
        return cfg
    cfg["cache_path"] = str((Path(directory) / LLM_CACHE_FILE).resolve())
    return cfg


def first_difference(old: Any, new: Any, name: str = "") -> tuple[str, Any, Any] | None:
    """The first ``(name, old value, new value)`` where two JSON-like values differ (dicts recursively,
    keys joined with dots), or None when they are equal."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for k in list(new) + [k for k in old if k not in new]:
            d = first_difference(old.get(k), new.get(k), f"{name}.{k}" if name else str(k))
            if d is not None:
                return d
        return None
    return None if old == new else (name, old, new)


def _shown(v: Any) -> str:
    return "nothing (not given)" if v is None else json.dumps(v)


def check_same(recorded: Any, current: Any, where: str | Path, *,
               restart: str = "start again without --resume (the finished work there is then discarded)") -> None:
    """Raise :class:`ResumeError` naming the first argument where ``current`` differs from what
    ``where`` was made with (both JSON-like; ``current`` is compared as it would read back from JSON).
    ``restart`` says how to start afresh instead, in the error's fix."""
    d = first_difference(to_json_value(recorded), to_json_value(current))
    if d is None:
        return
    name, old, new = d
    raise ResumeError(
        f"cannot resume {where}: {name} differs (it was made with {_shown(old)}, this command has "
        f"{_shown(new)}). Fix: rerun with the original {name}, choose another directory, or {restart}."
    )


# -- the journal ----------------------------------------------------------------------------------
def _unit_file(unit: str) -> str:
    # readable and collision-free: the sanitised name plus a hash of the exact one
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", unit)[:80]
    return f"{safe}-{hashlib.sha256(unit.encode()).hexdigest()[:10]}.json"


class Journal:
    """Finished units of one command's work, kept in ``path`` (one atomic JSON file per unit).

    Args:
        path: the journal directory (created).
        fingerprint: the arguments that shape every unit's result (JSON-like, user-facing names such
            as ``"--episodes"``).
        resume: reuse the finished units of an earlier run, refusing (:class:`ResumeError`) when its
            fingerprint differs; otherwise, or when ``path`` holds no finished unit, start empty,
            discarding what ``path`` held.
        command: the command's name, for messages and the journal file.
        fsync: fsync each unit before its rename (also survive power loss, not only a killed process).
    """

    def __init__(self, path: str | Path, fingerprint: Mapping[str, Any], *, resume: bool, command: str,
                 fsync: bool = False) -> None:
        self.path = Path(path)
        self.command = command
        self.fsync = fsync
        self.fingerprint = to_json_value(dict(fingerprint))
        self.units_dir = self.path / UNITS_DIR
        self.units_dir.mkdir(parents=True, exist_ok=True)
        for tmp in self.path.glob(".*.tmp"):  # a killed writer's leftovers (never renamed into place)
            tmp.unlink(missing_ok=True)
        for tmp in self.units_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        head = self._read_head(strict=resume)
        self.resumed = bool(resume and head is not None and any(self.units_dir.glob("*.json")))
        if self.resumed:
            assert head is not None
            check_same(head.get("fingerprint"), self.fingerprint, self.path)
            return
        # starting afresh: drop old units first, then write the new head. A kill in between leaves
        # the old head with fewer of its own units, which is still consistent.
        for f in self.units_dir.glob("*.json"):
            f.unlink(missing_ok=True)
        head = {"format": JOURNAL_FORMAT, "command": command, "fingerprint": self.fingerprint,
                "created": datetime.now(timezone.utc).isoformat()}
        atomic_write_text(self.path / JOURNAL_FILE, json.dumps(head, indent=1) + "\n", fsync=fsync)

    def _read_head(self, strict: bool) -> dict[str, Any] | None:
        """The journal file, or None; a damaged one is an error only when resuming (``strict``), but
        another command's journal always is (starting afresh would discard it)."""
        f = self.path / JOURNAL_FILE
        if not f.is_file():
            return None
        try:
            head = json.loads(f.read_text(encoding="utf-8"))
            if not isinstance(head, dict) or head.get("format") != JOURNAL_FORMAT:
                raise ValueError(f"not a simrec journal of format {JOURNAL_FORMAT}")
        except (OSError, ValueError) as e:
            if not strict:
                return None
            raise ResumeError(f"{f}: unreadable journal ({e}). Fix: choose another directory, or start again "
                              "without --resume.") from None
        if head.get("command") != self.command:
            raise ResumeError(f"{f}: a journal of `simrec {head.get('command')}`, not of `simrec {self.command}`. "
                              "Fix: choose another directory.")
        return head

    def get(self, unit: str) -> Any | None:
        """The result of a finished ``unit``, or None if it has not finished."""
        f = self.units_dir / _unit_file(unit)
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:  # renamed into place whole, so only outside damage gets here
            raise ResumeError(f"{f}: unreadable journal entry of {unit!r} ({e}). "
                              f"Fix: delete that file to recompute the unit.") from None
        return rec["value"] if rec.get("unit") == unit else None

    def put(self, unit: str, value: Any) -> None:
        """Record ``unit`` as finished with ``value`` (JSON-like; numpy values become Python ones)."""
        rec = {"unit": unit, "finished": datetime.now(timezone.utc).isoformat(), "value": value}
        atomic_write_text(self.units_dir / _unit_file(unit), json.dumps(rec, default=_json_default) + "\n",
                          fsync=self.fsync)

    def __contains__(self, unit: str) -> bool:
        return self.get(unit) is not None

    def units(self) -> list[str]:
        """Names of the finished units."""
        out = []
        for f in sorted(self.units_dir.glob("*.json")):
            try:
                out.append(str(json.loads(f.read_text(encoding="utf-8"))["unit"]))
            except (OSError, ValueError, KeyError):
                continue
        return out

    @property
    def llm_cache_path(self) -> Path:
        return self.path / LLM_CACHE_FILE

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r}, {self.command}, {len(self.units())} finished units)"


# -- what a unit added to a shared result ---------------------------------------------------------
def changes(before: Any, after: Any, path: tuple[str, ...] = ()) -> list[list[Any]]:
    """The edits that turn JSON-like ``before`` into ``after``, for a unit that adds to a result shared
    with other units: ``["extend", path, items]`` for a list that grew, ``["set", path, value]`` for a
    new or changed value (dicts are compared key by key). :func:`apply_changes` replays them.

    Lists are taken to grow only at their end (per-seed values appended in seed order)."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        out: list[list[Any]] = []
        for k, v in after.items():
            if k in before:
                out += changes(before[k], v, path + (str(k),))
            else:
                out.append(["set", list(path + (str(k),)), to_json_value(v)])
        return out
    if isinstance(before, (list, tuple)) and isinstance(after, (list, tuple)) and len(after) >= len(before):
        tail = list(after[len(before):])
        return [["extend", list(path), to_json_value(tail)]] if tail else []
    new = to_json_value(after)
    return [] if new == before else [["set", list(path), new]]


def apply_changes(target: dict[str, Any], edits: list[list[Any]]) -> None:
    """Apply :func:`changes` to ``target`` in place."""
    for op, path, value in edits:
        node = target
        for k in path[:-1]:
            node = node.setdefault(k, {})
        if op == "extend":
            node.setdefault(path[-1], []).extend(value)
        elif op == "set":
            node[path[-1]] = value
        else:
            raise ResumeError(f"unknown journal edit {op!r}. Fix: the journal was written by another simrec; "
                              "start again without --resume.")
