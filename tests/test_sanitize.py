"""Leakage sanitiser: rendering modes, fuzzy held-out title matching, id / internals / other-user checks."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from simrec.catalog import Catalog
from simrec.errors import SimrecError
from simrec.users.population import Population
from simrec.llm.sanitize import (
    ARTICLES, COMMON_WORDS, DROPPED, REDACTED, WITHHELD, AuditResult, LeakageError, SanitizeConfig, Sanitizer,
    display_title, normalize_title, title_variants,
)
from simrec.users.world import build_world


@pytest.fixture(scope="module")
def syn():
    return build_world()


@pytest.fixture(scope="module")
def cat(syn) -> Catalog:
    return syn.catalog


@pytest.fixture
def pop(syn) -> Population:
    p = Population(syn.catalog, syn.personas, None, slate_size=5)
    p.reset(np.random.default_rng(0))
    return p


def make_catalog(titles: list[str], ids: list[str] | None = None, years: list[int] | None = None,
                 descriptions: list[str] | None = None, name: str = "test") -> Catalog:
    n = len(titles)
    rng = np.random.default_rng(0)
    return Catalog(
        ids=ids or [f"it{i:04d}" for i in range(n)], titles=titles,
        descriptions=descriptions or [""] * n, topic_names=["drama", "comedy"],
        item_topics=[["drama"] if i % 2 else ["comedy", "drama"] for i in range(n)],
        features=rng.normal(size=(n, 4)).astype(np.float32), quality=np.full(n, 0.5, np.float32),
        year=np.array(years or [1995] * n), popularity=np.linspace(0, 1, n).astype(np.float32), name=name,
    )


def tokens_of(text: str) -> list[str]:
    return [t for v in title_variants(text) for t in v] if text.strip() else []


def contains_seq(hay: list[str], needle: tuple[str, ...]) -> bool:
    n = len(needle)
    return any(tuple(hay[i:i + n]) == needle for i in range(len(hay) - n + 1))


# -- normalisation --------------------------------------------------------------------------------

@pytest.mark.parametrize("a,b", [
    ("Matrix, The (1999)", "The Matrix"),
    ("the matrix!!!", "THE MATRIX"),
    ("Shawshank Redemption, The (1994)", "Shawshank Redemption"),
    ("Romeo & Juliet", "Romeo and Juliet"),
    ("Amélie", "Amelie"),
    ("Avventura, L' (1960)", "L'Avventura"),
    ("Rocky III", "Rocky 3"),
    ("Schindler's List", "Schindlers List"),
])
def test_normalize_title_equates_variants(a, b):
    assert normalize_title(a) == normalize_title(b) != ""


def test_title_variants_include_alternative_titles():
    v = title_variants("City of Lost Children, The (Cité des enfants perdus, La) (1995)")
    assert ("city", "of", "lost", "children") in v
    assert ("cite", "des", "enfants", "perdus") in v
    assert all("1995" not in toks for toks in v)


def test_display_title_moves_movielens_article():
    assert display_title("Matrix, The (1999)") == "The Matrix (1999)"
    assert display_title("Avventura, L' (1960)") == "L'Avventura (1960)"
    assert display_title("Heat (1995)") == "Heat (1995)"


# -- held-out titles: fuzzy matching --------------------------------------------------------------

@pytest.fixture
def movie_san() -> Sanitizer:
    c = make_catalog(["Shawshank Redemption, The (1994)", "Toy Story (1995)", "Toy Story 2 (1999)", "Heat (1995)",
                      "It (1990)", "Spider-Man (2002)", "Big Fish (2003)", "Fish Tank (2009)"],
                     years=[1994, 1995, 1999, 1995, 1990, 2002, 2003, 2009])
    return Sanitizer(c, held_out=[0, 1, 3, 4, 5, 6])


@pytest.mark.parametrize("text", [
    "I loved The Shawshank Redemption.",
    "i loved the shawshank redemption",           # case
    "SHAWSHANK REDEMPTION",                        # case + dropped article
    "Shawshank Redemption, The (1994) is great",   # MovieLens form with year
    "Shawshank-Redemption!!!",                     # punctuation
    "the Shawshank Redemption (1994)",             # year suffix
    "Shawshenk Redemption",                        # typo
    "Have you seen 'Toy Story'?",
    "toy-story (1995)",
    "Spiderman was fun",                           # glued words
    "Spider Man was fun",
    "We watched Heat last night",                  # single word, capitalised
    "heat (1995) is long",                         # single word with its year
    'my favourite is "It"',                        # common word, quoted
    "It (1990) scared me",                         # common word with its year
])
def test_held_out_title_variants_are_caught(movie_san, text):
    res = movie_san.audit(text)
    assert not res.ok
    assert {v.kind for v in res.violations} == {"held_out_title"}


@pytest.mark.parametrize("text", [
    "Toy Story 2 is a sequel",                     # a different title of the same franchise
    "It was a good evening in the summer heat",    # common words in running text
    "a big fish tank",                             # "Fish Tank" is not held out; "big fish" lower-case ... see below
    "The Redemption of a town",                    # one word of a longer title
])
def test_other_titles_and_plain_words_are_not_flagged(movie_san, text):
    kinds = {v.kind for v in movie_san.audit(text).violations}
    if text == "a big fish tank":
        # "big fish" is a two-word held-out title and is caught even in lower case: multi-word
        # titles are matched case-insensitively (conservative).
        assert kinds == {"held_out_title"}
    else:
        assert kinds == set()


def test_redaction_replaces_matched_span(movie_san):
    msgs = [{"role": "user", "content": "Tonight: The Shawshank Redemption (1994), then Fish Tank."}]
    out, res = movie_san.enforce(msgs)
    assert res.redactions >= 1 and not res.ok
    assert "Shawshank" not in out[0]["content"] and REDACTED in out[0]["content"]
    assert "Fish Tank" in out[0]["content"]
    assert msgs[0]["content"].startswith("Tonight: The Shawshank")  # input untouched


WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=3, max_size=9).filter(
    lambda w: w not in COMMON_WORDS and w not in ARTICLES and w not in DROPPED
    and not re.fullmatch(r"[ivx]+", w))
ID = st.builds(lambda a, b: a + b, st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=4),
               st.text(alphabet="0123456789", min_size=3, max_size=6))


@st.composite
def leak_case(draw):
    words = draw(st.lists(WORD, min_size=2, max_size=4, unique=True))
    title = " ".join(w.capitalize() for w in words)
    item_id = draw(ID)
    year = draw(st.integers(1920, 2024))
    form = draw(st.sampled_from(["plain", "upper", "lower", "the", "movielens", "punct", "year", "quoted", "hyphen",
                                 "typo"]))
    shown = {
        "plain": title, "upper": title.upper(), "lower": title.lower(), "the": f"the {title}",
        "movielens": f"{title}, The ({year})", "punct": f"{title}!!!", "year": f"{title} ({year})",
        "quoted": f'"{title}"', "hyphen": "-".join(words), "typo": None,
    }[form]
    if shown is None:  # one substituted letter in the longest word (only where the word is long enough)
        k = max(range(len(words)), key=lambda j: len(words[j]))
        w = words[k]
        assume(len(w) >= 5)
        pos = draw(st.integers(1, len(w) - 2))
        w2 = w[:pos] + ("z" if w[pos] != "z" else "y") + w[pos + 1:]
        shown = " ".join(words[:k] + [w2] + words[k + 1:])
    before = draw(st.lists(WORD, max_size=4))
    after = draw(st.lists(WORD, max_size=4))
    text = " ".join(before + [shown, "and", item_id.upper() if draw(st.booleans()) else item_id] + after)
    return title, item_id, year, text


def _held_catalog(title: str, item_id: str, year: int) -> Catalog:
    fillers = ["Quiet River", "Golden Harvest", "Iron Convoy"]
    return make_catalog([f"The {title} ({year})", *fillers], ids=[item_id, "zz0001", "zz0002", "zz0003"],
                        years=[year, 1990, 1991, 1992])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(leak_case())
def test_no_forbidden_string_survives_redact(case):
    title, item_id, year, text = case
    san = Sanitizer(_held_catalog(title, item_id, year), {"mode": "redact"}, held_out=[0])
    msgs = [{"role": "system", "content": "persona"}, {"role": "user", "content": text}]
    out, res = san.enforce(msgs)
    assert not res.ok and res.redactions >= 1
    kinds = {v.kind for v in res.violations}
    assert "held_out_id" in kinds and "held_out_title" in kinds
    body = out[1]["content"]
    assert item_id.lower() not in body.lower()
    needle = title_variants(title)[0]
    assert not contains_seq(tokens_of(body), needle)
    assert san.audit(body).ok  # the redacted text is clean
    assert san.counts["redactions"] >= 1 and san.counts["violations_held_out_id"] >= 1


@settings(max_examples=60, deadline=None)
@given(leak_case())
def test_strict_mode_raises(case):
    title, item_id, year, text = case
    san = Sanitizer(_held_catalog(title, item_id, year), {"mode": "strict"}, held_out=[0])
    with pytest.raises(LeakageError) as ei:
        san.enforce([{"role": "user", "content": text}])
    assert isinstance(ei.value, SimrecError)
    assert isinstance(ei.value.audit, AuditResult) and not ei.value.audit.ok
    assert san.counts["raised"] == 1
    with pytest.raises(LeakageError):
        san.enforce_text(text)


@settings(max_examples=60, deadline=None)
@given(st.lists(WORD, min_size=2, max_size=4, unique=True), st.lists(WORD, min_size=3, max_size=12))
def test_unrelated_text_passes(words, context):
    title = " ".join(w.capitalize() for w in words)
    assume(not set(words) & set(context))
    san = Sanitizer(_held_catalog(title, "ab123", 1990), held_out=[0])
    assert san.audit(" ".join(context)).ok


# -- ids, internals, other users ------------------------------------------------------------------

def test_every_catalog_id_is_caught(cat):
    san = Sanitizer(cat, held_out=[7])
    for i in range(0, len(cat), 37):
        res = san.audit(f"see {cat.ids[i]}, it is good")
        assert [v.kind for v in res.violations] == ["held_out_id" if i == 7 else "catalog_id"]
    assert san.audit(f"see {cat.ids[7].upper()}").violations[0].kind == "held_out_id"
    assert san.audit("nothing here: syn99999x, syn").ok


def test_numeric_ids_only_count_after_an_id_word():
    c = make_catalog(["A Film", "B Film", "C Film"], ids=["1", "1995", "42"])
    san = Sanitizer(c, held_out=[2])
    assert san.audit("released in 1995, rated 4/5, item 1 of 5").ok
    kinds = [v.kind for v in san.audit('{"movieId": 1995}').violations]
    assert kinds == ["catalog_id"]
    assert [v.kind for v in san.audit("item id 42").violations] == ["held_out_id"]


@pytest.mark.parametrize("text", [
    "your fatigue: 0.42", "boredom=1.3 for thriller", "satisfaction is -0.2", "taste [0.12, -0.3, 0.5, 0.1]",
    "the recommender score was high", "reward: clicks", "utility of this item", "ranked #2 by the system",
    "quality 0.73", "popularity: 85%", "latent state", "embedding",
])
def test_internals_are_caught(cat, text):
    res = Sanitizer(cat).audit(text)
    assert not res.ok and {v.kind for v in res.violations} == {"internal"}


@pytest.mark.parametrize("text", [
    "I'd score it 4 out of 5", "rated it 4/5", "you are getting tired", "a rewarding family film",
    json.dumps({"items": [{"item": 1, "clicked": True, "rating": 4, "consumption": 0.75},
                          {"item": 3, "clicked": True, "rating": None, "consumption": 0.333}],
                "leave": False, "reason": "Looked fun and I was in the mood."}),
])
def test_ordinary_text_and_replies_pass(cat, text):
    assert Sanitizer(cat).audit(text).ok


def test_internal_terms_are_configurable(cat):
    san = Sanitizer(cat, {"internal_terms": ["secret sauce"], "check_numbers": False})
    assert san.audit("the reward and fatigue 0.4").ok
    assert not san.audit("the Secret  Sauce").ok


def test_other_users_ids_and_names(pop):
    san = Sanitizer.for_population(pop)
    me, other = pop.user_id(0), pop.user_id(1)
    my_name, other_name = pop.personas[0].name, pop.personas[1].name
    assert my_name != other_name
    assert san.audit(f"I am {my_name} ({me})", user_id=me).ok
    res = san.audit(f"{other} is {other_name.upper()}", user_id=me)
    assert [v.kind for v in res.violations] == ["other_user", "other_user"]
    # without knowing who is prompted, every user's id is foreign
    assert not san.audit(f"hello {me}").ok
    # an instance suffix is a different user
    extra = Sanitizer(pop.catalog, other_user_ids=["u0000", "u0000#1"])
    assert not extra.audit("u0000#1", user_id="u0000").ok
    assert extra.audit("u0000", user_id="u0000").ok


# -- rendering modes ------------------------------------------------------------------------------

def test_pseudonyms_are_stable_unique_and_reveal_nothing(cat):
    a = Sanitizer(cat, {"titles": "pseudonym"})
    b = Sanitizer(cat, {"titles": "pseudonym"})
    other_seed = Sanitizer(cat, {"titles": "pseudonym", "pseudonym_seed": 1})
    labels = [a.item_label(i) for i in range(len(cat))]
    assert labels == [b.item_label(i) for i in range(len(cat))]
    assert sum(x != other_seed.item_label(i) for i, x in enumerate(labels)) > 0.9 * len(cat)
    assert len({normalize_title(x) for x in labels}) == len(cat)
    real = {normalize_title(t) for t in cat.titles}
    assert not real & {normalize_title(x) for x in labels}
    for i, x in enumerate(labels):
        assert not re.search(r"\d", x)
        assert cat.ids[i].lower() not in x.lower()
        assert set(normalize_title(x).split()).isdisjoint(normalize_title(cat.titles[i]).split())
    # a fresh sanitizer with a different held-out set renders the same names for the other items
    c = Sanitizer(cat, {"titles": "pseudonym"}, held_out=[0, 1])
    assert [c.item_label(i) for i in range(2, 50)] == labels[2:50]


def test_pseudonym_prompts_pass_and_held_out_pseudonyms_are_forbidden(cat):
    san = Sanitizer(cat, {"titles": "pseudonym"}, held_out=[3])
    page = "\n".join(f"{k}. {san.item_label(i)}: {san.item_blurb(i)}" for k, i in enumerate(range(10, 40), 1))
    assert san.audit(page).ok
    # the held-out item's own pseudonym (e.g. echoed in a reply) is caught too
    assert not san.audit(f"I liked {san.pseudonym(3)}").ok


def test_pseudonym_blurb_hides_own_title_and_exact_year():
    c = make_catalog(["Quiet River (1987)", "Golden Harvest"], years=[1987, 2003],
                     descriptions=["Quiet River follows a family, released in 1987.", "A harvest story."])
    san = Sanitizer(c, {"titles": "pseudonym"})
    b = san.item_blurb(0)
    assert "Quiet River" not in b and "1987" not in b and "1980s" in b
    assert "2000s" in san.item_blurb(1)


def test_attributes_mode_coarsens_years_to_decades(cat):
    san = Sanitizer(cat, {"titles": "attributes"})
    for i in range(0, len(cat), 11):
        text = f"{san.item_label(i)} {san.item_blurb(i)}"
        y = int(cat.year[i])
        assert f"{y // 10 * 10}s" in text
        assert not re.search(r"\b\d{4}\b(?!s)", text)  # no exact year anywhere
        assert normalize_title(cat.titles[i]) not in normalize_title(text)
        assert cat.descriptions[i] not in text
        for topic in cat.item_topics[i]:
            assert topic in text


def test_real_mode_renders_whole_catalog_cleanly(cat):
    san = Sanitizer(cat)
    for i in range(len(cat)):
        text = f"{i + 1}. \"{san.item_label(i)}\": {san.item_blurb(i)}"
        res = san.audit(text)
        assert res.ok, (text, res)
    assert san.counts["audited"] == len(cat)


def test_held_out_item_on_page_is_caught_in_every_mode(cat):
    for titles in ("real", "pseudonym", "attributes"):
        page = [10, 11, 12]
        strict = Sanitizer(cat, {"mode": "strict", "titles": titles}, held_out=[11])
        assert strict.item_label(11) == WITHHELD and strict.item_blurb(11) == ""
        msgs = [{"role": "user", "content": "\n".join(f"{k}. {strict.item_label(i)}" for k, i in enumerate(page, 1))}]
        with pytest.raises(LeakageError):
            strict.enforce(msgs)
        redact = Sanitizer(cat, {"titles": titles}, held_out=[11])
        out, res = redact.enforce(msgs)  # the same rendered page, redact mode
        assert [v.kind for v in res.violations] == ["held_out_id"]
        lines = out[0]["content"].splitlines()
        assert lines[1] == f"2. {REDACTED}"
        assert lines[0] == f"1. {redact.item_label(10)}" and lines[2] == f"3. {redact.item_label(12)}"


def test_enforce_handles_content_parts_and_counts(cat):
    san = Sanitizer(cat, held_out=[0])
    msgs = [{"role": "user", "content": [{"type": "text", "text": f"about {cat.titles[0]}"}, {"type": "image"}]},
            {"role": "assistant", "content": None}]
    out, res = san.enforce(msgs)
    assert not res.ok and REDACTED in out[0]["content"][0]["text"] and out[0]["content"][1] == {"type": "image"}
    assert out[1] == msgs[1]
    assert san.counts["audited"] == 1 and san.counts["violations_held_out_title"] == 1


def test_set_held_out_validates_and_replaces(cat):
    san = Sanitizer(cat, held_out=[1])
    with pytest.raises(ValueError):
        san.set_held_out([len(cat)])
    san.set_held_out([2])
    assert san.held_out == frozenset({2})
    assert san.audit(cat.titles[1]).ok and not san.audit(cat.titles[2]).ok


def test_config_is_validated():
    with pytest.raises(ValueError):
        SanitizeConfig(mode="loose")
    with pytest.raises(ValueError):
        SanitizeConfig(titles="real", unknown=1)


def test_internal_word_inside_a_catalog_title_is_not_an_internal_leak() -> None:
    """A film called "Embedded" is catalog text; the same word elsewhere is still flagged (found by
    tests/test_leakage_http.py's hypothesis search: strict mode refused every prompt showing that title)."""
    from simrec.catalog import Catalog
    from simrec.llm.sanitize import Sanitizer

    n = 3
    cat = Catalog(ids=[f"it{i}" for i in range(n)], titles=["Aaaa Embedding", "Reward, The (1990)", "Plain"],
                  descriptions=["x"] * n, topic_names=["a"], item_topics=[["a"]] * n,
                  features=np.eye(n, 4, dtype=np.float32), quality=np.full(n, 0.5, np.float32),
                  year=np.array([0, 1990, 0]), popularity=np.full(n, 0.1, np.float32))
    san = Sanitizer(cat, {"mode": "strict", "internal_terms": ["embedding", "reward"]})
    assert san.audit('You may watch "Aaaa Embedding" or "The Reward (1990)".').ok
    res = san.audit('Your embedding says you like it; the reward is high.')
    assert not res.ok and {v.detail for v in res.violations} == {"internal term 'embedding'", "internal term 'reward'"}
