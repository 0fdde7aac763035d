"""The LLM cognition backend against the fake OpenAI-compatible server (no model needed).

Config and environment, schemas, prompts and provenance records, retries and their counters,
repair and counted fallback, structured-output negotiation, concurrency limit, reflection,
held-out items, the record/replay cache, judge(), and the Gymnasium entry points.
"""

from __future__ import annotations

import json
import logging
import random

import gymnasium
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import simrec  # noqa: F401  (registers the envs)
from llm_servers import FakeOpenAIServer, fake_server, schema_instance  # noqa: F401  (fixture)
from simrec.llm.cache import CacheMissError
from simrec.cognition import make_backend
from simrec.cognition.base import SOURCE_CACHE, SOURCE_FALLBACK, SOURCE_LLM
from simrec.cognition.llm import LLMCognition, decision_schema, judge_schema, reflection_schema
from simrec.envs.slate_env import SlateEnv
from simrec.errors import ConfigError
from simrec.llm.client import LLMConfig, LLMFatalError, PriceTable, _retry_after
from simrec.llm.prompting import (JudgeReply, ReflectionReply, SlateDecision, decision_to_arrays,
                              judge_to_arrays)

RECORD_KEYS = {"call_id", "user", "user_id", "kind", "model", "base_url", "params", "seed", "messages", "raw_reply",
               "parsed", "parse_status", "audit", "prompt_tokens", "completion_tokens", "latency_s", "cost_usd",
               "cache_hit", "fallback", "error"}
FAST = {"backoff_base_s": 0.001, "backoff_max_s": 0.01, "timeout_s": 5.0}


def backend(url: str, **cfg) -> LLMCognition:
    """A backend on ``url``; no reflection unless asked (so request counts are exact)."""
    base = {"base_url": url, "model": "fake", "reflect_every": 0, "reflect_at_session_end": False, **FAST}
    return LLMCognition({**base, **cfg}, env={})


def run_env(be: LLMCognition, steps: int, seed: int = 0, **overrides) -> list[dict]:
    """Step a SlateEnv with random slates; the per-step trajectory (copies)."""
    env = SlateEnv(backend=be, **overrides)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    out = []
    for _ in range(steps):
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        out.append({"items": info["slate_items"].tolist(), "clicked": info["clicked"].tolist(),
                    "rating": info["rating"].tolist(), "consumption": info["consumption"].tolist(),
                    "leave": info["leave"], "reward": r, "source": info["source"], "user": info["user_id"],
                    "fatigue": info["latent"]["fatigue"], "obs": obs["history"].copy()})
        if term or trunc:
            env.reset()
    return out


# -- config ------------------------------------------------------------------------------------
def test_config_environment_precedence():
    env = {"OPENAI_API_KEY": "sk-env", "OPENAI_BASE_URL": "http://127.0.0.1:1/v1", "SIMREC_LLM_MODEL": "m-env",
           "SIMREC_LLM_TEMPERATURE": "0.1", "SIMREC_LLM_BASE_URL": "http://127.0.0.1:2/v1"}
    cfg = LLMConfig.resolve({"model": "m-cfg"}, env=env, seed=7)
    assert cfg.model == "m-cfg"  # explicit config beats SIMREC_*
    assert cfg.base_url == "http://127.0.0.1:2/v1"  # SIMREC_* beats OPENAI_*
    assert cfg.temperature == 0.1 and cfg.seed == 7
    assert cfg.api_key.get_secret_value() == "sk-env" and "sk-env" not in repr(cfg)
    assert LLMConfig().temperature <= 0.3


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="temperature"):
        LLMConfig.resolve({"temperature": 5}, env={})
    with pytest.raises(ConfigError, match="modle"):
        LLMConfig.resolve({"modle": "x"}, env={})
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        LLMCognition({}, env={})  # api.openai.com without a key
    with pytest.raises(ConfigError, match="cache_path"):
        LLMCognition({"base_url": "http://127.0.0.1:9/v1", "cache_mode": "replay"}, env={})


