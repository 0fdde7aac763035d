"""The LLM backend against a real OpenAI-compatible server: llama.cpp with the bundled SmolLM2-135M.

These tests FAIL (never skip) when llama-cpp-python is missing; the failure says how to install it.
The tiny model's taste is poor, so they test the plumbing: schema-enforced replies always parse,
temperature 0 + seed is deterministic, the cache replays a run exactly, tokens are counted.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm_servers import llama_server  # noqa: F401  (fixture)
from simrec.cognition.base import SOURCE_CACHE, SOURCE_LLM
from simrec.cognition.llm import LLMCognition
from simrec.envs.slate_env import SlateEnv
from simrec.llm.local_server import LOCAL_MODEL_ALIAS, bundled_model_path, local_backend_config

pytestmark = pytest.mark.llm

STEPS = 5
ENV = {"slate_size": 3, "max_steps": 3}  # short pages and sessions keep decoding time down


def run(be: LLMCognition, steps: int, seed: int = 0) -> list[dict]:
    env = SlateEnv(backend=be, **ENV)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    out = []
    for _ in range(steps):
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        out.append({"clicked": info["clicked"].tolist(), "rating": info["rating"].tolist(),
                    "consumption": info["consumption"].tolist(), "leave": info["leave"], "reward": r,
                    "user": info["user_id"], "source": info["source"], "reason": info.get("reason"),
                    "latent": json.dumps(info["latent"]), "obs": obs["history"].copy()})
        if term or trunc:
            env.reset()
    return out


@pytest.fixture(scope="module")
def recorded(llama_server, tmp_path_factory):  # noqa: F811
    """One recorded run: a few short episodes with periodic and end-of-session reflection."""
    path = tmp_path_factory.mktemp("llm") / "cache.sqlite"
    be = LLMCognition(local_backend_config(llama_server, cache_path=str(path), reflect_every=2), env={})
    traj = run(be, STEPS)
    calls, stats = be.drain_calls(), be.stats()
    be.close()
    return {"path": path, "traj": traj, "calls": calls, "stats": stats}


def test_bundled_model_ships_in_the_wheel():
    p = bundled_model_path()
    assert p.suffix == ".gguf" and p.stat().st_size > 50_000_000


def test_every_reply_parses_under_schema_enforcement(recorded):
    calls, s = recorded["calls"], recorded["stats"]
    kinds = {c["kind"] for c in calls}
    assert kinds == {"decide", "reflect"}
    assert [c["parse_status"] for c in calls] == ["ok"] * len(calls), [c["error"] for c in calls]
    assert s["invalid_replies"] == 0 and s["fallbacks"] == 0 and s["failures"] == 0
    assert all(t["source"] == SOURCE_LLM for t in recorded["traj"])
    # llama-cpp-python's server refuses the json_schema response format: negotiated down once to JSON mode
    assert s["format_downgrades"] == 1
    assert {json.loads(c["params"])["response_format"] for c in calls} == {"json_object"}
    for c in calls:
        assert c["model"] == LOCAL_MODEL_ALIAS and json.loads(c["params"])["temperature"] == 0.0
        assert json.loads(c["audit"])["prompt"]["ok"]


def test_tokens_are_counted(recorded):
    calls, s = recorded["calls"], recorded["stats"]
    assert s["prompt_tokens"] == sum(c["prompt_tokens"] for c in calls) > 0
    assert s["completion_tokens"] == sum(c["completion_tokens"] for c in calls) > 0
    assert all(c["prompt_tokens"] > 50 and c["completion_tokens"] > 5 for c in calls)
    reflect = [c for c in calls if c["kind"] == "reflect"]
    assert reflect and s["reflect_calls"] == len(reflect)
    assert s["cost_usd"] == 0.0 and s["unpriced_requests"] == s["requests"] - 1  # local model: no price


def test_temperature_zero_with_seed_is_deterministic(recorded, llama_server):  # noqa: F811
    be = LLMCognition(local_backend_config(llama_server, reflect_every=2), env={})
    again = run(be, 2)
    calls = be.drain_calls()
    be.close()
    first = [c["raw_reply"] for c in recorded["calls"]][: len(calls)]
    assert [c["raw_reply"] for c in calls] == first
    for a, b in zip(recorded["traj"], again):
        assert (a["clicked"], a["rating"], a["consumption"], a["leave"], a["reason"]) == \
               (b["clicked"], b["rating"], b["consumption"], b["leave"], b["reason"])


def test_replay_reproduces_the_trajectory_exactly(recorded):
    # No server at all: replay-only must answer everything from the cache.
    be = LLMCognition(local_backend_config("http://127.0.0.1:9/v1", cache_path=str(recorded["path"]),
                                           cache_mode="replay", reflect_every=2), env={})
    again = run(be, STEPS)
    s = be.stats()
    calls = be.drain_calls()
    be.close()
    assert s["requests"] == 0 and s["cache_hits"] == len(recorded["calls"]) and s["cache_misses"] == 0
    assert all(t["source"] == SOURCE_CACHE for t in again)
    for a, b in zip(recorded["traj"], again):
        for k in ("clicked", "rating", "consumption", "leave", "reward", "user", "reason", "latent"):
            assert a[k] == b[k], k
        np.testing.assert_array_equal(a["obs"], b["obs"])
    assert [c["raw_reply"] for c in calls] == [c["raw_reply"] for c in recorded["calls"]]
    assert all(c["cache_hit"] for c in calls)
