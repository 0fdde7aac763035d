"""A pool of OpenAI-compatible endpoints behind one client: LLM users spread over several servers.

:class:`EndpointPool` is an :class:`~simrec.llm.client.LLMClient` made of one ``LLMClient`` per endpoint,
each with its **own** concurrency limit (its semaphore: never more requests in flight to that server),
retries and record/replay cache. Per request the pool:

1. serves it from any member's cache (the cache key has no server address, so a reply recorded through
   one endpoint replays through the pool whichever endpoint is up);
2. else sends it to the member with the lowest load relative to its limit (ties: the one given fewer
   requests), waiting for a free slot when all are full, so load follows capacity;
3. when that member gives up on it (its retries spent on timeouts, connection errors, 429 or 5xx), puts the
   member on a short cooldown and tries the next member; an endpoint that answers 401/404 (misconfigured)
   is taken out of the pool with a warning. A bad request (400) is not retried elsewhere: it would fail
   there too. Only when every member failed does the request fail, and the backend falls back as usual.

Members retry once by default (``EndpointConfig.max_retries``): in a pool, another server is a better
retry than waiting for a sick one.

Use it from an env spec (``backend_config`` of ``backend="llm"``; ``simrec.cognition.make_backend`` builds
the pool)::

    backend_config = {"model": "Qwen2.5-7B-Instruct", "cache_path": "runs/llm.sqlite",
                      "endpoints": [{"base_url": "http://gpu0:8000/v1", "concurrency": 32},
                                    {"base_url": "http://gpu1:8000/v1", "concurrency": 16}],
                      "pool": {"cooldown_s": 5}}

or directly: ``LLMCognition(cfg, client=EndpointPool(cfg, PoolConfig(endpoints=[...])))``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from simrec.errors import ConfigError, format_validation_error
from simrec.llm.cache import ResponseCache, open_cache
from simrec.llm.client import (
    AsyncRunner,
    ClientCounters,
    Completion,
    LLMCallError,
    LLMClient,
    LLMConfig,
    LLMFatalError,
    PriceTable,
)

log = logging.getLogger("simrec.llm")

#: backend_config keys that describe the pool (everything else is the shared LLMConfig).
POOL_KEYS = ("endpoints", "pool")


class EndpointConfig(BaseModel):
    """One server of a pool. Unset fields come from the pool's shared :class:`~simrec.llm.LLMConfig`."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(min_length=1, description="OpenAI-compatible base URL ending in /v1.")
    name: str | None = Field(None, description="Label in stats (default: the base URL).")
    model: str | None = Field(None, description="Model name as this server knows it (default: the shared one).")
    api_key: SecretStr | None = None
    concurrency: int = Field(8, ge=1, description="Max requests in flight to this server.")
    max_retries: int = Field(1, ge=0, description="Retries on this server before the pool tries another.")
    timeout_s: float | None = Field(None, gt=0)
    cache_path: str | None = Field(None, description="This server's record/replay cache (default: the shared one).")
    cache_mode: Literal["off", "read-write", "replay"] | None = None

    def label(self) -> str:
        return self.name or self.base_url


