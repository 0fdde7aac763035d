"""simrec.llm.pool: LLM requests spread over two fake OpenAI-compatible servers on 127.0.0.1.

Load follows each endpoint's capacity, no endpoint ever has more requests in flight than its own limit,
a failing or dead endpoint's requests are answered by the other, a misconfigured one leaves the pool,
per-endpoint caches replay with every server down, and an env spec with ``endpoints`` runs on the pool.
"""

from __future__ import annotations

import asyncio
import socket

import gymnasium as gym
import numpy as np
import pytest

import simrec  # noqa: F401  (registers the envs)
from llm_servers import fake_server  # noqa: F401,F811  (fixture)
from simrec.errors import ConfigError
from simrec.llm.client import AsyncRunner, LLMCallError, LLMConfig
from simrec.llm.pool import EndpointPool, PoolConfig

SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 9}},
          "required": ["answer"]}
FAST = {"model": "fake", "timeout_s": 2.0, "backoff_base_s": 0.001, "backoff_max_s": 0.01, "structured": "json_schema"}


def shared(**kw) -> LLMConfig:
    return LLMConfig.resolve({**FAST, **kw}, env={})


def ask(pool: EndpointPool, n: int, tag: str = "q") -> list:
    """``n`` distinct requests at once through the pool; returns completions or exceptions."""
    runner = AsyncRunner()
    try:
        async def all_() -> list:
            return await asyncio.gather(*(pool.complete([{"role": "user", "content": f"{tag} {i}"}], "a", SCHEMA, 32)
                                          for i in range(n)), return_exceptions=True)
        return runner.run(all_(), timeout=60)
    finally:
        pool.shutdown(runner)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port  # nothing listens there: connections are refused


def test_load_follows_capacity_and_no_endpoint_exceeds_its_limit(fake_server):
    a, b = fake_server(latency_s=0.03), fake_server(latency_s=0.03)
    pool = EndpointPool(shared(), PoolConfig(endpoints=[{"base_url": a.base_url, "concurrency": 2},
                                                        {"base_url": b.base_url, "concurrency": 6}]))
    out = ask(pool, 120)
    assert all(not isinstance(r, BaseException) for r in out)
    # 120 requests against 8 slots: both servers were saturated, neither beyond its own limit
    assert a.max_inflight == 2 and b.max_inflight == 6
    assert a.counts["requests"] + b.counts["requests"] == 120
    # work follows capacity: the server with 3x the slots answered about 3x the requests
    assert 0.12 < a.counts["requests"] / 120 < 0.4 and b.counts["requests"] > 2 * a.counts["requests"]
    st = pool.stats()
    assert [s["max_inflight"] for s in st] == [2, 6] and sum(s["served"] for s in st) == 120
    c = pool.counters.as_dict()
    assert c["requests"] == 120 and c["pool_served_0"] == a.counts["requests"] and c["pool_failovers"] == 0


def test_equal_endpoints_share_the_load(fake_server):
    a, b = fake_server(latency_s=0.01), fake_server(latency_s=0.01)
    pool = EndpointPool(shared(), {"endpoints": [{"base_url": a.base_url, "concurrency": 3},
                                                 {"base_url": b.base_url, "concurrency": 3}]})
    ask(pool, 60)
    assert abs(a.counts["requests"] - b.counts["requests"]) <= 12
    assert a.max_inflight <= 3 and b.max_inflight <= 3


def test_failing_endpoint_is_retried_elsewhere(fake_server):
    bad = fake_server(faults={"server_error": 1.0})  # every request answers 500
    good = fake_server(latency_s=0.005)
    pool = EndpointPool(shared(), PoolConfig(endpoints=[{"base_url": bad.base_url, "concurrency": 4, "max_retries": 1},
                                                        {"base_url": good.base_url, "concurrency": 4}],
                                             cooldown_s=60))
    out = ask(pool, 40)
    assert all(not isinstance(r, BaseException) for r in out)  # every request answered, by the good server
    assert good.counts["ok"] == 40 and bad.counts["server_error"] > 0
    c = pool.counters.as_dict()
    assert c["pool_failovers"] == pool.members[0].failed > 0
    assert c["pool_served_0"] == 0 and c["pool_served_1"] == 40
    # after its first failures the bad server cooled down: most requests never went there
    assert pool.members[0].assigned < 20
    assert c["retries_server_error"] == bad.counts["server_error"] - pool.members[0].failed


