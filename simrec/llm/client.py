"""The OpenAI-compatible chat client behind the LLM cognition backend.

One :class:`LLMClient` talks to any server that speaks OpenAI's ``/v1/chat/completions``
(OpenAI, vLLM, Ollama, llama.cpp) through the official ``openai.AsyncOpenAI`` client, with:

* configuration from :class:`LLMConfig` (pydantic), constructor arguments or the environment
  (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, overridden by ``SIMREC_LLM_<FIELD>``);
* structured output: JSON-schema ``response_format`` where the server takes it, JSON mode with
  the schema otherwise (negotiated once per client in ``structured="auto"``);
* its own retries with exponential backoff and jitter on timeouts, connection errors, 429
  (honouring ``Retry-After`` / ``retry-after-ms``) and 5xx. The SDK's retries are disabled
  (``max_retries=0``) so that every retry is counted here;
* a concurrency limit (an ``asyncio.Semaphore`` around each HTTP request);
* token, cost (:class:`PriceTable`) and latency accounting, and the record/replay
  :class:`~simrec.llm.cache.ResponseCache`.

The environment is synchronous, so :class:`AsyncRunner` keeps one event loop alive in a daemon
thread and batches are submitted to it; the HTTP connection pool lives on that loop.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Coroutine, Literal, Mapping, TypeVar
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from simrec.llm.cache import CacheMissError, ResponseCache
from simrec.errors import ConfigError, SimrecError, format_validation_error

log = logging.getLogger("simrec.llm")

T = TypeVar("T")

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: Placeholder key sent to local servers, which ignore it (the SDK insists on one).
LOCAL_API_KEY = "sk-no-key-required"

StructuredMode = Literal["json_schema", "json_object", "none"]
#: Keep-alive connections per SDK client (see ``LLMClient._pick_client``).
CONNECTIONS_PER_CLIENT = 4
_MODE_ORDER: tuple[StructuredMode, ...] = ("json_schema", "json_object", "none")


# ----------------------------------------------------------------------------------------------
# Prices
# ----------------------------------------------------------------------------------------------
class ModelPrice(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0, description="USD per 1M prompt tokens.")
    output: float = Field(ge=0, description="USD per 1M completion tokens.")


#: OpenAI list prices (USD / 1M tokens, standard tier) at the time of writing. Override or extend
#: with ``LLMConfig.prices``; models not listed (e.g. local ones) cost 0 and are counted as unpriced.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    name: ModelPrice(input=i, output=o)
    for name, (i, o) in {
        "gpt-4o-mini": (0.15, 0.60),
        "gpt-4o": (2.50, 10.00),
        "gpt-4.1-nano": (0.10, 0.40),
        "gpt-4.1-mini": (0.40, 1.60),
        "gpt-4.1": (2.00, 8.00),
        "gpt-3.5-turbo": (0.50, 1.50),
        "o4-mini": (1.10, 4.40),
    }.items()
}


class PriceTable:
    """Model name -> :class:`ModelPrice`; a dated model id (``gpt-4o-mini-2024-07-18``) matches its
    longest listed prefix."""

    def __init__(self, prices: Mapping[str, ModelPrice | Mapping[str, float]] | None = None,
                 include_defaults: bool = True) -> None:
        self.prices: dict[str, ModelPrice] = dict(DEFAULT_PRICES) if include_defaults else {}
        for name, p in (prices or {}).items():
            self.prices[name] = p if isinstance(p, ModelPrice) else ModelPrice(**p)

    def lookup(self, model: str) -> ModelPrice | None:
        if model in self.prices:
            return self.prices[model]
        best = max((n for n in self.prices if model.startswith(n)), key=len, default=None)
        return self.prices[best] if best else None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        p = self.lookup(model)
        if p is None:
            return 0.0
        return (prompt_tokens * p.input + completion_tokens * p.output) / 1e6


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------
class LLMConfig(BaseModel):
    """Everything the LLM backend needs. Build it with :meth:`resolve` to apply the environment.

    Environment variables (lowest to highest priority): ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``,
    then ``SIMREC_LLM_<FIELD>`` for any scalar field (``SIMREC_LLM_MODEL``,
    ``SIMREC_LLM_BASE_URL``, ``SIMREC_LLM_TEMPERATURE``, ``SIMREC_LLM_CACHE_PATH``, ...); explicit
    config values and constructor arguments beat both.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # -- endpoint ------------------------------------------------------------------------------
    model: str = Field("gpt-4o-mini", min_length=1, description="Model name as the server knows it.")
    base_url: str | None = Field(None, description="OpenAI-compatible base URL ending in /v1; None = OpenAI.")
    api_key: SecretStr | None = Field(None, description="API key; local servers need none.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout in seconds.")
    # -- sampling ------------------------------------------------------------------------------
    temperature: float = Field(0.2, ge=0, le=2, description="Sampling temperature (default 0.2).")
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(0, description="Sampling seed sent with every request (None: not sent).")
    max_tokens: int = Field(320, ge=16, description="Completion token limit of a decision.")
    reflect_max_tokens: int = Field(200, ge=16)
    judge_max_tokens: int = Field(400, ge=16)
    # -- structured output ---------------------------------------------------------------------
    structured: Literal["auto", "json_schema", "json_object", "none"] = Field(
        "auto", description="auto: json_schema, falling back once per client to json_object, then none.")
    schema_style: Literal["auto", "tight", "portable"] = Field(
        "auto", description="tight: slate-size-specific schema (fixed item positions; grammar servers); "
                            "portable: OpenAI strict-mode subset. auto: portable for api.openai.com.")
    repair: bool = Field(True, description="Ask once more, quoting the error, when a reply does not validate.")
    reason_max_chars: int = Field(200, ge=10, le=200, description="Length limit of a reply's reason (tight schema).")
    note_max_chars: int = Field(150, ge=20, le=400, description="Length limit of each reflection note (tight schema).")
    # -- robustness and throughput -------------------------------------------------------------
    concurrency: int = Field(16, ge=1, description="Max HTTP requests in flight.")
    max_retries: int = Field(4, ge=0, description="Retries per request on timeout, connection error, 429, 5xx.")
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    retry_after_max_s: float = Field(120.0, ge=0, description="Cap on a server's Retry-After.")
    # -- cache ---------------------------------------------------------------------------------
    cache_path: str | None = Field(None, description="SQLite record/replay cache file.")
    cache_mode: Literal["off", "read-write", "replay"] | None = Field(
        None, description="Default: read-write when cache_path is set, else off. replay errors on a miss.")
    # -- cognition -----------------------------------------------------------------------------
    n_memories: int = Field(5, ge=0, description="Memories retrieved per decision prompt.")
    reflect_every: int = Field(10, ge=0, description="Reflect after every k steps of a user (0: never).")
    reflect_at_session_end: bool = True
    fast_replay: bool = Field(True, description="With a cache, look prompts up by a fingerprint of their inputs "
                                                "and skip re-rendering them on a hit.")
    sanitize: dict[str, Any] = Field(default_factory=dict, description="simrec.llm.sanitize.SanitizeConfig fields.")
    fallback_choice: dict[str, Any] = Field(default_factory=dict,
                                            description="ChoiceConfig of the embedded fallback backend.")
    # -- accounting and logs -------------------------------------------------------------------
    prices: dict[str, ModelPrice] = Field(default_factory=dict, description="Extra/overriding model prices.")
    call_log_path: str | None = Field(None, description="Append every call record to this JSONL file.")
    max_call_records: int = Field(100_000, ge=0, description="Undrained call records kept in memory.")

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def resolve(cls, config: "LLMConfig | Mapping[str, Any] | None" = None, *,
                env: Mapping[str, str] | None = None, source: str = "LLM backend config",
                **overrides: Any) -> "LLMConfig":
        """Merge environment < ``config`` < ``overrides`` and validate (ConfigError on a bad field)."""
        env = os.environ if env is None else env
        data: dict[str, Any] = {}
        if env.get("OPENAI_API_KEY"):
            data["api_key"] = env["OPENAI_API_KEY"]
        if env.get("OPENAI_BASE_URL"):
            data["base_url"] = env["OPENAI_BASE_URL"]
        for name, f in cls.model_fields.items():
            v = env.get(f"SIMREC_LLM_{name.upper()}")
            if v is not None and v != "":
                data[name] = _parse_env(v)
        if isinstance(config, LLMConfig):
            given = config.model_dump(exclude_unset=True)
            if config.api_key is not None:
                given["api_key"] = config.api_key.get_secret_value()
            data.update(given)
        elif config:
            data.update(dict(config))
        data.update(overrides)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise format_validation_error(
                source, e, hint="Fix: see simrec.llm.LLMConfig for fields and allowed values.") from None

    # -- derived -------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return (self.base_url or OPENAI_DEFAULT_BASE_URL).rstrip("/")

    @property
    def is_openai(self) -> bool:
        return urlparse(self.endpoint).hostname == "api.openai.com"

    @property
    def effective_cache_mode(self) -> str:
        if self.cache_mode is not None:
            return self.cache_mode
        return "read-write" if self.cache_path else "off"

    @property
    def effective_schema_style(self) -> str:
        if self.schema_style != "auto":
            return self.schema_style
        return "portable" if self.is_openai else "tight"

    def api_key_value(self) -> str:
        if self.api_key is not None and self.api_key.get_secret_value():
            return self.api_key.get_secret_value()
        if self.is_openai:
            raise ConfigError(
                "LLM backend: no API key for api.openai.com. Fix: set OPENAI_API_KEY (or SIMREC_LLM_API_KEY, "
                "or backend_config api_key), or point base_url at a local server "
                "(e.g. simrec.llm.local_server.local_server())."
            )
        return LOCAL_API_KEY

    def sampling_params(self) -> dict[str, Any]:
        """Sampling parameters that shape a reply (part of the cache key and the call log)."""
        p: dict[str, Any] = {"temperature": self.temperature}
        if self.top_p is not None:
            p["top_p"] = self.top_p
        if self.seed is not None:
            p["seed"] = self.seed
        return p


