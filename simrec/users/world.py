"""The embedded default world: a catalog and persona pack generated deterministically from a seed.

Nothing here touches the network or a dataset. ``personas/synthetic-v0.json`` is
``synthetic_personas(seed=0)`` written out (``simrec world --export``); a test keeps them equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simrec.catalog import Catalog
from simrec.users.persona import Persona, PersonaPack, Traits
from simrec.users.transitions import Transitions

TOPICS: list[str] = [
    "science fiction", "thriller", "comedy", "romance", "documentary", "animation", "horror", "drama",
    "action", "fantasy", "mystery", "history", "music", "sports", "cooking", "travel", "true crime",
    "western", "family", "war",
]

_TITLE_WORDS: dict[str, tuple[list[str], list[str]]] = {
    "science fiction": (["Distant", "Quantum", "Silent", "Last", "Neon", "Hollow"], ["Orbit", "Colony", "Signal", "Horizon", "Machine", "Nebula"]),
    "thriller": (["Dead", "Silent", "Broken", "Final", "Hidden", "Cold"], ["Witness", "Protocol", "Alibi", "Trigger", "Hour", "Pursuit"]),
    "comedy": (["Crazy", "Accidental", "Awkward", "Lucky", "Grand", "Tiny"], ["Wedding", "Weekend", "Neighbours", "Roommates", "Holiday", "Boss"]),
    "romance": (["Summer", "Paper", "Second", "Endless", "Autumn", "Secret"], ["Letters", "Kiss", "Promise", "Heart", "Rendezvous", "Vows"]),
    "documentary": (["Inside", "Beyond", "Untold", "Wild", "Hidden", "Real"], ["Oceans", "Planet", "Economy", "Frontier", "Cities", "Genome"]),
    "animation": (["Little", "Brave", "Magic", "Flying", "Clever", "Sleepy"], ["Fox", "Robot", "Dragon", "Kingdom", "Balloon", "Penguin"]),
    "horror": (["Dark", "Cursed", "Hollow", "Bleeding", "Whispering", "Pale"], ["House", "Woods", "Ritual", "Doll", "Asylum", "Night"]),
    "drama": (["Quiet", "Broken", "Golden", "Lost", "Bitter", "Gentle"], ["Years", "Harvest", "Family", "River", "Promise", "Shore"]),
    "action": (["Maximum", "Rogue", "Iron", "Rapid", "Lethal", "Steel"], ["Strike", "Force", "Fury", "Convoy", "Extraction", "Velocity"]),
    "fantasy": (["Crimson", "Elder", "Shadow", "Crystal", "Ancient", "Sunken"], ["Crown", "Sword", "Realm", "Prophecy", "Throne", "Grimoire"]),
    "mystery": (["Missing", "Curious", "Locked", "Twelfth", "Vanishing", "Velvet"], ["Room", "Clue", "Inheritance", "Manor", "Detective", "Key"]),
    "history": (["Imperial", "Forgotten", "First", "Great", "Medieval", "Iron"], ["Empire", "Dynasty", "Revolution", "Crossing", "Treaty", "Age"]),
    "music": (["Electric", "Blue", "Midnight", "Velvet", "Loud", "Backstage"], ["Groove", "Symphony", "Tour", "Anthem", "Session", "Chorus"]),
    "sports": (["Final", "Golden", "Underdog", "Perfect", "Home", "Winning"], ["Season", "Match", "Goal", "Marathon", "Comeback", "Round"]),
    "cooking": (["Rustic", "Spicy", "Sweet", "Street", "Slow", "Fresh"], ["Kitchen", "Feast", "Bakery", "Flavours", "Table", "Market"]),
    "travel": (["Northern", "Hidden", "Coastal", "Slow", "Wild", "Endless"], ["Roads", "Islands", "Journey", "Trails", "Passage", "Voyage"]),
    "true crime": (["Cold", "Unsolved", "Deadly", "Perfect", "Stolen", "Secret"], ["Case", "Heist", "Confession", "Trial", "Files", "Verdict"]),
    "western": (["Lone", "Dusty", "Outlaw", "High", "Red", "Last"], ["Rider", "Canyon", "Frontier", "Gunslinger", "Mesa", "Trail"]),
    "family": (["Happy", "Big", "Magic", "Lost", "Little", "Best"], ["Puppy", "Summer", "Treehouse", "Adventure", "Christmas", "Friends"]),
    "war": (["Bloody", "Silent", "Final", "Burning", "Distant", "Brave"], ["Front", "Trenches", "Beachhead", "Battalion", "Siege", "Armistice"]),
}
_FORMS = ["film", "series", "feature", "miniseries", "special"]
_SUBJECTS = [
    "an unlikely friendship", "a family secret", "a race against time", "a small town", "a lost letter",
    "an ambitious plan", "a stubborn rival", "a hidden talent", "a long journey home", "a second chance",
    "a dangerous bet", "a mysterious stranger", "an old promise", "a forbidden place", "a new beginning",
]
_MOODS = ["warm", "tense", "playful", "dark", "uplifting", "bittersweet", "fast-paced", "thoughtful"]

_FIRST = [
    "Ava", "Liam", "Maya", "Noah", "Zoe", "Ethan", "Leila", "Omar", "Ines", "Kenji", "Priya", "Lucas",
    "Sofia", "Mateo", "Hana", "Tariq", "Elena", "Jonas", "Amara", "Diego", "Yuki", "Felix", "Nadia", "Arjun",
    "Clara", "Samuel", "Aisha", "Viktor", "Lena", "Kwame", "Mei", "Pablo", "Freya", "Ravi", "Chloe", "Idris",
]
_LAST = [
    "Garcia", "Okafor", "Nguyen", "Schmidt", "Rossi", "Kowalski", "Haddad", "Tanaka", "Silva", "Brown",
    "Larsen", "Mensah", "Ivanova", "Dubois", "Patel", "Moreau", "Kim", "Novak", "Reyes", "Fischer",
]
_OCCUPATIONS = [
    "student", "engineer", "teacher", "nurse", "artist", "programmer", "retired", "salesperson", "lawyer",
    "writer", "doctor", "technician", "librarian", "homemaker", "scientist", "administrator", "marketing",
    "executive", "entertainment", "tradesperson",
]


@dataclass(frozen=True)
class World:
    """A catalog and the persona pack that lives in it; ``transitions``, where the world was calibrated
    from a timed log, is its order-aware short-term interest (:mod:`simrec.users.transitions`), and
    ``choice`` holds choice settings calibrated with it (``temperature``), used where a spec leaves them
    to the world (:meth:`simrec.envs.spec.EnvSpec.for_world`)."""

    catalog: Catalog
    personas: PersonaPack
    transitions: Transitions | None = None
    choice: dict[str, float] = field(default_factory=dict)  # calibrated choice settings (e.g. temperature)


def topic_centroids(seed: int, n_topics: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 17])
    c = rng.normal(size=(n_topics, dim))
    return (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)


def synthetic_catalog(seed: int = 0, n_items: int = 1200, n_topics: int = 20, dim: int = 16) -> Catalog:
    """Generate a catalog of ``n_items`` over ``n_topics`` topics with titles and descriptions."""
    if not 1 <= n_topics <= len(TOPICS):
        raise ValueError(f"n_topics must be in [1, {len(TOPICS)}], got {n_topics}")
    rng = np.random.default_rng([seed, 1])
    topics = TOPICS[:n_topics]
    cent = topic_centroids(seed, n_topics, dim)
    # Zipf-like topic sizes so some topics are niche.
    sizes = 1.0 / np.arange(1, n_topics + 1) ** 0.6
    primary = rng.choice(n_topics, size=n_items, p=sizes / sizes.sum())
    has_second = rng.random(n_items) < 0.3
    second = (primary + rng.integers(1, max(n_topics, 2), size=n_items)) % n_topics
    feats = cent[primary] + 0.35 * has_second[:, None] * cent[second] + 0.45 * rng.normal(size=(n_items, dim)) / np.sqrt(dim) * 2
    quality = rng.beta(2.5, 2.5, size=n_items)
    buzz = rng.normal(size=n_items)
    pop_raw = 1.2 * quality + buzz
    popularity = (np.argsort(np.argsort(pop_raw)) / max(n_items - 1, 1)) ** 2  # skewed: few hits
    years = rng.integers(1960, 2026, size=n_items)
    ids, titles, descs, item_topics = [], [], [], []
    used: set[str] = set()
    for i in range(n_items):
        t = topics[primary[i]]
        adjs, nouns = _TITLE_WORDS[t]
        base = f"The {adjs[rng.integers(len(adjs))]} {nouns[rng.integers(len(nouns))]}"
        title, k = base, 2
        while title in used:
            title = f"{base} {_roman(k)}"
            k += 1
        used.add(title)
        ts = [t] + ([topics[second[i]]] if has_second[i] and second[i] != primary[i] else [])
        form = _FORMS[rng.integers(len(_FORMS))]
        mood = _MOODS[rng.integers(len(_MOODS))]
        subj = _SUBJECTS[rng.integers(len(_SUBJECTS))]
        extra = f" with a touch of {ts[1]}" if len(ts) > 1 else ""
        descs.append(f"A {mood} {t} {form} about {subj}{extra}, released in {years[i]}.")
        ids.append(f"syn{i:05d}")
        titles.append(title)
        item_topics.append(ts)
    return Catalog(
        ids=ids, titles=titles, descriptions=descs, topic_names=topics, item_topics=item_topics,
        features=feats.astype(np.float32), quality=quality.astype(np.float32), year=years,
        popularity=popularity.astype(np.float32),
        attributes=[{"form": d.split()[3]} for d in descs], name=f"synthetic-{seed}",
    )


def synthetic_personas(seed: int = 0, n: int = 256, n_topics: int = 20) -> PersonaPack:
    """Generate ``n`` personas with varied traits and 1-3 interest topics each."""
    rng = np.random.default_rng([seed, 2])
    topics = TOPICS[:n_topics]
    personas = []
    for i in range(n):
        name = f"{_FIRST[rng.integers(len(_FIRST))]} {_LAST[rng.integers(len(_LAST))]}"
        age = int(np.clip(rng.normal(36, 13), 16, 80))
        occ = _OCCUPATIONS[rng.integers(len(_OCCUPATIONS))]
        tr = rng.beta(2.0, 2.0, size=5).round(3)
        traits = Traits(activity=tr[0], conformity=tr[1], diversity=tr[2], patience=tr[3], pickiness=tr[4])
        k = int(rng.integers(1, 4))
        fav = rng.choice(n_topics, size=k, replace=False)
        w = rng.dirichlet(np.ones(k) * 2.0).round(3)
        interests = {topics[j]: float(x) for j, x in zip(fav, w)}
        personas.append(Persona(
            id=f"u{i:04d}", name=name, age=age, occupation=occ, traits=traits, interests=interests,
            description=_describe(name, age, occ, traits, interests),
        ))
    return PersonaPack(
        name="synthetic-v0",
        description=f"{n} generated personas for the embedded synthetic world (seed {seed}).",
        topics=topics, personas=personas,
    )


def build_world(seed: int = 0, n_items: int = 1200, n_topics: int = 20, dim: int = 16, n_personas: int = 256) -> World:
    return World(synthetic_catalog(seed, n_items, n_topics, dim), synthetic_personas(seed, n_personas, n_topics))


def _level(x: float, words: tuple[str, str, str]) -> str:
    return words[0] if x < 0.33 else words[1] if x < 0.67 else words[2]


def _describe(name: str, age: int, occ: str, t: Traits, interests: dict[str, float]) -> str:
    favs = sorted(interests, key=interests.get, reverse=True)  # type: ignore[arg-type]
    likes = favs[0] if len(favs) == 1 else ", ".join(favs[:-1]) + f" and {favs[-1]}"
    return (
        f"{name.split()[0]} is a {age}-year-old {occ} who mostly enjoys {likes}. "
        f"They watch {_level(t.activity, ('occasionally', 'regularly', 'a lot'))}, "
        f"{_level(t.conformity, ('ignore what is trending', 'sometimes follow trends', 'like what everyone is watching'))}, "
        f"{_level(t.diversity, ('stick to what they know', 'try something new now and then', 'love discovering new genres'))}, "
        f"{_level(t.patience, ('give up quickly on bad suggestions', 'are reasonably patient', 'are very patient'))} "
        f"and are {_level(t.pickiness, ('generous with ratings', 'fair raters', 'hard to please'))}."
    )


def _roman(k: int) -> str:
    return ["", "I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X"][k] if k <= 10 else str(k)


def world_from_config(cfg) -> World:  # cfg: simrec.envs.spec.WorldConfig
    """World builder for ``kind: synthetic`` specs."""
    catalog = synthetic_catalog(cfg.seed, cfg.n_items, cfg.n_topics, cfg.dim)
    if cfg.personas:
        pack = PersonaPack.load(cfg.personas)
    else:
        pack = synthetic_personas(cfg.seed, cfg.n_personas, cfg.n_topics)
    return World(catalog, pack)
