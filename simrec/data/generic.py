"""A generic interaction log anyone can produce::

    interactions.csv  user,item,rating,timestamp        (rating or weight; timestamp optional)
    items.csv         id,title,text,genres,year,...     (optional; other columns become attributes)
    users.csv         id,age,gender,occupation,...      (optional)

Column names are configurable with :class:`GenericFormat` (or a ``format.json`` next to the files).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simrec.data.log import (
    UNKNOWN_GENRE,
    InteractionLog,
    ItemTable,
    UserTable,
    Vocabulary,
    _check_range,
    _fail,
    _index_ids,
    _unique_ids,
    _year_from_title,
)
from simrec.errors import format_validation_error


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
    vocabulary: Vocabulary = Field(default_factory=lambda: Vocabulary(item="item"), description=(
        "Words persona descriptions use (user, item, did, does; counts: whether weights count plays)."))

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
    return InteractionLog(name, u, it, rating, weight, ts, items, users, source=str(ipath), timed=tcol is not None,
                          vocabulary=fmt.vocabulary)


def _natural_order(ids: list[str]) -> list[str]:
    """Ids sorted as numbers when they all are, else as strings: a catalog that does not depend on
    which rows mention an item first (so rewriting test rows cannot reorder it)."""
    try:
        return sorted(ids, key=lambda x: (float(x), x))
    except ValueError:
        return sorted(ids)


def write_generic(log: InteractionLog, directory: str | Path) -> Path:
    """Write ``log`` as a generic log (``interactions.csv``, ``items.csv``, ``format.json``) that
    :func:`load_generic` reads back; ratings, weights and timestamps are written where the log has them."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cols: dict[str, object] = {"user": [log.users.ids[k] for k in log.user], "item": [log.items.ids[k] for k in log.item]}
    if log.has_ratings:
        cols["rating"] = log.rating
    if not np.all(log.weight == 1):
        cols["weight"] = [f"{w:g}" for w in log.weight]
    if log.timed:
        cols["timestamp"] = log.timestamp
    pd.DataFrame(cols).to_csv(d / "interactions.csv", index=False)
    it = log.items
    pd.DataFrame({"id": it.ids, "title": it.titles, "text": it.texts,
                  "genres": ["|".join(g for g in gs if g != UNKNOWN_GENRE) for gs in it.genres],
                  "year": [str(y) if y else "" for y in it.years]}).to_csv(d / "items.csv", index=False)
    fmt = {"name": log.name, "users": None, "vocabulary": log.vocabulary.model_dump(exclude_none=True)}
    if log.has_ratings:
        fmt["rating_scale"] = [1, 5]
    (d / "format.json").write_text(json.dumps(fmt, indent=1) + "\n", encoding="utf-8")
    return d


def _load_generic_items(root: Path, fmt: GenericFormat, raw_items: list[str]) -> ItemTable:
    path = root / fmt.items if fmt.items else None
    if path is None or not path.is_file():
        if path is not None and "items" in fmt.model_fields_set:
            raise _fail(path, None, "items file not found", "fix 'items' in the format or remove it")
        ids = _natural_order(list(dict.fromkeys(raw_items)))
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