def _parse_env(v: str) -> Any:
    """Environment strings -> JSON values where they parse (numbers, booleans, null), else text."""
    try:
        return json.loads(v)
    except ValueError:
        return v


# ----------------------------------------------------------------------------------------------
# Errors and results
# ----------------------------------------------------------------------------------------------
class LLMCallError(SimrecError):
    """A request that failed for good (retries exhausted, or a recorded failure on replay).

    The backend answers such rows with its counted fallback.
    """

    def __init__(self, message: str, reason: str, attempts: int = 1) -> None:
        super().__init__(message)
        self.reason = reason
        self.attempts = attempts


class LLMFatalError(SimrecError):
    """A misconfiguration no retry or fallback should hide (bad key, unknown model or URL)."""


@dataclass
class Completion:
    """One answered request (live or from the cache)."""

    content: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cost_usd: float
    cache_hit: bool
    mode: StructuredMode
    params: dict[str, Any]
    finish_reason: str | None = None
    attempts: int = 1
    key: str | None = None  # cache key of the request


@dataclass
class ClientCounters:
    """Run totals. Live tokens and cost count what was paid; cached tokens what the cache saved."""

    requests: int = 0
    retries: int = 0
    retries_timeout: int = 0
    retries_rate_limit: int = 0
    retries_server_error: int = 0
    retries_connection: int = 0
    request_failures: int = 0
    bad_requests: int = 0
    format_downgrades: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    replayed_failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    missing_usage: int = 0
    unpriced_requests: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


