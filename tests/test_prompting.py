"""Prompt rendering: state phrases, memories, page layout, reply schemas, and prompt size."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simrec.envs.slate_env import SlateEnv
from simrec.users.persona import Persona, Traits
from simrec.users.population import Population
from simrec.llm.prompting import (
    BOREDOM_A_LOT, BOREDOM_FED_UP, FATIGUE_EXHAUSTED, FATIGUE_TIRED, MAX_NOTES_CHARS, ItemDecision, ItemJudgement,
    JudgeReply, ReflectionReply, SlateDecision, approx_tokens, build_decision_messages, build_judge_messages,
    build_reflection_messages, decision_to_arrays, describe_state, judge_to_arrays, persona_text,
)
from simrec.llm.sanitize import REDACTED, LeakageError, Sanitizer
from simrec.users.world import build_world


@pytest.fixture(scope="module")
def syn():
    return build_world()


@pytest.fixture
def pop(syn) -> Population:
    p = Population(syn.catalog, syn.personas, None, slate_size=5)
    p.reset(np.random.default_rng(0))
    return p


@pytest.fixture
def san(pop) -> Sanitizer:
    return Sanitizer.for_population(pop)


def write_step(pop: Population, u: int, shown: list[int], chosen: int, rating: float, consumption: float,
               t: float, feeling: float = 0.5) -> None:
    cat = pop.catalog
    tw = cat.topic_weights[chosen][None] if chosen >= 0 else np.zeros((1, cat.n_topics), np.float32)
    pop.memory.write(np.array([u]), np.array([shown]), np.array([chosen]), np.array([rating], np.float32),
                     np.array([consumption], np.float32), np.array([feeling], np.float32), np.array([t]), tw)


# -- describe_state -------------------------------------------------------------------------------

def test_fresh_user_feels_fresh(pop):
    phrases = describe_state(pop, 0)
    assert phrases[0] == "you feel fresh"
    assert not any("tired" in p or "fed up" in p or "a lot of" in p for p in phrases)


@pytest.mark.parametrize("f,phrase", [(0.0, "you feel fresh"), (FATIGUE_TIRED - 1e-3, "you feel fresh"),
                                      (FATIGUE_TIRED, "you are getting tired"), (0.5, "you are getting tired"),
                                      (FATIGUE_EXHAUSTED, "you are very tired and ready to stop soon"),
                                      (1.0, "you are very tired and ready to stop soon")])
def test_fatigue_phrases_follow_thresholds(pop, f, phrase):
    pop.state.fatigue[3] = f
    assert describe_state(pop, 3)[0] == phrase
    assert describe_state(pop, 4)[0] == "you feel fresh"  # other users unaffected


def test_boredom_phrases_name_the_topics(pop):
    names = pop.catalog.topic_names
    pop.state.boredom[2, names.index("thriller")] = BOREDOM_A_LOT + 0.1
    assert "you have watched a lot of thriller lately" in describe_state(pop, 2)
    pop.state.boredom[2, names.index("horror")] = BOREDOM_A_LOT + 0.05
    assert "you have watched a lot of thriller and horror lately" in describe_state(pop, 2)
    pop.state.boredom[2, names.index("thriller")] = BOREDOM_FED_UP + 0.5
    phrases = describe_state(pop, 2)
    assert "you are fed up with thriller" in phrases
    assert "you have watched a lot of horror lately" in phrases


@pytest.mark.parametrize("s,phrase", [(0.5, "really enjoying"), (0.2, "enjoying what you get"), (0.0, None),
                                      (-0.2, "a bit let down"), (-0.6, "very disappointed")])
def test_satisfaction_phrases(pop, s, phrase):
    pop.state.satisfaction[5] = s
    text = " | ".join(describe_state(pop, 5))
    for p in ("really enjoying", "enjoying what you get", "a bit let down", "very disappointed"):
        assert (p in text) == (p == phrase)


def test_mood_follows_taste_and_skips_fed_up_topics(pop):
    names = pop.catalog.topic_names
    t = names.index("western")
    pop.state.taste[6] = pop.directions[t]
    assert any(p.startswith("you are in the mood for western") for p in describe_state(pop, 6))
    pop.state.boredom[6, t] = BOREDOM_FED_UP
    phrases = describe_state(pop, 6)
    assert "you are fed up with western" in phrases
    assert not any(p.startswith("you are in the mood for western") for p in phrases)


@settings(max_examples=60, deadline=None)
@given(f=st.floats(0, 1), s=st.floats(-1, 1), b=st.floats(0, 5), topic=st.integers(0, 19))
def test_describe_state_is_pure_and_numberless(syn, f, s, b, topic):
    pop = Population(syn.catalog, syn.personas, 8, slate_size=5)
    pop.reset(np.random.default_rng(1))
    pop.state.fatigue[0], pop.state.satisfaction[0], pop.state.boredom[0, topic] = f, s, b
    before = pop.state.copy()
    a = describe_state(pop, 0)
    write_step(pop, 0, [1, 2, 3, 4, 5], 2, 5.0, 1.0, 1.0)  # memory is not state: phrases do not move
    assert describe_state(pop, 0) == a
    for k, v in before.__dict__.items():
        assert np.array_equal(v, getattr(pop.state, k))
    text = " ".join(a)
    assert not re.search(r"\d", text)
    assert ("tired" in text) == (f >= FATIGUE_TIRED)
    name = syn.catalog.topic_names[topic]
    assert (f"fed up with {name}" in text) == (b >= BOREDOM_FED_UP)


# -- persona --------------------------------------------------------------------------------------

def test_persona_text_has_no_numbers_but_words():
    p = Persona(id="x1", name="Ada Lovelace", age=36, occupation="engineer",
                traits=Traits(activity=0.9, pickiness=0.1), interests={"drama": 0.7, "comedy": 0.3}, rating_bias=1.2,
                taste=[0.1, 0.2])
    text = persona_text(p)
    assert "Ada Lovelace" in text and "drama and comedy" in text and "watch a lot" in text
    assert "generous with ratings" in text
    assert not re.search(r"\d\.\d", text) and "x1" not in text


# -- decision messages ----------------------------------------------------------------------------

def page_lines(content: str, header: str = "This page:") -> list[str]:
    lines = content.splitlines()
    start = lines.index(header) + 1
    return [ln for ln in lines[start:] if re.match(r"^\d+\. ", ln)]


@pytest.mark.parametrize("titles", ["real", "pseudonym", "attributes"])
def test_page_items_in_order_with_1_based_numbers(pop, titles):
    san = Sanitizer.for_population(pop, {"titles": titles})
    slate = [17, 3, 999, 250, 42]
    msgs = build_decision_messages(pop, 0, slate, san)
    assert [m["role"] for m in msgs] == ["system", "user"]
    lines = page_lines(msgs[1]["content"])
    assert len(lines) == 5
    for k, (ln, i) in enumerate(zip(lines, slate, strict=True), start=1):
        assert ln.startswith(f"{k}. ")
        assert san.item_label(i) in ln
        assert san.item_blurb(i) in ln
    out, res = san.enforce(msgs, user_id=pop.user_id(0))
    assert res.ok and out == msgs
    assert not any(pop.catalog.ids[i] in msgs[1]["content"] for i in slate)


def test_memories_newest_first_and_summary(pop, san):
    u = 1
    watched = [100, 200, 300, 400]
    for t, i in enumerate(watched, start=1):
        write_step(pop, u, [i, 1, 2, 3, 4], i, 4.0, 1.0, float(t))
    pop.state.clock[u] = 5.0
    content = build_decision_messages(pop, u, watched, san, n_memories=3)[1]["content"]
    mem = [ln for ln in content.splitlines() if ln.startswith("- ")]
    assert len(mem) == 3
    t_of = {i: t for t, i in enumerate(watched, start=1)}
    order = [next(i for i in watched if f'"{san.item_label(i)}"' in ln) for ln in mem]
    assert [t_of[i] for i in order] == sorted((t_of[i] for i in order), reverse=True)  # newest first
    assert order[0] == 400  # the newest record is also the most recent and most relevant
    assert "rated it 4/5" in mem[0] and mem[0].startswith("- finished")
    assert "Before that, " in content  # the 4th, older record is summarised
    # a fresh user has neither memories nor summary
    fresh = build_decision_messages(pop, 2, watched, san)[1]["content"]
    assert "remember" not in fresh and "Before that" not in fresh


def test_skipped_pages_and_notes(pop, san):
    u = 3
    write_step(pop, u, [10, 11, 12, 13, 14], -1, np.nan, 0.0, 1.0, feeling=-0.3)
    notes = "I like quiet dramas. " * 40
    content = build_decision_messages(pop, u, [10, 11, 12, 13, 14], san, notes=notes)[1]["content"]
    assert any(ln.startswith("- skipped a page of") for ln in content.splitlines())
    note_line = next(ln for ln in content.splitlines() if ln.startswith("Your notes: "))
    assert len(note_line) <= len("Your notes: ") + MAX_NOTES_CHARS + 3


def test_state_change_changes_prompt(pop, san):
    slate = [1, 2, 3, 4, 5]
    a = build_decision_messages(pop, 0, slate, san)[1]["content"]
    pop.state.fatigue[0] = 0.9
    b = build_decision_messages(pop, 0, slate, san)[1]["content"]
    assert "you feel fresh" in a and "very tired" in b and "very tired" not in a


def test_prompt_from_env_steps_passes_audit_and_is_compact(pop):
    env = SlateEnv()
    _, info = env.reset(seed=0)
    p = env.sim.pop
    san = Sanitizer.for_population(p)
    sizes = []
    for _ in range(40):
        a = env.action_space.sample()
        u = p.index_of(info["user_id"])
        slate = info["candidate_items"][a]
        msgs = build_decision_messages(p, u, slate, san, notes="I enjoy gentle family titles.")
        _, res = san.enforce(msgs, user_id=info["user_id"])
        assert res.ok, res
        sizes.append(approx_tokens(msgs))
        _, _, term, trunc, info = env.step(a)
        if term or trunc:
            _, info = env.reset()
    assert np.mean(sizes) <= 700  # issue target: <= 700 prompt tokens per page-step with memory
    assert san.counts["audited"] == 40


def test_held_out_item_on_page(pop):
    slate = [5, 6, 7, 8, 9]
    strict = Sanitizer.for_population(pop, {"mode": "strict"}, held_out=[7])
    with pytest.raises(LeakageError):
        strict.enforce(build_decision_messages(pop, 0, slate, strict), user_id=pop.user_id(0))
    redact = Sanitizer.for_population(pop, {"titles": "pseudonym"}, held_out=[7])
    out, res = redact.enforce(build_decision_messages(pop, 0, slate, redact), user_id=pop.user_id(0))
    lines = page_lines(out[1]["content"])
    assert lines[2] == f"3. {REDACTED}" and [v.kind for v in res.violations] == ["held_out_id"]
    assert redact.item_label(8) in lines[3]
    assert redact.pseudonym(7) not in out[1]["content"] and pop.catalog.titles[7] not in out[1]["content"]


def test_judge_and_reflection_messages(pop, san):
    items = list(range(30, 42))
    msgs = build_judge_messages(pop, 0, items, san)
    lines = page_lines(msgs[1]["content"], "Titles:")
    assert [ln.split(". ", 1)[0] for ln in lines] == [str(k) for k in range(1, 13)]
    assert '"watch"' in msgs[1]["content"]
    for t, i in enumerate([50, 60, 70], start=1):
        write_step(pop, 0, [i, 1, 2, 3, 4], i, 2.0, 0.3, float(t))
    r = build_reflection_messages(pop, 0, san, notes="older notes")[1]["content"]
    mem = [ln for ln in r.splitlines() if ln.startswith("- ")]
    assert [san.item_label(i) in ln for ln, i in zip(mem, [70, 60, 50], strict=True)] == [True] * 3
    assert "taste_notes" in r and "older notes" in r
    assert "not watched anything" in build_reflection_messages(pop, 9, san)[1]["content"]


# -- reply schemas --------------------------------------------------------------------------------

def test_decision_to_arrays_valid():
    reply = SlateDecision.model_validate_json(json.dumps({
        "items": [{"item": 2, "clicked": True, "rating": 4, "consumption": 0.6},
                  {"item": 5, "clicked": True, "rating": None, "consumption": 1},
                  {"item": 1, "clicked": False, "rating": None, "consumption": 0}],
        "leave": True, "reason": "x" * 500, "extra": "ignored"}))
    assert len(reply.reason) == 200
    clicked, rating, cons, leave = decision_to_arrays(reply, 5)
    assert clicked.tolist() == [False, True, False, False, True]
    assert rating[1] == 4 and np.isnan(rating[[0, 2, 3, 4]]).all()
    assert cons.dtype == np.float32 and cons.tolist() == pytest.approx([0, 0.6, 0, 0, 1])
    assert leave is True
    empty = decision_to_arrays(SlateDecision(items=[], leave=False), 5)
    assert not empty[0].any() and empty[3] is False


@pytest.mark.parametrize("items", [
    [{"item": 6, "clicked": True, "rating": 3, "consumption": 0.5}],                     # off the page
    [{"item": 2, "clicked": True, "rating": 3, "consumption": 0.5}] * 2,                 # duplicate
    [{"item": 2, "clicked": False, "rating": 3, "consumption": 0.0}],                    # rated, not clicked
    [{"item": 2, "clicked": False, "rating": None, "consumption": 0.4}],                 # watched, not clicked
])
def test_decision_to_arrays_rejects_bad_replies(items):
    reply = SlateDecision(items=[ItemDecision(**d) for d in items], leave=False)
    with pytest.raises(ValueError):
        decision_to_arrays(reply, 5)


@pytest.mark.parametrize("raw", [
    {"items": [{"item": 0, "clicked": True, "rating": 3, "consumption": 0.5}], "leave": False},
    {"items": [{"item": 1, "clicked": True, "rating": 6, "consumption": 0.5}], "leave": False},
    {"items": [{"item": 1, "clicked": True, "rating": 3, "consumption": 1.5}], "leave": False},
    {"items": [{"item": 1, "clicked": True, "rating": 3.5, "consumption": 0.5}], "leave": False},
    {"items": []},
])
def test_schema_rejects_out_of_range_values(raw):
    with pytest.raises(ValueError):
        SlateDecision.model_validate(raw)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 7), st.booleans(), st.one_of(st.none(), st.integers(1, 5)),
                          st.floats(0, 1)), max_size=7), st.booleans())
def test_decision_to_arrays_matches_validate(entries, leave):
    from simrec.cognition.base import ResponseBatch

    k = 5
    reply = SlateDecision(items=[ItemDecision(item=i, clicked=c, rating=r, consumption=x) for i, c, r, x in entries],
                          leave=leave)
    positions = [i for i, *_ in entries]
    bad = (any(p > k for p in positions) or len(set(positions)) != len(positions)
           or any(not c and (r is not None or x > 0) for _, c, r, x in entries))
    if bad:
        with pytest.raises(ValueError):
            decision_to_arrays(reply, k)
        return
    clicked, rating, cons, lv = decision_to_arrays(reply, k)
    ResponseBatch(clicked[None], rating[None], cons[None], np.array([lv]), np.zeros(1, np.int8)).validate(1, k)
    assert lv == leave


def test_judge_to_arrays():
    ok = JudgeReply(items=[ItemJudgement(item=i, watch=i % 2 == 0, rating=i) for i in (3, 1, 2)], reason="r")
    watch, rating = judge_to_arrays(ok, 3)
    assert watch.tolist() == [False, True, False] and rating.tolist() == [1, 2, 3]
    for items in ([(1, True, 3), (2, True, 3)],                    # missing item 3
                  [(1, True, 3), (2, True, 3), (2, False, 1)],     # duplicate
                  [(1, True, 3), (2, True, 3), (4, False, 1)]):    # off the page
        reply = JudgeReply(items=[ItemJudgement(item=i, watch=w, rating=r) for i, w, r in items])
        with pytest.raises(ValueError):
            judge_to_arrays(reply, 3)


def test_reflection_reply_truncates_long_notes():
    r = ReflectionReply.model_validate({"taste_notes": "a" * 900, "feeling": "fine", "other": 1})
    assert len(r.taste_notes) == 400 and r.feeling == "fine"
    with pytest.raises(ValueError):
        ReflectionReply.model_validate({"taste_notes": "x"})


def test_approx_tokens_counts_messages():
    assert approx_tokens("hello world") == 2
    assert approx_tokens([{"role": "user", "content": "hello world"}]) == 6
    assert approx_tokens("internationalisation 1995!") == 4 + 4 + 1
