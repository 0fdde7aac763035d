"""Leakage control for LLM prompts and replies.

A :class:`Sanitizer` does two jobs:

* **Rendering**: what an LLM is allowed to see of an item (:meth:`Sanitizer.item_label`,
  :meth:`Sanitizer.item_blurb`): the real title, a stable pseudonym, or an attribute-only
  description with coarsened attributes (year -> decade, as CSHI does).
* **Auditing**: every prompt and every reply is scanned (:meth:`Sanitizer.audit`,
  :meth:`Sanitizer.enforce`) for

  - held-out / target items of the current evaluation, by id or by title, including fuzzy title
    matches (case, punctuation, articles, MovieLens ``"Title, The (1995)"``, small typos);
  - any catalog id;
  - simulator internals: configured words (``reward``, ``utility``, ``latent``...), latent
    numbers (``fatigue: 0.4``, ``score=0.93``, ``ranked #2``, vectors of decimals);
  - other users' ids and full names.

  In ``strict`` mode a violation raises :class:`LeakageError`; in ``redact`` mode the offending
  spans are replaced by ``[redacted]``; in ``off`` mode (for measuring what an unprotected
  pipeline leaks) nothing is raised, redacted or withheld. Every call returns an
  :class:`AuditResult` for logging and adds to the per-run :attr:`Sanitizer.counts`.

Cost: titles are normalised once; per prompt, held-out titles are found through a token index of
the held-out set only (no per-catalog difflib calls), and catalog/user ids by one compiled trie
regex each: auditing a 5-item decision prompt against the 1,200-item synthetic catalog takes about
0.5 ms (1 ms with 20 held-out titles), negligible next to an LLM call.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import re
import threading
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from simrec.catalog import Catalog
from simrec.errors import SimrecError

if TYPE_CHECKING:
    from simrec.users.population import Population

ViolationKind = Literal["held_out_id", "held_out_title", "catalog_id", "internal", "other_user"]
VIOLATION_KINDS: tuple[str, ...] = ("held_out_id", "held_out_title", "catalog_id", "internal", "other_user")

#: What redacted spans are replaced with.
REDACTED = "[redacted]"
#: What :meth:`Sanitizer.item_label` renders for a held-out item; any audit reports it as a
#: ``held_out_id`` violation (strict raises, redact replaces it), so a held-out item that a caller
#: puts on a page or in a memory never reaches the LLM, whatever the title mode (except in ``off`` mode).
WITHHELD = "[withheld item]"

#: Leading articles dropped from normalised titles (English plus the common MovieLens ones).
ARTICLES = frozenset({"the", "a", "an", "le", "la", "les", "l", "el", "los", "las", "il", "lo", "gli",
                      "der", "die", "das", "den", "det"})
#: Tokens ignored everywhere when comparing titles with text ("Romeo & Juliet" == "Romeo and Juliet").
DROPPED = frozenset({"the", "a", "an", "and"})
#: Single-word titles made of one of these only count when quoted or followed by the item's year,
#: since "it" or "up" in running text is not a mention of the film.
COMMON_WORDS = frozenset("""
i me my we us our you your he him his she her it its they them their this that these those what who
whom which when where why how all any both each few more most other some such no nor not only own same so
than too very can will just don should now up down in out on off over under again then once here there of
at by for with about against between into through during before after above below to from is am are was were
be been being have has had do does did doing but if or because as until while one two three four five six
seven eight nine ten go get got new old big yes man men day time life love home
""".split())

DEFAULT_INTERNAL_TERMS: tuple[str, ...] = (
    "reward", "rewards", "utility", "utilities", "latent", "logit", "logits", "embedding", "embeddings",
    "propensity", "ground truth", "hidden state", "recommender score", "relevance score", "taste vector",
)

_YEAR_GROUP = re.compile(r"\s*[(\[]\s*((?:1[89]|2[01])\d\d)(?:\s*[-–]\s*(?:(?:1[89]|2[01])\d\d)?)?\s*[)\]]\s*$")
_PAREN_TAIL = re.compile(r"\s*[(\[]([^()\[\]]*)[)\]]\s*$")
_TRAILING_ARTICLE = re.compile(
    r"^(?P<rest>.+?),\s*(?P<art>the|a|an|le|la|les|l'|el|los|las|il|lo|gli|der|die|das|den|det)\s*$", re.I)
_AKA = re.compile(r"^(?:a\.?k\.?a\.?|aka)\s+", re.I)
_TOKEN = re.compile(r"\w+(?:['’]\w+)*")
_ELISION = re.compile(r"(?<![\w'’])([A-Za-z])['’](?=\w)")  # L'Avventura -> L Avventura (same length)
_YEAR_IN_TEXT = re.compile(r"\b((?:1[89]|2[01])\d)\d\b")
_WS = re.compile(r"\s+")
# "latent" numbers: a state/scoring word followed by a number, or a run of decimals (a vector).
_STRONG_WORDS = ("fatigue", "boredom", "satisfaction", "taste", "utility", "utilities", "reward", "rewards", "rank",
                 "ranks", "ranked", "ranking", "logit", "propensity")
# "I'd score it 4" is fine in a reply, "score: 0.93" is not: these words only count before a fraction.
_SOFT_WORDS = ("score", "scores", "quality", "popularity", "probability", "similarity", "relevance", "weight",
               "affinity", "confidence")
_ID_WORDS = ("item", "movie", "film", "product", "catalog", "video", "track", "book", "show", "title")


class _Lower:
    """A case-insensitive regex (pattern written in lowercase) run on pre-lowercased text.

    CPython's ``re.I`` defeats the prefix scan; matching ``text.lower()`` is several times faster.
    Falls back to ``re.I`` when lowercasing changes the text's length (rare Unicode).
    """

    def __init__(self, pattern: str) -> None:
        self.fast = re.compile(pattern)
        self.slow = re.compile(pattern, re.I)

    def finditer(self, text: str, low: str | None) -> Iterable[re.Match]:
        return self.fast.finditer(low) if low is not None else self.slow.finditer(text)


def _lower(text: str) -> str | None:
    low = text.lower()
    return low if len(low) == len(text) else None


class SanitizeConfig(BaseModel):
    """How prompts are rendered and audited."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["strict", "redact", "off"] = Field(
        "redact", description="strict: raise LeakageError on any violation; redact: replace offending spans; "
                              "off: audit and count only, never withhold, redact or raise (leakage studies).")
    titles: Literal["real", "pseudonym", "attributes"] = Field(
        "real", description="How items are named: real titles, stable made-up titles, or coarsened attributes only.")
    fuzzy_threshold: float = Field(
        0.85, gt=0.0, le=1.0, description="difflib similarity above which a held-out title counts as present.")
    pseudonym_seed: int = Field(0, description="Salt of the pseudonym generator (stable per item for one seed).")
    internal_terms: list[str] = Field(
        default_factory=lambda: list(DEFAULT_INTERNAL_TERMS),
        description="Words that reveal simulator internals; matched case-insensitively as whole words.")
    check_numbers: bool = Field(True, description="Flag latent-looking numbers (e.g. 'fatigue 0.4', decimal vectors).")
    max_description_chars: int = Field(160, ge=0, description="Item descriptions are cut to this many characters.")