# ----------------------------------------------------------------------------------------------
# Event loop in a thread
# ----------------------------------------------------------------------------------------------
class AsyncRunner:
    """One persistent asyncio loop in a daemon thread; ``run(coro)`` blocks for its result.

    A persistent loop keeps the HTTP connection pool (and keep-alive connections) across steps;
    ``asyncio.run`` per step would rebuild them every time.
    """

    def __init__(self, name: str = "simrec-llm") -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        self._pid = os.getpid()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._ready.set)
        self._loop.run_forever()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def alive(self) -> bool:
        # A forked child (e.g. a subprocess vector env) inherits a loop whose thread is gone.
        return self._thread.is_alive() and os.getpid() == self._pid and not self._loop.is_closed()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("AsyncRunner.run called from its own loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self) -> None:
        if not self.alive:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


# ----------------------------------------------------------------------------------------------
# The client
# ----------------------------------------------------------------------------------------------
class LLMClient:
    """Chat completions with retries, concurrency limit, structured output, cache and accounting.

    All ``async`` methods run on the :class:`AsyncRunner`'s loop; :meth:`complete_cached` is a
    synchronous cache-only lookup used to skip the loop entirely on replay.
    """

    def __init__(self, config: LLMConfig, cache: ResponseCache | None = None,
                 prices: PriceTable | None = None) -> None:
        self.config = config
        self.cache = cache
        self.prices = prices or PriceTable(config.prices)
        self.counters = ClientCounters()
        self.mode: StructuredMode = "json_schema" if config.structured == "auto" else config.structured
        self._clients: list[Any] = []
        self._next = 0
        self._sem: asyncio.Semaphore | None = None
        self._jitter = random.Random(0x5EED)  # backoff jitter only; never touches simulation RNGs
        self._unpriced_warned = False
        if config.effective_cache_mode != "replay":  # replaying needs no server, hence no key
            config.api_key_value()  # fail at construction on a missing OpenAI key, not on the first step

    # -- request building ----------------------------------------------------------------------
    def request(self, messages: list[dict], schema_name: str, schema: dict | None, max_tokens: int,
                mode: StructuredMode | None = None) -> dict[str, Any]:
        """The JSON body of a chat-completions request (also what the cache key hashes)."""
        mode = mode or self.mode
        req: dict[str, Any] = {"model": self.config.model, "messages": messages, "max_tokens": max_tokens}
        req.update(self.config.sampling_params())
        if schema is not None and mode == "json_schema":
            req["response_format"] = {"type": "json_schema", "json_schema": {
                "name": schema_name, "schema": schema, "strict": self.config.effective_schema_style == "portable"}}
        elif schema is not None and mode == "json_object":
            rf: dict[str, Any] = {"type": "json_object"}
            if not self.config.is_openai:  # llama.cpp / vLLM constrain JSON mode with a schema; OpenAI rejects it
                rf["schema"] = schema
            req["response_format"] = rf
        return req

    def count_hit(self, prompt_tokens: int, completion_tokens: int) -> None:
        k = self.counters
        k.cache_hits += 1
        k.cached_prompt_tokens += prompt_tokens
        k.cached_completion_tokens += completion_tokens

    def _modes_to_try(self) -> tuple[StructuredMode, ...]:
        if self.config.structured != "auto":
            return (self.mode,)
        return _MODE_ORDER[_MODE_ORDER.index(self.mode):]

    # -- cache-only path -----------------------------------------------------------------------
    def complete_cached(self, messages: list[dict], schema_name: str, schema: dict | None,
                        max_tokens: int) -> Completion | None:
        """The cached reply for this request, or None. Raises :class:`LLMCallError` for a failure
        recorded in replay mode. Counts a hit; a miss is not counted here (the live path will)."""
        c = self.cache
        if c is None or not c.readable:
            return None
        t0 = time.perf_counter()
        for mode in self._modes_to_try() if c.mode == "replay" else (self.mode,):
            req = self.request(messages, schema_name, schema, max_tokens, mode)
            key = c.key(req)
            hit = c.get(key)
            if hit is not None:
                if mode != self.mode:  # replaying a run that negotiated a different format
                    self.mode = mode
                self.count_hit(hit.prompt_tokens, hit.completion_tokens)
                return Completion(hit.content, hit.prompt_tokens, hit.completion_tokens,
                                  time.perf_counter() - t0, 0.0, True, mode, _log_params(req),
                                  hit.finish_reason, 0, key)
            if c.mode == "replay":
                err = c.get_failure(key)
                if err is not None:
                    self.counters.replayed_failures += 1
                    raise LLMCallError(f"replayed recorded failure: {err}", "replayed_failure", 0)
        return None

    # -- live path -----------------------------------------------------------------------------
    async def complete(self, messages: list[dict], schema_name: str, schema: dict | None,
                       max_tokens: int) -> Completion:
        cached = self.complete_cached(messages, schema_name, schema, max_tokens)
        if cached is not None:
            return cached
        c = self.cache
        if c is not None and c.mode == "replay":
            req = self.request(messages, schema_name, schema, max_tokens)
            raise CacheMissError(
                f"replay-only cache {c.path}: no recorded reply for model {self.config.model!r} "
                f"(key {c.key(req)[:12]}...). Fix: record the run first with cache_mode='read-write', "
                "and replay with the same model, sampling parameters, seed and env seed."
            )
        if c is not None and c.readable:
            self.counters.cache_misses += 1
        return await self._complete_live(messages, schema_name, schema, max_tokens)

    async def _complete_live(self, messages: list[dict], schema_name: str, schema: dict | None,
                             max_tokens: int) -> Completion:
        cfg, k = self.config, self.counters
        client = self._pick_client()
        assert self._sem is not None
        attempt = 0
        t_start = time.perf_counter()
        while True:
            mode = self.mode
            req = self.request(messages, schema_name, schema, max_tokens, mode)
            wait: float | None = None
            reason = ""
            async with self._sem:
                k.requests += 1
                t0 = time.perf_counter()
                try:
                    # AsyncOpenAI.post is the SDK's documented raw-request API. chat.completions.create
                    # would walk the messages and JSON schema through its typed-parameter transform
                    # and build a ChatCompletion model: more CPU than the rest of the request
                    # (measured), which caps throughput at high concurrency.
                    resp = await client.post("/chat/completions", body=req, cast_to=object)  # the JSON as is
                except Exception as e:  # classified below; anything unknown propagates
                    elapsed = time.perf_counter() - t0
                    k.latency_s += elapsed
                    reason, wait = self._classify(e, mode, schema is not None)
                    if reason == "downgrade":
                        continue
                    error = e
                else:
                    latency = time.perf_counter() - t0
                    return self._accept(req, resp, latency, mode, attempt + 1, t_start)
            # Outside the semaphore: back off without holding a slot.
            if attempt >= cfg.max_retries or reason == "bad_request":
                k.request_failures += 1
                k.bad_requests += reason == "bad_request"
                msg = f"{reason} after {attempt + 1} attempt(s): {type(error).__name__}: {_short(error)}"
                if self.cache is not None and self.cache.writable:
                    self.cache.put_failure(self.cache.key(req), req, msg)
                raise LLMCallError(msg, reason, attempt + 1)
            k.retries += 1
            setattr(k, f"retries_{reason}", getattr(k, f"retries_{reason}") + 1)
            backoff = min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** attempt) * (0.5 + 0.5 * self._jitter.random())
            delay = backoff if wait is None else max(min(wait, cfg.retry_after_max_s), 0.0)
            log.debug("LLM request %s; retry %d in %.2fs", reason, attempt + 1, delay)
            attempt += 1
            await asyncio.sleep(delay)

    def _classify(self, e: Exception, mode: StructuredMode, has_schema: bool) -> tuple[str, float | None]:
        """-> (reason, server-requested wait). Raises for errors no retry or fallback should hide."""
        import openai

        if isinstance(e, openai.APITimeoutError):
            return "timeout", None
        if isinstance(e, openai.APIConnectionError):
            return "connection", None
        if isinstance(e, openai.RateLimitError):
            return "rate_limit", _retry_after(e.response.headers)
        if isinstance(e, openai.APIStatusError):
            status = e.status_code
            text = str(e).lower()
            if (status in (400, 422, 500) and has_schema and self.config.structured == "auto" and mode != "none"
                    and any(w in text for w in ("response_format", "json_schema", "json_object"))):
                # The server refused this response_format (llama-cpp-python answers 500 to json_schema):
                # step down once and remember.
                nxt = _MODE_ORDER[_MODE_ORDER.index(mode) + 1]
                if self.mode == mode:
                    log.warning("LLM server %s rejected response_format %s (%s); using %s from now on",
                                self.config.endpoint, mode, _short(e, 120), nxt)
                    self.mode = nxt
                    self.counters.format_downgrades += 1
                return "downgrade", None
            if status >= 500:
                return "server_error", _retry_after(e.response.headers)
            if status in (400, 413, 422):  # this request is bad (e.g. too long): fail it, not the run
                return "bad_request", None
            hint = {401: "check the API key", 403: "check the key's permissions",
                    404: f"check base_url ({self.config.endpoint}) and model ({self.config.model!r})",
                    }.get(status, "check the request")
            raise LLMFatalError(f"LLM server answered {status}: {_short(e)}. Fix: {hint}.") from e
        raise e

    def _accept(self, req: dict, resp: Any, latency: float, mode: StructuredMode, attempts: int,
                t_start: float) -> Completion:
        k = self.counters
        if not isinstance(resp, dict):  # a pydantic ChatCompletion (e.g. from a test double)
            resp = resp.model_dump()
        choices = resp.get("choices") or [{}]
        message = choices[0].get("message") or {}
        content = message.get("content")
        finish = choices[0].get("finish_reason")
        usage = resp.get("usage") or {}
        pt = int(usage.get("prompt_tokens") or 0)
        ct = int(usage.get("completion_tokens") or 0)
        if not usage:
            k.missing_usage += 1
        cost = self.prices.cost(self.config.model, pt, ct)
        if self.prices.lookup(self.config.model) is None:
            k.unpriced_requests += 1
            if not self._unpriced_warned and self.config.is_openai:
                log.warning("no price for model %r; its cost counts as 0. Fix: add it to LLMConfig.prices",
                            self.config.model)
                self._unpriced_warned = True
        k.prompt_tokens += pt
        k.completion_tokens += ct
        k.cost_usd += cost
        k.latency_s += latency
        key = None
        if self.cache is not None and self.cache.writable and content is not None:
            key = self.cache.key(req)
            self.cache.put(key, req, content, pt, ct, finish, self.config.model, latency)
        return Completion(content, pt, ct, time.perf_counter() - t_start, cost, False, mode,
                          _log_params(req), finish, attempts, key)

    # -- lifecycle -----------------------------------------------------------------------------
    def _pick_client(self) -> Any:
        """One of ``ceil(concurrency / CONNECTIONS_PER_CLIENT)`` SDK clients, round robin.

        httpx's pool scans all its connections for every request, so one pool of 64 keep-alive
        connections costs more CPU per request than 8 pools of 8.
        """
        if not self._clients:
            import openai

            cfg = self.config
            n = -(-cfg.concurrency // CONNECTIONS_PER_CLIENT)
            self._clients = [openai.AsyncOpenAI(api_key=cfg.api_key_value(), base_url=cfg.endpoint,
                                                timeout=cfg.timeout_s, max_retries=0) for _ in range(n)]
            self._sem = asyncio.Semaphore(cfg.concurrency)
        self._next = (self._next + 1) % len(self._clients)
        return self._clients[self._next]

    def reset_connections(self) -> None:
        """Forget SDK clients bound to a loop that no longer runs (after a fork)."""
        self._clients = []
        self._sem = None

    async def aclose(self) -> None:
        for c in self._clients:
            await c.close()
        self._clients = []

    def shutdown(self, runner: "AsyncRunner | None") -> None:
        """Close the connections on ``runner``'s loop, stop the runner, and commit and close the cache."""
        if runner is not None and runner.alive:
            try:
                runner.run(self.aclose(), timeout=10)
            finally:
                runner.close()
        if self.cache is not None:
            self.cache.close()
            self.cache = None

    def flush(self) -> None:
        if self.cache is not None:
            self.cache.commit()


def _log_params(req: dict) -> dict[str, Any]:
    """What the call log records as ``params``."""
    p = {k: v for k, v in req.items() if k not in ("messages", "model")}
    rf = p.get("response_format")
    if isinstance(rf, dict):  # the schema itself is logged once per schema, not in every row
        p["response_format"] = rf.get("type")
    return p


def _retry_after(headers: Any) -> float | None:
    """Seconds a server asked us to wait (``retry-after-ms``, ``retry-after`` seconds or date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return float(ra)
    except ValueError:
        try:
            dt = email.utils.parsedate_to_datetime(ra)
        except (TypeError, ValueError):
            return None
        return max(dt.timestamp() - time.time(), 0.0)


def _short(e: BaseException, n: int = 200) -> str:
    s = str(e).replace("\n", " ")
    return s if len(s) <= n else s[: n - 3] + "..."


__all__ = [
    "AsyncRunner", "ClientCounters", "Completion", "DEFAULT_PRICES", "LLMCallError", "LLMClient", "LLMConfig",
    "LLMFatalError", "ModelPrice", "PriceTable", "CacheMissError",
]
