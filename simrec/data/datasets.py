"""Interaction logs: MovieLens-100K, MovieLens-1M and a generic CSV format, and per-user splits.

Every loader returns an :class:`InteractionLog`: column-wise interactions (user, item, rating or
weight, timestamp) plus the item and user tables. Malformed files raise :class:`DataFormatError`
naming the file, the line and the problem. Nothing here touches the network except
:func:`fetch_movielens` with ``download=True``.

Generic format (any user can produce it)::

    interactions.csv  user,item,rating,timestamp        (rating or weight; timestamp optional)
    items.csv         id,title,text,genres,year,...     (optional; other columns become attributes)
    users.csv         id,age,gender,occupation,...      (optional)

Column names are configurable with :class:`GenericFormat` (or a ``format.json`` next to the files).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simrec.errors import ConfigError, format_validation_error

VARIANTS = ("ml-100k", "ml-1m", "generic")

#: Official archives and their published MD5s.
ARCHIVES: dict[str, tuple[str, str]] = {
    "ml-100k": ("https://files.grouplens.org/datasets/movielens/ml-100k.zip", "0e33842e24a9c977be4e0107933c0723"),
    "ml-1m": ("https://files.grouplens.org/datasets/movielens/ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906"),
}
#: Per-file MD5s of the files simrec reads (from the ML-100K archive's files).
FILE_MD5: dict[str, dict[str, str]] = {
    "ml-100k": {
        "u.data": "6e47046882bad158b0efbb84cd5cb987",
        "u.item": "c9e7f390115d79079537301d5204f3f7",
        "u.user": "1b53539edc13caad0282c8500608a319",
        "u.genre": "a7578bdb37758741ae9429d2c736af18",
    },
}
#: Published record counts (users, items, ratings), checked when no checksum is available.
COUNTS: dict[str, tuple[int, int, int]] = {"ml-100k": (943, 1682, 100_000), "ml-1m": (6040, 3883, 1_000_209)}
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "ml-100k": ("u.data", "u.item", "u.user", "u.genre"),
    "ml-1m": ("ratings.dat", "movies.dat", "users.dat"),
}

ML1M_AGES = {1: ("under 18", 16), 18: ("18-24", 21), 25: ("25-34", 30), 35: ("35-44", 40), 45: ("45-49", 47),
             50: ("50-55", 52), 56: ("56+", 60)}
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
]
ML1M_GENRES = [
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]
UNKNOWN_GENRE = "unknown"


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
    * ``timestamp``: int64 seconds (or row order when the file has no time column).
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


# -- MovieLens -------------------------------------------------------------------------------------


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


def load_movielens_100k(path: str | Path) -> InteractionLog:
    """Load MovieLens-100K from a directory holding ``u.data``, ``u.item``, ``u.user``, ``u.genre``."""
    root = Path(path)
    gdf = _read_table(root / "u.genre", "|", 2, "name|index")
    genre_names = [g for g in gdf[0].tolist()]
    gidx = _ints(gdf, 1, root / "u.genre", "genre index")
    if sorted(gidx.tolist()) != list(range(len(genre_names))):
        raise _fail(root / "u.genre", None, f"genre indices must be 0..{len(genre_names) - 1}, got {gidx.tolist()}")
    genre_names = [genre_names[int(np.flatnonzero(gidx == k)[0])] for k in range(len(genre_names))]
    G = len(genre_names)
    idf = _read_table(root / "u.item", "|", 5 + G, f"id|title|release date|video date|url|{G} genre flags")
    item_path = root / "u.item"
    ids = [str(x) for x in _ints(idf, 0, item_path, "movie id")]
    _unique_ids(ids, idf, item_path, "movie")
    flags = np.stack([_ints(idf, 5 + g, item_path, f"genre flag '{genre_names[g]}'") for g in range(G)], axis=1)
    _check_range(flags.max(axis=1).astype(float), 0, 1, idf, item_path, "genre flags")
    titles = [t.strip() or f"movie {i}" for t, i in zip(idf[1].tolist(), ids)]
    dates = pd.to_datetime(idf[2].str.strip(), format="%d-%b-%Y", errors="coerce")
    years = np.where(dates.isna(), 0, dates.dt.year.fillna(0)).astype(np.int32)
    years = np.array([y or _year_from_title(t) for y, t in zip(years, titles)], dtype=np.int32)
    genres = [[genre_names[g] for g in np.flatnonzero(row)] or [UNKNOWN_GENRE] for row in flags]
    if UNKNOWN_GENRE not in genre_names and any(gs == [UNKNOWN_GENRE] for gs in genres):
        genre_names = genre_names + [UNKNOWN_GENRE]
    items = ItemTable(
        ids=ids, titles=titles, texts=["" for _ in ids], genres=genres, years=years, genre_names=genre_names,
        attributes=[{"release_date": d.strip()} if d.strip() else {} for d in idf[2].tolist()],
    )
    udf = _read_table(root / "u.user", "|", 5, "id|age|gender|occupation|zip")
    user_path = root / "u.user"
    uids = [str(x) for x in _ints(udf, 0, user_path, "user id")]
    _unique_ids(uids, udf, user_path, "user")
    ages = _ints(udf, 1, user_path, "age")
    genders = udf[2].str.strip().map({"M": "male", "F": "female"}).fillna("").tolist()
    users = UserTable(uids, ages, genders, udf[3].str.strip().tolist(),
                      [{"zip": z.strip()} for z in udf[4].tolist()])
    ddf = _read_table(root / "u.data", "\t", 4, "user, item, rating, timestamp")
    data_path = root / "u.data"
    u = _index_ids(_ints(ddf, 0, data_path, "user id"), {k: i for i, k in enumerate(uids)}, ddf, data_path,
                   "user id", "u.user")
    it = _index_ids(_ints(ddf, 1, data_path, "item id"), {k: i for i, k in enumerate(ids)}, ddf, data_path,
                    "item id", "u.item")
    r = _ints(ddf, 2, data_path, "rating").astype(np.float32)
    _check_range(r, 1, 5, ddf, data_path, "rating")
    ts = _ints(ddf, 3, data_path, "timestamp")
    return InteractionLog("ml-100k", u, it, r, np.ones(len(r), np.float32), ts, items, users, source=str(root))


def load_movielens_1m(path: str | Path) -> InteractionLog:
    """Load MovieLens-1M from a directory holding ``ratings.dat``, ``movies.dat``, ``users.dat`` (``::``-separated)."""
    root = Path(path)
    mdf = _read_table(root / "movies.dat", "::", 3, "MovieID::Title::Genres")
    mpath = root / "movies.dat"
    ids = [str(x) for x in _ints(mdf, 0, mpath, "movie id")]
    _unique_ids(ids, mdf, mpath, "movie")
    titles = [t.strip() for t in mdf[1].tolist()]
    genres: list[list[str]] = []
    known = set(ML1M_GENRES)
    for k, g in enumerate(mdf[2].tolist()):
        gs = [x.strip() for x in g.split("|") if x.strip()]
        bad = [x for x in gs if x not in known]
        if bad:
            raise _fail(mpath, mdf.attrs["lines"][k], f"unknown genre {bad[0]!r}", f"use genres from {ML1M_GENRES}")
        genres.append(gs or [UNKNOWN_GENRE])
    genre_names = list(ML1M_GENRES) + ([UNKNOWN_GENRE] if any(gs == [UNKNOWN_GENRE] for gs in genres) else [])
    items = ItemTable(ids, titles, ["" for _ in ids], genres, [_year_from_title(t) for t in titles], genre_names)
    udf = _read_table(root / "users.dat", "::", 5, "UserID::Gender::Age::Occupation::Zip-code")
    upath = root / "users.dat"
    uids = [str(x) for x in _ints(udf, 0, upath, "user id")]
    _unique_ids(uids, udf, upath, "user")
    age_codes = _ints(udf, 2, upath, "age code")
    for k, a in enumerate(age_codes):
        if int(a) not in ML1M_AGES:
            raise _fail(upath, udf.attrs["lines"][k], f"age code {a} is not one of {sorted(ML1M_AGES)}")
    occ = _ints(udf, 3, upath, "occupation code")
    _check_range(occ.astype(float), 0, len(ML1M_OCCUPATIONS) - 1, udf, upath, "occupation code")
    users = UserTable(
        uids, [ML1M_AGES[int(a)][1] for a in age_codes],
        udf[1].str.strip().map({"M": "male", "F": "female"}).fillna("").tolist(),
        [ML1M_OCCUPATIONS[int(o)] for o in occ],
        [{"age_group": ML1M_AGES[int(a)][0], "zip": z.strip()} for a, z in zip(age_codes, udf[4].tolist())],
    )
    rdf = _read_table(root / "ratings.dat", "::", 4, "UserID::MovieID::Rating::Timestamp")
    rpath = root / "ratings.dat"
    u = _index_ids(_ints(rdf, 0, rpath, "user id"), {k: i for i, k in enumerate(uids)}, rdf, rpath, "user id",
                   "users.dat")
    it = _index_ids(_ints(rdf, 1, rpath, "movie id"), {k: i for i, k in enumerate(ids)}, rdf, rpath, "movie id",
                    "movies.dat")
    r = _ints(rdf, 2, rpath, "rating").astype(np.float32)
    _check_range(r, 1, 5, rdf, rpath, "rating")
    ts = _ints(rdf, 3, rpath, "timestamp")
    return InteractionLog("ml-1m", u, it, r, np.ones(len(r), np.float32), ts, items, users, source=str(root))


# -- generic CSV -----------------------------------------------------------------------------------


class InteractionColumns(BaseModel):
    """Column names of the interactions file. ``rating``/``weight``/``timestamp`` may be absent
    from the file unless set explicitly; without a timestamp, file order is time order."""

    model_config = ConfigDict(extra="forbid")

    user: str = "user"
    item: str = "item"
    rating: str | None = "rating"
    weight: str | None = "weight"
    timestamp: str | None = "timestamp"


class ItemColumns(BaseModel):
    """Column names of the items file; columns not named here become item attributes."""

    model_config = ConfigDict(extra="forbid")

    id: str = "id"
    title: str | None = "title"
    text: str | None = "text"
    genres: str | None = "genres"
    year: str | None = "year"
    genre_separator: str = Field("|", min_length=1)


class UserColumns(BaseModel):
    """Column names of the users file; columns not named here become user attributes."""

    model_config = ConfigDict(extra="forbid")

    id: str = "id"
    age: str | None = "age"
    gender: str | None = "gender"
    occupation: str | None = "occupation"


class GenericFormat(BaseModel):
    """How to read a generic log: file names (relative to the data directory), columns, delimiter.

    Ratings on another scale (``rating_scale``, inferred from the data when omitted) are mapped
    linearly onto 1..5 stars.
    """

    model_config = ConfigDict(extra="forbid")

    interactions: str = "interactions.csv"
    items: str | None = "items.csv"
    users: str | None = "users.csv"
    delimiter: str | None = Field(None, description="Field delimiter; default: tab for .tsv files, else ','.")
    interaction_columns: InteractionColumns = Field(default_factory=InteractionColumns)
    item_columns: ItemColumns = Field(default_factory=ItemColumns)
    user_columns: UserColumns = Field(default_factory=UserColumns)
    rating_scale: tuple[float, float] | None = None
    name: str = "generic"

    @model_validator(mode="after")
    def _check(self) -> "GenericFormat":
        if self.rating_scale is not None and not self.rating_scale[0] < self.rating_scale[1]:
            raise ValueError(f"rating_scale must be (low, high) with low < high, got {self.rating_scale}")
        return self


def _read_csv(path: Path, delimiter: str | None) -> pd.DataFrame:
    if not path.is_file():
        raise _fail(path, None, "file not found", "check the path (or the file names in format.json)")
    sep = delimiter or ("\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skipinitialspace=True,
                         encoding="utf-8", quoting=csv.QUOTE_MINIMAL)
    except UnicodeDecodeError as e:
        raise _fail(path, None, f"not UTF-8 text ({e.reason} at byte {e.start})", "save the file as UTF-8") from None
    except pd.errors.ParserError as e:
        m = re.search(r"line (\d+)", str(e))
        raise _fail(path, int(m.group(1)) if m else None, f"cannot parse CSV: {e}",
                    "every line needs the same number of fields as the header") from None
    except pd.errors.EmptyDataError:
        raise _fail(path, 1, "the file is empty", "add a header line and at least one row") from None
    df.columns = [str(c).strip() for c in df.columns]
    df.attrs["lines"] = list(range(2, len(df) + 2))  # header is line 1
    return df


def _column(df: pd.DataFrame, path: Path, name: str | None, explicit: bool, what: str) -> str | None:
    if name is None:
        return None
    if name in df.columns:
        return name
    if explicit:
        raise _fail(path, 1, f"column {name!r} ({what}) not found; the header has {list(df.columns)}",
                    "fix the column name in the format (GenericFormat / format.json)")
    return None


def _floats(df: pd.DataFrame, col: str, path: Path, what: str) -> np.ndarray:
    s = df[col].str.strip()
    v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(v) & (s != "").to_numpy())
    if bad.size:
        k = int(bad[0])
        raise _fail(path, df.attrs["lines"][k], f"{what} must be a number, got {df[col].iloc[k]!r}")
    return v


def _timestamps(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    s = df[col].str.strip()
    num = pd.to_numeric(s, errors="coerce")
    if not num.isna().any():
        return num.to_numpy().astype(np.int64)
    dt = pd.to_datetime(s, errors="coerce", utc=True, format="mixed")
    bad = np.flatnonzero(dt.isna().to_numpy())
    if bad.size:
        k = int(bad[0])
        raise _fail(path, df.attrs["lines"][k], f"timestamp {df[col].iloc[k]!r} is neither a number nor a date",
                    "use Unix seconds or ISO 8601 dates")
    return (dt.astype("int64") // 10**9).to_numpy()


def load_generic(path: str | Path, fmt: GenericFormat | dict | None = None) -> InteractionLog:
    """Load a generic log from a directory (or an interactions file) in :class:`GenericFormat`.

    If ``fmt`` is None and the directory has a ``format.json``, that file configures the columns.
    Without an items file, the catalog is every item id in the interactions (ids only).
    """
    p = Path(path)
    root = p if p.is_dir() else p.parent
    if fmt is None and (root / "format.json").is_file():
        fpath = root / "format.json"
        try:
            fmt = GenericFormat.model_validate(json.loads(fpath.read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise _fail(fpath, e.lineno, f"not valid JSON: {e.msg}") from None
        except ValidationError as e:
            raise format_validation_error(fpath, e, hint="Fix: see simrec.data.datasets.GenericFormat.") from None
    if not isinstance(fmt, GenericFormat):
        try:
            fmt = GenericFormat.model_validate(fmt or {})
        except ValidationError as e:
            raise format_validation_error("generic format", e, hint="Fix: see simrec.data.datasets.GenericFormat.") from None
    ipath = p if p.is_file() else root / fmt.interactions
    df = _read_csv(ipath, fmt.delimiter)
    ic = fmt.interaction_columns
    explicit = ic.model_fields_set
    ucol = _column(df, ipath, ic.user, True, "user id")
    icol = _column(df, ipath, ic.item, True, "item id")
    rcol = _column(df, ipath, ic.rating, "rating" in explicit, "rating")
    wcol = _column(df, ipath, ic.weight, "weight" in explicit, "weight")
    tcol = _column(df, ipath, ic.timestamp, "timestamp" in explicit, "timestamp")
    if len(df) == 0:
        raise _fail(ipath, 2, "no interactions", "add at least one row")
    for col, what in ((ucol, "user id"), (icol, "item id")):
        empty = np.flatnonzero((df[col].str.strip() == "").to_numpy())
        if empty.size:
            raise _fail(ipath, df.attrs["lines"][int(empty[0])], f"empty {what}")
    raw_users = df[ucol].str.strip().tolist()
    raw_items = df[icol].str.strip().tolist()

    items = _load_generic_items(root, fmt, raw_items)
    users = _load_generic_users(root, fmt, raw_users)
    iindex = {k: i for i, k in enumerate(items.ids)}
    uindex = {k: i for i, k in enumerate(users.ids)}
    it = _index_ids(np.array(raw_items, dtype=object), iindex, df, ipath, "item id", fmt.items or "the items")
    u = _index_ids(np.array(raw_users, dtype=object), uindex, df, ipath, "user id", fmt.users or "the users")

    rating = np.full(len(df), np.nan, dtype=np.float64)
    if rcol is not None:
        raw = _floats(df, rcol, ipath, "rating")
        finite = np.isfinite(raw)
        if finite.any():
            lo, hi = fmt.rating_scale or (float(raw[finite].min()), float(raw[finite].max()))
            if fmt.rating_scale is not None:
                _check_range(np.where(finite, raw, lo), lo, hi, df, ipath, "rating")
            stars = np.full_like(raw, 3.0) if hi == lo else 1.0 + 4.0 * (raw - lo) / (hi - lo)
            rating = np.where(finite, stars, np.nan)
    weight = np.ones(len(df))
    if wcol is not None:
        weight = _floats(df, wcol, ipath, "weight")
        bad = np.flatnonzero(~(weight > 0))
        if bad.size:
            k = int(bad[0])
            raise _fail(ipath, df.attrs["lines"][k], f"weight must be a number > 0, got {df[wcol].iloc[k]!r}")
    ts = _timestamps(df, tcol, ipath) if tcol is not None else np.arange(len(df), dtype=np.int64)
    name = fmt.name if fmt.name != "generic" else f"generic:{root.name}"
    return InteractionLog(name, u, it, rating, weight, ts, items, users, source=str(ipath))


def _load_generic_items(root: Path, fmt: GenericFormat, raw_items: list[str]) -> ItemTable:
    path = root / fmt.items if fmt.items else None
    if path is None or not path.is_file():
        if path is not None and "items" in fmt.model_fields_set:
            raise _fail(path, None, "items file not found", "fix 'items' in the format or remove it")
        ids = list(dict.fromkeys(raw_items))
        return ItemTable(ids, [f"item {i}" for i in ids], ["" for _ in ids], [[UNKNOWN_GENRE] for _ in ids],
                         np.zeros(len(ids), np.int32), [UNKNOWN_GENRE])
    df = _read_csv(path, fmt.delimiter)
    c = fmt.item_columns
    explicit = c.model_fields_set
    idc = _column(df, path, c.id, True, "item id")
    titlec = _column(df, path, c.title, "title" in explicit, "title")
    textc = _column(df, path, c.text, "text" in explicit, "text")
    genc = _column(df, path, c.genres, "genres" in explicit, "genres")
    yearc = _column(df, path, c.year, "year" in explicit, "year")
    ids = df[idc].str.strip().tolist()
    empty = [k for k, x in enumerate(ids) if not x]
    if empty:
        raise _fail(path, df.attrs["lines"][empty[0]], "empty item id")
    _unique_ids(ids, df, path, "item")
    raw_titles = df[titlec].tolist() if titlec else [""] * len(ids)
    titles = [t.strip() or f"item {i}" for t, i in zip(raw_titles, ids)]
    texts = [t.strip() for t in df[textc].tolist()] if textc else ["" for _ in ids]
    genres: list[list[str]] = []
    if genc:
        for g in df[genc].tolist():
            gs = list(dict.fromkeys(x.strip() for x in g.split(c.genre_separator) if x.strip()))
            genres.append(gs or [UNKNOWN_GENRE])
    else:
        genres = [[UNKNOWN_GENRE] for _ in ids]
    names = sorted({g for gs in genres for g in gs if g != UNKNOWN_GENRE})
    if any(UNKNOWN_GENRE in gs for gs in genres):
        names.append(UNKNOWN_GENRE)
    years = np.zeros(len(ids), np.int32)
    if yearc:
        y = _floats(df, yearc, path, "year")
        years = np.where(np.isfinite(y), y, 0).astype(np.int32)
    years = np.array([y or _year_from_title(t) for y, t in zip(years, titles)], dtype=np.int32)
    used = {x for x in (idc, titlec, textc, genc, yearc) if x}
    attrs = [{k: v for k, v in row.items() if k not in used and v != ""} for row in df.to_dict("records")]
    return ItemTable(ids, titles, texts, genres, years, names, attrs)


def _load_generic_users(root: Path, fmt: GenericFormat, raw_users: list[str]) -> UserTable:
    path = root / fmt.users if fmt.users else None
    if path is None or not path.is_file():
        if path is not None and "users" in fmt.model_fields_set:
            raise _fail(path, None, "users file not found", "fix 'users' in the format or remove it")
        return UserTable.anonymous(list(dict.fromkeys(raw_users)))
    df = _read_csv(path, fmt.delimiter)
    c = fmt.user_columns
    explicit = c.model_fields_set
    idc = _column(df, path, c.id, True, "user id")
    agec = _column(df, path, c.age, "age" in explicit, "age")
    genc = _column(df, path, c.gender, "gender" in explicit, "gender")
    occc = _column(df, path, c.occupation, "occupation" in explicit, "occupation")
    ids = df[idc].str.strip().tolist()
    _unique_ids(ids, df, path, "user")
    ages = np.zeros(len(ids), np.int32)
    if agec:
        a = _floats(df, agec, path, "age")
        ages = np.where(np.isfinite(a), a, 0).astype(np.int32)
    genders = [g.strip() for g in df[genc].tolist()] if genc else [""] * len(ids)
    occs = [o.strip() for o in df[occc].tolist()] if occc else [""] * len(ids)
    used = {x for x in (idc, agec, genc, occc) if x}
    attrs = [{k: v for k, v in row.items() if k not in used and v != ""} for row in df.to_dict("records")]
    return UserTable(ids, ages, genders, occs, attrs)


# -- dispatch --------------------------------------------------------------------------------------


def detect_variant(path: str | Path) -> str:
    """``ml-100k``, ``ml-1m`` or ``generic`` from the files present in ``path``."""
    p = Path(path)
    if (p / "u.data").is_file():
        return "ml-100k"
    if (p / "ratings.dat").is_file():
        return "ml-1m"
    return "generic"


def load_dataset(path: str | Path, variant: str = "auto", fmt: GenericFormat | dict | None = None) -> InteractionLog:
    """Load ``ml-100k``, ``ml-1m`` or ``generic`` data from ``path`` (``auto`` detects from the files)."""
    p = Path(path).expanduser()
    v = variant.lower().replace("_", "-")
    v = {"ml100k": "ml-100k", "movielens-100k": "ml-100k", "ml1m": "ml-1m", "movielens-1m": "ml-1m"}.get(v, v)
    if not p.exists():
        raise ConfigError(
            f"dataset directory {p} (resolved: {p.resolve()}) does not exist. Fix: pass data_dir= pointing at an "
            f"unpacked MovieLens directory (e.g. ../shared/datasets/ml-100k) or a generic log; "
            f"see simrec.data.datasets.fetch_movielens"
        )
    if v == "auto":
        v = detect_variant(p)
    if v == "ml-100k":
        return load_movielens_100k(p)
    if v == "ml-1m":
        return load_movielens_1m(p)
    if v == "generic":
        return load_generic(p, fmt)
    raise ConfigError(f"unknown dataset variant {variant!r}. Fix: use one of {VARIANTS} or 'auto'")


# -- splits ----------------------------------------------------------------------------------------


class SplitConfig(BaseModel):
    """How each user's interactions are divided into train (earlier) and test (later).

    * ``ratio``: the first ``train_ratio`` of each user's interactions (by time) are train.
    * ``last_k``: each user's last ``k`` interactions are test.
    * ``random``: a random ``1 - train_ratio`` of each user's interactions are test (not temporal;
      for comparison with papers that split at random).

    Every user keeps at least ``min_train`` train interactions; users with fewer interactions than
    that are train only.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["ratio", "last_k", "random"] = "ratio"
    train_ratio: float = Field(0.8, gt=0, lt=1)
    k: int = Field(10, ge=1)
    min_train: int = Field(1, ge=1)
    seed: int = 0