class Violation(BaseModel):
    kind: ViolationKind
    detail: str


class AuditResult(BaseModel):
    """Outcome of one audit: ``ok`` when nothing forbidden was found (before any redaction)."""

    ok: bool
    violations: list[Violation] = Field(default_factory=list)
    redactions: int = 0


class LeakageError(SimrecError):
    """A prompt or reply contained forbidden content in strict mode; ``.audit`` says what."""

    def __init__(self, audit: AuditResult) -> None:
        self.audit = audit
        kinds = sorted({v.kind for v in audit.violations})
        first = audit.violations[0].detail if audit.violations else ""
        super().__init__(f"leakage check failed ({', '.join(kinds)}): {first}"
                         + (f" (+{len(audit.violations) - 1} more)" if len(audit.violations) > 1 else ""))


# -- title normalisation ------------------------------------------------------------------------

def _fold(s: str) -> str:
    """Lowercase and strip accents (fast path for ASCII)."""
    if s.isascii():
        return s.lower()
    s = unicodedata.normalize("NFKD", s)
    return "".join(c for c in s if not unicodedata.combining(c)).casefold()


_ROMAN = {r: str(k) for k, r in enumerate(
    "_ i ii iii iv v vi vii viii ix x xi xii xiii xiv xv xvi xvii xviii xix xx".split()) if k >= 2}


def _norm_token(tok: str) -> str:
    # Roman numerals become digits so "Rocky III" == "Rocky 3" ("I" stays: it is mostly a pronoun).
    t = _fold(tok).replace("'", "").replace("’", "")
    return _ROMAN.get(t, t)


def _similar(a: str, b: str, threshold: float) -> bool:
    la, lb = len(a), len(b)
    if 2.0 * min(la, lb) < threshold * (la + lb):  # the best ratio possible from lengths alone
        return False
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return sm.quick_ratio() >= threshold and sm.ratio() >= threshold


@functools.lru_cache(maxsize=1 << 16)
def _typo(a: str, b: str) -> bool:
    """Is word ``b`` word ``a`` with a small typo? (Cached: prompts reuse a small vocabulary.)"""
    return _similar(a, b, 0.75)