def test_price_table():
    p = PriceTable({"my-model": {"input": 1.0, "output": 2.0}})
    assert p.cost("my-model", 1_000_000, 500_000) == pytest.approx(2.0)
    assert p.lookup("gpt-4o-mini-2024-07-18") is p.prices["gpt-4o-mini"]  # longest prefix, not gpt-4o
    assert p.cost("local-thing", 10**6, 10**6) == 0.0


def test_retry_after_parsing():
    assert _retry_after({"retry-after-ms": "250"}) == pytest.approx(0.25)
    assert _retry_after({"retry-after": "3"}) == 3.0
    assert _retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a past date
    assert _retry_after({}) is None


# -- schemas -----------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 8), seed=st.integers(0, 10**6))
def test_tight_schemas_only_admit_valid_replies(k, seed):
    rng = random.Random(seed)
    d = SlateDecision.model_validate(schema_instance(decision_schema(k, "tight"), rng))
    clicked, rating, consumption, _ = decision_to_arrays(d, k)
    assert np.all(np.isnan(rating[~clicked])) and np.all(consumption[~clicked] == 0)
    j = JudgeReply.model_validate(schema_instance(judge_schema(k, "tight"), rng))
    watch, stars = judge_to_arrays(j, k)
    assert watch.shape == (k,) and set(stars.tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    ReflectionReply.model_validate(schema_instance(reflection_schema("tight"), rng))


def test_portable_schema_is_openai_strict_shaped():
    def walk(s):
        if isinstance(s, dict):
            if s.get("type") == "object":
                assert s["additionalProperties"] is False and set(s["required"]) == set(s["properties"])
            for bad in ("prefixItems", "const", "enum", "maxLength", "minimum"):
                assert bad not in s
            for v in s.values():
                walk(v)
        elif isinstance(s, list):
            for v in s:
                walk(v)

    for sch in (decision_schema(5, "portable"), judge_schema(5, "portable"), reflection_schema("portable")):
        walk(sch)


# -- the backend through the env ---------------------------------------------------------------
def test_gymnasium_make_with_llm_backend(fake_server):
    srv = fake_server()
    env = gymnasium.make("simrec/Synthetic-v0", backend="llm",
                         backend_config={"base_url": srv.base_url, "model": "fake", "api_key": "x"})
    be = env.unwrapped.sim.backend
    assert isinstance(be, LLMCognition)
    env.reset(seed=3)
    for _ in range(5):
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        assert info["source"] == SOURCE_LLM and isinstance(info["reason"], str)
        assert env.observation_space.contains(obs)
        if term or trunc:
            env.reset()
    assert srv.counts["ok"] >= 5
    assert be.stats()["decide_calls"] == 5
    env.close()
    assert isinstance(make_backend("llm", {"base_url": srv.base_url, "api_key": "x"}), LLMCognition)


def test_call_records_and_stats(fake_server):
    srv = fake_server()
    be = backend(srv.base_url)
    run_env(be, 6)
    recs = be.drain_calls()
    assert len(recs) == 6 and be.drain_calls() == []
    for r in recs:
        assert set(r) == RECORD_KEYS
        assert r["kind"] == "decide" and r["parse_status"] == "ok" and not r["fallback"] and r["error"] is None
        msgs = json.loads(r["messages"])
        assert [m["role"] for m in msgs] == ["system", "user"] and "This page:" in msgs[1]["content"]
        assert json.loads(r["params"])["seed"] == 0 and json.loads(r["params"])["response_format"] == "json_schema"
        assert json.loads(r["audit"])["prompt"]["ok"]
        SlateDecision.model_validate_json(r["parsed"])
        assert r["prompt_tokens"] > 0 and r["completion_tokens"] > 0
    s = be.stats()
    assert s["prompt_tokens"] == sum(r["prompt_tokens"] for r in recs)
    assert s["completion_tokens"] == sum(r["completion_tokens"] for r in recs)
    assert s["requests"] == srv.counts["requests"] == 6 and s["fallbacks"] == 0
    # the prompt carries no internals: no latent numbers
    assert s["sanitize_violations_internal"] == 0


def test_prompt_cost_is_priced(fake_server):
    srv = fake_server()
    be = backend(srv.base_url, model="gpt-4o-mini")
    run_env(be, 2)
    s = be.stats()
    expect = (s["prompt_tokens"] * 0.15 + s["completion_tokens"] * 0.60) / 1e6
    assert s["cost_usd"] == pytest.approx(expect) and s["cost_usd"] > 0
    assert sum(r["cost_usd"] for r in be.drain_calls()) == pytest.approx(expect)


# -- faults, retries, repair, fallback ---------------------------------------------------------
def test_retries_are_counted_by_reason(fake_server):
    srv = fake_server(schedule=["rate_limit", "server_error", "timeout", None], timeout_sleep_s=1.0)
    be = backend(srv.base_url, timeout_s=0.3)
    out = run_env(be, 1)
    s = be.stats()
    assert out[0]["source"] == SOURCE_LLM
    assert (s["retries"], s["retries_rate_limit"], s["retries_server_error"], s["retries_timeout"]) == (3, 1, 1, 1)
    assert s["requests"] == 4 and s["request_failures"] == 0 and s["fallbacks"] == 0


def test_retry_after_is_honoured(fake_server):
    srv = fake_server(schedule=["rate_limit"], retry_after_ms=300)
    be = backend(srv.base_url)  # backoff alone would wait about a millisecond
    run_env(be, 1)
    rec = be.drain_calls()[0]
    assert be.stats()["retries_rate_limit"] == 1 and rec["parse_status"] == "ok"
    assert rec["latency_s"] >= 0.3  # waited as long as the server asked


def test_exhausted_retries_fall_back_and_are_counted(fake_server, caplog):
    srv = fake_server(schedule=["server_error"] * 3)
    be = backend(srv.base_url, max_retries=2)
    with caplog.at_level(logging.WARNING, logger="simrec.llm"):
        out = run_env(be, 1)
    s = be.stats()
    assert out[0]["source"] == SOURCE_FALLBACK
    assert s["retries"] == 2 and s["request_failures"] == 1 and s["fallbacks"] == 1 and s["failures"] == 1
    rec = be.drain_calls()[0]
    assert rec["fallback"] and rec["parse_status"] == "failed" and "server_error" in rec["error"]
    assert "fell back" in caplog.text


@pytest.mark.parametrize("fault", ["malformed", "schema_violation", "out_of_slate"])
def test_invalid_reply_is_repaired_once(fake_server, fault):
    srv = fake_server(schedule=[fault, None])
    be = backend(srv.base_url)
    out = run_env(be, 1)
    rec = be.drain_calls()[0]
    assert out[0]["source"] == SOURCE_LLM
    assert rec["parse_status"] == "repaired" and rec["error"] is None
    msgs = json.loads(rec["messages"])  # the repair request quotes the bad reply and the error
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"] and "invalid" in msgs[-1]["content"]
    s = be.stats()
    assert (s["invalid_replies"], s["repairs"], s["repaired"], s["fallbacks"]) == (1, 1, 1, 0)


def test_invalid_twice_falls_back(fake_server):
    srv = fake_server(schedule=["malformed", "out_of_slate"])
    be = backend(srv.base_url)
    out = run_env(be, 1)
    assert out[0]["source"] == SOURCE_FALLBACK
    s = be.stats()
    assert (s["invalid_replies"], s["repairs"], s["repaired"], s["fallbacks"]) == (2, 1, 0, 1)
    assert "not on the page" in be.drain_calls()[0]["error"]


def test_bad_request_fails_the_call_not_the_run(fake_server):
    srv = fake_server(schedule=["bad_request"])
    be = backend(srv.base_url)
    out = run_env(be, 2)
    assert [o["source"] for o in out] == [SOURCE_FALLBACK, SOURCE_LLM]
    assert be.stats()["bad_requests"] == 1 and be.stats()["retries"] == 0


def test_auth_error_is_fatal(fake_server):
    srv = fake_server(schedule=["auth"])
    be = backend(srv.base_url)
    with pytest.raises(LLMFatalError, match="API key"):
        run_env(be, 1)


def test_structured_output_negotiation(fake_server):
    srv = fake_server(reject_json_schema=True)
    be = backend(srv.base_url)
    out = run_env(be, 4)
    assert all(o["source"] == SOURCE_LLM for o in out)
    assert be.stats()["format_downgrades"] == 1 and srv.counts["rejected_format"] == 1
    assert srv.counts["format_json_object"] == 4
    assert all(json.loads(r["params"])["response_format"] == "json_object" for r in be.drain_calls())


def test_concurrency_limit(fake_server):
    srv = fake_server(latency_s=0.05)
    be = backend(srv.base_url, concurrency=4)
    from simrec.envs.vector_env import SlateVectorEnv

    venv = SlateVectorEnv(12, backend=be)
    venv.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(2):
        venv.step(np.stack([rng.permutation(50)[:5] for _ in range(12)]))
    assert srv.counts["requests"] == 24
    assert 2 <= srv.max_inflight <= 4
    venv.close()


# -- reflection and held-out items -------------------------------------------------------------
def test_reflection_notes_reach_the_prompt_and_are_counted(fake_server):
    srv = fake_server()
    be = backend(srv.base_url, reflect_every=2, reflect_at_session_end=True)
    env = SlateEnv(backend=be, max_steps=5)
    env.reset(seed=1)
    term = trunc = False
    while not (term or trunc):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
    recs = be.drain_calls()
    kinds = [r["kind"] for r in recs]
    assert "reflect" in kinds and kinds[-1] == "reflect"  # periodic, then at session end
    first = kinds.index("reflect")
    later = [r for r in recs[first + 1:] if r["kind"] == "decide"]
    if later:
        assert "Your notes:" in json.loads(later[0]["messages"])[1]["content"]
    s = be.stats()
    refl = [r for r in recs if r["kind"] == "reflect"]
    assert s["reflect_calls"] == len(refl)
    assert s["reflect_tokens"] == sum(r["prompt_tokens"] + r["completion_tokens"] for r in refl) > 0
    assert s["prompt_tokens"] == sum(r["prompt_tokens"] for r in recs)
    env.close()


def test_held_out_items_never_reach_a_prompt(fake_server):
    srv = fake_server(log_requests=1000)
    be = backend(srv.base_url)
    env = SlateEnv(backend=be)
    env.reset(seed=2)
    cat = env.unwrapped.catalog
    # hold out the first candidates and put them on the page
    held = env.unwrapped._cands[0][:2].tolist()
    be.set_held_out(held)
    env.step(np.arange(5))
    sent = json.dumps(srv.requests)
    for i in held:
        assert cat.titles[i] not in sent
    assert be.stats()["sanitize_violations_held_out_id"] >= 1  # the withheld slots were caught and redacted
    env.close()


# -- judge -------------------------------------------------------------------------------------
def test_judge(fake_server):
    srv = fake_server(schedule=[None, "malformed", "malformed"])
    be = backend(srv.base_url)
    env = SlateEnv(backend=be)
    env.reset(seed=0)
    pop = env.unwrapped.sim.pop
    items = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    jb = be.judge(pop, np.array([0, 1]), items, np.random.default_rng(0))
    assert jb.watch.shape == (2, 4) and not np.isnan(jb.rating).any()
    assert set(jb.source.tolist()) == {SOURCE_LLM, SOURCE_FALLBACK}
    assert be.stats()["judge_calls"] == 2 and be.stats()["fallbacks"] == 1


# -- cache -------------------------------------------------------------------------------------
def test_cache_replays_a_run_exactly(fake_server, tmp_path):
    path = tmp_path / "llm.sqlite"
    srv = fake_server(schedule=[None, "malformed"] + [None] * 10 + ["server_error"] * 5)
    rec = backend(srv.base_url, cache_path=str(path), reflect_every=3, max_retries=4)
    first = run_env(rec, 25, seed=5)
    rec.close()
    assert any(o["source"] == SOURCE_FALLBACK for o in first)  # a recorded failure...
    srv.stop()
    # replay-only against a dead server: every reply (and the failure) comes from the cache
    rep = backend("http://127.0.0.1:9/v1", cache_path=str(path), cache_mode="replay", reflect_every=3)
    second = run_env(rep, 25, seed=5)
    for a, b in zip(first, second):
        for k in ("items", "clicked", "rating", "consumption", "leave", "reward", "user", "fatigue"):
            assert a[k] == b[k], k
        np.testing.assert_array_equal(a["obs"], b["obs"])
        assert (b["source"] == SOURCE_FALLBACK) == (a["source"] == SOURCE_FALLBACK)  # ...replays as a fallback
        assert b["source"] in (SOURCE_CACHE, SOURCE_FALLBACK)
    s = rep.stats()
    assert s["requests"] == 0 and s["cache_hits"] > 0 and s["replayed_failures"] >= 1
    # a different seed asks for prompts that were never recorded
    with pytest.raises(CacheMissError, match="replay"):
        run_env(rep, 25, seed=6)


def test_read_write_cache_serves_hits(fake_server, tmp_path):
    srv = fake_server()
    path = str(tmp_path / "c.sqlite")
    a = backend(srv.base_url, cache_path=path)
    t1 = run_env(a, 5, seed=1)
    a.close()
    b = backend(srv.base_url, cache_path=path)
    t2 = run_env(b, 5, seed=1)
    assert [x["clicked"] for x in t1] == [x["clicked"] for x in t2]
    assert all(x["source"] == SOURCE_CACHE for x in t2) and srv.counts["requests"] == 5
    assert b.stats()["cache_hits"] == 5 and b.stats()["cached_prompt_tokens"] > 0
    assert all(r["cache_hit"] and r["cost_usd"] == 0 for r in b.drain_calls())


def test_fingerprint_replay_matches_a_full_rebuild(fake_server, tmp_path):
    """Replaying through prompt-input fingerprints (no re-rendering) gives the same trajectory and
    the same prompts as re-rendering every prompt and looking it up by its request key."""
    srv = fake_server(schedule=[None, None, "schema_violation"])
    path = str(tmp_path / "fp.sqlite")
    rec = backend(srv.base_url, cache_path=path, reflect_every=3, reflect_at_session_end=True)
    first = run_env(rec, 30, seed=4)
    first_calls = rec.drain_calls()
    rec.close()
    runs = {}
    for fast in (True, False):
        rep = backend("http://127.0.0.1:9/v1", cache_path=path, cache_mode="replay", reflect_every=3,
                      reflect_at_session_end=True, fast_replay=fast)
        runs[fast] = (run_env(rep, 30, seed=4), rep.drain_calls(), rep.stats())
        rep.close()
    (fast_t, fast_c, fast_s), (slow_t, slow_c, slow_s) = runs[True], runs[False]
    assert fast_s["prompt_cache_hits"] > 0.9 * len(fast_c) and slow_s["prompt_cache_hits"] == 0
    assert fast_s["sanitize_audited"] < slow_s["sanitize_audited"]  # the fast path skipped rendering
    for a, b, c in zip(first, fast_t, slow_t):
        for k in ("clicked", "rating", "consumption", "leave", "user", "fatigue"):
            assert a[k] == b[k] == c[k], k
    assert [c["messages"] for c in fast_c] == [c["messages"] for c in slow_c] == [c["messages"] for c in first_calls]
    assert [c["parse_status"] for c in fast_c] == [c["parse_status"] for c in first_calls]
    assert "repaired" in [c["parse_status"] for c in first_calls]


def test_local_server_missing_install_says_how_to_install(monkeypatch):
    import importlib.util

    from simrec.llm import local_server as local_llm

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(local_llm.LocalLLMError, match=r"pip install .*local-llm"):
        with local_llm.local_server():
            pass
    cfg = LLMConfig.resolve(local_llm.local_backend_config("http://127.0.0.1:1/v1"), env={})
    assert cfg.temperature == 0.0 and cfg.seed == 0 and cfg.model == local_llm.LOCAL_MODEL_ALIAS