@dataclass
class Split:
    """A per-user split: ``train`` and ``test`` logs over the same user and item tables."""

    train: InteractionLog
    test: InteractionLog
    config: SplitConfig
    test_mask: np.ndarray  # (len(full log),) bool, in the full log's row order

    def summary(self) -> str:
        return f"train: {self.train.summary()}; test: {self.test.summary()}"


def split_log(log: InteractionLog, config: SplitConfig | dict | None = None) -> Split:
    """Split every user's interactions into train (earlier) and test (later); see :class:`SplitConfig`."""
    cfg = config if isinstance(config, SplitConfig) else SplitConfig(**(config or {}))
    order = log.chronological_order()
    users = log.user[order]
    n = np.bincount(users, minlength=log.n_users)
    start = np.concatenate([[0], np.cumsum(n)[:-1]])
    pos = np.arange(len(order)) - start[users]  # position within the user's history
    if cfg.kind == "last_k":
        n_test = np.minimum(cfg.k, n)
    else:
        n_test = np.rint(n * (1.0 - cfg.train_ratio)).astype(np.int64)
    n_test = np.clip(n_test, 0, np.maximum(n - cfg.min_train, 0))
    if cfg.kind == "random":
        rng = np.random.default_rng([cfg.seed, 11])
        keys = rng.random(len(order))
        # rank of each row's key within its user: the n_test smallest keys are test
        o2 = np.lexsort((keys, users))
        rank = np.empty(len(order), np.int64)
        rank[o2] = np.arange(len(order)) - start[users[o2]]
        is_test_sorted = rank < n_test[users]
    else:
        is_test_sorted = pos >= (n - n_test)[users]
    test_mask = np.zeros(len(log), bool)
    test_mask[order] = is_test_sorted
    return Split(log.select(~test_mask, f"{log.name}/train"), log.select(test_mask, f"{log.name}/test"), cfg, test_mask)


