"""An LLM as the recommender: it ranks the env's candidates for the user in session.

Each step :class:`LLMRankerRecommender` lists the candidates (``info["candidate_items"]``, catalog
indices) as a numbered list, adds the user's recent picks, and asks an OpenAI-compatible chat model for
``{"ranking": [<number>, ...]}``: list numbers, best first. Items are rendered by simrec's
:class:`~simrec.llm.sanitize.Sanitizer` exactly as user prompts render them (real titles, pseudonyms or
coarsened attributes; never a catalog id) and every message is passed through
:meth:`~simrec.llm.sanitize.Sanitizer.enforce` before it is sent. Held-out items are never rendered: a
held-out candidate is left off the list (so the LLM cannot rank it; it can still reach the slate through
the fallback fill) and a held-out pick is left out of the history.

The reply is validated by a pydantic model against the list (numbers in range, no repeats, enough of
them) and constrained on the wire by a JSON schema sent the way the LLM user backend sends its own
(``response_format`` json_schema, or JSON mode with the schema, negotiated by
:class:`~simrec.llm.client.LLMClient`). An invalid reply gets one repair request naming the problem;
a reply still invalid, a request that failed after the client's retries, or a prompt a strict sanitiser
refused is answered by the fallback ranking (candidate popularity, the observation's last column),
counted in ``stats()["fallbacks"]`` and logged. Slots the LLM did not fill (fewer listed candidates than
slots) are filled from the same fallback order. Misconfigurations (a bad key or URL, a replay-only cache
missing a request) raise, as they do for the LLM user backend: no fallback should hide them.

Requests go through the client's record/replay cache (``cache_path`` / ``cache_mode`` in the config),
so a rerun with the same env seed replays the same slates without a server.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from gymnasium import spaces
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from simrec.errors import ConfigError
from simrec.llm.cache import open_cache
from simrec.llm.client import AsyncRunner, Completion, LLMCallError, LLMClient, LLMConfig, PriceTable
from simrec.llm.sanitize import LeakageError, SanitizeConfig, Sanitizer
from simrec.recommenders.base import _HIST_EXTRA, Recommender

if TYPE_CHECKING:
    from simrec.catalog import Catalog

log = logging.getLogger("simrec.llm")

SCHEMA_NAME = "candidate_ranking"
#: Characters of a validation error quoted back to the model in a repair request.
_REPAIR_ERROR_CHARS = 300

_RULES = (
    "You are the recommender of a streaming service. From the numbered candidate titles, pick the ones this "
    "viewer is most likely to enjoy, judging from what they picked recently, best first. Answer with JSON only."
)


# ----------------------------------------------------------------------------------------------
# Reply: pydantic model and wire schema
# ----------------------------------------------------------------------------------------------
class RankingReply(BaseModel):
    """``{"ranking": [3, 1, 7]}``: list numbers (1-based), best first.

    Validate with ``context={"n": <listed candidates>, "need": <numbers required>}``; extra numbers
    after ``need`` are allowed if they are in the list and distinct (only the first ``need`` are used).
    """

    model_config = ConfigDict(extra="ignore")  # LLMs add keys; ignoring them keeps a usable reply usable

    ranking: list[int]

    @field_validator("ranking")
    @classmethod
    def _on_the_list(cls, v: list[int], info: ValidationInfo) -> list[int]:
        ctx = info.context or {}
        n, need = int(ctx.get("n", 0)), int(ctx.get("need", 0))
        seen: set[int] = set()
        for x in v:
            if n and not 1 <= x <= n:
                raise ValueError(f"number {x} is not on the list (candidates are numbered 1 to {n})")
            if x in seen:
                raise ValueError(f"number {x} appears more than once")
            seen.add(x)
        if len(v) < need:
            raise ValueError(f"the ranking has {len(v)} number(s) but {need} distinct numbers are needed")
        return v


@functools.lru_cache(maxsize=256)
def ranking_schema(n: int, need: int, style: str = "tight") -> dict:
    """JSON schema of a :class:`RankingReply` for a list of ``n`` candidates and ``need`` picks
    (cached: do not modify the returned dict).

    ``tight`` fixes the length and enumerates the numbers, so a grammar-constrained server (llama.cpp,
    vLLM) cannot answer a number off the list (repeats stay possible: grammars have no uniqueness);
    ``portable`` is the subset OpenAI's strict structured outputs take; its replies are checked on parsing.
    """
    if style == "tight":
        # Grammar converters ignore numeric bounds: an enum keeps the numbers on the list.
        ranking = {"type": "array", "items": {"enum": list(range(1, n + 1))}, "minItems": need, "maxItems": need}
    else:
        ranking = {"type": "array", "items": {"type": "integer"}}
    return {"type": "object", "properties": {"ranking": ranking}, "required": ["ranking"],
            "additionalProperties": False}


def parse_ranking(text: str, n: int, need: int) -> list[int]:
    """The first ``need`` list numbers of a reply; raises ``ValueError`` naming the problem."""
    try:
        reply = RankingReply.model_validate_json(_json_body(text), context={"n": n, "need": need})
    except ValidationError as e:
        raise ValueError(_describe(e)) from None
    return reply.ranking[:need]


def _describe(e: ValidationError) -> str:
    """A validation error in one short line a model can act on."""
    parts = []
    for err in e.errors(include_url=False):
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        if err.get("type") == "json_invalid":
            msg = f"not valid JSON ({err.get('ctx', {}).get('error', msg)})"
        loc = ".".join(str(x) for x in err.get("loc", ()))
        parts.append(f"{loc}: {msg}" if loc and err.get("type") != "value_error" else msg)
    return "; ".join(parts)


def _json_body(text: str) -> str:
    """The JSON object in a reply: strips whitespace and Markdown code fences (JSON-less servers)."""
    t = text.strip()
    if t.startswith("```"):
        t = t.split("\n", 1)[1] if "\n" in t else t[3:]
        t = t.rsplit("```", 1)[0]
    return t.strip()


# ----------------------------------------------------------------------------------------------
# The recommender
# ----------------------------------------------------------------------------------------------
class LLMRankerRecommender(Recommender):
    """Ranks the candidates with a chat model; popularity is the counted fallback.

    Args:
        action_space: the env's action space.
        seed: seeds the generator of the base class (the ranking itself uses no randomness).
        config: an :class:`~simrec.llm.LLMConfig`, a dict of its fields, or None (environment and
            defaults). Used here: endpoint, sampling, ``max_tokens``, ``structured``, ``schema_style``,
            ``repair``, retries, cache and ``sanitize``; e.g. ``local_backend_config(url)``.
        catalog: the env's catalog (``env.unwrapped.catalog``), which candidates are rendered from.
        client: a ready :class:`~simrec.llm.LLMClient` (tests, custom providers); the recommender owns
            it and closes it. Built from the config otherwise.
        sanitize: a :class:`~simrec.llm.sanitize.Sanitizer` to share (e.g. one holding the evaluation's
            held-out set), or :class:`~simrec.llm.sanitize.SanitizeConfig` fields; default
            ``config.sanitize``.
        env: instead of ``catalog``, a simrec env whose catalog to use.
        recent: the user's most recent picks shown in the prompt.
        max_listed: list at most this many candidates (the best by the fallback order, shown in
            candidate order) to bound prompt size; None lists all.
        llm_env: environment variables to read the config from instead of ``os.environ``.
    """

    name = "llm"
    needs_env = True  # reads the catalog's titles and descriptions (through the sanitiser), not hidden state

    def __init__(self, action_space: spaces.Space, *, seed: int | None = None,
                 config: LLMConfig | Mapping[str, Any] | None = None, catalog: Catalog | None = None,
                 client: LLMClient | None = None,
                 sanitize: Sanitizer | SanitizeConfig | Mapping[str, Any] | None = None, env: Any = None,
                 recent: int = 5, max_listed: int | None = None,
                 llm_env: Mapping[str, str] | None = None) -> None:
        super().__init__(action_space, seed=seed)
        if catalog is None and env is not None:
            catalog = getattr(getattr(env, "unwrapped", env), "catalog", None)
        if catalog is None:
            raise ConfigError("the LLM ranker renders candidates from the catalog. Fix: "
                              "LLMRankerRecommender(env.action_space, catalog=env.unwrapped.catalog, config=...)")
        if recent < 0 or (max_listed is not None and max_listed < 1):
            raise ConfigError(f"LLM ranker: recent must be >= 0 and max_listed >= 1 or None, "
                              f"got recent={recent}, max_listed={max_listed}")
        self.catalog = catalog
        self.config = LLMConfig.resolve(config, env=llm_env, source="LLM ranker config")
        cfg = self.config
        if isinstance(sanitize, Sanitizer):
            self.sanitizer = sanitize
        else:
            self.sanitizer = Sanitizer(catalog, sanitize if sanitize is not None else cfg.sanitize)
        if client is None:
            client = LLMClient(cfg, open_cache(cfg.cache_path, cfg.effective_cache_mode), PriceTable(cfg.prices))
        self.client = client
        self.recent = recent
        self.max_listed = max_listed
        self._runner: AsyncRunner | None = None
        self._pid = os.getpid()
        self._picks: dict[str, deque[tuple[int, float | None]]] = {}
        self._by_features: dict[bytes, int] | None = None
        self._records: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {k: 0 for k in (
            "calls", "invalid_replies", "repairs", "repaired", "failures", "fallbacks", "leakage_blocked",
            "skipped", "filled_slots", "rank_tokens", "records_dropped")}

    # -- setup ---------------------------------------------------------------------------------
    def set_held_out(self, items: Iterable[int]) -> None:
        """Catalog indices of the current evaluation's targets; they never reach a prompt."""
        self.sanitizer.set_held_out(items)

    def reset(self, seed: int | None = None) -> None:
        """Re-seed and forget the users' recorded picks (the run totals in :meth:`stats` stay)."""
        super().reset(seed)
        self._picks.clear()

    # -- protocol ------------------------------------------------------------------------------
    def act(self, obs: dict[str, np.ndarray], info: dict[str, Any] | None = None) -> np.ndarray | int:
        info = info or {}
        cands = self._candidate_items(obs, info)
        fallback = self._fallback_order(obs)
        picks = self._llm_picks(obs, info, cands, fallback)
        chosen = set(picks)
        fill = [int(p) for p in fallback if int(p) not in chosen][: self.slate_size - len(picks)]
        if picks:  # slots the LLM was not asked for (short list) come from the fallback order
            self.counts["filled_slots"] += len(fill)
        return self._format(np.asarray(picks + fill, dtype=np.int64))

    def update(self, obs: dict[str, np.ndarray], action: Any, reward: float, next_obs: dict[str, np.ndarray],
               info: dict[str, Any]) -> None:
        """Remember what the user clicked (``info["clicked"]`` over ``info["slate_items"]``) for the next prompt."""
        uid, items, clicked = info.get("user_id"), info.get("slate_items"), info.get("clicked")
        if uid is None or items is None or clicked is None or self.recent == 0:
            return
        items = np.asarray(items).reshape(-1)
        clicked = np.asarray(clicked).reshape(-1)
        rating = info.get("rating")
        rating = np.zeros(items.size) if rating is None else np.asarray(rating, dtype=np.float64).reshape(-1)
        q = self._picks.setdefault(str(uid), deque(maxlen=self.recent))
        for j in np.flatnonzero(clicked[: items.size]):
            r = float(rating[j]) if j < rating.size and np.isfinite(rating[j]) and rating[j] > 0 else None
            q.append((int(items[j]), r))

    def stats(self) -> dict[str, float]:
        """Run totals: ranking calls, invalid replies, repairs, fallbacks, the client's requests, retries,
        tokens (live; ``rank_tokens`` counts cached ones too), cost, cache hits, and the sanitiser's audits.

        Every call ends valid (first reply or after a repair: ``repaired``) or in a fallback, so
        ``calls == valid + fallbacks``; ``skipped`` counts steps with no candidate the LLM may see (no call).
        """
        out = {k: float(v) for k, v in self.counts.items()}
        out.update(self.client.counters.as_dict())
        out["tokens"] = out["prompt_tokens"] + out["completion_tokens"]
        out.update({f"sanitize_{k}": float(v) for k, v in self.sanitizer.counts.items()})
        return out

    def drain_calls(self) -> list[dict[str, Any]]:
        """Per-call records since the last drain: user_id, messages (JSON), raw_reply, status, error,
        fallback, slate positions, tokens, latency, cache_hit."""
        out, self._records = self._records, []
        return out

    def close(self) -> None:
        """Close the client's connections, stop the loop thread, commit and close the cache."""
        self.client.shutdown(self._runner)
        self._runner = None

    def __del__(self) -> None:  # best effort for an unclosed recommender: connections, loop thread, cache
        with contextlib.suppress(Exception):  # at interpreter exit anything may already be gone
            self.close()

    # -- inputs --------------------------------------------------------------------------------
    def _item_of_features(self, rows: np.ndarray) -> list[int]:
        """Catalog indices of observation feature rows (-1 when no item has them).

        Observations carry the catalog's float32 feature vectors verbatim, so an exact lookup suffices.
        """
        if self._by_features is None:
            f = np.ascontiguousarray(self.catalog.features, dtype=np.float32)
            self._by_features = {}
            for i in range(f.shape[0]):
                self._by_features.setdefault(f[i].tobytes(), i)
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        return [self._by_features.get(r.tobytes(), -1) for r in rows]

    def _candidate_items(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        items = info.get("candidate_items")
        if items is not None:
            items = np.asarray(items, dtype=np.int64).reshape(-1)
            if items.size == self.num_candidates:
                return items
        # Without the env's info (e.g. a wrapper dropped it), identify the candidates by their features.
        c = np.asarray(obs["candidates"])
        return np.asarray(self._item_of_features(c[:, : self.catalog.dim]), dtype=np.int64)

    def _fallback_order(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Candidate positions by popularity (the observation's last column), ties by position: deterministic."""
        pop = np.asarray(obs["candidates"], dtype=np.float64)[:, -1]
        return np.argsort(-pop, kind="stable")

    def _recent_picks(self, obs: dict[str, np.ndarray], user_id: str | None) -> list[tuple[int, float | None]]:
        """The user's recent picks ``(item, stars or None)``, newest first.

        From :meth:`update` where this user's steps were seen; otherwise (a first session here, or runs
        without learning) decoded from the observation's history rows.
        """
        if self.recent == 0:
            return []
        q = self._picks.get(str(user_id)) if user_id is not None else None
        if q:
            return list(reversed(q))
        h = np.asarray(obs.get("history", np.zeros((0, _HIST_EXTRA))))
        if h.ndim != 2 or h.shape[0] == 0:
            return []
        d = h.shape[1] - _HIST_EXTRA
        rows = np.flatnonzero((h[:, d] > 0.5) & (h[:, d + 3] > 0.5))
        items = self._item_of_features(h[rows, :d])
        out = [(i, float(h[r, d + 1]) * 5.0 if h[r, d + 1] > 0 else None) for r, i in zip(rows, items) if i >= 0]
        return out[::-1][: self.recent]

    # -- prompt --------------------------------------------------------------------------------
    def _label(self, i: int) -> str:
        # As user prompts name items: quoted titles, bare attribute descriptions.
        lab = self.sanitizer.item_label(i)
        return lab if self.sanitizer.config.titles == "attributes" or lab.startswith("[") else f'"{lab}"'

    def _line(self, i: int, note: str = "") -> str:
        blurb = self.sanitizer.item_blurb(i)
        return self._label(i) + note + (f": {blurb}" if blurb else "")

    def messages(self, listed: Sequence[int], picks: Sequence[tuple[int, float | None]],
                 need: int) -> list[dict[str, str]]:
        """The chat messages (before sanitising) for ``listed`` catalog items and the user's ``picks``."""
        lines = []
        if picks:
            lines.append("The viewer recently picked (newest first):")
            for i, stars in picks:
                lines.append(f"- {self._line(i, f' (rated it {round(stars)}/5)' if stars else '')}")
        else:
            lines.append("The viewer has not picked anything yet.")
        lines.append("Candidates:")
        lines += [f"{k}. {self._line(i)}" for k, i in enumerate(listed, start=1)]
        n = len(listed)
        lines.append(f'Answer with JSON: {{"ranking": [<number>, ...]}}, the numbers of the {need} best candidates '
                     f"for this viewer, best first, each number once, only numbers from 1 to {n}.")
        return [{"role": "system", "content": _RULES}, {"role": "user", "content": "\n".join(lines)}]

    # -- the call ------------------------------------------------------------------------------
    def _llm_picks(self, obs: dict[str, np.ndarray], info: dict[str, Any], cands: np.ndarray,
                   fallback: np.ndarray) -> list[int]:
        """Candidate positions the LLM ranked (best first); [] when the fallback answers."""
        held = self.sanitizer.held_out
        visible = [p for p in range(cands.size) if cands[p] >= 0 and int(cands[p]) not in held]
        if self.max_listed is not None and len(visible) > self.max_listed:
            keep = set(visible)
            visible = sorted([int(p) for p in fallback if int(p) in keep][: self.max_listed])
        need = min(self.slate_size, len(visible))
        if need == 0:
            self.counts["skipped"] += 1  # nothing the LLM may see: no call
            return []
        user_id = info.get("user_id")
        picks = [(i, r) for i, r in self._recent_picks(obs, user_id) if i not in held]
        listed = [int(cands[p]) for p in visible]
        rec: dict[str, Any] = {"user_id": user_id, "t": info.get("t"), "raw_reply": None, "status": "failed",
                               "error": None, "fallback": True, "positions": None, "prompt_tokens": 0,
                               "completion_tokens": 0, "latency_s": 0.0, "cache_hit": None, "messages": None}
        self.counts["calls"] += 1
        try:
            messages, _ = self.sanitizer.enforce(self.messages(listed, picks, need))
        except LeakageError as e:  # strict mode refused the prompt: nothing is sent
            self.counts["leakage_blocked"] += 1
            return self._fall_back(rec, "leakage", str(e))
        schema = ranking_schema(len(listed), need, self.config.effective_schema_style)
        numbers: list[int] | None = None
        for attempt in (0, 1):
            rec["messages"] = json.dumps(messages, ensure_ascii=False)
            try:
                comp = self._complete(messages, schema)
            except LLMCallError as e:
                self.counts["failures"] += 1
                rec["cache_hit"] = rec["cache_hit"] is not False and e.reason == "replayed_failure"
                return self._fall_back(rec, "failed", f"{e.reason}: {e}")
            rec["prompt_tokens"] += comp.prompt_tokens
            rec["completion_tokens"] += comp.completion_tokens
            rec["latency_s"] += comp.latency_s
            rec["cache_hit"] = rec["cache_hit"] is not False and comp.cache_hit
            rec["raw_reply"] = comp.content
            self.counts["rank_tokens"] += comp.prompt_tokens + comp.completion_tokens
            try:
                if comp.content is None:
                    raise ValueError(f"empty reply (finish_reason={comp.finish_reason})")
                numbers = parse_ranking(comp.content, len(listed), need)
                break
            except ValueError as e:
                self.counts["invalid_replies"] += 1
                rec["error"] = " ".join(str(e).split())
                if attempt == 1 or not self.config.repair:
                    return self._fall_back(rec, "failed", rec["error"])
                self.counts["repairs"] += 1
                # Only the two new messages need auditing; the first ones already were.
                repair = [{"role": "assistant", "content": comp.content or ""},
                          {"role": "user", "content": f"That reply was invalid: {rec['error'][:_REPAIR_ERROR_CHARS]}. "
                                                      "Answer again with JSON only, exactly in the requested format."}]
                try:
                    repair, _ = self.sanitizer.enforce(repair)
                except LeakageError as le:
                    self.counts["leakage_blocked"] += 1
                    return self._fall_back(rec, "leakage", str(le))
                messages = messages + repair
        assert numbers is not None
        self.counts["repaired"] += rec["error"] is not None
        positions = [visible[x - 1] for x in numbers]
        rec.update(status="repaired" if rec["error"] is not None else "ok", error=None, fallback=False,
                   positions=positions)
        self._keep(rec)
        return positions

    def _complete(self, messages: list[dict], schema: dict) -> Completion:
        """One request: from the cache on the caller's thread, else live on the loop thread."""
        c = self.client
        if os.getpid() != self._pid:  # forked into a worker: the loop, connections and cache handle are the parent's
            self._pid = os.getpid()
            self._runner = None
            c.reset_connections()
            if c.cache is not None:
                c.cache = open_cache(c.cache.path, c.cache.mode)
        mt = self.config.max_tokens
        hit = c.complete_cached(messages, SCHEMA_NAME, schema, mt)  # replay needs no loop thread
        if hit is not None:
            return hit
        if self._runner is None or not self._runner.alive:
            self._runner = AsyncRunner(name="simrec-llm-ranker")
        try:
            return self._runner.run(c.complete(messages, SCHEMA_NAME, schema, mt))
        finally:
            c.flush()  # record as we go, so an interrupted run still replays up to here

    def _fall_back(self, rec: dict[str, Any], status: str, error: str) -> list[int]:
        self.counts["fallbacks"] += 1
        rec.update(status=status, error=error, fallback=True)
        log.warning("LLM ranker fell back to popularity for user %s (counted in stats()['fallbacks']): %s",
                    rec.get("user_id"), error[:200])
        self._keep(rec)
        return []

    def _keep(self, rec: dict[str, Any]) -> None:
        limit = self.config.max_call_records
        if limit <= 0:
            return
        self._records.append(rec)
        extra = len(self._records) - limit
        if extra > 0:  # nobody drains: keep memory bounded, count what was dropped
            del self._records[:extra]
            self.counts["records_dropped"] += extra

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config.model!r}, slate {self.slate_size} of {self.num_candidates})"


__all__ = ["LLMRankerRecommender", "RankingReply", "parse_ranking", "ranking_schema"]