def _covers(title: Sequence[str], window: Sequence[str]) -> bool:
    """Every title word of 3+ letters appears in the window, inside a glued word or with a small typo."""
    glued = "".join(window)
    for t in title:
        if len(t) >= 3 and t not in glued and not any(_typo(t, w) for w in window):
            return False
    return True


def _markers(toks: Sequence[str]) -> frozenset[str]:
    """Sequel numbers in a token sequence: "Rocky 2" and "Rocky 3" are different titles."""
    return frozenset(t for t in toks if t.isdigit() and len(t) <= 2)


def display_title(title: str) -> str:
    """MovieLens ``"Matrix, The (1999)"`` -> ``"The Matrix (1999)"``; other titles unchanged."""
    t = title.strip()
    tails = ""
    while (m := _PAREN_TAIL.search(t)) and m.start() > 0:
        tails = t[m.start():] + tails
        t = t[:m.start()].rstrip()
    m = _TRAILING_ARTICLE.match(t)
    if m:
        art = m.group("art")
        t = f"{art}{'' if art.endswith(chr(39)) else ' '}{m.group('rest')}"
    return t + tails


def title_variants(title: str) -> list[tuple[str, ...]]:
    """Normalised token sequences under which ``title`` is recognised.

    The core title plus each alternative title in trailing parentheses (MovieLens
    ``"City of Lost Children, The (Cité des enfants perdus, La) (1995)"``); years and ``a.k.a.``
    are dropped, trailing articles moved to the front and then dropped with leading ones, accents
    and case folded, punctuation ignored, and ``the``/``a``/``an``/``and`` ignored anywhere.
    """
    t = title.strip()
    alts: list[str] = []
    while (m := _PAREN_TAIL.search(t)) and m.start() > 0:
        inner = m.group(1).strip()
        t = t[:m.start()].rstrip()
        if inner and not _YEAR_GROUP.fullmatch(f"({inner})"):
            alts.append(_AKA.sub("", inner))
    out: list[tuple[str, ...]] = []
    for v in [t, *alts]:
        m = _TRAILING_ARTICLE.match(v)
        if m:
            v = f"{m.group('art')} {m.group('rest')}"
        toks = [n for n in (_norm_token(x) for x in _TOKEN.findall(_ELISION.sub(r"\1 ", v))) if n]
        while len(toks) > 1 and toks[0] in ARTICLES:
            toks.pop(0)
        kept = [x for x in toks if x not in DROPPED]
        toks = kept or toks
        if toks and tuple(toks) not in out:
            out.append(tuple(toks))
    return out


def normalize_title(title: str) -> str:
    """The canonical comparable form of a title: its first variant's tokens joined by spaces."""
    v = title_variants(title)
    return " ".join(v[0]) if v else ""


def _text_tokens(text: str) -> tuple[list[str], list[int], list[int]]:
    """Normalised tokens of ``text`` (as for titles) with their character spans."""
    norms, starts, ends = [], [], []
    text = _ELISION.sub(r"\1 ", text)
    ascii_low = text.lower() if text.isascii() else None  # fold once, not per token
    for m in _TOKEN.finditer(ascii_low if ascii_low is not None else text):
        if ascii_low is not None:
            t = m.group().replace("'", "")
            n = _ROMAN.get(t, t)
        else:
            n = _norm_token(m.group())
        if n and n not in DROPPED:
            norms.append(n)
            starts.append(m.start())
            ends.append(m.end())
    return norms, starts, ends


def _trie_regex(words: Iterable[str]) -> str:
    """A regex alternation of ``words`` factored by common prefixes (fast for thousands of ids)."""
    trie: dict = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = True

    def build(node: dict) -> str:
        end = "" in node
        branches = [re.escape(ch) + build(sub) for ch, sub in sorted(node.items()) if ch != ""]
        if not branches:
            return ""
        if len(branches) == 1 and not end:
            return branches[0]
        body = "(?:" + "|".join(branches) + ")"
        return body + "?" if end else body

    return build(trie)


_LATENT_WORDS = _Lower(
    rf"\b(?:{_trie_regex(_STRONG_WORDS)})\b[\"']?\s*(?:[:=]|is|was|of|at|#|no\.?)?\s*[\"']?\s*"
    r"[-+]?#?\d+(?:\.\d+)?%?"
    rf"|\b(?:{_trie_regex(_SOFT_WORDS)})\b[\"']?\s*(?:[:=]|is|was|of|at)?\s*[\"']?\s*"
    r"(?:[-+]?\d*\.\d+|\d+(?:\.\d+)?\s*%)"
)
_DECIMAL_RUN = re.compile(r"\.\d+(?:\s*[,;]\s*[-+]?\d*\.\d+){2,}")  # starts at the "." for speed; see _scan
# Short or purely numeric ids collide with years and counts, so they only count after an id word.
_ID_CONTEXT = _Lower(
    rf"\b(?:(?:{_trie_regex(_ID_WORDS)})[\s_-]?)?ids?\b[\"']?\s*(?:[:=#]|is|was)?\s*[\"']?([\w][\w\-.:]*\w|\w)"
)


