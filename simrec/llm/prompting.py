"""Prompt rendering for LLM cognition, and the JSON reply schemas.

A decision prompt is two chat messages:

* system: the persona (sanitised: name and description only, never traits as numbers, interest
  weights, taste vectors or rating bias) and the response rules;
* user: the numeric state as plain language (:func:`describe_state`), memories retrieved for this
  slate (newest first; everything older summarised from :meth:`MemoryBank.summary`), the
  user's notes from reflection, the numbered page of items (labels and blurbs from the
  :class:`~simrec.llm.sanitize.Sanitizer`), and the JSON instruction.

Items are referred to only by 1-based page position and their sanitised label, never by catalog id.
The numeric state stays the source of truth: phrases are a pure function of it, so the prompt and
the state cannot disagree. Builders only render; pass their output through
:meth:`Sanitizer.enforce` before sending (and :meth:`Sanitizer.audit` / ``enforce_text`` on replies).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Annotated, Any, Sequence

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from simrec.catalog import Domain
from simrec.users.memory import MemoryRecord
from simrec.users.persona import Persona
from simrec.llm.sanitize import Sanitizer

if TYPE_CHECKING:
    from simrec.users.population import Population

# -- describe_state thresholds (see describe_state) ------------------------------------------------
FATIGUE_TIRED = 0.25
FATIGUE_EXHAUSTED = 0.55
BOREDOM_A_LOT = 0.6
BOREDOM_FED_UP = 1.2
SATISFACTION_VERY_GOOD = 0.35
SATISFACTION_GOOD = 0.1
SATISFACTION_BAD = -0.1
SATISFACTION_VERY_BAD = -0.35
MOOD_MIN = 0.6
MAX_TOPICS = 2
#: Notes from reflection are cut to this many characters in prompts (token budget).
MAX_NOTES_CHARS = 300


def _join(words: Sequence[str], last: str = "and") -> str:
    words = list(words)
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} {last} {words[-1]}"


def describe_state(pop: "Population", u: int) -> list[str]:
    """Plain-language phrases for user ``u``'s numeric state; never numbers.

    A pure function of ``pop.state`` (and the fixed topic directions), in this order:

    * fatigue ``f``: ``f < 0.25`` "you feel fresh"; ``0.25 <= f < 0.55`` "you are getting tired";
      ``f >= 0.55`` "you are very tired and ready to stop soon".
    * mood: the (at most 2) topics whose direction has cosine >= 0.6 with the current taste, best
      first, leaving out topics the user is fed up with: "you are in the mood for A or B".
    * boredom ``b`` per topic (top 2 each): ``b >= 1.2`` "you are fed up with A";
      ``0.6 <= b < 1.2`` "you have watched a lot of A and B lately".
    * satisfaction ``s``: ``s >= 0.35`` "you have been really enjoying the suggestions lately";
      ``0.1 <= s < 0.35`` "you have been enjoying what you get lately"; ``-0.35 < s <= -0.1``
      "you have been a bit let down by recent suggestions"; ``s <= -0.35`` "you have been very
      disappointed by the suggestions lately"; nothing in between.
    """
    st = pop.state
    names = pop.catalog.topic_names
    out: list[str] = []
    f = float(st.fatigue[u])
    if f >= FATIGUE_EXHAUSTED:
        out.append("you are very tired and ready to stop soon")
    elif f >= FATIGUE_TIRED:
        out.append("you are getting tired")
    else:
        out.append("you feel fresh")
    bored = st.boredom[u]
    order = np.argsort(-bored, kind="stable")
    fed_up = [int(t) for t in order if bored[t] >= BOREDOM_FED_UP][:MAX_TOPICS]
    a_lot = [int(t) for t in order if BOREDOM_A_LOT <= bored[t] < BOREDOM_FED_UP][:MAX_TOPICS]
    cos = pop.directions @ st.taste[u]
    mood = [int(t) for t in np.argsort(-cos, kind="stable")
            if cos[t] >= MOOD_MIN and bored[t] < BOREDOM_FED_UP][:MAX_TOPICS]
    if mood:
        out.append(f"you are in the mood for {_join([names[t] for t in mood], 'or')}")
    if fed_up:
        out.append(f"you are fed up with {_join([names[t] for t in fed_up])}")
    if a_lot:
        out.append(f"you have {pop.catalog.domain.did} a lot of {_join([names[t] for t in a_lot])} lately")
    s = float(st.satisfaction[u])
    if s >= SATISFACTION_VERY_GOOD:
        out.append("you have been really enjoying the suggestions lately")
    elif s >= SATISFACTION_GOOD:
        out.append("you have been enjoying what you get lately")
    elif s <= SATISFACTION_VERY_BAD:
        out.append("you have been very disappointed by the suggestions lately")
    elif s <= SATISFACTION_BAD:
        out.append("you have been a bit let down by recent suggestions")
    return out


# -- pieces ---------------------------------------------------------------------------------------

_LEVELS = {
    "activity": ("watch occasionally", None, "watch a lot"),
    "conformity": ("ignore what is trending", None, "like what everyone is watching"),
    "diversity": ("stick to what you know", None, "love discovering new genres"),
    "patience": ("give up quickly on bad suggestions", None, "are very patient"),
    "pickiness": ("are generous with ratings", None, "are hard to please"),
}


def persona_text(persona: Persona) -> str:
    """Who the user is, in the second person: name and free-text description.

    Without a description, interests (by weight, no numbers) and clearly high or low traits are
    put into words. Traits as numbers, taste vectors and rating bias are never included.
    """
    desc = re.sub(r"\s+", " ", persona.description).strip()
    if desc:
        return f"You are {persona.name}. {desc}"
    favs = sorted(persona.interests, key=lambda t: -persona.interests[t])[:3]
    parts = [f"You are {persona.name}, a {persona.age}-year-old {persona.occupation}."]
    if favs:
        parts.append(f"You mostly enjoy {_join(favs)}.")
    traits = []
    for name, (low, _, high) in _LEVELS.items():
        v = getattr(persona.traits, name)
        if v < 0.33:
            traits.append(low)
        elif v >= 0.67 and high:
            traits.append(high)
    if traits:
        parts.append(f"You {_join(traits)}.")
    return " ".join(parts)


def _name(sanitizer: Sanitizer, i: int) -> str:
    lab = sanitizer.item_label(i)
    return lab if sanitizer.config.titles == "attributes" or lab.startswith("[") else f'"{lab}"'


def _watched(consumption: float, did: str = "watched") -> str:
    if consumption >= 0.9:
        return "finished"
    if consumption >= 0.5:
        return f"{did} most of"
    if consumption >= 0.2:
        return f"{did} some of"
    return "gave up early on"


def render_memory(rec: MemoryRecord, pop: "Population", sanitizer: Sanitizer) -> str:
    """One remembered step as a short line (no numbers but the user's own star rating)."""
    cat = pop.catalog
    if rec.chosen >= 0:
        line = f"{_watched(rec.consumption, cat.domain.did)} {_name(sanitizer, rec.chosen)}"
        if rec.rating is not None:
            line += f", rated it {int(round(rec.rating))}/5"
        elif rec.feeling >= 0.3:
            line += ", enjoyed it"
        elif rec.feeling <= -0.3:
            line += ", did not enjoy it"
        return line
    if not rec.shown:
        return f"found nothing to {cat.domain.do}"
    w = cat.topic_weights[list(rec.shown)].sum(axis=0)
    top = [cat.topic_names[t] for t in np.argsort(-w, kind="stable")[:2] if w[t] > 0]
    return f"skipped a page of {_join(top)}" if top else "skipped a page"


def render_summary(pop: "Population", u: int) -> str:
    """The bounded running summary of the user's whole history, in words ("" when empty)."""
    s = pop.memory.summary(u, pop.catalog.topic_names, top=MAX_TOPICS)
    words = pop.catalog.domain
    steps = int(s["steps"])
    if steps == 0:
        return ""
    parts = []
    if s["most_watched_topics"]:
        parts.append(f"you mostly {words.did} {_join(s['most_watched_topics'])}")
    if s["liked_topics"]:
        parts.append(f"you liked {_join(s['liked_topics'])}")
    if s["disliked_topics"]:
        parts.append(f"you disliked {_join(s['disliked_topics'])}")
    rate = int(s["chosen"]) / steps
    if rate >= 0.7:
        parts.append(f"you usually found something to {words.do}")
    elif rate <= 0.3:
        parts.append("you often found nothing you wanted")
    return "; ".join(parts)


def _cut(text: str, limit: int) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + "..."


def _context_lines(pop: "Population", u: int, sanitizer: Sanitizer, records: list[MemoryRecord],
                   notes: str | None, header: str = "You remember (newest first):") -> list[str]:
    lines = []
    phrases = describe_state(pop, u)
    if phrases:
        lines.append("Right now " + "; ".join(phrases) + ".")
    if records:
        lines.append(header)
        lines += [f"- {render_memory(r, pop, sanitizer)}" for r in records]
    if int(pop.memory.count[u]) > len(records):
        summary = render_summary(pop, u)
        if summary:
            lines.append(f"{'Before that' if records else 'So far'}, {summary}.")
    if notes and notes.strip():
        lines.append(f"Your notes: {_cut(notes, MAX_NOTES_CHARS)}")
    return lines


def _page_lines(items: Sequence[int], sanitizer: Sanitizer) -> list[str]:
    out = []
    for k, i in enumerate(items, start=1):
        blurb = sanitizer.item_blurb(int(i))
        out.append(f"{k}. {_name(sanitizer, int(i))}" + (f": {blurb}" if blurb else ""))
    return out


def _retrieve(pop: "Population", u: int, items: Sequence[int], k: int) -> list[MemoryRecord]:
    if k <= 0:
        return []
    q = pop.catalog.features[np.asarray(items, dtype=np.int64)]
    return pop.memory.retrieve(u, q, pop.catalog, float(pop.state.clock[u]), k=k)


def _decide_rules(d: Domain) -> str:
    stars = " and the stars you give it (1-5, or null for no rating)" if d.ratings else ""
    return (f"You are browsing {d.service}; each turn shows a numbered page of {d.items}. Act as this person: "
            f"click only what you would really {d.do} (often one {d.item} or none), say how much of it you {d.did} "
            f"(0 = nothing, 1 = all){stars}, and leave when you are bored, tired or unimpressed. Answer with JSON only.")


def _decide_format(d: Domain) -> str:
    rating = "<1-5 or null>" if d.ratings else "null"
    return (f'JSON with one entry per {d.item}, in page order: {{"items": [{{"item": <number>, "clicked": <true or '
            f'false>, "rating": {rating}, "consumption": <0-1, 0 if not clicked>}}], "leave": <true or false>, '
            f'"reason": "<one short sentence>"}}')


def _judge_rules(d: Domain) -> str:
    stars = " and how many stars (1-5) you expect to give it" if d.ratings else ""
    return (f"You are looking at {d.items} on {d.service}. Act as this person: for each {d.item} say whether you "
            f"would {d.do} it{stars}. Answer with JSON only.")


def _judge_format(d: Domain) -> str:
    rating = "<1-5>" if d.ratings else "null"
    return (f'JSON with one entry per {d.item}: {{"items": [{{"item": <number>, "watch": <true or false>, '
            f'"rating": {rating}}}], "reason": "<one short sentence>"}}')


def _reflect_rules(d: Domain) -> str:
    return f"You are thinking back on what you {d.did} on {d.service}. Answer with JSON only."


_REFLECT_FORMAT = (
    'In first person and briefly, note what you enjoy and avoid now, and how you feel about the suggestions '
    'you get. JSON: {"taste_notes": "<one or two sentences>", "feeling": "<one sentence>"}'
)


def build_decision_messages(pop: "Population", u: int, slate: Sequence[int], sanitizer: Sanitizer, *,
                            n_memories: int = 5, notes: str | None = None) -> list[dict[str, str]]:
    """Chat messages asking user ``u`` to react to ``slate`` (catalog indices, top first).

    The reply is a :class:`SlateDecision`; turn it into arrays with :func:`decision_to_arrays`.
    """
    system = f"{persona_text(pop.personas[u])}\n{_decide_rules(pop.catalog.domain)}"
    lines = _context_lines(pop, u, sanitizer, _retrieve(pop, u, slate, n_memories), notes)
    lines.append("This page:")
    lines += _page_lines(slate, sanitizer)
    lines.append(_decide_format(pop.catalog.domain))
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n".join(lines)}]


def build_judge_messages(pop: "Population", u: int, items: Sequence[int], sanitizer: Sanitizer, *,
                         notes: str | None = None, n_memories: int = 5) -> list[dict[str, str]]:
    """Chat messages asking user ``u`` to judge each of ``items`` (Agent4Rec's watch + rating protocol).

    The reply is a :class:`JudgeReply` covering every item; see :func:`judge_to_arrays`.
    """
    system = f"{persona_text(pop.personas[u])}\n{_judge_rules(pop.catalog.domain)}"
    lines = _context_lines(pop, u, sanitizer, _retrieve(pop, u, items, n_memories), notes)
    lines.append(f"{pop.catalog.domain.items.capitalize()}:")
    lines += _page_lines(items, sanitizer)
    lines.append(_judge_format(pop.catalog.domain))
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n".join(lines)}]


def build_reflection_messages(pop: "Population", u: int, sanitizer: Sanitizer, *, notes: str | None = None,
                              n_memories: int = 10) -> list[dict[str, str]]:
    """Chat messages asking user ``u`` to summarise their memories into taste and feeling notes.

    Uses the ``n_memories`` newest records (newest first) plus the running summary and the
    previous ``notes``; the reply is a :class:`ReflectionReply`.
    """
    recs = pop.memory.records(u)[-n_memories:][::-1] if n_memories > 0 else []
    system = f"{persona_text(pop.personas[u])}\n{_reflect_rules(pop.catalog.domain)}"
    lines = _context_lines(pop, u, sanitizer, recs, notes, header="What you did recently (newest first):")
    if not recs and int(pop.memory.count[u]) == 0:
        lines.append("You have not watched anything yet.")
    lines.append(_REFLECT_FORMAT)
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n".join(lines)}]


# -- reply schemas --------------------------------------------------------------------------------

def _truncate(limit: int):
    def cut(v: Any) -> Any:
        return v[:limit] if isinstance(v, str) else v
    return BeforeValidator(cut)


Reason = Annotated[str, _truncate(200), Field(max_length=200)]
Note = Annotated[str, _truncate(400), Field(max_length=400)]


class _Reply(BaseModel):
    # LLMs add keys; ignoring them keeps a usable reply usable.
    model_config = ConfigDict(extra="ignore")


class ItemDecision(_Reply):
    item: int = Field(ge=1, description="1-based position on the page.")
    clicked: bool
    rating: int | None = Field(None, ge=1, le=5, description="Whole stars, only for a clicked item.")
    consumption: float = Field(ge=0.0, le=1.0, description="Fraction watched; 0 when not clicked.")


class SlateDecision(_Reply):
    items: list[ItemDecision] = Field(default_factory=list)
    leave: bool
    reason: Reason = ""


class ItemJudgement(_Reply):
    item: int = Field(ge=1)
    watch: bool
    rating: int | None = Field(None, ge=1, le=5, description="Whole stars; null in a world without ratings.")


class JudgeReply(_Reply):
    items: list[ItemJudgement]
    reason: Reason = ""


class ReflectionReply(_Reply):
    taste_notes: Note
    feeling: Note


def _check_positions(positions: Sequence[int], k: int) -> None:
    seen: set[int] = set()
    for p in positions:
        if not 1 <= p <= k:
            raise ValueError(f"item {p} is not on the page (items are numbered 1..{k})")
        if p in seen:
            raise ValueError(f"item {p} appears more than once in the reply")
        seen.add(p)


def decision_to_arrays(reply: SlateDecision, k: int, ratings: bool = True
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """``(clicked (k,) bool, rating (k,) float32 NaN = none, consumption (k,) float32, leave)``.

    Items not mentioned are not clicked. Raises ``ValueError`` on an item off the page, a
    duplicate, a rating or a positive consumption on an unclicked item, or an out-of-range value.
    Without ``ratings`` (a world of implicit feedback) stars in the reply are ignored.
    """
    _check_positions([d.item for d in reply.items], k)
    clicked = np.zeros(k, dtype=bool)
    rating = np.full(k, np.nan, dtype=np.float32)
    consumption = np.zeros(k, dtype=np.float32)
    for d in reply.items:
        j = d.item - 1
        c = float(d.consumption)
        if not (math.isfinite(c) and 0.0 <= c <= 1.0):
            raise ValueError(f"item {d.item}: consumption must be in [0, 1], got {d.consumption}")
        if d.rating is not None and not (isinstance(d.rating, int) and 1 <= d.rating <= 5):
            raise ValueError(f"item {d.item}: rating must be whole stars 1-5 or null, got {d.rating}")
        if not d.clicked:
            if d.rating is not None:
                raise ValueError(f"item {d.item} is rated but not clicked")
            if c > 0:
                raise ValueError(f"item {d.item} has consumption {c} but is not clicked")
            continue
        clicked[j] = True
        consumption[j] = c
        if d.rating is not None and ratings:
            rating[j] = float(d.rating)
    return clicked, rating, consumption, bool(reply.leave)


def judge_to_arrays(reply: JudgeReply, k: int, ratings: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(watch (k,) bool, rating (k,) float32)``; every item 1..k must be judged exactly once, with whole
    stars unless the world has no ``ratings`` (its ratings are then NaN)."""
    _check_positions([j.item for j in reply.items], k)
    if len(reply.items) != k:
        missing = sorted(set(range(1, k + 1)) - {j.item for j in reply.items})
        raise ValueError(f"the reply does not judge items {missing}; every item 1..{k} needs a judgement")
    watch = np.zeros(k, dtype=bool)
    rating = np.full(k, np.nan, dtype=np.float32)
    for j in reply.items:
        watch[j.item - 1] = bool(j.watch)
        if not ratings:
            continue
        if not (isinstance(j.rating, int) and 1 <= j.rating <= 5):
            raise ValueError(f"item {j.item}: rating must be whole stars 1-5, got {j.rating}")
        rating[j.item - 1] = float(j.rating)
    return watch, rating


# -- size -----------------------------------------------------------------------------------------

_PIECE = re.compile(r"[A-Za-z]+|\d|[^\sA-Za-z\d]")


def approx_tokens(messages: str | Sequence[dict[str, Any]]) -> int:
    """A tokenizer-free estimate of a prompt's token count (BPE-like: ~1 token per short word).

    Words count ``ceil(len / 6)`` tokens, each digit and punctuation mark one, plus 4 per chat
    message for role markup. Within ~15% of GPT/Llama-style tokenizers on English prompts; use the
    server's ``usage.prompt_tokens`` for exact numbers.
    """
    if isinstance(messages, str):
        texts, overhead = [messages], 0
    else:
        texts = [m["content"] if isinstance(m.get("content"), str) else
                 " ".join(p.get("text", "") for p in m.get("content") or [] if isinstance(p, dict))
                 for m in messages]
        overhead = 4 * len(messages)
    n = overhead
    for t in texts:
        for p in _PIECE.findall(t):
            n += math.ceil(len(p) / 6) if p[0].isalpha() else 1
    return n
