"""MovieLens-100K and MovieLens-1M: loaders, checksums and the (optional) download of the official archives."""

from __future__ import annotations

import hashlib
import shutil
import urllib.request
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from simrec.data.log import (
    UNKNOWN_GENRE,
    InteractionLog,
    ItemTable,
    UserTable,
    Vocabulary,
    _check_range,
    _fail,
    _index_ids,
    _ints,
    _read_table,
    _unique_ids,
    _year_from_title,
)
from simrec.errors import ConfigError

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

#: How MovieLens personas are described: viewers who rated films.
FILMS = Vocabulary(user="viewer", item="film", did="watched", does="watches")


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
    return InteractionLog("ml-100k", u, it, r, np.ones(len(r), np.float32), ts, items, users, source=str(root),
                          vocabulary=FILMS)


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
    return InteractionLog("ml-1m", u, it, r, np.ones(len(r), np.float32), ts, items, users, source=str(root),
                          vocabulary=FILMS)



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