def test_dead_endpoint_fails_over_and_all_dead_fails_the_request(fake_server):
    good = fake_server()
    dead = f"http://127.0.0.1:{free_port()}/v1"
    pool = EndpointPool(shared(), {"endpoints": [{"base_url": dead, "concurrency": 2, "max_retries": 0},
                                                 {"base_url": good.base_url, "concurrency": 2}]})
    assert all(not isinstance(r, BaseException) for r in ask(pool, 10))
    assert good.counts["ok"] == 10 and pool.members[0].failed >= 1
    dead2 = f"http://127.0.0.1:{free_port()}/v1"
    both_dead = EndpointPool(shared(), {"endpoints": [{"base_url": dead, "max_retries": 0},
                                                      {"base_url": dead2, "max_retries": 0}]})
    out = ask(both_dead, 2)
    assert all(isinstance(r, LLMCallError) and "every endpoint" in str(r) for r in out)
    assert both_dead.counters.as_dict()["pool_exhausted"] == 2


def test_misconfigured_endpoint_leaves_the_pool_and_bad_requests_are_not_retried(fake_server):
    auth = fake_server(schedule=["auth"] * 50)  # 401: a wrong key, not a sick server
    good = fake_server()
    pool = EndpointPool(shared(), {"endpoints": [{"base_url": auth.base_url, "concurrency": 1},
                                                 {"base_url": good.base_url, "concurrency": 2}]})
    assert all(not isinstance(r, BaseException) for r in ask(pool, 8))
    assert pool.members[0].disabled and auth.counts["auth"] == 1  # asked once, then out of the pool
    assert pool.counters.as_dict()["pool_disabled"] == 1
    a, b = fake_server(schedule=["bad_request"]), fake_server()
    pool = EndpointPool(shared(), {"endpoints": [{"base_url": a.base_url, "concurrency": 1},
                                                 {"base_url": b.base_url, "concurrency": 1}]})
    out = ask(pool, 1)
    assert isinstance(out[0], LLMCallError) and out[0].reason == "bad_request" and b.counts["requests"] == 0


def test_per_endpoint_caches_replay_with_every_server_down(fake_server, tmp_path):
    a, b = fake_server(), fake_server()
    eps = [{"base_url": a.base_url, "concurrency": 2, "cache_path": str(tmp_path / "a.sqlite")},
           {"base_url": b.base_url, "concurrency": 2, "cache_path": str(tmp_path / "b.sqlite")}]
    first = ask(EndpointPool(shared(), {"endpoints": eps}), 30)
    assert a.counts["requests"] > 0 and b.counts["requests"] > 0  # both caches hold part of the run
    a.stop(), b.stop()
    replay = EndpointPool(shared(), {"endpoints": [dict(e, cache_mode="replay") for e in eps]})
    again = ask(replay, 30)
    assert [r.content for r in again] == [r.content for r in first] and all(r.cache_hit for r in again)
    assert replay.counters.as_dict()["requests"] == 0


def test_split_divides_each_endpoints_limit_among_workers():
    pool = PoolConfig(endpoints=[{"base_url": "http://a/v1", "concurrency": 32},
                                 {"base_url": "http://b/v1", "concurrency": 3}])
    assert [e.concurrency for e in pool.split(4).endpoints] == [8, 1]
    with pytest.raises(ConfigError, match="endpoints"):
        PoolConfig.from_backend_config({"endpoints": [{"concurrency": 2}]})  # no base_url
    with pytest.raises(ConfigError, match="without 'endpoints'"):
        PoolConfig.from_backend_config({"pool": {"cooldown_s": 1}})


def test_env_spec_with_endpoints_runs_llm_users_on_the_pool(fake_server):
    a, b = fake_server(latency_s=0.01), fake_server(latency_s=0.01)
    cfg = {"model": "fake", "timeout_s": 2.0, "reflect_every": 0, "reflect_at_session_end": False,
           "endpoints": [{"base_url": a.base_url, "concurrency": 3}, {"base_url": b.base_url, "concurrency": 3}]}
    venv = gym.make_vec("simrec/Synthetic-v0", num_envs=12, vectorization_mode="vector_entry_point",
                        backend="llm", backend_config=cfg)
    venv.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        venv.step(np.stack([rng.permutation(50)[:5] for _ in range(12)]))
    backend = venv.unwrapped.sim.backend
    s = backend.stats()
    assert s["calls"] == 60 and s["fallbacks"] == 0
    assert a.counts["requests"] > 0 and b.counts["requests"] > 0 and a.max_inflight <= 3 and b.max_inflight <= 3
    assert s["pool_served_0"] + s["pool_served_1"] == a.counts["ok"] + b.counts["ok"]
    recs = backend.drain_calls()
    assert recs[0]["base_url"] == f"pool:{a.base_url},{b.base_url}"  # call records name the pool's servers
    venv.close()
