"""The in-memory interaction log every loader returns, its item and user tables, and parsing helpers
that name the file, the line and the problem."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from simrec.errors import ConfigError

UNKNOWN_GENRE = "unknown"


class Vocabulary(BaseModel):
    """Words persona descriptions use for a log's users, items and interactions.

    ``counts`` says whether ``weight`` counts repeated interactions (plays, purchases): descriptions
    then say "listened to X 40 times". ``None`` decides from the data: weights that are whole numbers,
    not all 1, on a log without ratings.
    """

    model_config = ConfigDict(extra="forbid")

    user: str = Field("viewer", min_length=1, description="A user, e.g. 'listener', 'shopper'.")
    item: str = Field("item", min_length=1, description="An item, singular: 'film', 'track', 'product'.")
    did: str = Field("watched", min_length=1, description="The interaction, past tense: 'listened to', 'bought'.")
    does: str = Field("watches", min_length=1, description="Third person present: 'listens', 'shops'.")
    do: str = Field("watch", min_length=1, description="Infinitive, for LLM prompts: 'listen to', 'buy'.")
    title: str = Field("title", min_length=1, description="What LLM prompts call an item on a page: 'track'.")
    service: str = Field("a streaming service", min_length=1, description="Where prompts say the user is browsing.")
    counts: bool | None = None

    def plural(self, n: int) -> str:
        return self.item if n == 1 else self.item + "s"


class DataFormatError(ConfigError):
    """A data file is malformed. The message names the file, the line and the problem."""


def _fail(path: str | Path, line: int | None, problem: str, fix: str = "") -> DataFormatError:
    where = f"{path}:{line}" if line is not None else str(path)
    return DataFormatError(f"{where}: {problem}" + (f". Fix: {fix}" if fix else ""))


# -- containers ------------------------------------------------------------------------------------


@dataclass
class ItemTable:
    """Items of a log (the catalog universe), in index order.

    ``years`` is 0 where unknown; ``genres`` lists each item's genres (at least one: items without
    any get ``"unknown"``); ``genre_names`` is the genre vocabulary in a stable order.
    """

    ids: list[str]
    titles: list[str]
    texts: list[str]
    genres: list[list[str]]
    years: np.ndarray
    genre_names: list[str]
    attributes: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.attributes:
            self.attributes = [{} for _ in self.ids]
        self.years = np.asarray(self.years, dtype=np.int32)

    def __len__(self) -> int:
        return len(self.ids)

    def genre_matrix(self) -> np.ndarray:
        """``(n_items, n_genres)`` float32 with rows summing to 1 (multi-genre items split evenly)."""
        idx = {g: k for k, g in enumerate(self.genre_names)}
        m = np.zeros((len(self), len(self.genre_names)), dtype=np.float32)
        for i, gs in enumerate(self.genres):
            for g in gs:
                m[i, idx[g]] = 1.0 / len(gs)
        return m


@dataclass
class UserTable:
    """Users of a log in index order; ``ages`` is 0 where unknown, strings are "" where unknown."""

    ids: list[str]
    ages: np.ndarray
    genders: list[str]
    occupations: list[str]
    attributes: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.attributes:
            self.attributes = [{} for _ in self.ids]
        self.ages = np.asarray(self.ages, dtype=np.int32)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def anonymous(cls, ids: Sequence[str]) -> "UserTable":
        n = len(ids)
        return cls(list(ids), np.zeros(n, np.int32), [""] * n, [""] * n)


@dataclass
class InteractionLog:
    """Interactions as columns. ``user``/``item`` index ``users``/``items``.

    * ``rating``: float32 stars in [1, 5] (NaN for implicit feedback; other scales are mapped linearly).
    * ``weight``: float32 interaction strength (1 unless the file gives a weight).
    * ``timestamp``: int64 seconds (or row order when the file has no time column: ``timed`` is then
      False, and nothing treats the order as time but the temporal split).
    """

    name: str
    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    weight: np.ndarray
    timestamp: np.ndarray
    items: ItemTable
    users: UserTable
    source: str = ""
    timed: bool = True
    vocabulary: Vocabulary = field(default_factory=Vocabulary)

    def __post_init__(self) -> None:
        self.user = np.asarray(self.user, dtype=np.int32)
        self.item = np.asarray(self.item, dtype=np.int32)
        self.rating = np.asarray(self.rating, dtype=np.float32)
        self.weight = np.asarray(self.weight, dtype=np.float32)
        self.timestamp = np.asarray(self.timestamp, dtype=np.int64)
        n = self.user.shape[0]
        for name in ("item", "rating", "weight", "timestamp"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"InteractionLog.{name} must have shape ({n},)")

    def __len__(self) -> int:
        return int(self.user.shape[0])

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def has_ratings(self) -> bool:
        return bool(len(self)) and bool(np.isfinite(self.rating).any())

    @property
    def weights_are_counts(self) -> bool:
        """Whether ``weight`` counts repeated interactions (see :class:`Vocabulary`)."""
        if self.vocabulary.counts is not None:
            return self.vocabulary.counts
        w = self.weight
        return (not self.has_ratings and bool(len(self)) and bool(np.all(w == np.round(w)))
                and bool((w > 1).any()))

    def select(self, mask: np.ndarray, name: str | None = None) -> "InteractionLog":
        """The rows where ``mask`` holds (same user and item tables)."""
        return replace(self, name=name or self.name, user=self.user[mask], item=self.item[mask],
                       rating=self.rating[mask], weight=self.weight[mask], timestamp=self.timestamp[mask])

    def chronological_order(self) -> np.ndarray:
        """Row order sorted by user, then timestamp, then file order (stable)."""
        return np.lexsort((np.arange(len(self)), self.timestamp, self.user))

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Interactions per user ``(n_users,)`` and per item ``(n_items,)``."""
        return (np.bincount(self.user, minlength=self.n_users), np.bincount(self.item, minlength=self.n_items))

    def summary(self) -> str:
        cu, ci = self.counts()
        kind = "ratings" if self.has_ratings else "implicit interactions"
        return (f"{self.name}: {len(self):,} {kind} by {int((cu > 0).sum()):,} users on {int((ci > 0).sum()):,} "
                f"of {self.n_items:,} items")



