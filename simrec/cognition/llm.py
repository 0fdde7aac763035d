"""The LLM cognition backend: an LLM plays each user's persona, constrained by the numeric state.

For every row of a batch the backend renders a prompt (:mod:`simrec.llm.prompting`: persona, state in
plain language, memories retrieved for this slate, reflection notes, the numbered page), passes it
through the :class:`~simrec.llm.sanitize.Sanitizer`, and asks for JSON matching a schema
(:class:`~simrec.llm.prompting.SlateDecision`). All rows of a batch are sent concurrently. Every
reply is validated; an invalid one gets one repair request quoting the error; a row still without
a valid reply (or whose request failed after retries) is answered by the embedded backend,
counted in ``stats()["fallbacks"]``, logged, and marked ``SOURCE_FALLBACK``. Nothing is ever
filled in with a default value.

The backend never mutates the population: the simulator feeds its responses through the same
dynamics (drift, boredom, fatigue, satisfaction) as the embedded backend's. The backend's own
state is the per-user reflection notes, refreshed every ``reflect_every`` steps of a user and at
session end.

With a cache, each prompt is also recorded under a fingerprint of its inputs (persona, every
per-user state and memory array, page, notes, settings, and the source of the prompt code); a
replay that finds the fingerprint skips rendering and sanitising the prompt.

Per-call provenance (prompt, raw reply, parsed result, parse status, audit, parameters, tokens,
latency, cost, cache hit) is returned by :meth:`LLMCognition.drain_calls`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from simrec.llm.cache import open_cache
from simrec.cognition.base import SOURCE_CACHE, SOURCE_FALLBACK, SOURCE_LLM, JudgeBatch, ResponseBatch
from simrec.cognition.embedded import EmbeddedCognition
from simrec.llm.client import AsyncRunner, Completion, LLMCallError, LLMClient, LLMConfig, PriceTable

if TYPE_CHECKING:
    from simrec.users.population import Population
    from simrec.llm.sanitize import Sanitizer

log = logging.getLogger("simrec.llm")

#: Characters of a validation error quoted back to the model in a repair request.
_REPAIR_ERROR_CHARS = 300
#: Consumption values a tight schema allows for a clicked item.
CONSUMPTION_LEVELS = [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1]


# ----------------------------------------------------------------------------------------------
# Wire schemas
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def decision_schema(k: int, style: str = "tight", reason_chars: int = 200, ratings: bool = True) -> dict:
    """JSON schema of a :class:`~simrec.llm.prompting.SlateDecision` reply for a page of ``k`` items
    (cached: do not modify the returned dict). Without ``ratings`` (implicit feedback) every rating is null.

    ``tight`` fixes the items to positions 1..k in order, makes a rating or consumption on an
    unclicked item unrepresentable, and gives consumption in tenths, so a grammar-constrained
    server (llama.cpp, vLLM) cannot produce an invalid reply. ``portable`` is the subset OpenAI's
    strict structured outputs take; its replies are range-checked when parsed.
    """
    if style == "tight":
        def item(j: int) -> dict:
            base = {"item": {"const": j}}
            return {"anyOf": [
                _obj({**base, "clicked": {"const": True},
                      # Grammar converters (llama.cpp) ignore numeric bounds: enums keep values in range.
                      "rating": {"enum": [1, 2, 3, 4, 5, None]} if ratings else {"type": "null"},
                      "consumption": {"enum": CONSUMPTION_LEVELS}}),
                _obj({**base, "clicked": {"const": False}, "rating": {"type": "null"}, "consumption": {"const": 0}}),
            ]}

        items = {"type": "array", "prefixItems": [item(j) for j in range(1, k + 1)], "items": False,
                 "minItems": k, "maxItems": k}
        reason = {"type": "string", "maxLength": reason_chars}
    else:
        items = {"type": "array", "items": _obj({
            "item": {"type": "integer"}, "clicked": {"type": "boolean"},
            "rating": {"anyOf": [{"type": "integer"}, {"type": "null"}]} if ratings else {"type": "null"},
            "consumption": {"type": "number"}})}
        reason = {"type": "string"}
    return _obj({"items": items, "leave": {"type": "boolean"}, "reason": reason})


@functools.lru_cache(maxsize=64)
def judge_schema(k: int, style: str = "tight", reason_chars: int = 200, ratings: bool = True) -> dict:
    """JSON schema of a :class:`~simrec.llm.prompting.JudgeReply` for ``k`` items (ratings null without
    ``ratings``)."""
    if style == "tight":
        items = {"type": "array", "items": False, "minItems": k, "maxItems": k, "prefixItems": [
            _obj({"item": {"const": j}, "watch": {"type": "boolean"},
                  "rating": {"enum": [1, 2, 3, 4, 5]} if ratings else {"type": "null"}}) for j in range(1, k + 1)]}
        reason = {"type": "string", "maxLength": reason_chars}
    else:
        items = {"type": "array", "items": _obj({"item": {"type": "integer"}, "watch": {"type": "boolean"},
                                                 "rating": {"type": "integer"} if ratings else {"type": "null"}})}
        reason = {"type": "string"}
    return _obj({"items": items, "reason": reason})


@functools.lru_cache(maxsize=16)
def reflection_schema(style: str = "tight", note_chars: int = 150) -> dict:
    """JSON schema of a :class:`~simrec.llm.prompting.ReflectionReply`."""
    s: dict = {"type": "string"} if style != "tight" else {"type": "string", "maxLength": note_chars}
    return _obj({"taste_notes": s, "feeling": dict(s)})


def _obj(props: dict) -> dict:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def _json_body(text: str) -> str:
    """The JSON object in a reply: strips whitespace and Markdown code fences (JSON-less servers)."""
    t = text.strip()
    if t.startswith("```"):
        t = t.split("\n", 1)[1] if "\n" in t else t[3:]
        t = t.rsplit("```", 1)[0]
    return t.strip()


_CODE_DIGEST: bytes | None = None


def _code_digest() -> bytes:
    """Hash of the code that renders prompts: a changed prompt builder invalidates fingerprints."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        import simrec.users.memory
        import simrec.llm.prompting
        import simrec.llm.sanitize

        h = hashlib.blake2b(digest_size=16)
        for mod in (simrec.llm.prompting, simrec.llm.sanitize, simrec.users.memory):
            h.update(Path(str(mod.__file__)).read_bytes())
        h.update(Path(__file__).read_bytes())
        _CODE_DIGEST = h.digest()
    return _CODE_DIGEST