# -- fetching --------------------------------------------------------------------------------------


def md5_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_movielens(path: str | Path, variant: str) -> str:
    """Check an unpacked MovieLens directory; return how it was verified.

    Per-file MD5s are checked where simrec knows them (ML-100K) or where the directory has an
    ``MD5SUMS`` file; otherwise the published record counts are checked. Raises ``ConfigError``.
    """
    root = Path(path)
    missing = [f for f in REQUIRED_FILES[variant] if not (root / f).is_file()]
    if missing:
        raise ConfigError(f"{root}: missing {missing} for {variant}. Fix: unpack the official archive "
                          f"({ARCHIVES[variant][0]}) there")
    known = dict(FILE_MD5.get(variant, {}))
    sums = root / "MD5SUMS"
    if sums.is_file():
        for line in sums.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("*") in REQUIRED_FILES[variant]:
                known.setdefault(parts[1].lstrip("*"), parts[0].lower())
    if known:
        for name, want in known.items():
            got = md5_file(root / name)
            if got != want:
                raise ConfigError(f"{root / name}: MD5 {got} does not match the published {want}. "
                                  f"Fix: re-extract the official {variant} archive")
        return "md5"
    nu, ni, nr = COUNTS[variant]
    files = REQUIRED_FILES[variant]
    got = tuple(len([ln for ln in (root / f).read_text(encoding="latin-1").splitlines() if ln.strip()])
                for f in (files[2], files[1], files[0]))
    if got != (nu, ni, nr):
        raise ConfigError(f"{root}: found (users, items, ratings) = {got}, the published {variant} has "
                          f"{(nu, ni, nr)}. Fix: re-extract the official archive")
    return "counts"