class PoolConfig(BaseModel):
    """The endpoints of an :class:`EndpointPool` and how it moves requests between them."""

    model_config = ConfigDict(extra="forbid")

    endpoints: list[EndpointConfig] = Field(min_length=1)
    cooldown_s: float = Field(5.0, ge=0, description="After a member gave up on a request, skip it this long "
                                                     "(while another member is healthy).")
    failover: bool = Field(True, description="Retry a failed request on another member.")

    @classmethod
    def from_backend_config(cls, config: Mapping[str, Any]) -> tuple["PoolConfig | None", dict[str, Any]]:
        """Split an LLM ``backend_config`` into ``(pool config or None, the rest: LLMConfig fields)``."""
        rest = {k: v for k, v in config.items() if k not in POOL_KEYS}
        if "endpoints" not in config:
            if "pool" in config:
                raise ConfigError("LLM backend config: 'pool' without 'endpoints'. Fix: list the servers as "
                                  "endpoints=[{'base_url': ..., 'concurrency': ...}, ...].")
            return None, rest
        try:
            return cls.model_validate({"endpoints": config["endpoints"], **dict(config.get("pool") or {})}), rest
        except ValidationError as e:
            raise format_validation_error("LLM backend config (endpoints/pool)", e,
                                          hint="Fix: see simrec.llm.pool.PoolConfig and EndpointConfig.") from None

    def split(self, workers: int) -> "PoolConfig":
        """This pool as one of ``workers`` processes should hold it: each endpoint's concurrency divided
        among them (at least 1 each), so that together they stay within each server's limit."""
        if workers < 1:
            raise ValueError("workers must be >= 1")
        eps = [e.model_copy(update={"concurrency": max(1, e.concurrency // workers)}) for e in self.endpoints]
        return self.model_copy(update={"endpoints": eps})


@dataclass
class _Member:
    index: int
    label: str
    client: LLMClient
    limit: int
    inflight: int = 0
    max_inflight: int = 0
    assigned: int = 0
    served: int = 0
    failed: int = 0
    cooldown_until: float = 0.0
    disabled: str | None = None

    def stats(self) -> dict[str, Any]:
        return {"endpoint": self.label, "model": self.client.config.model, "limit": self.limit,
                "assigned": self.assigned, "served": self.served, "failed": self.failed,
                "max_inflight": self.max_inflight, "requests": self.client.counters.requests,
                "retries": self.client.counters.retries, "cache_hits": self.client.counters.cache_hits,
                "disabled": self.disabled}


@dataclass
class _PoolTotals:
    failovers: int = 0
    disabled: int = 0
    exhausted: int = 0  # requests every member failed


class EndpointPool(LLMClient):
    """Requests spread over a :class:`PoolConfig`'s endpoints (see the module docstring).

    Args:
        config: the shared settings (model, sampling, structured output, cache); each endpoint
            overrides its own fields.
        pool: the endpoints.
        prices: price table for every member (default: ``config.prices``).
    """

    def __init__(self, config: LLMConfig | Mapping[str, Any] | None, pool: PoolConfig | Mapping[str, Any],
                 prices: PriceTable | None = None) -> None:
        base = config if isinstance(config, LLMConfig) else LLMConfig.resolve(config)
        self.pool = pool if isinstance(pool, PoolConfig) else PoolConfig.model_validate(pool)
        prices = prices or PriceTable(base.prices)
        self._caches: dict[tuple[str, str], ResponseCache] = {}
        self.members: list[_Member] = []
        for i, e in enumerate(self.pool.endpoints):
            cfg = _member_config(base, e)
            self.members.append(_Member(i, e.label(), LLMClient(cfg, self._cache_for(cfg), prices), e.concurrency))
        # the pool itself keeps no cache: LLMCognition then sends every request through complete(),
        # where each member's cache is consulted
        super().__init__(self.members[0].client.config, None, prices)
        style = base.schema_style
        if style == "auto":  # OpenAI's strict subset if any member is OpenAI, else the tight schemas
            style = "portable" if any(m.client.config.is_openai for m in self.members) else "tight"
        #: The settings the LLM backend using this pool should hold: call records name the pool's servers.
        self.shared_config = LLMConfig.resolve(
            base, base_url="pool:" + ",".join(m.client.config.endpoint for m in self.members), schema_style=style)
        self.totals = _PoolTotals()
        self._cond: asyncio.Condition | None = None
        self._pid = os.getpid()

    @classmethod
    def from_backend_config(cls, config: Mapping[str, Any]) -> "EndpointPool":
        """A pool from an LLM ``backend_config`` with ``endpoints`` (and optionally ``pool``)."""
        pool, rest = PoolConfig.from_backend_config(config)
        if pool is None:
            raise ConfigError("LLM backend config has no 'endpoints'. Fix: add endpoints=[{'base_url': ...}, ...].")
        return cls(LLMConfig.resolve(rest), pool)

    def _cache_for(self, cfg: LLMConfig) -> ResponseCache | None:
        mode = cfg.effective_cache_mode
        if mode == "off":
            return None
        # members sharing a file share one connection: two connections of one thread on one SQLite file
        # would block each other's batched write transactions
        key = (os.path.abspath(cfg.cache_path or ""), mode)
        if key not in self._caches:
            self._caches[key] = open_cache(cfg.cache_path, mode)  # type: ignore[assignment]
        return self._caches[key]

    # -- accounting ----------------------------------------------------------------------------
    @property  # type: ignore[override]
    def counters(self) -> ClientCounters:
        """The members' counters summed, plus ``pool_*`` fields (failovers, disabled members, served per member)."""
        total = ClientCounters()
        for f in dataclasses.fields(ClientCounters):
            setattr(total, f.name, sum(getattr(m.client.counters, f.name) for m in self.members))
        extra = {"pool_failovers": self.totals.failovers, "pool_disabled": self.totals.disabled,
                 "pool_exhausted": self.totals.exhausted,
                 **{f"pool_served_{m.index}": m.served for m in self.members}}
        total.__dict__.update(extra)  # ClientCounters.as_dict reports every attribute
        return total

    @counters.setter
    def counters(self, value: ClientCounters) -> None:
        pass  # LLMClient.__init__ assigns one; the pool's totals are its members'

    def stats(self) -> list[dict[str, Any]]:
        """One row per endpoint: limit, requests assigned and served, failures, most in flight at once, ..."""
        return [m.stats() for m in self.members]

    # -- requests ------------------------------------------------------------------------------
    def complete_cached(self, messages: list[dict], schema_name: str, schema: dict | None,
                        max_tokens: int) -> Completion | None:
        """A reply from any member's cache, or None; a failure recorded for replay is raised only when no
        member has a reply (it may have been answered elsewhere after failing there)."""
        failure: LLMCallError | None = None
        seen: set[tuple[int, str]] = set()
        for m in self.members:
            c = m.client.cache
            key = (id(c), m.client.config.model)  # members sharing a cache and a model share the keys
            if c is None or key in seen:
                continue
            seen.add(key)
            try:
                hit = m.client.complete_cached(messages, schema_name, schema, max_tokens)
            except LLMCallError as e:
                failure = failure or e
                continue
            if hit is not None:
                return hit
        if failure is not None:
            raise failure
        return None

    async def complete(self, messages: list[dict], schema_name: str, schema: dict | None,
                       max_tokens: int) -> Completion:
        cached = self.complete_cached(messages, schema_name, schema, max_tokens)
        if cached is not None:
            return cached
        tried: set[int] = set()
        errors: list[str] = []
        last: LLMCallError | None = None
        attempts = 0
        while True:
            m = await self._acquire(tried)
            if m is None:
                break
            try:
                comp = await m.client.complete(messages, schema_name, schema, max_tokens)
            except LLMCallError as e:
                m.failed += 1
                if e.reason == "bad_request" or not self.pool.failover:
                    raise
                m.cooldown_until = time.monotonic() + self.pool.cooldown_s
                tried.add(m.index)
                errors.append(f"{m.label}: {e}")
                last = e
                attempts += e.attempts
                continue
            except LLMFatalError as e:
                m.failed += 1
                m.disabled = str(e)
                self.totals.disabled += 1
                tried.add(m.index)
                errors.append(f"{m.label}: {e}")
                log.warning("LLM pool: endpoint %s taken out of the pool: %s", m.label, e)
                continue
            finally:
                await self._release(m)
            m.served += 1
            if tried:
                self.totals.failovers += 1
            return comp
        if all(m.disabled for m in self.members):
            raise LLMFatalError("every endpoint of the LLM pool is misconfigured: " + "; ".join(
                f"{m.label}: {m.disabled}" for m in self.members) + ". Fix: check each endpoint's base_url, model "
                "and api_key.")
        self.totals.exhausted += 1
        raise LLMCallError("every endpoint of the pool failed this request: " + "; ".join(errors),
                           last.reason if last else "connection", attempts)

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:  # created on the loop that runs the requests
            self._cond = asyncio.Condition()
        return self._cond

    async def _acquire(self, tried: set[int]) -> _Member | None:
        """The least-loaded healthy member not yet tried, waiting for a free slot; None if none is left."""
        cond = self._condition()
        async with cond:
            while True:
                left = [m for m in self.members if m.index not in tried and m.disabled is None]
                if not left:
                    return None
                now = time.monotonic()
                healthy = [m for m in left if m.cooldown_until <= now] or left
                free = [m for m in healthy if m.inflight < m.limit]
                if free:
                    m = min(free, key=lambda m: (m.inflight / m.limit, m.assigned, m.index))
                    m.inflight += 1
                    m.assigned += 1
                    m.max_inflight = max(m.max_inflight, m.inflight)
                    return m
                await cond.wait()

    async def _release(self, m: _Member) -> None:
        cond = self._condition()
        async with cond:
            m.inflight -= 1
            cond.notify()

    # -- lifecycle -----------------------------------------------------------------------------
    def reset_connections(self) -> None:
        """Forget every member's connections (after a fork: also reopen the caches in this process)."""
        for m in self.members:
            m.client.reset_connections()
        self._cond = None
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            reopened = {k: open_cache(c.path, c.mode) for k, c in self._caches.items()}
            for m in self.members:
                for k, c in self._caches.items():
                    if m.client.cache is c:
                        m.client.cache = reopened[k]
            self._caches = reopened  # type: ignore[assignment]

    async def aclose(self) -> None:
        for m in self.members:
            await m.client.aclose()

    def shutdown(self, runner: AsyncRunner | None) -> None:
        """Close every member's connections on ``runner``'s loop, stop it, and commit and close the caches."""
        if runner is not None and runner.alive:
            try:
                runner.run(self.aclose(), timeout=10)
            finally:
                runner.close()
        for c in self._caches.values():
            c.close()
        self._caches = {}
        for m in self.members:
            m.client.cache = None

    def flush(self) -> None:
        for c in self._caches.values():
            c.commit()


def _member_config(base: LLMConfig, e: EndpointConfig) -> LLMConfig:
    data = base.model_dump()
    data.update(base_url=e.base_url, concurrency=e.concurrency, max_retries=e.max_retries)
    for k in ("model", "api_key", "timeout_s", "cache_path", "cache_mode"):
        v = getattr(e, k)
        if v is not None:
            data[k] = v
    try:
        return LLMConfig.model_validate(data)
    except ValidationError as err:
        raise format_validation_error(f"LLM pool endpoint {e.label()}", err) from None

