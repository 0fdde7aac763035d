"""Persistent record/replay cache of LLM replies (SQLite).

A reply is keyed by the SHA-256 of the canonical JSON of the whole request: model, messages,
sampling parameters (temperature, top_p, max_tokens), seed and the response format with its JSON
schema. The server's address is deliberately not in the key: the same model and request give the
same reply wherever it is served.

Modes:

* ``off``: no cache.
* ``read-write``: serve hits, record misses (and failed requests, for replay).
* ``replay``: serve hits only; a miss raises :class:`CacheMissError`. A request that failed
  when the run was recorded fails the same way again, so the backend's fallback, and with it the
  whole trajectory, replays exactly.

A second table maps a *prompt-input fingerprint* (a hash of everything a prompt is rendered
from: persona, numeric state, memory, page, notes, settings and the prompt code itself) to the
rendered messages and the key of their first request. Replaying through it skips re-rendering the
prompt, which is most of a replayed step's cost.

One file can be shared by runs and processes (WAL journal); writes are committed in batches.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from simrec.errors import ConfigError, SimrecError

CacheMode = Literal["off", "read-write", "replay"]
SCHEMA_VERSION = 1

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    content TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    finish_reason TEXT,
    latency_s REAL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS prompts (
    fp TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    messages TEXT NOT NULL,
    audit TEXT NOT NULL,
    params TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    error TEXT NOT NULL,
    created REAL NOT NULL
);
"""


class CacheMissError(SimrecError):
    """Replay-only cache has no reply for a request."""


@dataclass(frozen=True)
class CachedReply:
    content: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None


@dataclass(frozen=True)
class CachedPrompt:
    """A prompt recorded under its input fingerprint: its first request's key, the rendered
    messages (JSON), audit and parameters, and that request's reply if one was recorded."""

    key: str
    messages: str
    audit: str
    params: str
    reply: CachedReply | None


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class ResponseCache:
    """SQLite-backed reply cache; see the module docstring for modes.

    Args:
        path: database file (created with its parent directory in ``read-write`` mode).
        mode: ``"read-write"`` or ``"replay"`` (use no cache object for ``"off"``).
        commit_every: writes buffered before a commit (``commit()`` also flushes).
    """

    def __init__(self, path: str | Path, mode: CacheMode = "read-write", commit_every: int = 256) -> None:
        if mode not in ("read-write", "replay"):
            raise ConfigError(f"cache mode must be 'read-write' or 'replay' (or no cache for 'off'), got {mode!r}")
        self.path = Path(path)
        self.mode: CacheMode = mode
        if mode == "replay" and not self.path.is_file():
            raise ConfigError(f"{self.path}: replay cache not found. "
                              "Fix: record a run first with cache_mode='read-write'.")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: lookups run on the caller's thread, writes on the client's loop
        # thread; the lock serialises them.
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level="DEFERRED")
        self._lock = threading.Lock()
        self._pending = 0
        self.commit_every = commit_every
        self.hits = self.misses = self.writes = 0
        with self._lock:
            if mode == "read-write":
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_DDL)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                self._db.commit()
            try:
                row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            except sqlite3.DatabaseError as e:
                raise ConfigError(f"{self.path}: not a simrec LLM cache ({e}). Fix: pass another cache_path.") from None
            if row is None or int(row[0]) != SCHEMA_VERSION:
                raise ConfigError(f"{self.path}: cache format version {row and row[0]}, expected {SCHEMA_VERSION}. "
                                  "Fix: use a new cache_path.")

    @property
    def readable(self) -> bool:
        return True

    @property
    def writable(self) -> bool:
        return self.mode == "read-write"

    @staticmethod
    def key(request: dict[str, Any]) -> str:
        """SHA-256 of the canonical request (model, messages, sampling, seed, response format)."""
        return hashlib.sha256(canonical_json(request).encode("utf-8")).hexdigest()

    def get(self, key: str) -> CachedReply | None:
        with self._lock:
            row = self._db.execute(
                "SELECT content, prompt_tokens, completion_tokens, finish_reason FROM replies WHERE key=?", (key,)
            ).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return CachedReply(row[0], int(row[1]), int(row[2]), row[3])

    def get_prompt(self, fp: str) -> CachedPrompt | None:
        """The prompt recorded under input fingerprint ``fp`` (see ``LLMCognition``), with its reply."""
        with self._lock:
            row = self._db.execute(
                "SELECT p.key, p.messages, p.audit, p.params, r.content, r.prompt_tokens, r.completion_tokens, "
                "r.finish_reason FROM prompts p LEFT JOIN replies r ON r.key = p.key WHERE p.fp=?", (fp,)
            ).fetchone()
        if row is None:
            return None
        reply = None if row[4] is None else CachedReply(row[4], int(row[5]), int(row[6]), row[7])
        return CachedPrompt(row[0], row[1], row[2], row[3], reply)

    def put_prompt(self, fp: str, key: str, messages: str, audit: str, params: str) -> None:
        if not self.writable:
            return
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO prompts VALUES (?,?,?,?,?)", (fp, key, messages, audit, params))
            self._bump()

    def get_failure(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT error FROM failures WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, request: dict[str, Any], content: str, prompt_tokens: int, completion_tokens: int,
            finish_reason: str | None, model: str, latency_s: float) -> None:
        if not self.writable:
            raise RuntimeError("cache opened in replay mode is read-only")
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO replies VALUES (?,?,?,?,?,?,?,?,?)",
                (key, model, canonical_json(request), content, int(prompt_tokens), int(completion_tokens),
                 finish_reason, float(latency_s), time.time()),
            )
            self._db.execute("DELETE FROM failures WHERE key=?", (key,))
            self._bump()

    def put_failure(self, key: str, request: dict[str, Any], error: str) -> None:
        if not self.writable:
            return
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO failures VALUES (?,?,?,?)",
                             (key, canonical_json(request), error, time.time()))
            self._bump()

    def _bump(self) -> None:
        self.writes += 1
        self._pending += 1
        if self._pending >= self.commit_every:
            self._db.commit()
            self._pending = 0

    def commit(self) -> None:
        with self._lock:
            if self._pending:
                self._db.commit()
                self._pending = 0

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        self.commit()
        with self._lock:
            self._db.close()

    def __enter__(self) -> "ResponseCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_cache(path: str | Path | None, mode: str) -> ResponseCache | None:
    """A cache for an :class:`~simrec.llm.LLMConfig`'s ``cache_path`` / ``cache_mode``, or None for off."""
    if mode == "off":
        return None
    if path is None:
        raise ConfigError(f"cache_mode {mode!r} needs a cache_path. Fix: set cache_path (or SIMREC_LLM_CACHE_PATH).")
    return ResponseCache(path, mode)  # type: ignore[arg-type]
