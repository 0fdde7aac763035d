"""The LLM ranker recommender: replies become slates, bad replies are repaired once then fall back (counted),
prompts carry no catalog ids or held-out items over HTTP, the cache replays a run, and the real bundled model
drives a SlateEnv session.

Most tests run against the fake OpenAI server of ``llm_servers`` with scripted reply contents; the last one
starts llama.cpp with the bundled SmolLM2-135M and FAILS (never skips) when llama-cpp-python is missing.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from llm_servers import FakeOpenAIServer, llama_server  # noqa: F401  (fixture)

from simrec.envs.slate_env import SlateEnv
from simrec.errors import ConfigError
from simrec.llm.sanitize import Sanitizer, display_title
from simrec.recommenders.base import _HIST_EXTRA
from simrec.recommenders.llm_ranker import LLMRankerRecommender, parse_ranking, ranking_schema


# ----------------------------------------------------------------------------------------------
# A fake server with scripted reply contents
# ----------------------------------------------------------------------------------------------
def _schema(body: dict) -> dict:
    rf = body.get("response_format") or {}
    return (rf.get("json_schema") or {}).get("schema") or rf.get("schema") or {}


def reverse_ranking(body: dict) -> str:
    """A valid reply for any request: the last listed candidates first."""
    r = _schema(body)["properties"]["ranking"]
    n, need = len(r["items"]["enum"]), r["minItems"]
    return json.dumps({"ranking": list(range(n, n - need, -1))})


class ScriptedServer(FakeOpenAIServer):
    """The fake server, answering 200s with ``script`` contents in order, then with ``reply(body)``.

    HTTP faults (``schedule``) still come from the fake; every request body is logged.
    """

    def __init__(self, script: list[str] | None = None, reply: Callable[[dict], str] | None = reverse_ranking,
                 **kw: Any) -> None:
        super().__init__(log_requests=100_000, **kw)
        self.script = list(script or [])
        self.reply = reply

    def answer(self, body: dict) -> tuple[int, dict, dict[str, str]]:
        status, obj, headers = super().answer(body)
        if status == 200:
            with self._lock:
                content = self.script.pop(0) if self.script else None
            if content is None and self.reply is not None:
                content = self.reply(body)
            if content is not None:
                obj["choices"][0]["message"]["content"] = content
        return status, obj, headers


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedServer]]:
    started: list[ScriptedServer] = []

    def make(**kw: Any) -> ScriptedServer:
        s = ScriptedServer(**kw).start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def env() -> SlateEnv:
    return SlateEnv(max_steps=3)  # embedded users; every test resets it with a seed


def config(srv: ScriptedServer | str, **kw: Any) -> dict[str, Any]:
    url = srv if isinstance(srv, str) else srv.base_url
    return {"base_url": url, "model": "fake", "backoff_base_s": 0.001, "backoff_max_s": 0.01, "timeout_s": 5.0,
            **kw}


def ranker(env: SlateEnv, srv: ScriptedServer | str, sanitize: Any = None, **kw: Any) -> LLMRankerRecommender:
    return LLMRankerRecommender(env.action_space, seed=0, catalog=env.catalog, config=config(srv, **kw),
                                sanitize=sanitize, llm_env={})


def run(env: SlateEnv, rec: LLMRankerRecommender, episodes: int = 2, seed: int = 0) -> list[dict[str, Any]]:
    """Sessions of the env with the ranker learning from each step; one row per step."""
    out = []
    obs, info = env.reset(seed=seed)
    for ep in range(episodes):
        if ep:
            obs, info = env.reset()
        done = False
        while not done:
            action = rec.act(obs, info)
            nobs, reward, term, trunc, ninfo = env.step(action)
            rec.update(obs, action, reward, nobs, ninfo)
            out.append({"action": np.asarray(action).tolist(), "items": ninfo["slate_items"].tolist(),
                        "clicked": ninfo["clicked"].tolist(), "candidates": info["candidate_items"].tolist()})
            obs, info, done = nobs, ninfo, term or trunc
    return out


def popularity_order(obs: dict[str, np.ndarray]) -> list[int]:
    return np.argsort(-obs["candidates"][:, -1], kind="stable").tolist()


def last_user_message(body: dict) -> str:
    return [m for m in body["messages"] if m["role"] == "user"][-1]["content"]


# ----------------------------------------------------------------------------------------------
# Replies -> slates
# ----------------------------------------------------------------------------------------------
def test_a_valid_reply_gives_that_order(env, scripted):
    srv = scripted(script=['{"ranking": [3, 1, 50, 2, 4]}'])
    rec = ranker(env, srv)
    obs, info = env.reset(seed=0)
    action = rec.act(obs, info)
    assert action.tolist() == [2, 0, 49, 1, 3]
    s = rec.stats()
    assert (s["calls"], s["requests"], s["repairs"], s["fallbacks"], s["invalid_replies"]) == (1, 1, 0, 0, 0)
    assert s["tokens"] > 0 and s["prompt_tokens"] > 0
    body = srv.requests[0]
    # the structured-output mechanism of the user backend: json_schema with a tight schema
    assert body["response_format"]["type"] == "json_schema"
    ranking = body["response_format"]["json_schema"]["schema"]["properties"]["ranking"]
    assert ranking["items"]["enum"] == list(range(1, 51)) and ranking["minItems"] == ranking["maxItems"] == 5
    prompt = last_user_message(body)
    assert re.search(r"^50\. ", prompt, re.MULTILINE) and not re.search(r"^51\. ", prompt, re.MULTILINE)
    first = display_title(env.catalog.titles[info["candidate_items"][0]])
    assert prompt.splitlines()[2].startswith(f'1. "{first}": ')
    rec.close()


@pytest.mark.parametrize("bad, problem", [
    ('{"ranking": [99, 1, 2, 3, 4]}', "number 99 is not on the list"),
    ('{"ranking": [0, 1, 2, 3, 4]}', "number 0 is not on the list"),
    ('{"ranking": [7, 7, 2, 3, 4]}', "number 7 appears more than once"),
    ('{"ranking": [1, 2]}', "the ranking has 2 number(s) but 5"),
    ('{"best": [1, 2, 3, 4, 5]}', "ranking: Field required"),
    ('{"ranking": [1, 2, 3', "not valid JSON"),
])
def test_an_invalid_reply_is_repaired_once_naming_the_problem(env, scripted, bad, problem):
    srv = scripted(script=[bad, '{"ranking": [5, 4, 3, 2, 1]}'])
    rec = ranker(env, srv)
    obs, info = env.reset(seed=0)
    assert rec.act(obs, info).tolist() == [4, 3, 2, 1, 0]
    s = rec.stats()
    assert (s["requests"], s["invalid_replies"], s["repairs"], s["repaired"], s["fallbacks"]) == (2, 1, 1, 1, 0)
    repair = srv.requests[1]["messages"]
    assert repair[:2] == srv.requests[0]["messages"] and repair[2] == {"role": "assistant", "content": bad}
    assert problem in repair[3]["content"]
    assert rec.drain_calls()[0]["status"] == "repaired"
    rec.close()


def test_out_of_list_twice_is_one_repair_then_a_counted_fallback(env, scripted, caplog):
    srv = scripted(script=['{"ranking": [51, 1, 2, 3, 4]}', '{"ranking": [1, 2, 3, 4, 60]}'])
    rec = ranker(env, srv)
    obs, info = env.reset(seed=0)
    with caplog.at_level(logging.WARNING, logger="simrec.llm"):
        action = rec.act(obs, info)
    assert action.tolist() == popularity_order(obs)[:5]
    s = rec.stats()
    assert (s["calls"], s["requests"], s["repairs"], s["repaired"], s["invalid_replies"], s["fallbacks"]) == \
           (1, 2, 1, 0, 2, 1)
    assert any("fell back" in r.getMessage() for r in caplog.records)
    call = rec.drain_calls()[0]
    assert call["fallback"] and call["status"] == "failed" and "number 60" in call["error"]
    # the run goes on: the next step asks afresh (and gets a valid default reply)
    obs, _, _, _, info = env.step(action)
    assert rec.act(obs, info).tolist() == list(range(49, 44, -1))
    assert rec.stats()["fallbacks"] == 1
    rec.close()


def test_no_repair_when_disabled_and_failed_requests_fall_back(env, scripted):
    srv = scripted(script=['{"ranking": [1, 1, 1, 1, 1]}'], schedule=[None, "server_error"])
    rec = ranker(env, srv, repair=False, max_retries=0)
    obs, info = env.reset(seed=0)
    assert rec.act(obs, info).tolist() == popularity_order(obs)[:5]  # invalid, no repair asked
    obs, _, _, _, info = env.step(rec.act(obs, info))  # 500 with no retry left: a request failure
    s = rec.stats()
    assert (s["requests"], s["repairs"], s["fallbacks"], s["failures"], s["request_failures"]) == (2, 0, 2, 1, 1)
    rec.close()


def test_parse_ranking_and_schema():
    assert parse_ranking('```json\n{"ranking": [2, 1, 3], "why": "x"}\n```', 3, 2) == [2, 1]
    with pytest.raises(ValueError, match="not on the list"):
        parse_ranking('{"ranking": [4]}', 3, 1)
    assert ranking_schema(4, 2, "portable")["properties"]["ranking"] == {"type": "array", "items": {"type": "integer"}}


# ----------------------------------------------------------------------------------------------
# Inputs: history, held-out items, catalog ids
# ----------------------------------------------------------------------------------------------
def test_recent_picks_come_from_the_observation_history(env, scripted):
    srv = scripted()
    rec = ranker(env, srv)
    obs, info = env.reset(seed=0)
    obs = {k: v.copy() for k, v in obs.items()}
    d = obs["history"].shape[1] - _HIST_EXTRA
    picked = 7
    obs["history"][-1, :d] = env.catalog.features[picked]
    obs["history"][-1, d:] = [1.0, 0.8, 1.0, 1.0]  # clicked, 4 stars, finished, valid
    del info["candidate_items"]  # candidates are then identified by their features
    assert rec.act(obs, info).tolist() == list(range(49, 44, -1))
    prompt = last_user_message(srv.requests[0])
    label = json.dumps(display_title(env.catalog.titles[picked]))
    assert f"- {label} (rated it 4/5)" in prompt.split("Candidates:")[0]
    rec.close()


def _held_out(env: SlateEnv) -> list[int]:
    """Half the catalog, leaving out titles that are part of another title (those are sent legitimately)."""
    titles = [display_title(t).lower() for t in env.catalog.titles]
    rng = np.random.default_rng(1)
    half = rng.choice(len(titles), len(titles) // 2, replace=False)
    return sorted(int(i) for i in half if not any(titles[i] in t for j, t in enumerate(titles) if j != i))


@pytest.mark.parametrize("titles, mode", [("real", "redact"), ("pseudonym", "strict"), ("attributes", "redact")])
def test_no_catalog_id_or_held_out_item_goes_over_http(env, scripted, titles, mode):
    srv = scripted()
    cat = env.catalog
    held = _held_out(env)
    rec = ranker(env, srv, sanitize={"titles": titles, "mode": mode})
    rec.set_held_out(held)
    hs = set(held)
    obs, info = env.reset(seed=0)
    visible = next(i for i in range(len(cat)) if i not in hs)
    # the user in session "picked" a held-out item and a visible one: only the visible one may be shown
    rec.update(obs, np.arange(5), 2.0, obs, {"user_id": info["user_id"], "slate_items": np.array([held[0], visible]),
                                             "clicked": np.array([True, True]), "rating": np.array([5.0, 4.0])})
    steps = [{"candidates": info["candidate_items"].tolist()}]
    for _ in range(3):
        action = rec.act(obs, info)
        obs, _, term, trunc, info = env.step(action)
        steps.append({"candidates": info["candidate_items"].tolist()})
        if term or trunc:
            break
    assert any(i in hs for st in steps for i in st["candidates"])  # held-out candidates were there to leak
    assert srv.requests and rec.stats()["fallbacks"] == 0 and rec.stats()["leakage_blocked"] == 0
    audit = Sanitizer(cat, {"titles": titles}, held_out=held)
    ids = re.compile("|".join(map(re.escape, cat.ids)))
    san = rec.sanitizer
    assert len(srv.requests) == len(steps) - 1  # one request per step: every reply was valid
    for body, step in zip(srv.requests, steps):
        text = "\n".join(m["content"] for m in body["messages"])
        assert not ids.search(text)
        kinds = {v.kind for v in audit.audit(text).violations}
        assert not kinds & {"held_out_id", "held_out_title", "catalog_id"}, kinds
        for i in held:
            assert display_title(cat.titles[i]) not in text and cat.titles[i] not in text
        # held-out candidates are not listed (lines, not numbers: a sequel of a held-out title can be redacted
        # with its list number, "2. The Slow Market" ~ held-out "The Slow Market 2")
        listed = last_user_message(body).split("Candidates:\n")[1].splitlines()[:-1]
        assert len(listed) == sum(i not in hs for i in step["candidates"])
        picks = [x for x in last_user_message(body).split("Candidates:")[0].splitlines() if x.startswith("- ")]
        assert len(picks) == 1 and san.item_label(visible) in picks[0]  # the held-out pick is left out
        if titles != "real":  # no real title of anything reaches the server
            assert not any(display_title(cat.titles[i]) in text for i in steps[0]["candidates"] + [visible])
        if titles == "pseudonym":
            assert not any(san.pseudonym(i) in text for i in held)
    rec.close()


# ----------------------------------------------------------------------------------------------
# Record / replay
# ----------------------------------------------------------------------------------------------
def test_cache_replay_without_a_server_reproduces_the_slates(env, scripted, tmp_path):
    path = str(tmp_path / "ranker.sqlite")
    # the first step needs a repair and still falls back: the replay must fall back the same way
    srv = scripted(script=['{"ranking": [1, 1, 2, 3, 4]}', '{"ranking": [9]}'])
    rec = ranker(env, srv, cache_path=path)
    first = run(env, rec)
    s1 = rec.stats()
    rec.close()
    assert s1["fallbacks"] == 1 and s1["repairs"] == 1 and s1["calls"] == len(first) > 3

    again = ranker(env, "http://127.0.0.1:9/v1", cache_path=path, cache_mode="replay")
    second = run(env, again)
    s2 = again.stats()
    calls = again.drain_calls()
    again.close()
    assert second == first
    assert s2["requests"] == 0 and s2["cache_misses"] == 0 and s2["cache_hits"] == s1["requests"]
    assert (s2["calls"], s2["repairs"], s2["fallbacks"]) == (s1["calls"], s1["repairs"], s1["fallbacks"])
    assert all(c["cache_hit"] for c in calls)


def test_it_needs_the_catalog(env):
    with pytest.raises(ConfigError, match="catalog"):
        LLMRankerRecommender(env.action_space, config={"base_url": "http://127.0.0.1:9/v1", "model": "m"}, llm_env={})


def test_single_item_slates(scripted):
    env1 = SlateEnv(slate_size=1, num_candidates=8, max_steps=2)
    srv = scripted()
    rec = ranker(env1, srv)
    obs, info = env1.reset(seed=0)
    action = rec.act(obs, info)
    assert isinstance(action, int) and action == 7
    rec.close()


# ----------------------------------------------------------------------------------------------
# The real bundled model
# ----------------------------------------------------------------------------------------------
@pytest.mark.llm
def test_bundled_model_ranks_a_session(llama_server, tmp_path):  # noqa: F811
    from simrec.llm.local_server import local_backend_config

    env = SlateEnv(max_steps=3)
    path = str(tmp_path / "local.sqlite")
    # ten listed candidates keep each prompt near 450 tokens (about 3 s a call on 2 cores)
    rec = LLMRankerRecommender(env.action_space, seed=0, catalog=env.catalog, llm_env={}, max_listed=10,
                               config=local_backend_config(llama_server, cache_path=path))
    steps = run(env, rec, episodes=1)
    s = rec.stats()
    calls = rec.drain_calls()
    rec.close()
    assert 1 <= len(steps) <= 3
    for st in steps:
        a = st["action"]
        assert len(a) == 5 and len(set(a)) == 5 and all(0 <= p < 50 for p in a)
    assert s["calls"] == len(steps) > 0 and s["tokens"] > 0 and s["completion_tokens"] > 0
    assert s["format_downgrades"] == 1  # llama-cpp-python refuses json_schema: JSON mode with the schema
    assert s["fallbacks"] + sum(c["status"] in ("ok", "repaired") for c in calls) == s["calls"]
    # and the run replays from the cache with no server
    again = LLMRankerRecommender(env.action_space, seed=0, catalog=env.catalog, llm_env={}, max_listed=10,
                                 config=local_backend_config("http://127.0.0.1:9/v1", cache_path=path,
                                                             cache_mode="replay"))
    assert run(env, again, episodes=1) == steps and again.stats()["requests"] == 0
    again.close()