# -- pseudonyms ---------------------------------------------------------------------------------

_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "st", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou")
_CODAS = ("", "n", "r", "l", "s", "k", "m", "th")


def _pseudo_word(h: int) -> tuple[str, int]:
    """A pronounceable made-up word of 2-3 syllables drawn from the integer ``h``; returns the rest of ``h``."""
    n_syll = 3 if h % 4 == 0 else 2
    h //= 4
    parts = []
    for _ in range(n_syll):
        parts += [_ONSETS[h % len(_ONSETS)], _VOWELS[(h // len(_ONSETS)) % len(_VOWELS)]]
        h //= len(_ONSETS) * len(_VOWELS)
    parts.append(_CODAS[h % len(_CODAS)])
    return "".join(parts).capitalize(), h // len(_CODAS)


def _pseudonym(seed: int, salt: str, item_id: str, attempt: int) -> str:
    # A keyed hash: stable per (seed, catalog, item) but reveals nothing about the id.
    digest = hashlib.blake2b(f"{seed}\x1f{salt}\x1f{item_id}\x1f{attempt}".encode(), digest_size=24).digest()
    w1, h = _pseudo_word(int.from_bytes(digest, "big"))
    w2, _ = _pseudo_word(h)
    return f"{w1} {w2}"


# -- the sanitizer ------------------------------------------------------------------------------

class _TitleIndex:
    """Token index of a few titles (the held-out set), immutable once built and swapped atomically.

    Each entry is one normalised variant of one item's title; the index maps every title token,
    and every pair of adjacent tokens glued together ("Spider Man" ~ "Spiderman"), to
    ``(entry, position)`` so a text token proposes where a title would start.
    """

    def __init__(self, items: Iterable[int], catalog: Catalog, variants: Sequence[list[tuple[str, ...]]],
                 extra_phrases: Mapping[int, str] | None = None) -> None:
        self.items = frozenset(int(i) for i in items)
        # (item, tokens, joined, single word, common word, year, sequel numbers)
        self.entries: list[tuple[int, tuple[str, ...], str, bool, bool, str, frozenset[str]]] = []
        self.index: dict[str, list[tuple[int, int]]] = {}
        for i in sorted(self.items):
            year = str(int(catalog.year[i])) if catalog.year[i] else ""
            forms = list(variants[i])
            extra = (extra_phrases or {}).get(i)
            if extra:
                forms += [v for v in title_variants(extra) if v not in forms]
            for toks in forms:
                e = len(self.entries)
                single = len(toks) == 1
                common = single and (toks[0] in COMMON_WORDS or len(toks[0]) <= 2 or toks[0].isdigit())
                self.entries.append((i, toks, "".join(toks), single, common, year, _markers(toks)))
                for j, tok in enumerate(toks):
                    self.index.setdefault(tok, []).append((e, j))
                    if j + 1 < len(toks):
                        self.index.setdefault(tok + toks[j + 1], []).append((e, j))

    def find(self, text: str, threshold: float) -> list[tuple[int, int, str]]:
        """Fuzzy occurrences ``(start, end, detail)`` of the indexed titles in ``text``."""
        if not self.entries:
            return []
        masked = text.replace(REDACTED, " " * len(REDACTED))  # never match our own marker
        norms, starts, ends = _text_tokens(masked)
        n = len(norms)
        cands: set[tuple[int, int]] = set()
        for p, tok in enumerate(norms):
            for e, j in self.index.get(tok, ()):
                cands.add((e, p - j))
            if p + 1 < n:
                for e, j in self.index.get(tok + norms[p + 1], ()):
                    cands.add((e, p - j))
        hits: list[tuple[float, int, int, int, tuple[str, ...]]] = []
        for e, s0 in sorted(cands):
            item, toks, joined, single, common, year, marks = self.entries[e]
            L = len(toks)
            if L > 1 and not _covers(toks, norms[max(s0 - 1, 0):s0 + L + 1]):
                continue  # cheap: some word of the title is nowhere near
            best = (0.0, 0, 0)
            # Windows around the proposed start, one token shorter or longer (typos, split words).
            for s in (s0 - 1, s0, s0 + 1):
                for m in (L - 1, L, L + 1):
                    if m < 1 or s < 0 or s + m > n or _markers(norms[s:s + m]) != marks:
                        continue
                    cand = "".join(norms[s:s + m])
                    if 2.0 * min(len(cand), len(joined)) < threshold * (len(cand) + len(joined)):
                        continue
                    sm = difflib.SequenceMatcher(None, cand, joined, autojunk=False)
                    if sm.quick_ratio() < threshold:
                        continue
                    r = sm.ratio()
                    if (r, m) > (best[0], best[2]):
                        best = (r, s, m)
            r, s, m = best
            if r < threshold:
                continue
            if not _covers(toks, norms[s:s + m]):
                continue  # "Treehouse" is not "Big Treehouse": every real word of the title must be there
            if s + m < n and norms[s + m] not in marks and _markers(norms[s + m:s + m + 1]):
                continue  # "Toy Story" inside "Toy Story 2" names the sequel, not the held-out film
            a, b = starts[s], ends[s + m - 1]
            if single:
                # One word is a title only when it looks like one: capitalised, quoted or followed
                # by the item's year; common words ("It", "Up") need the quotes or the year.
                follows_year = bool(year) and s + m < n and norms[s + m] == year
                quoted = a > 0 and text[a - 1] in "\"'“‘«*" and b < len(text) and text[b] in "\"'”’»*"
                if not (follows_year or quoted or (not common and text[a].isupper())):
                    continue
            hits.append((r, a, b, item, toks))
        # Nearby proposals can find overlapping windows of one mention: keep the best of each.
        out: list[tuple[int, int, str]] = []
        taken: list[tuple[int, int, int]] = []
        for r, a, b, item, toks in sorted(hits, key=lambda h: (-h[0], h[1])):
            if any(it == item and a < y and x < b for x, y, it in taken):
                continue
            taken.append((a, b, item))
            out.append((a, b, f"held-out item {item}: title '{' '.join(toks)}' matched '{text[a:b]}' ({r:.2f})"))
        return sorted(out)


class Sanitizer:
    """Renders items for prompts and audits prompt and reply text for leakage.

    Args:
        catalog: the catalog whose ids and titles are protected.
        config: :class:`SanitizeConfig` (defaults: redact mode, real titles).
        held_out: catalog indices of the current evaluation's held-out / target items.
        other_user_ids: ids of users whose data must not appear; the ``user_id`` passed to
            :meth:`audit` / :meth:`enforce` (the user being prompted) is exempt.
        user_names: optional ``{user_id: full name}``; full names (two or more words) of users other
            than the prompted one are forbidden too (see :meth:`for_population`).

    Attributes:
        counts: per-run counters ``audited``, ``violations_<kind>``, ``redactions``, ``raised``.
    """

    def __init__(self, catalog: Catalog, config: SanitizeConfig | dict | None = None, held_out: Iterable[int] = (),
                 other_user_ids: Iterable[str] = (), user_names: Mapping[str, str] | None = None) -> None:
        self.catalog = catalog
        self.config = config if isinstance(config, SanitizeConfig) else SanitizeConfig(**(config or {}))
        self.counts: dict[str, int] = {"audited": 0, "redactions": 0, "raised": 0,
                                       **{f"violations_{k}": 0 for k in VIOLATION_KINDS}}
        self._lock = threading.Lock()
        self._variants = [title_variants(t) for t in catalog.titles]
        self._labels: dict[int, str] = {}
        self._blurbs: dict[int, str] = {}
        self._pseudonyms: list[str] | None = None
        self._compile_ids()
        self._users: dict[str, str | None] = {}
        self.register_users(other_user_ids, user_names)
        terms = [t.strip() for t in self.config.internal_terms if t.strip()]
        self._internal = (_Lower(r"(?<!\w)(?:" + _trie_regex(sorted({t.lower() for t in terms})).replace(r"\ ", r"\s+")
                                 + r")(?!\w)") if terms else None)
        self._held = _TitleIndex((), catalog, self._variants)
        self.set_held_out(held_out)
        # Titles that themselves contain an internal word ("Embedded", "The Reward"): that word inside the
        # rendered title is catalog text, not a simulator internal, and must not make strict mode refuse.
        self._term_titles: dict[str, set[str]] = {}
        if self._internal is not None:
            for t in catalog.titles:
                for form in {t.strip(), display_title(t)}:
                    for m in self._internal.finditer(form, _lower(form)):
                        key = _WS.sub(" ", form[m.start():m.end()].lower())
                        self._term_titles.setdefault(key, set()).add(form.lower())

    @classmethod
    def for_population(cls, pop: "Population", config: SanitizeConfig | dict | None = None,
                       held_out: Iterable[int] = ()) -> "Sanitizer":
        """A sanitizer over ``pop.catalog`` that knows every user's id and name."""
        ids = [pop.user_id(u) for u in range(pop.n_users)]
        return cls(pop.catalog, config, held_out, ids, {uid: pop.personas[u].name for u, uid in enumerate(ids)})

    # -- setup ----------------------------------------------------------------------------------
    def _compile_ids(self) -> None:
        cat = self.catalog
        self._id_lookup: dict[str, list[int]] = {}
        distinct: list[str] = []
        for i, item_id in enumerate(cat.ids):
            key = item_id.lower()
            self._id_lookup.setdefault(key, []).append(i)
            # Ids mixing letters and digits (syn00042, tt0114709) are safe to search for anywhere;
            # short or numeric ones (MovieLens "1", "1995") only after an id word, see _ID_CONTEXT.
            mixed = len(key) >= 4 and re.search(r"[a-z]", key) is not None and re.search(r"\d", key) is not None
            if mixed or (key.isdigit() and len(key) >= 7):
                distinct.append(key)
        self._id_re = (_Lower(r"(?<![a-z0-9])(?:" + _trie_regex(sorted(set(distinct))) + r")(?![a-z0-9])")
                       if distinct else None)

    def register_users(self, user_ids: Iterable[str], names: Mapping[str, str] | None = None) -> None:
        """Add users whose ids (and full names, if given) must not appear in other users' prompts."""
        for uid in user_ids:
            self._users.setdefault(str(uid), None)
        for uid, name in (names or {}).items():
            self._users[str(uid)] = name
        ids = sorted(self._users, key=len, reverse=True)
        self._user_id_re = (re.compile(r"(?<![\w#])(?:" + _trie_regex(ids) + r")(?![\w#])") if ids else None)
        self._name_owner: dict[str, set[str]] = {}
        for uid, name in self._users.items():
            if name and len(name.split()) >= 2:
                self._name_owner.setdefault(_WS.sub(" ", name.strip().lower()), set()).add(uid)
        names = _trie_regex(sorted(self._name_owner)).replace(r"\ ", r"\s+")
        self._name_re = _Lower(r"(?<!\w)(?:" + names + r")(?!\w)") if self._name_owner else None

    def set_held_out(self, items: Iterable[int]) -> None:
        """Set the catalog indices of the current evaluation's held-out / target items."""
        n = len(self.catalog)
        held = frozenset(int(i) for i in items)
        bad = [i for i in held if not 0 <= i < n]
        if bad:
            raise ValueError(f"held-out items must be catalog indices in [0, {n}), got {sorted(bad)[:5]}")
        # In pseudonym mode the held-out items' pseudonyms are forbidden as well as their titles.
        extra = {i: self._pseudonym_list()[i] for i in held} if self.config.titles == "pseudonym" else {}
        self._held = _TitleIndex(held, self.catalog, self._variants, extra)

    @property
    def held_out(self) -> frozenset[int]:
        return self._held.items

    # -- rendering ------------------------------------------------------------------------------
    def _pseudonym_list(self) -> list[str]:
        if self._pseudonyms is None:
            real = {" ".join(v) for vs in self._variants for v in vs}
            seen: set[str] = set()
            out = []
            for item_id in self.catalog.ids:
                attempt = 0
                while True:
                    p = _pseudonym(self.config.pseudonym_seed, self.catalog.name, item_id, attempt)
                    key = normalize_title(p)
                    if key not in real and key not in seen:
                        break
                    attempt += 1
                seen.add(key)
                out.append(p)
            self._pseudonyms = out
        return self._pseudonyms

    def pseudonym(self, i: int) -> str:
        """The stable made-up title of item ``i`` (never equal to a real title, reveals no id)."""
        return self._pseudonym_list()[int(i)]

    def item_label(self, i: int) -> str:
        """What the LLM sees as item ``i``'s name; :data:`WITHHELD` for a held-out item (unless ``off``)."""
        i = int(i)
        if i in self._held.items and self.config.mode != "off":
            return WITHHELD
        lab = self._labels.get(i)
        if lab is None:
            mode = self.config.titles
            if mode == "real":
                lab = display_title(self.catalog.titles[i])
            elif mode == "pseudonym":
                lab = self.pseudonym(i)
            else:
                lab = self._attribute_label(i)
            self._labels[i] = lab
        return lab

    def item_blurb(self, i: int) -> str:
        """A one-line description of item ``i`` for prompts ("" for a held-out item).

        ``real``: genres and year unless the description already says them, then the description.
        ``pseudonym``: the same with the item's own title removed and years coarsened to decades.
        ``attributes``: popularity only (the label carries the coarsened attributes).
        Items in the top fifth by popularity are marked "popular", the bottom fifth "little known".
        A held-out item has none (unless ``off``).
        """
        i = int(i)
        if i in self._held.items and self.config.mode != "off":
            return ""
        b = self._blurbs.get(i)
        if b is None:
            b = self._blurb(i)
            self._blurbs[i] = b
        return b

    def _popularity_word(self, i: int) -> str:
        p = float(self.catalog.popularity[i])
        return "popular" if p >= 0.64 else "little known" if 0.0 < p < 0.04 else ""

    def _genres(self, i: int) -> str:
        return "/".join(self.catalog.item_topics[i]) or "title"

    def _decade(self, i: int) -> str:
        y = int(self.catalog.year[i])
        return f"{y // 10 * 10}s" if y else ""

    def _attribute_label(self, i: int) -> str:
        form = str(self.catalog.attributes[i].get("form", "")).strip()
        words = " ".join(w for w in (self._decade(i), self._genres(i), form if 0 < len(form) <= 20 else "") if w)
        return ("an " if words[:1].lower() in "aeiou" else "a ") + words

    def _blurb(self, i: int) -> str:
        cat, mode = self.catalog, self.config.titles
        pop = self._popularity_word(i)
        if mode == "attributes":
            return pop
        desc = _WS.sub(" ", cat.descriptions[i]).strip()
        if mode == "pseudonym" and desc:
            desc = self._scrub_title(desc, i)
            desc = _YEAR_IN_TEXT.sub(lambda m: f"the {m.group(1)}0s", desc)
        low = desc.lower()
        parts = []
        if not desc or cat.item_topics[i][0].lower() not in low:
            parts.append(self._genres(i))
        y = int(cat.year[i])
        if y and (mode == "real" and str(y) not in desc or mode == "pseudonym" and f"{y // 10}0s" not in desc):
            parts.append(str(y) if mode == "real" else self._decade(i))
        lim = self.config.max_description_chars
        if len(desc) > lim:
            desc = desc[:lim].rsplit(" ", 1)[0].rstrip(",;:") + "..."
        head = ", ".join(parts)
        out = ". ".join(x for x in (head, desc) if x)
        return f"{out} ({pop})" if pop else out

    def _scrub_title(self, text: str, i: int) -> str:
        own = _TitleIndex((i,), self.catalog, self._variants)
        return _apply(text, [(x, y) for x, y, _ in own.find(text, self.config.fuzzy_threshold)], "this title")

    # -- auditing -------------------------------------------------------------------------------
    def _scan(self, text: str, user_id: str | None) -> list[tuple[int, int, Violation]]:
        """Every forbidden span in ``text`` as ``(start, end, violation)``."""
        found: list[tuple[int, int, Violation]] = []
        held = self._held.items
        low = _lower(text)
        start = text.find(WITHHELD)
        while start >= 0:
            found.append((start, start + len(WITHHELD),
                          Violation(kind="held_out_id", detail="a held-out item was rendered into the text")))
            start = text.find(WITHHELD, start + 1)

        def item_id(a: int, b: int) -> None:
            idx = self._id_lookup.get(text[a:b].lower())
            if idx:
                kind = "held_out_id" if any(i in held for i in idx) else "catalog_id"
                found.append((a, b, Violation(kind=kind, detail=f"item id '{text[a:b]}'")))

        if self._id_re is not None:
            for m in self._id_re.finditer(text, low):
                item_id(m.start(), m.end())
        for m in _ID_CONTEXT.finditer(text, low):
            item_id(m.start(1), m.end(1))
        for a, b, detail in self._held.find(text, self.config.fuzzy_threshold):
            found.append((a, b, Violation(kind="held_out_title", detail=detail)))
        if self._internal is not None:
            for m in self._internal.finditer(text, low):
                if self._term_titles and low is not None and self._inside_title(low, m.start(), m.end()):
                    continue
                found.append((m.start(), m.end(),
                              Violation(kind="internal", detail=f"internal term '{text[m.start():m.end()]}'")))
        if self.config.check_numbers:
            spans = [(m.start(), m.end()) for m in _LATENT_WORDS.finditer(text, low)]
            for m in _DECIMAL_RUN.finditer(text):
                a = m.start()
                while a > 0 and (text[a - 1].isdigit() or text[a - 1] in "+-"):
                    a -= 1
                spans.append((a, m.end()))
            for a, b in spans:
                found.append((a, b, Violation(kind="internal", detail=f"latent number '{text[a:b]}'")))
        if self._user_id_re is not None:
            for m in self._user_id_re.finditer(text):
                if m.group() != user_id:
                    found.append((m.start(), m.end(), Violation(kind="other_user", detail=f"user id '{m.group()}'")))
        if self._name_re is not None:
            own_name = self._users.get(user_id) if user_id is not None else None
            own = _WS.sub(" ", own_name.strip().lower()) if own_name else None
            for m in self._name_re.finditer(text, low):
                name = text[m.start():m.end()]
                if _WS.sub(" ", name.lower()) != own:  # namesakes of the prompted user are fine
                    found.append((m.start(), m.end(), Violation(kind="other_user", detail=f"user name '{name}'")))
        seen: set[tuple[int, int, str]] = set()
        unique = []
        for a, b, v in found:  # an id after "id:" is found by two patterns
            if (a, b, v.kind) not in seen:
                seen.add((a, b, v.kind))
                unique.append((a, b, v))
        return unique

    def _inside_title(self, low: str, a: int, b: int) -> bool:
        """Whether ``low[a:b]`` (an internal term) lies inside a catalog title that contains it."""
        for title in self._term_titles.get(_WS.sub(" ", low[a:b]), ()):
            start = low.find(title, max(0, b - len(title)))
            while 0 <= start <= a:
                if start + len(title) >= b:
                    return True
                start = low.find(title, start + 1)
        return False

    def _count(self, violations: list[Violation], redactions: int = 0, raised: bool = False) -> None:
        with self._lock:
            self.counts["audited"] += 1
            for v in violations:
                self.counts[f"violations_{v.kind}"] += 1
            self.counts["redactions"] += redactions
            self.counts["raised"] += int(raised)

    def audit(self, text: str, *, user_id: str | None = None) -> AuditResult:
        """Check one prompt or reply text; never raises and never changes the text."""
        found = self._scan(text, user_id)
        res = AuditResult(ok=not found, violations=[v for _, _, v in found])
        self._count(res.violations)
        return res

    def _redact(self, text: str, user_id: str | None, found: list) -> tuple[str, int]:
        total = 0
        for _ in range(4):  # redacting can shift fuzzy windows; re-scan until clean
            if not found:
                return text, total
            spans = _merge([(a, b) for a, b, _ in found])
            text = _apply(text, spans, REDACTED)
            total += len(spans)
            found = self._scan(text, user_id)
        return (REDACTED, total + 1) if found else (text, total)

    def enforce_text(self, text: str, *, user_id: str | None = None) -> tuple[str, AuditResult]:
        """Audit one text (e.g. a reply); strict -> raise :class:`LeakageError`, redact -> redacted text,
        off -> the text unchanged."""
        found = self._scan(text, user_id)
        violations = [v for _, _, v in found]
        if found and self.config.mode == "strict":
            res = AuditResult(ok=False, violations=violations)
            self._count(violations, raised=True)
            raise LeakageError(res)
        text, n = self._redact(text, user_id, found if self.config.mode != "off" else [])
        res = AuditResult(ok=not found, violations=violations, redactions=n)
        self._count(violations, n)
        return text, res

    def enforce(self, messages: list[dict], *, user_id: str | None = None) -> tuple[list[dict], AuditResult]:
        """Audit every message of a chat prompt.

        strict: raise :class:`LeakageError` on any violation. redact: return copies of the messages
        with offending spans replaced by :data:`REDACTED`. off: unchanged copies (violations still
        counted). ``user_id`` is the prompted user (exempt from the other-user check). The input list
        is never modified.
        """
        out: list[dict] = []
        violations: list[Violation] = []
        pending: list[tuple[int, int | None, str, list]] = []
        for mi, msg in enumerate(messages):
            content = msg.get("content")
            if isinstance(content, str):
                found = self._scan(content, user_id)
                violations += [v for _, _, v in found]
                pending.append((mi, None, content, found))
            elif isinstance(content, list):
                for pi, part in enumerate(content):
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        found = self._scan(part["text"], user_id)
                        violations += [v for _, _, v in found]
                        pending.append((mi, pi, part["text"], found))
            out.append(dict(msg))
        if violations and self.config.mode == "strict":
            res = AuditResult(ok=False, violations=violations)
            self._count(violations, raised=True)
            raise LeakageError(res)
        total = 0
        for mi, pi, text, found in pending:
            if not found or self.config.mode == "off":
                continue
            new, n = self._redact(text, user_id, found)
            total += n
            if pi is None:
                out[mi]["content"] = new
            else:
                parts = list(out[mi]["content"])
                parts[pi] = {**parts[pi], "text": new}
                out[mi]["content"] = parts
        res = AuditResult(ok=not violations, violations=violations, redactions=total)
        self._count(violations, total)
        return out, res


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _apply(text: str, spans: Sequence[tuple[int, int]], repl: str) -> str:
    if not spans:
        return text
    pieces, last = [], 0
    for a, b in _merge(list(spans)):
        pieces.append(text[last:a])
        pieces.append(repl)
        last = b
    pieces.append(text[last:])
    return "".join(pieces)
