"""1,000 LLM-backed steps against a server that injects 20% faults: no crash, every step a valid
response, and every retry, invalid reply and fallback counted."""

from __future__ import annotations

import numpy as np

from llm_servers import CONTENT_FAULTS, HTTP_FAULTS, fake_server  # noqa: F401  (fixture)
from simrec.cognition.base import SOURCE_FALLBACK, SOURCE_LLM
from simrec.cognition.llm import LLMCognition
from simrec.envs.vector_env import SlateVectorEnv

FAULTS = {"rate_limit": 0.05, "server_error": 0.04, "timeout": 0.02, "malformed": 0.03,
          "schema_violation": 0.03, "out_of_slate": 0.03}  # 20% of requests


def test_thousand_steps_with_twenty_percent_faults(fake_server):
    assert abs(sum(FAULTS.values()) - 0.20) < 1e-9
    # a timeout answers after 1.5 s, the client gives up after 0.5 s (a normal answer takes milliseconds)
    srv = fake_server(faults=FAULTS, seed=11, retry_after_ms=5, timeout_sleep_s=1.5)
    be = LLMCognition({"base_url": srv.base_url, "model": "fake", "timeout_s": 0.5, "max_retries": 3,
                       "backoff_base_s": 0.002, "backoff_max_s": 0.02, "concurrency": 20,
                       "reflect_every": 0, "reflect_at_session_end": False}, env={})
    n_envs, n_steps = 20, 50
    venv = SlateVectorEnv(n_envs, backend=be)
    venv.reset(seed=0)
    rng = np.random.default_rng(0)
    sources = []
    for _ in range(n_steps):
        slates = np.stack([rng.permutation(50)[:5] for _ in range(n_envs)])
        obs, rew, term, trunc, info = venv.step(slates)
        # every step is a valid response (the backend validates each batch; check what reached the env)
        assert np.isfinite(rew).all() and venv.observation_space.contains(obs)
        clicked, rating, cons = info["clicked"], info["rating"], info["consumption"]
        assert clicked.shape == (n_envs, 5) and ((cons >= 0) & (cons <= 1)).all() and (cons[~clicked] == 0).all()
        rated = rating[rating > 0]
        assert np.isin(rated, [1, 2, 3, 4, 5]).all()
        sources.append(info["source"].copy())
    sources = np.concatenate(sources)
    assert sources.size == 1000
    s = be.stats()
    c = srv.counts
    # the faults really happened, at about the configured rate
    assert 0.12 < (srv.http_faults + srv.content_faults) / c["requests"] < 0.28
    assert all(c[k] > 0 for k in HTTP_FAULTS + CONTENT_FAULTS)
    # every request the server saw was sent (and counted) by the client
    assert s["requests"] == c["requests"]
    # every HTTP fault was either retried or ended its request (counted either way)
    assert s["retries"] + s["request_failures"] == srv.http_faults
    assert s["retries_rate_limit"] <= c["rate_limit"] and s["retries_server_error"] <= c["server_error"]
    assert s["retries_timeout"] <= c["timeout"]
    # every bad reply was counted as invalid: a first one got a repair request, a second one (or a
    # request that failed for good) a fallback
    assert s["invalid_replies"] == srv.content_faults
    assert s["fallbacks"] == (s["invalid_replies"] - s["repairs"]) + s["request_failures"]
    assert 0 < s["repaired"] <= s["repairs"]
    # every fallback row is marked, counted and logged, and nothing else is
    n_fb = int((sources == SOURCE_FALLBACK).sum())
    assert s["fallbacks"] == n_fb == s["failures"]
    assert np.isin(sources, [SOURCE_LLM, SOURCE_FALLBACK]).all()
    assert n_fb < 50  # retries and repair absorb nearly all faults
    recs = be.drain_calls()
    assert len(recs) == 1000
    assert sum(r["fallback"] for r in recs) == n_fb
    assert sum(r["parse_status"] == "repaired" for r in recs) == s["repaired"]
    venv.close()