def _read_table(path: Path, sep: str, n_fields: int, names: str, encoding: str = "latin-1") -> pd.DataFrame:
    """Read a headerless delimited text file as strings, checking every line has ``n_fields`` fields.

    ``df.attrs["lines"]`` maps rows to 1-based file lines (blank lines are skipped) for error messages.
    """
    if not path.is_file():
        raise _fail(path, None, "file not found", f"put the {path.name} file of the dataset there")
    text = path.read_text(encoding=encoding)
    shown = sep
    if len(sep) > 1:  # '::' -> a single char the files never contain, so pandas' C parser can be used
        text = text.replace(sep, "\x1f")
        sep = "\x1f"
    lines = pd.Series(text.splitlines(), dtype=object)
    nonblank = (lines.str.strip() != "").to_numpy()
    line_no = (np.flatnonzero(nonblank) + 1).tolist()
    fields = lines[nonblank].str.count(re.escape(sep)).to_numpy() + 1
    wrong = np.flatnonzero(fields != n_fields)
    if wrong.size:
        k = int(wrong[0])
        raise _fail(path, line_no[k], f"expected {n_fields} fields ({names}) separated by {shown!r}, got {fields[k]}",
                    "check the file is the unmodified dataset file")
    if not line_no:
        raise _fail(path, 1, "the file is empty")
    df = pd.read_csv(io.StringIO(text), sep=sep, header=None, dtype=str, keep_default_na=False,
                     quoting=csv.QUOTE_NONE, skip_blank_lines=True, names=list(range(n_fields)))
    df.attrs["lines"] = line_no
    return df


def _ints(df: pd.DataFrame, col: int, path: Path, what: str) -> np.ndarray:
    v = pd.to_numeric(df[col].str.strip(), errors="coerce")
    bad = np.flatnonzero(v.isna().to_numpy() | (v.to_numpy() != np.round(v.to_numpy())))
    if bad.size:
        k = int(bad[0])
        raise _fail(path, df.attrs["lines"][k], f"{what} must be an integer, got {df[col].iloc[k]!r}")
    return v.to_numpy().astype(np.int64)


def _check_range(values: np.ndarray, lo: float, hi: float, df: pd.DataFrame, path: Path, what: str) -> None:
    bad = np.flatnonzero((values < lo) | (values > hi) | ~np.isfinite(values))
    if bad.size:
        k = int(bad[0])
        raise _fail(path, df.attrs["lines"][k], f"{what} must be in [{lo:g}, {hi:g}], got {float(values[k]):g}")


def _index_ids(raw: np.ndarray, known: dict[str, int], df: pd.DataFrame, path: Path, what: str,
               other: str) -> np.ndarray:
    keys = pd.Series([str(x) for x in raw], dtype=object)
    idx = keys.map(known)
    missing = np.flatnonzero(idx.isna().to_numpy())
    if missing.size:
        k = int(missing[0])
        raise _fail(path, df.attrs["lines"][k], f"{what} {keys.iloc[k]!r} is not listed in {other}",
                    f"add it to {other} or remove the line")
    return idx.to_numpy().astype(np.int32)


def _year_from_title(title: str) -> int:
    m = re.search(r"\((\d{4})\)\s*$", title)
    return int(m.group(1)) if m else 0


def _unique_ids(ids: list[str], df: pd.DataFrame, path: Path, what: str) -> dict[str, int]:
    index: dict[str, int] = {}
    for k, key in enumerate(ids):
        if key in index:
            raise _fail(path, df.attrs["lines"][k], f"duplicate {what} id {key!r}", "ids must be unique")
        index[key] = k
    return index
