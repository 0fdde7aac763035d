"""What actually goes over HTTP to the LLM never carries held-out items or catalog ids.

Hypothesis generates catalogs (titles and ids); the LLM backend decides, judges and reflects for a
few users against the fake OpenAI server, which logs every request body; the test searches those
bodies for every forbidden string.
"""

from __future__ import annotations

import json
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_servers import FakeOpenAIServer
from simrec.catalog import Catalog
from simrec.cognition.llm import LLMCognition
from simrec.users.persona import Persona, PersonaPack, Traits
from simrec.llm.sanitize import LeakageError
from simrec.envs.simulator import Simulator
from simrec.envs.spec import EnvSpec

N_ITEMS, TOPICS = 40, ["alpha topic", "beta topic", "gamma topic"]

word = st.text(alphabet=string.ascii_lowercase, min_size=4, max_size=9).map(str.capitalize)
title = st.lists(word, min_size=2, max_size=4).map(" ".join)
item_id = st.one_of(
    st.from_regex(r"\A[a-z]{2}[0-9]{4,7}\Z"),        # tt0114709-style
    st.from_regex(r"\A[A-Z][0-9]{3}[a-z]{2}\Z"),      # mixed
    st.from_regex(r"\Aitem-[0-9a-f]{6}\Z"),
)


@pytest.fixture(scope="module")
def server():
    srv = FakeOpenAIServer(log_requests=100_000).start()
    yield srv
    srv.stop()


def _world(titles: list[str], ids: list[str]):
    rng = np.random.default_rng(0)
    cat = Catalog(ids=ids, titles=titles, descriptions=[f"A story numbered among many, {i % 7} of seven." for i in range(N_ITEMS)],
                  topic_names=TOPICS, item_topics=[[TOPICS[i % 3]] for i in range(N_ITEMS)],
                  features=rng.normal(size=(N_ITEMS, 8)).astype(np.float32),
                  quality=rng.random(N_ITEMS), year=rng.integers(1950, 2020, N_ITEMS))
    personas = [Persona(id=f"p{k}", name=f"Person Number{k}", age=30 + k, traits=Traits(),
                        interests={TOPICS[k % 3]: 1.0}, description="Likes a good story.") for k in range(4)]
    return cat, PersonaPack(name="t", topics=TOPICS, personas=personas)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(titles=st.lists(title, min_size=N_ITEMS, max_size=N_ITEMS, unique_by=str.lower),
       ids=st.lists(item_id, min_size=N_ITEMS, max_size=N_ITEMS, unique=True),
       held=st.sets(st.integers(0, N_ITEMS - 1), min_size=1, max_size=6),
       mode=st.sampled_from(["redact", "strict"]), titles_mode=st.sampled_from(["real", "pseudonym", "attributes"]))
def test_no_forbidden_string_reaches_the_server(server, titles, ids, held, mode, titles_mode):
    # a held-out title inside another title would legitimately be sent as part of that one
    for h in held:
        if any(titles[h].lower() in t.lower() for j, t in enumerate(titles) if j != h):
            return
    from simrec.users.world import World

    cat, pack = _world(titles, ids)
    spec = EnvSpec(id="simrec/Leak-v0", world={"kind": "synthetic", "n_items": N_ITEMS},
                   num_candidates=10, slate_size=5, backend="llm")
    be = LLMCognition({"base_url": server.base_url, "model": "fake", "reflect_every": 2,
                       "backoff_base_s": 0.001, "backoff_max_s": 0.01, "timeout_s": 5.0,
                       "sanitize": {"mode": mode, "titles": titles_mode}}, env={})
    sim = Simulator(spec, World(cat, pack), backend=be)
    rng = np.random.default_rng(1)
    sim.reset_population(rng)
    be.set_held_out(sorted(held))
    users = np.arange(4)
    sim.start_sessions(users, rng)
    before = len(server.requests)
    h = sorted(held)
    free = np.array([i for i in range(N_ITEMS) if i not in held])
    for step in range(3):
        slates = np.stack([rng.permutation(free)[:5] for _ in users])
        if mode == "redact":  # worst case: held-out items put on the page next to ordinary ones
            slates[:, 0] = h[step % len(h)]
        sim.step(users, slates, rng)
    be.judge(sim.pop, users, np.stack([rng.permutation(free)[:6] for _ in users]), rng)
    be.end_session(sim.pop, users)
    if mode == "strict":  # a page with a held-out item is refused before anything is sent
        n = len(server.requests)
        slates[:, 0] = h[0]
        with pytest.raises(LeakageError):
            sim.step(users, slates, rng)
        assert len(server.requests) == n
    be.close()
    sent = [json.dumps(b) for b in server.requests[before:]]
    assert sent, "the backend sent nothing"
    text = "\n".join(sent).lower()
    for i in held:
        assert titles[i].lower() not in text, f"held-out title {titles[i]!r} reached the server"
    for i in range(N_ITEMS):
        assert ids[i].lower() not in text, f"catalog id {ids[i]!r} reached the server"
    if titles_mode != "real":
        for i in range(N_ITEMS):
            assert titles[i].lower() not in text, f"title {titles[i]!r} sent although titles are anonymised"