def fetch_movielens(variant: str = "ml-100k", dest: str | Path = "~/.cache/simrec/datasets",
                    source: str | Path | None = None, download: bool = False) -> Path:
    """Return a verified, unpacked MovieLens directory.

    Looks, in order, at ``source`` (an unpacked directory is verified and used in place; a ``.zip``
    is checked against the published MD5 and extracted to ``dest``), at ``dest/<variant>``, and, only
    if ``download=True``, downloads the official archive into ``dest`` and verifies its MD5.
    """
    if variant not in ARCHIVES:
        raise ConfigError(f"unknown MovieLens variant {variant!r}. Fix: use one of {sorted(ARCHIVES)}")
    url, want = ARCHIVES[variant]
    dest = Path(dest).expanduser()
    if source is not None:
        src = Path(source).expanduser()
        if src.is_dir():
            inner = src / variant if (src / variant).is_dir() else src
            verify_movielens(inner, variant)
            return inner
        if src.is_file():
            return _extract(src, want, dest, variant)
        raise ConfigError(f"{src}: not found. Fix: pass an unpacked {variant} directory or the official zip")
    if (dest / variant).is_dir():
        verify_movielens(dest / variant, variant)
        return dest / variant
    if not download:
        raise ConfigError(f"{variant} not found under {dest}. Fix: pass source=<unpacked dir or zip>, or "
                          f"download=True to fetch {url}")
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / f"{variant}.zip"
    with urllib.request.urlopen(url, timeout=120) as resp, open(archive, "wb") as f:  # noqa: S310 (fixed https URL)
        shutil.copyfileobj(resp, f)
    return _extract(archive, want, dest, variant)


def _extract(archive: Path, want: str, dest: Path, variant: str) -> Path:
    got = md5_file(archive)
    if got != want:
        raise ConfigError(f"{archive}: MD5 {got} does not match the published {want}. Fix: download the "
                          f"official archive again ({ARCHIVES[variant][0]})")
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as z:
        for m in z.namelist():  # refuse path traversal
            if m.startswith("/") or ".." in Path(m).parts:
                raise ConfigError(f"{archive}: unsafe member path {m!r}")
        z.extractall(dest)
    out = dest / variant
    if not out.is_dir():
        raise ConfigError(f"{archive}: expected a top-level '{variant}/' folder in the archive")
    try:
        verify_movielens(out, variant)
    except ConfigError as e:  # the archive MD5 already matched; counts differences are only a warning
        warnings.warn(str(e), stacklevel=2)
    return out