# ----------------------------------------------------------------------------------------------
# One logical call (first request, optional repair)
# ----------------------------------------------------------------------------------------------
@dataclass
class _Job:
    kind: str  # "decide" | "judge" | "reflect"
    row: int
    user: int
    user_id: str
    schema_name: str
    schema: dict
    max_tokens: int
    parse: Callable[[str], tuple[Any, Any]]  # content -> (pydantic reply, value); raises ValueError
    repair: bool
    fp: str | None = None
    messages_json: str | None = None  # the first request's messages, when known as JSON
    audit: dict[str, Any] | None = None  # {"prompt": ..., "reply": ...}
    audit_json: str | None = None  # the same, recorded (fingerprint hits)
    fast: bool = False  # answered from the fingerprint table without rendering
    _messages: list[dict] | None = None
    repair_messages: list[dict] | None = None
    first_key: str | None = None
    stage: int = 0  # 0: first request, 1: repair request, 2: done
    reply: Any = None
    value: Any = None
    raw: str | None = None
    status: str = "failed"
    error: str | None = None
    invalid: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    cached: bool = True
    params: dict = field(default_factory=dict)

    @property
    def messages(self) -> list[dict]:
        if self._messages is None:
            assert self.messages_json is not None
            self._messages = json.loads(self.messages_json)
        return self._messages

    @messages.setter
    def messages(self, m: list[dict]) -> None:
        self._messages = m

    @property
    def current(self) -> list[dict]:
        """Messages of the pending request."""
        return self.repair_messages if self.stage == 1 and self.repair_messages is not None else self.messages

    @property
    def done(self) -> bool:
        return self.stage >= 2

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "repaired")

    def feed(self, c: Completion) -> None:
        self.prompt_tokens += c.prompt_tokens
        self.completion_tokens += c.completion_tokens
        self.latency_s += c.latency_s
        self.cost_usd += c.cost_usd
        self.cached = self.cached and c.cache_hit
        self.params = c.params
        self.raw = c.content
        if self.stage == 0:
            self.first_key = c.key
        try:
            if c.content is None:
                raise ValueError(f"empty reply (finish_reason={c.finish_reason})")
            self.reply, self.value = self.parse(_json_body(c.content))
        except ValueError as e:  # pydantic's ValidationError (incl. invalid JSON) is a ValueError
            self.invalid += 1
            self.error = _one_line(e)
            if self.stage == 0 and self.repair:
                self.stage = 1
                self.repair_messages = self.messages + [
                    {"role": "assistant", "content": c.content or ""},
                    {"role": "user", "content": f"That reply was invalid: {self.error[:_REPAIR_ERROR_CHARS]}. "
                                                "Answer again with JSON only, exactly in the requested format."},
                ]
            else:
                self.stage = 2
                self.status = "failed"
            return
        self.status = "ok" if self.stage == 0 else "repaired"
        self.error = None
        self.stage = 2

    def fail(self, e: LLMCallError) -> None:
        self.cached = self.cached and e.reason == "replayed_failure"
        self.error = f"{e.reason}: {e}"
        self.status = "failed"
        self.stage = 2

    def first_messages_json(self) -> str:
        if self.messages_json is None:
            self.messages_json = json.dumps(self.messages, ensure_ascii=False)
        return self.messages_json

    def final_messages_json(self) -> str:
        if self.repair_messages is not None:
            return json.dumps(self.repair_messages, ensure_ascii=False)
        return self.first_messages_json()


