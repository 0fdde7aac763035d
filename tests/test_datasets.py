"""Loaders (MovieLens-100K, MovieLens-1M, generic CSV), validation messages, splits and fetching.

MovieLens-100K is read from ../shared/datasets/ml-100k when present (skipped otherwise); ML-1M and
generic logs are written by the tests themselves. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simrec.data.datasets import (
    ARCHIVES,
    DataFormatError,
    GenericFormat,
    InteractionLog,
    ItemTable,
    SplitConfig,
    UserTable,
    fetch_movielens,
    load_dataset,
    load_generic,
    load_movielens_1m,
    load_movielens_100k,
    split_log,
    verify_movielens,
)
from simrec.errors import ConfigError

ML100K = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-100k"


def need_ml100k() -> Path:
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"MovieLens-100K not found at ../shared/datasets/ml-100k ({ML100K}): put the unpacked "
                    "ml-100k directory there to run this test")
    return ML100K


# -- tiny files written by the tests ----------------------------------------------------------------

GENRES_100K = ["unknown", "Action", "Comedy", "Drama"]


def write_ml100k(d: Path, data_lines: list[str] | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "u.genre").write_text("".join(f"{g}|{k}\n" for k, g in enumerate(GENRES_100K)) + "\n", encoding="latin-1")
    items = [
        "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|1|0",
        "2|Misérables, Les (1995)|01-Jan-1995||http://x|0|0|0|1",
        "3|Heat (1995)|15-Dec-1995||http://x|0|1|0|1",
        "4|unknown|||http://x|1|0|0|0",
    ]
    (d / "u.item").write_text("\n".join(items) + "\n", encoding="latin-1")
    (d / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n", encoding="latin-1")
    lines = data_lines or ["1\t1\t5\t100", "1\t2\t3\t200", "2\t3\t4\t150", "2\t1\t2\t50", "1\t3\t1\t300"]
    (d / "u.data").write_text("\n".join(lines) + "\n", encoding="latin-1")
    return d


def write_ml1m(d: Path, ratings: list[str] | None = None, movies: list[str] | None = None,
               users: list[str] | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    movies = movies or ["1::Toy Story (1995)::Animation|Children's|Comedy", "2::Jumanji (1995)::Adventure",
                        "3::Amélie (2001)::Comedy|Romance"]
    users = users or ["1::F::1::10::48067", "2::M::56::16::70072"]
    ratings = ratings or ["1::1::5::978300760", "1::3::4::978302109", "2::2::3::978301968", "2::1::1::978300275"]
    (d / "movies.dat").write_text("\n".join(movies) + "\n", encoding="latin-1")
    (d / "users.dat").write_text("\n".join(users) + "\n", encoding="latin-1")
    (d / "ratings.dat").write_text("\n".join(ratings) + "\n", encoding="latin-1")
    return d


def write_generic(d: Path, interactions: str, items: str | None = None, users: str | None = None,
                  name: str = "interactions.csv") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(interactions, encoding="utf-8")
    if items is not None:
        (d / "items.csv").write_text(items, encoding="utf-8")
    if users is not None:
        (d / "users.csv").write_text(users, encoding="utf-8")
    return d


# -- MovieLens-100K ---------------------------------------------------------------------------------


@pytest.mark.data
def test_ml100k_real_files_load_and_verify():
    path = need_ml100k()
    log = load_movielens_100k(path)
    assert (log.n_users, log.n_items, len(log)) == (943, 1682, 100_000)
    assert log.has_ratings and set(np.unique(log.rating).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert log.items.titles[0] == "Toy Story (1995)" and log.items.years[0] == 1995
    assert any("é" in t for t in log.items.titles)  # Latin-1 decoded, not mangled
    assert log.items.genre_names[0] == "unknown" and len(log.items.genre_names) == 19
    assert all(len(g) >= 1 for g in log.items.genres)
    assert log.users.ages[0] == 24 and log.users.genders[0] == "male" and log.users.occupations[0] == "technician"
    assert verify_movielens(path, "ml-100k") == "md5"
    assert load_dataset(path).name == "ml-100k"  # auto-detected


def test_ml100k_tiny(tmp_path):
    log = load_movielens_100k(write_ml100k(tmp_path / "ml"))
    assert len(log) == 5 and log.n_items == 4 and log.n_users == 2
    assert log.items.titles[1] == "Misérables, Les (1995)"
    assert log.items.genres[2] == ["Action", "Drama"] and log.items.genres[3] == ["unknown"]
    assert log.items.years[2] == 1995 and log.items.years[3] == 0
    gm = log.items.genre_matrix()
    assert np.allclose(gm.sum(axis=1), 1.0) and gm[2, 1] == 0.5


@pytest.mark.parametrize("line, fragment", [
    ("1\t1\t5", "u.data:3: expected 4 fields"),
    ("1\t1\t5\t100\t7", "u.data:3: expected 4 fields"),
    ("1\t1\t6\t100", "u.data:3: rating must be in [1, 5], got 6"),
    ("1\tx\t5\t100", "u.data:3: item id must be an integer, got 'x'"),
    ("1\t99\t5\t100", "u.data:3: item id '99' is not listed in u.item"),
    ("7\t1\t5\t100", "u.data:3: user id '7' is not listed in u.user"),
])
def test_ml100k_errors_name_file_line_and_problem(tmp_path, line, fragment):
    d = write_ml100k(tmp_path / "ml", ["1\t1\t5\t100", "1\t2\t3\t200", line])
    with pytest.raises(DataFormatError) as e:
        load_movielens_100k(d)
    assert fragment in str(e.value)
    assert str(d / "u.data") in str(e.value)


def test_ml100k_missing_file(tmp_path):
    d = write_ml100k(tmp_path / "ml")
    (d / "u.user").unlink()
    with pytest.raises(DataFormatError, match="u.user: file not found"):
        load_movielens_100k(d)


def test_ml100k_duplicate_item(tmp_path):
    d = write_ml100k(tmp_path / "ml")
    (d / "u.item").write_text((d / "u.item").read_text(encoding="latin-1") + "1|Again (1990)|||x|0|0|1|0\n",
                              encoding="latin-1")
    with pytest.raises(DataFormatError, match=r"u.item:5: duplicate movie id '1'"):
        load_movielens_100k(d)


# -- MovieLens-1M -----------------------------------------------------------------------------------


def test_ml1m_tiny(tmp_path):
    log = load_movielens_1m(write_ml1m(tmp_path / "ml-1m"))
    assert log.name == "ml-1m" and len(log) == 4 and log.n_items == 3 and log.n_users == 2
    assert log.items.titles[2] == "Amélie (2001)" and log.items.years[2] == 2001
    assert log.items.genres[0] == ["Animation", "Children's", "Comedy"]
    assert log.users.ages.tolist() == [16, 60] and log.users.occupations == ["K-12 student", "self-employed"]
    assert log.users.attributes[0]["age_group"] == "under 18"
    assert load_dataset(tmp_path / "ml-1m").name == "ml-1m"


@pytest.mark.parametrize("kind, lines, fragment", [
    ("ratings", ["1::1::5::978300760", "1::2::5"], "ratings.dat:2: expected 4 fields"),
    ("ratings", ["1::1::5::978300760", "1::9::5::1"], "ratings.dat:2: movie id '9' is not listed in movies.dat"),
    ("movies", ["1::Toy Story (1995)::Comedy", "2::X (1990)::Cartoon"], "movies.dat:2: unknown genre 'Cartoon'"),
    ("users", ["1::F::1::10::48067", "2::M::7::16::70072"], "users.dat:2: age code 7 is not one of"),
    ("users", ["1::F::1::10::48067", "2::M::56::99::70072"], "users.dat:2: occupation code must be in [0, 20]"),
])
def test_ml1m_errors(tmp_path, kind, lines, fragment):
    d = write_ml1m(tmp_path / "ml-1m", **{kind: lines})
    with pytest.raises(DataFormatError) as e:
        load_movielens_1m(d)
    assert fragment in str(e.value)


# -- generic ----------------------------------------------------------------------------------------


def test_generic_with_configurable_columns(tmp_path):
    d = write_generic(
        tmp_path / "g",
        "uid,iid,stars,when\nann,a,10,2024-01-02\nbob,b,1,2024-01-01\nann,b,5.5,2024-01-03\n",
        items=("id,title,text,genres,year,author\na,Alpha,A book.,fiction|drama,1999,X\nb,Beta,,poetry,,Y\n"
               "c,Gamma,,,,\n"),
        users="id,age,gender,occupation,city\nann,31,female,nurse,Oslo\nbob,,,,\n",
    )
    fmt = GenericFormat(interaction_columns={"user": "uid", "item": "iid", "rating": "stars", "timestamp": "when"},
                        rating_scale=(1, 10))
    log = load_generic(d, fmt)
    assert log.n_items == 3 and log.n_users == 2 and len(log) == 3
    assert np.allclose(log.rating, [5.0, 1.0, 1 + 4 * 4.5 / 9])  # 1..10 mapped onto 1..5 stars
    assert log.timestamp[1] < log.timestamp[0] < log.timestamp[2]  # ISO dates parsed
    assert log.items.genres[0] == ["fiction", "drama"] and log.items.genres[2] == ["unknown"]
    assert log.items.attributes[0] == {"author": "X"} and log.items.years.tolist() == [1999, 0, 0]
    assert log.users.ages.tolist() == [31, 0] and log.users.attributes[0] == {"city": "Oslo"}
    assert "unknown" in log.items.genre_names


def test_generic_defaults_implicit_and_format_json(tmp_path):
    d = write_generic(tmp_path / "g", "user,item,weight\nu1,x,2\nu2,y,1\nu1,y,3\n")
    log = load_dataset(d)  # variant auto -> generic; no items/users files; no timestamp -> row order
    assert not log.has_ratings and np.isnan(log.rating).all()
    assert log.weight.tolist() == [2.0, 1.0, 3.0] and log.timestamp.tolist() == [0, 1, 2]
    assert log.items.ids == ["x", "y"] and log.users.ids == ["u1", "u2"]
    (d / "log.tsv").write_text("who\twhat\nu1\tx\n", encoding="utf-8")
    (d / "format.json").write_text(json.dumps({"interactions": "log.tsv",
                                               "interaction_columns": {"user": "who", "item": "what"}}))
    log2 = load_dataset(d, "generic")
    assert len(log2) == 1 and log2.users.ids == ["u1"]


@pytest.mark.parametrize("interactions, fmt, fragment", [
    ("user,item,rating\nu,a,5\nu,b,x\n", None, "interactions.csv:3: rating must be a number, got 'x'"),
    ("user,item,rating\nu,a,5\n,b,4\n", None, "interactions.csv:3: empty user id"),
    ("user,item,rating\nu,a,5\nu,zzz,4\n", None, "interactions.csv:3: item id 'zzz' is not listed in items.csv"),
    ("user,item\nu,a\n", {"interaction_columns": {"rating": "score"}}, "column 'score' (rating) not found"),
    ("usr,item\nu,a\n", None, "column 'user' (user id) not found; the header has ['usr', 'item']"),
    ("user,item,rating\nu,a,7\n", {"rating_scale": [1, 5]}, "interactions.csv:2: rating must be in [1, 5], got 7"),
    ("user,item,weight\nu,a,-1\n", None, "interactions.csv:2: weight must be a number > 0"),
    ("user,item,timestamp\nu,a,yesterday\n", None, "interactions.csv:2: timestamp 'yesterday' is neither"),
])
def test_generic_errors(tmp_path, interactions, fmt, fragment):
    d = write_generic(tmp_path / "g", interactions, items="id,title\na,Alpha\nb,Beta\n")
    with pytest.raises(ConfigError) as e:
        load_generic(d, fmt)
    assert fragment in str(e.value)


def test_generic_items_file_errors(tmp_path):
    d = write_generic(tmp_path / "g", "user,item\nu,a\n", items="id,title\na,Alpha\na,Again\n")
    with pytest.raises(DataFormatError, match=r"items.csv:3: duplicate item id 'a'"):
        load_generic(d)
    with pytest.raises(ConfigError, match="format"):
        load_generic(d, {"delimiter": ",", "bogus": 1})


def test_unknown_variant_and_missing_dir(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(ConfigError, match="unknown dataset variant"):
        load_dataset(tmp_path, "ml-25m")


# -- splits -----------------------------------------------------------------------------------------


def _toy_log(users: list[int], times: list[int]) -> InteractionLog:
    n_u = max(users) + 1
    items = ItemTable([f"i{k}" for k in range(len(users))], [f"T{k}" for k in range(len(users))],
                      [""] * len(users), [["g"]] * len(users), np.zeros(len(users)), ["g"])
    return InteractionLog("toy", users, list(range(len(users))), np.full(len(users), 3.0), np.ones(len(users)),
                          times, items, UserTable.anonymous([f"u{k}" for k in range(n_u)]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 50)), min_size=1, max_size=80),
       st.sampled_from(["ratio", "last_k", "random"]), st.floats(0.3, 0.9), st.integers(1, 4))
def test_split_properties(rows, kind, ratio, k):
    log = _toy_log([u for u, _ in rows], [t for _, t in rows])
    sp = split_log(log, SplitConfig(kind=kind, train_ratio=ratio, k=k))
    assert len(sp.train) + len(sp.test) == len(log)
    assert not np.intersect1d(sp.train.item, sp.test.item).size  # each row (unique item) lands once
    n = np.bincount(log.user, minlength=log.n_users)
    n_train = np.bincount(sp.train.user, minlength=log.n_users)
    n_test = np.bincount(sp.test.user, minlength=log.n_users)
    assert np.all(n_train >= np.minimum(n, 1))  # every user keeps a train interaction
    if kind == "last_k":
        assert np.array_equal(n_test, np.minimum(k, np.maximum(n - 1, 0)))
    else:
        assert np.array_equal(n_test, np.clip(np.rint(n * (1 - ratio)), 0, np.maximum(n - 1, 0)).astype(int))
    if kind != "random":  # temporal: every train row of a user is no later than their test rows
        for u in np.unique(sp.test.user):
            assert sp.train.timestamp[sp.train.user == u].max() <= sp.test.timestamp[sp.test.user == u].min()


def test_split_ties_follow_file_order():
    log = _toy_log([0, 0, 0, 0, 0], [5, 5, 5, 5, 5])
    sp = split_log(log, {"kind": "last_k", "k": 2})
    assert sp.test.item.tolist() == [3, 4]


@pytest.mark.data
def test_ml100k_split_is_per_user_temporal():
    log = load_movielens_100k(need_ml100k())
    sp = split_log(log)
    assert (len(sp.train), len(sp.test)) == (80_000, 20_000)
    last_train = np.zeros(log.n_users, np.int64)
    np.maximum.at(last_train, sp.train.user, sp.train.timestamp)
    first_test = np.full(log.n_users, np.iinfo(np.int64).max)
    np.minimum.at(first_test, sp.test.user, sp.test.timestamp)
    assert np.all(last_train <= first_test)


# -- fetching ---------------------------------------------------------------------------------------


@pytest.mark.data
def test_fetch_accepts_a_verified_local_directory(tmp_path):
    path = need_ml100k()
    assert fetch_movielens("ml-100k", dest=tmp_path, source=path) == path
    bad = tmp_path / "ml-100k"
    bad.mkdir()
    for f in ("u.data", "u.item", "u.user", "u.genre"):
        (bad / f).write_bytes((path / f).read_bytes())
    with open(bad / "u.data", "ab") as f:
        f.write(b"1\t1\t1\t1\n")
    with pytest.raises(ConfigError, match="MD5 .* does not match"):
        fetch_movielens("ml-100k", dest=tmp_path)  # dest/ml-100k exists but was tampered with


def test_fetch_checks_archive_md5_and_never_downloads_by_default(tmp_path):
    z = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("ml-1m/ratings.dat", "1::1::5::1\n")
    with pytest.raises(ConfigError, match=f"does not match the published {ARCHIVES['ml-1m'][1]}"):
        fetch_movielens("ml-1m", dest=tmp_path / "out", source=z)
    with pytest.raises(ConfigError, match="download=True to fetch https://files.grouplens.org"):
        fetch_movielens("ml-1m", dest=tmp_path / "empty")


def test_verify_counts_without_checksums(tmp_path):
    d = write_ml1m(tmp_path / "ml-1m")
    with pytest.raises(ConfigError, match=r"the published ml-1m has \(6040, 3883, 1000209\)"):
        verify_movielens(d, "ml-1m")
    lines = [f"{name}  {hashlib.md5((d / name).read_bytes()).hexdigest()}" for name in ("ratings.dat",)]
    (d / "MD5SUMS").write_text("\n".join(f"{h}  {n}" for n, h in (ln.split("  ") for ln in lines)) + "\n")
    assert verify_movielens(d, "ml-1m") == "md5"  # an MD5SUMS file next to the data is checked instead