@functools.lru_cache(maxsize=256)
def _params_cache(params_json: str) -> dict:
    return json.loads(params_json)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


# ----------------------------------------------------------------------------------------------
# The backend
# ----------------------------------------------------------------------------------------------
class LLMCognition:
    """Cognition backend whose decisions come from an OpenAI-compatible chat model.

    Args:
        config: an :class:`~simrec.llm.LLMConfig`, a dict of its fields, or None (environment and
            defaults). Keyword arguments override single fields.
        fallback: backend answering rows without a valid LLM reply (default: embedded, with
            ``config.fallback_choice``).
        client: a ready :class:`~simrec.llm.LLMClient` (tests); built from the config otherwise.
        env: environment variables to read instead of ``os.environ``.

    Example::

        env = gymnasium.make("simrec/Synthetic-v0", backend="llm",
                             backend_config={"base_url": "http://127.0.0.1:8000/v1", "model": "smollm2"})
    """

    name = "llm"

    def __init__(self, config: LLMConfig | Mapping[str, Any] | None = None, *,
                 fallback: Any | None = None, client: LLMClient | None = None,
                 env: Mapping[str, str] | None = None, **overrides: Any) -> None:
        self.config = LLMConfig.resolve(config, env=env, **overrides)
        cfg = self.config
        self.fallback = fallback or EmbeddedCognition(cfg.fallback_choice)
        self._pid = os.getpid()
        if client is None:
            cache = open_cache(cfg.cache_path, cfg.effective_cache_mode)
            client = LLMClient(cfg, cache, PriceTable(cfg.prices))
        self.client = client
        self._runner: AsyncRunner | None = None
        self._sanitizer: Sanitizer | None = None
        self._san_pop: int | None = None
        self._held_out: tuple[int, ...] = ()
        self._memory_ref: Any = None
        self._notes: dict[int, str] = {}
        self._reflected_at: dict[int, int] = {}
        self._records: list[dict] = []
        self._log_file: Any = None
        self._ctx: dict[tuple, bytes] = {}
        self._persona_fp: dict[int, bytes] = {}
        self.counts: dict[str, int] = {k: 0 for k in (
            "calls", "decide_calls", "judge_calls", "reflect_calls", "decide_tokens", "judge_tokens", "reflect_tokens",
            "failures", "fallbacks", "invalid_replies",
            "repairs", "repaired", "reflect_failures", "prompt_cache_hits", "records_dropped")}

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None) -> "LLMCognition":
        """What ``make_backend("llm", cfg)`` and an env spec's ``backend_config`` call."""
        return cls(dict(config or {}))

    # -- setup ---------------------------------------------------------------------------------
    def set_held_out(self, items: Iterable[int]) -> None:
        """Catalog indices of the current evaluation's targets; they never reach a prompt."""
        self._held_out = tuple(sorted({int(i) for i in items}))
        self._ctx.clear()
        if self._sanitizer is not None:
            self._sanitizer.set_held_out(self._held_out)

    @property
    def sanitizer(self) -> "Sanitizer | None":
        return self._sanitizer

    def _prepare(self, pop: "Population") -> "Sanitizer":
        if os.getpid() != self._pid:  # forked into a worker (e.g. AsyncVectorEnv): fresh loop and connections
            self._pid = os.getpid()
            self._runner = None
            self.client.reset_connections()
            if self.client.cache is not None:
                self.client.cache = open_cache(self.client.cache.path, self.client.cache.mode)
        if self._sanitizer is None or self._san_pop != id(pop):
            from simrec.llm.sanitize import Sanitizer

            self._sanitizer = Sanitizer.for_population(pop, self.config.sanitize, self._held_out)
            self._san_pop = id(pop)
            self._ctx.clear()
            self._persona_fp.clear()
        if pop.memory is not self._memory_ref:  # the population was reset: notes belong to the old run
            self._memory_ref = pop.memory
            self._notes.clear()
            self._reflected_at.clear()
        return self._sanitizer

    def _style(self) -> str:
        return self.config.effective_schema_style

    # -- protocol ------------------------------------------------------------------------------
    def decide(self, pop: "Population", users: np.ndarray, slates: np.ndarray,
               rng: np.random.Generator) -> ResponseBatch:
        from simrec.llm.prompting import SlateDecision, build_decision_messages, decision_to_arrays

        self._prepare(pop)
        users = np.asarray(users)
        B, K = slates.shape
        cfg = self.config
        self._maybe_reflect(pop, users)

        rated = pop.catalog.domain.ratings

        def parse(text: str) -> tuple[Any, Any]:
            reply = SlateDecision.model_validate_json(text)
            return reply, decision_to_arrays(reply, K, rated)

        def render(u: int, page: Sequence[int], san: "Sanitizer") -> list[dict]:
            return build_decision_messages(pop, u, page, san, n_memories=cfg.n_memories, notes=self._notes.get(u))

        jobs = self._jobs(pop, "decide", users, slates, render, "slate_decision",
                          decision_schema(K, self._style(), cfg.reason_max_chars, rated), cfg.max_tokens, parse)
        resp = ResponseBatch.empty(B, K)
        reasons: list[str | None] = [None] * B
        failed = []
        for j in jobs:
            if j.ok:
                clicked, rating, consumption, leave = j.value
                resp.clicked[j.row], resp.rating[j.row], resp.consumption[j.row] = clicked, rating, consumption
                resp.leave[j.row] = leave
                resp.source[j.row] = SOURCE_CACHE if j.cached else SOURCE_LLM
                reasons[j.row] = j.reply.reason
            else:
                failed.append(j.row)
        if failed:
            rows = np.array(failed)
            fb = self.fallback.decide(pop, users[rows], slates[rows], rng)
            resp.clicked[rows], resp.rating[rows], resp.consumption[rows] = fb.clicked, fb.rating, fb.consumption
            resp.leave[rows] = fb.leave
            resp.source[rows] = SOURCE_FALLBACK
            self._note_fallbacks(jobs, failed)
        self._finish(jobs, fallback_rows=set(failed))
        resp.reasons = reasons
        resp.meta["llm_calls"] = len(jobs)
        return resp.validate(B, K)

    def judge(self, pop: "Population", users: np.ndarray, items: np.ndarray,
              rng: np.random.Generator) -> JudgeBatch:
        from simrec.llm.prompting import JudgeReply, build_judge_messages, judge_to_arrays

        self._prepare(pop)
        users = np.asarray(users)
        B, K = items.shape
        cfg = self.config

        rated = pop.catalog.domain.ratings

        def parse(text: str) -> tuple[Any, Any]:
            reply = JudgeReply.model_validate_json(text)
            return reply, judge_to_arrays(reply, K, rated)

        def render(u: int, page: Sequence[int], san: "Sanitizer") -> list[dict]:
            return build_judge_messages(pop, u, page, san, notes=self._notes.get(u), n_memories=cfg.n_memories)

        jobs = self._jobs(pop, "judge", users, items, render, "judgement",
                          judge_schema(K, self._style(), cfg.reason_max_chars, rated), cfg.judge_max_tokens, parse)
        watch = np.zeros((B, K), bool)
        rating = np.full((B, K), np.nan, np.float32)
        source = np.empty(B, np.int8)
        failed = []
        for j in jobs:
            if j.ok:
                watch[j.row], rating[j.row] = j.value
                source[j.row] = SOURCE_CACHE if j.cached else SOURCE_LLM
            else:
                failed.append(j.row)
        if failed:
            rows = np.array(failed)
            fb = self.fallback.judge(pop, users[rows], items[rows], rng)
            watch[rows], rating[rows] = fb.watch, fb.rating
            source[rows] = SOURCE_FALLBACK
            self._note_fallbacks(jobs, failed)
        self._finish(jobs, fallback_rows=set(failed))
        return JudgeBatch(watch, rating, source, {"llm_calls": len(jobs)})

    def end_session(self, pop: "Population", users: np.ndarray) -> None:
        """Reflect for users whose session ended (if configured and they have new memories)."""
        if not self.config.reflect_at_session_end:
            return
        self._prepare(pop)
        count = pop.memory.count
        due = [int(u) for u in np.asarray(users).ravel() if int(count[u]) > self._reflected_at.get(int(u), 0)]
        if due:
            self._reflect(pop, due)

    def stats(self) -> dict[str, float]:
        """Run totals: calls, failures, fallbacks, repairs, retries, tokens, cost, cache hits, audits."""
        out = {k: float(v) for k, v in self.counts.items()}
        out.update(self.client.counters.as_dict())
        out["tokens"] = out["prompt_tokens"] + out["completion_tokens"]
        if self._sanitizer is not None:
            out.update({f"sanitize_{k}": float(v) for k, v in self._sanitizer.counts.items()})
        return out

    def drain_calls(self) -> list[dict]:
        """Per-call records since the last drain (see CONTEXT: call_id, user, kind, messages, ...)."""
        out, self._records = self._records, []
        return out

    def close(self) -> None:
        """Close connections, stop the loop thread, commit and close the cache and the call log."""
        self.client.shutdown(self._runner)
        self._runner = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __del__(self) -> None:  # best effort for an unclosed backend: connections, loop thread, cache
        try:
            self.close()
        except Exception:
            pass

    # -- reflection ----------------------------------------------------------------------------
    def _maybe_reflect(self, pop: "Population", users: np.ndarray) -> None:
        k = self.config.reflect_every
        if k <= 0:
            return
        count = pop.memory.count
        due = [int(u) for u in users if int(count[u]) - self._reflected_at.get(int(u), 0) >= k]
        if due:
            self._reflect(pop, due)

    def _reflect(self, pop: "Population", users: list[int]) -> None:
        from simrec.llm.prompting import ReflectionReply, build_reflection_messages

        cfg = self.config

        def parse(text: str) -> tuple[Any, Any]:
            reply = ReflectionReply.model_validate_json(text)
            notes = " ".join(x.strip() for x in (reply.taste_notes, reply.feeling) if x.strip())
            if not notes:
                raise ValueError("taste_notes and feeling are both empty")
            return reply, notes

        def render(u: int, page: Sequence[int], san: "Sanitizer") -> list[dict]:
            return build_reflection_messages(pop, u, san, notes=self._notes.get(u))

        uarr = np.asarray(users, dtype=np.int64)
        jobs = self._jobs(pop, "reflect", uarr, np.zeros((uarr.size, 0), np.int64), render, "reflection",
                          reflection_schema(self._style(), cfg.note_max_chars), cfg.reflect_max_tokens, parse)
        count = pop.memory.count
        for j in jobs:
            # The cadence advances even on failure, so a failing reflection is not retried every step.
            self._reflected_at[j.user] = int(count[j.user])
            if j.ok:
                self._notes[j.user] = j.value
            else:
                self.counts["reflect_failures"] += 1
                log.warning("reflection for user %s failed (notes kept): %s", j.user_id, j.error)
        self._finish(jobs, fallback_rows=set())

    # -- running jobs --------------------------------------------------------------------------
    def _jobs(self, pop: "Population", kind: str, users: np.ndarray, pages: np.ndarray,
              render: Callable[[int, Sequence[int], "Sanitizer"], list[dict]], schema_name: str, schema: dict,
              max_tokens: int, parse: Callable[[str], tuple[Any, Any]]) -> list[_Job]:
        """Build, answer and return one job per user: from the fingerprint table, the cache or the server."""
        san = self._sanitizer
        assert san is not None
        cache = self.client.cache
        fps = self._fingerprints(pop, kind, users, pages, schema, max_tokens) if cache is not None else None
        jobs: list[_Job] = []
        pending: list[_Job] = []
        for b in range(users.size):
            u = int(users[b])
            j = _Job(kind, b, u, pop.user_id(u), schema_name, schema, max_tokens, parse, self.config.repair,
                     fp=None if fps is None else fps[b])
            jobs.append(j)
            if j.fp is not None and self._from_fingerprint(j):
                continue
            if j.messages_json is None:
                msgs, audit = san.enforce(render(u, [int(i) for i in pages[b]], san), user_id=j.user_id)
                j.messages = msgs
                j.audit = {"prompt": audit.model_dump()}
            pending.append(j)
        self._run(pending)
        return jobs

    def _from_fingerprint(self, job: _Job) -> bool:
        """Answer ``job`` from a prompt recorded under its fingerprint; True when it is done."""
        cache = self.client.cache
        assert cache is not None and job.fp is not None
        hit = cache.get_prompt(job.fp)
        if hit is None:
            return False
        job.messages_json = hit.messages
        job.audit_json = hit.audit
        if hit.reply is None:
            return False  # recorded without a reply (a failure): the regular path replays it
        r = hit.reply
        self.client.count_hit(r.prompt_tokens, r.completion_tokens)
        job.feed(Completion(r.content, r.prompt_tokens, r.completion_tokens, 0.0, 0.0, True,
                            self.client.mode, _params_cache(hit.params), r.finish_reason, 0, hit.key))
        if job.done:
            job.fast = True
            self.counts["prompt_cache_hits"] += 1
            return True
        return False  # a recorded invalid reply: the repair goes through the regular path

    def _fingerprints(self, pop: "Population", kind: str, users: np.ndarray, pages: np.ndarray, schema: dict,
                      max_tokens: int) -> list[str] | None:
        """Hash of everything each user's prompt is rendered from (see the module docstring)."""
        if not self.config.fast_replay:
            return None
        key = (kind, pages.shape[1], max_tokens)
        ctx = self._ctx.get(key)
        if ctx is None:
            cfg = self.config
            h = hashlib.blake2b(_code_digest(), digest_size=16)
            h.update(json.dumps([kind, cfg.model, cfg.sampling_params(), max_tokens, cfg.structured, cfg.schema_style,
                                 cfg.n_memories, cfg.repair, cfg.sanitize, list(self._held_out), schema, pop.n_users],
                                sort_keys=True, default=str).encode())
            cat = pop.catalog
            h.update("\x1f".join(map(str, cat.ids)).encode())
            h.update("\x1f".join(map(str, cat.titles)).encode())
            h.update("\x1f".join(map(str, cat.descriptions)).encode())
            for a in (cat.features, cat.topic_weights, cat.popularity, cat.year, pop.directions):
                h.update(np.ascontiguousarray(a).tobytes())
            ctx = self._ctx[key] = h.digest()
        n = pop.n_users
        # Every per-user array of the state and the memory: whatever a prompt could be rendered from.
        arrays = [v for obj in (pop.state, pop.memory) for _, v in sorted(vars(obj).items())
                  if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == n]
        out = []
        for b in range(users.size):
            u = int(users[b])
            h = hashlib.blake2b(ctx, digest_size=16)
            pf = self._persona_fp.get(u)
            if pf is None:
                pf = self._persona_fp[u] = hashlib.blake2b(
                    (pop.user_id(u) + pop.personas[u].model_dump_json()).encode(), digest_size=16).digest()
            h.update(pf)
            h.update(np.ascontiguousarray(pages[b], dtype=np.int64).tobytes())
            h.update((self._notes.get(u) or "").encode())
            for a in arrays:
                h.update(np.ascontiguousarray(a[u]).tobytes())
            out.append(h.hexdigest())
        return out

    def _run(self, jobs: list[_Job]) -> None:
        """Answer every job: cached ones synchronously, the rest concurrently on the loop thread."""
        if not jobs:
            return
        c = self.client
        pending = [j for j in jobs if not self._drive_cached(j)] if c.cache is not None else jobs
        if pending:
            if self._runner is None or not self._runner.alive:
                self._runner = AsyncRunner()
            try:
                self._runner.run(self._drive_all(pending))
            finally:
                c.flush()
        elif c.cache is not None and c.cache.writable:
            c.flush()

    def _drive_cached(self, job: _Job) -> bool:
        """Advance ``job`` from the cache alone; True when it finished without the network."""
        c = self.client
        while not job.done:
            try:
                comp = c.complete_cached(job.current, job.schema_name, job.schema, job.max_tokens)
            except LLMCallError as e:
                job.fail(e)
                return True
            if comp is None:
                return False
            job.feed(comp)
        return True

    async def _drive_all(self, jobs: list[_Job]) -> None:
        results = await asyncio.gather(*(self._drive(j) for j in jobs), return_exceptions=True)
        for r in results:  # fatal errors (bad key, replay miss) surface after every task has stopped
            if isinstance(r, BaseException):
                raise r

    async def _drive(self, job: _Job) -> None:
        c = self.client
        while not job.done:
            try:
                comp = await c.complete(job.current, job.schema_name, job.schema, job.max_tokens)
            except LLMCallError as e:
                job.fail(e)
                return
            job.feed(comp)

    # -- accounting ----------------------------------------------------------------------------
    def _note_fallbacks(self, jobs: list[_Job], rows: list[int]) -> None:
        self.counts["fallbacks"] += len(rows)
        errs = [jobs[r].error or "?" for r in rows]
        log.warning("%d of %d %s replies fell back to the embedded backend (counted in stats()['fallbacks']): %s",
                    len(rows), len(jobs), jobs[0].kind, "; ".join(e[:120] for e in errs[:3]))

    def _finish(self, jobs: list[_Job], fallback_rows: set[int]) -> None:
        cfg = self.config
        k = self.counts
        cache = self.client.cache
        record_prompts = cache is not None and cache.writable and cfg.fast_replay
        for j in jobs:
            k["calls"] += 1
            k[f"{j.kind}_calls"] += 1
            k[f"{j.kind}_tokens"] += j.prompt_tokens + j.completion_tokens  # incl. cached ones (provenance)
            k["invalid_replies"] += j.invalid
            k["repairs"] += j.repair_messages is not None
            k["repaired"] += j.status == "repaired"
            k["failures"] += not j.ok
            if j.audit_json is not None:
                audit_json = j.audit_json
            else:
                audit = j.audit or {}
                audit["reply"] = (None if j.raw is None or self._sanitizer is None
                                  else self._sanitizer.audit(j.raw, user_id=j.user_id).model_dump())
                audit_json = json.dumps(audit)
            messages_json = j.final_messages_json()
            if record_prompts and j.fp is not None and not j.fast:
                key = j.first_key or self.client.cache.key(  # type: ignore[union-attr]
                    self.client.request(j.messages, j.schema_name, j.schema, j.max_tokens))
                cache.put_prompt(j.fp, key, j.first_messages_json(), audit_json,  # type: ignore[union-attr]
                                 json.dumps(j.params))
            self._keep({
                "call_id": uuid.uuid4().hex, "user": j.user, "user_id": j.user_id, "kind": j.kind,
                "model": cfg.model, "base_url": cfg.endpoint,
                "params": json.dumps({"temperature": cfg.temperature, "max_tokens": j.max_tokens, "seed": cfg.seed,
                                      **j.params}, sort_keys=True),
                "seed": cfg.seed, "messages": messages_json,
                "raw_reply": j.raw, "parsed": j.reply.model_dump_json() if j.ok else None,
                "parse_status": j.status, "audit": audit_json,
                "prompt_tokens": j.prompt_tokens, "completion_tokens": j.completion_tokens,
                "latency_s": j.latency_s, "cost_usd": j.cost_usd, "cache_hit": bool(j.cached and j.raw is not None),
                "fallback": j.row in fallback_rows, "error": j.error,
            })
        if self._log_file is not None:
            self._log_file.flush()
        if record_prompts:
            self.client.flush()

    def _keep(self, rec: dict) -> None:
        cfg = self.config
        if cfg.call_log_path:
            if self._log_file is None:
                Path(cfg.call_log_path).parent.mkdir(parents=True, exist_ok=True)
                self._log_file = open(cfg.call_log_path, "a", encoding="utf-8")
            self._log_file.write(json.dumps(rec, ensure_ascii=False) + "\n")
        if cfg.max_call_records <= 0:
            return
        self._records.append(rec)
        extra = len(self._records) - cfg.max_call_records
        if extra > 0:  # nobody drains: keep memory bounded, count what was dropped
            del self._records[:extra]
            self.counts["records_dropped"] += extra


__all__ = ["LLMCognition", "decision_schema", "judge_schema", "reflection_schema", "CONSUMPTION_LEVELS"]
