"""Calibration from real logs: no test-split leakage, model invariants, the MovieLens env with both backends.

Most tests use the first 150 users of MovieLens-100K (read from ../shared/datasets/ml-100k, skipped when
absent) with a short calibration; generic and ML-1M logs are written by the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium
import numpy as np
import pytest

import simrec  # noqa: F401  (registers the envs)
from llm_servers import fake_server  # noqa: F401,F811  (fixture)
from simrec.data.calibration import (
    CalibratedWorld,
    MovieLensWorldConfig,
    build_calibrated_world,
    calibrate,
    default_choice,
    enrich_descriptions,
    percentile_ranks,
    world_from_config,
)
from simrec.cognition.embedded import EmbeddedCognition
from simrec.data.datasets import load_dataset, split_log
from simrec.envs.slate_env import SlateEnv
from simrec.errors import ConfigError
from simrec.users.population import Population
from simrec.llm.prompting import build_decision_messages, build_judge_messages
from simrec.llm.sanitize import Sanitizer
from simrec.envs.spec import EnvSpec, WorldConfig

ML100K = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-100k"
QUICK = {"watch_iters": 40, "rating_iters": 4, "choice_factors": 8}
N_USERS = 150


def need_ml100k() -> Path:
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"MovieLens-100K not found at ../shared/datasets/ml-100k ({ML100K}): put the unpacked "
                    "ml-100k directory there to run this test")
    return ML100K


def write_subset(dest: Path, n_users: int = N_USERS, transform=None) -> Path:
    """ML-100K with only the ratings of users 1..n_users (``transform(lines) -> lines`` may edit u.data)."""
    src = need_ml100k()
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("u.item", "u.user", "u.genre"):
        (dest / f).write_bytes((src / f).read_bytes())
    lines = [ln for ln in (src / "u.data").read_text(encoding="latin-1").splitlines()
             if ln and int(ln.split("\t")[0]) <= n_users]
    if transform is not None:
        lines = transform(lines)
    (dest / "u.data").write_text("\n".join(lines) + "\n", encoding="latin-1")
    return dest


def world_cfg(data_dir: Path, **extra) -> WorldConfig:
    return WorldConfig(kind="movielens", seed=0, data_dir=str(data_dir), calibration=QUICK, **extra)


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> Path:
    return write_subset(tmp_path_factory.mktemp("ml100k-subset"))


@pytest.fixture(scope="module")
def world(subset) -> CalibratedWorld:
    return world_from_config(world_cfg(subset))


# -- leakage ----------------------------------------------------------------------------------------


def _prompts(w: CalibratedWorld, users=(0, 7, 42)) -> list[str]:
    pop = Population(w.catalog, w.personas, None, 5)
    pop.reset(np.random.default_rng(0))
    san = Sanitizer.for_population(pop)
    slate = [0, 10, 100, 200, 300]
    out = []
    for u in users:
        out += [json.dumps(build_decision_messages(pop, u, slate, san)),
                json.dumps(build_judge_messages(pop, u, slate, san))]
    return out


def _assert_same_world(a: CalibratedWorld, b: CalibratedWorld) -> None:
    for name in ("features", "quality", "popularity", "topic_weights", "year"):
        assert np.array_equal(getattr(a.catalog, name), getattr(b.catalog, name)), name
    assert a.catalog.titles == b.catalog.titles and a.catalog.descriptions == b.catalog.descriptions
    assert a.personas.model_dump() == b.personas.model_dump()
    assert a.choice == b.choice  # the calibrated temperature
    assert (a.transitions is None) == (b.transitions is None)
    if a.transitions is not None:  # order-aware short-term interest: fitted on train sequences only
        assert np.array_equal(a.transitions.keys, b.transitions.keys)
        assert np.array_equal(a.transitions.probs, b.transitions.probs) and a.transitions.weight == b.transitions.weight
    assert _prompts(a) == _prompts(b)


@pytest.mark.data
def test_test_split_never_reaches_the_world(tmp_path, world):
    """Rewrite every test-split row (other item, random rating; same time so the split is unchanged):
    catalog statistics and features, personas (traits, taste, bias, description) and rendered prompts
    stay bit-identical."""
    log = load_dataset(write_subset(tmp_path / "orig"))
    sp = split_log(log)
    test_rows = set(np.flatnonzero(sp.test_mask).tolist())
    rated = {(int(u), int(i)) for u, i in zip(log.user, log.item)}
    rng = np.random.default_rng(123)

    def perturb(lines: list[str]) -> list[str]:
        out = []
        for k, ln in enumerate(lines):
            u, i, r, t = ln.split("\t")
            if k in test_rows:
                while True:
                    j = int(rng.integers(1, 1683))
                    if (int(u) - 1, j - 1) not in rated:
                        rated.add((int(u) - 1, j - 1))
                        break
                ln = f"{u}\t{j}\t{int(rng.integers(1, 6))}\t{t}"
            out.append(ln)
        return out

    changed = write_subset(tmp_path / "perturbed", transform=perturb)
    w2 = world_from_config(world_cfg(changed))
    assert not np.array_equal(w2.split.test.item, world.split.test.item)  # the test split really differs
    assert np.array_equal(w2.split.train.item, world.split.train.item)
    _assert_same_world(world, w2)


@pytest.mark.data
def test_a_train_change_does_change_the_world(tmp_path, world):
    """The identity above is not vacuous: editing one train rating changes the calibrated world."""
    log = load_dataset(write_subset(tmp_path / "orig"))
    train_row = int(np.flatnonzero(~split_log(log).test_mask)[0])

    def edit(lines: list[str]) -> list[str]:
        u, i, r, t = lines[train_row].split("\t")
        lines[train_row] = f"{u}\t{i}\t{1 if int(r) > 3 else 5}\t{t}"
        return lines

    w2 = world_from_config(world_cfg(write_subset(tmp_path / "edited", transform=edit)))
    assert not np.array_equal(world.catalog.quality, w2.catalog.quality)


# -- what calibration produces ----------------------------------------------------------------------


@pytest.mark.data
def test_world_invariants(world):
    ch = default_choice()
    cat, pack = world.catalog, world.personas
    assert len(cat) == 1682 and len(pack) == N_USERS and cat.topic_names[0] == "unknown"
    assert cat.dim == QUICK["choice_factors"] + 19 + ch.rating_dims
    assert np.all(np.abs(cat.features) <= 1.0)  # the observation space bounds
    taste = np.array([p.taste for p in pack.personas])
    assert np.allclose(np.linalg.norm(taste, axis=1), 1.0, atol=1e-5)
    traits = pack.traits_array()
    assert traits.min() >= 0 and traits.max() <= 1
    assert all(abs(sum(p.interests.values()) - 1) < 0.05 for p in pack.personas)
    assert pack.personas[0].id == "u1" and pack.personas[0].age == 24 and pack.personas[0].occupation == "technician"
    assert all(-3 <= p.rating_bias <= 3 for p in pack.personas)
    train = world.split.train
    count = np.bincount(train.item, minlength=len(cat))
    assert np.allclose(cat.popularity, percentile_ranks(count))
    r = train.rating.astype(float)
    s, n = np.bincount(train.item, r, len(cat)), count
    shrunk = (s + 5.0 * r.mean()) / (n + 5.0)  # quality_shrinkage = 5 pseudo-ratings at the global mean
    assert np.allclose(cat.quality, np.clip((shrunk - 1) / 4, 0, 1), atol=1e-6)
    # activity is the percentile of the user's train count (Agent4Rec), shrunk toward 0.5 by the count's
    # reliability (1 - Poisson noise / spread), which is high on MovieLens
    ucount = np.bincount(train.user, minlength=train.n_users)[world.user_index].astype(float)
    rel = 1.0 - ucount.mean() / ucount.var()
    assert 0.9 < rel < 1.0
    assert np.allclose(traits[:, 0], 0.5 + rel * (percentile_ranks(ucount) - 0.5), atol=1e-5)
    rates = np.array([p.session_rate for p in pack.personas])
    assert np.allclose(rates, 1.0 + rel * (ucount / ucount.mean() - 1.0), atol=1e-5)


@pytest.mark.data
def test_descriptions_come_from_the_train_history(world):
    p = world.personas.personas[0]
    train = world.split.train
    rows = np.flatnonzero(train.user == world.user_index[0])
    assert f"has rated {rows.size} films" in p.description
    assert "24-year-old male technician" in p.description
    assert p.name == "Viewer 1"


@pytest.mark.data
def test_embedded_judge_matches_the_calibrated_data(world):
    """Through the cognition protocol: train positives are watched far more often than unobserved items,
    and the simulated ratings of train items track the real ones."""
    ch = default_choice()
    pop = Population(world.catalog, world.personas, None, 5)
    pop.reset(np.random.default_rng(0))
    be = EmbeddedCognition(ch)
    train = world.split.train
    to_pop = np.full(train.n_users, -1)
    to_pop[world.user_index] = np.arange(len(world.user_index))
    u, i = to_pop[train.user], train.item.astype(np.int64)
    rng = np.random.default_rng(1)
    seen = np.zeros((pop.n_users, len(world.catalog)), bool)
    seen[u, i] = True
    neg = rng.integers(0, len(world.catalog), size=u.size)
    while seen[u, neg].any():
        bad = seen[u, neg]
        neg[bad] = rng.integers(0, len(world.catalog), size=int(bad.sum()))
    jp, jn = be.judge(pop, u, i[:, None], rng), be.judge(pop, u, neg[:, None], rng)
    assert jp.watch.mean() > 0.75 and jn.watch.mean() < 0.35
    assert (jp.meta["utility"][:, 0] > jn.meta["utility"][:, 0]).mean() > 0.85
    assert np.sqrt(np.mean((jp.rating[:, 0] - train.rating) ** 2)) < 1.0
    assert np.corrcoef(jp.meta["rating_latent"][:, 0], train.rating)[0, 1] > 0.5
    assert set(np.unique(jp.meta["rating_sample"])) <= {1.0, 2.0, 3.0, 4.0, 5.0}


@pytest.mark.data
def test_seed_changes_factors_but_not_statistics(subset, world):
    w1 = build_calibrated_world(MovieLensWorldConfig(data_dir=str(subset), calibration=QUICK), seed=1)
    assert not np.array_equal(w1.catalog.features, world.catalog.features)
    assert np.array_equal(w1.catalog.quality, world.catalog.quality)
    assert np.array_equal(w1.personas.traits_array(), world.personas.traits_array())


# -- the registered env -----------------------------------------------------------------------------


@pytest.mark.data
def test_movielens_env_via_gymnasium_make(subset):
    env = gymnasium.make("simrec/MovieLens-v0", data_dir=str(subset), world={"calibration": QUICK})
    from gymnasium.utils.env_checker import check_env

    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs) and info["user_id"].startswith("u")
    total = 0
    for _ in range(30):
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        total += r
        if term or trunc:
            env.reset()
    assert env.unwrapped.sim_spec.world.model_dump()["data_dir"] == str(subset)
    env.close()


@pytest.mark.data
def test_movielens_vector_env(subset):
    from simrec.envs.vector_env import SlateVectorEnv

    venv = SlateVectorEnv(4, "movielens-v0", data_dir=str(subset), world={"calibration": QUICK})
    obs, _ = venv.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs, r, term, trunc, info = venv.step(np.argsort(rng.random((4, 50)), axis=1)[:, :5])
    assert r.shape == (4,) and venv.single_observation_space.contains({k: v[0] for k, v in obs.items()})
    venv.close()


@pytest.mark.data
def test_movielens_env_with_the_llm_backend(subset, fake_server):
    srv = fake_server()
    env = SlateEnv("movielens-v0", backend="llm", data_dir=str(subset), world={"calibration": QUICK},
                   backend_config={"base_url": srv.base_url, "model": "fake-model", "api_key": "x", "max_retries": 0})
    env.reset(seed=0)
    for _ in range(3):
        _, _, term, trunc, info = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
    assert srv.counts["requests"] >= 3
    env.close()


def test_missing_data_dir_says_where_and_how_to_fix(tmp_path):
    with pytest.raises(ConfigError) as e:
        gymnasium.make("simrec/MovieLens-v0", data_dir=str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "Fix:" in msg and "data_dir" in msg


def test_default_spec_points_at_shared_ml100k():
    spec = EnvSpec.builtin("movielens-v0")
    assert spec.world.kind == "movielens" and spec.world.model_dump()["data_dir"] == "../shared/datasets/ml-100k"
    assert spec.choice.rating_dims > 0


# -- other logs -------------------------------------------------------------------------------------


def _generic_log(d: Path, ratings: bool = True, n_users: int = 40, n_items: int = 60, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    U, V = rng.normal(size=(n_users, 3)), rng.normal(size=(n_items, 3))
    genres = ["drama", "comedy", "news", "sport"]
    rows = ["user,item,rating,timestamp" if ratings else "user,item,timestamp"]
    t = 0
    for u in range(n_users):
        score = U[u] @ V.T
        picked = rng.choice(n_items, size=15, replace=False, p=np.exp(score) / np.exp(score).sum())
        for i in picked:
            t += int(rng.integers(1, 5000))
            stars = int(np.clip(np.rint(3 + score[i] + rng.normal(0, 0.7)), 1, 5))
            rows.append(f"p{u},it{i},{stars},{t}" if ratings else f"p{u},it{i},{t}")
    (d / "interactions.csv").write_text("\n".join(rows) + "\n")
    items = ["id,title,genres,year"] + [f"it{i},Item number {i},{genres[i % 4]}|{genres[(i * 7) % 4]},{1990 + i % 30}"
                                        for i in range(n_items)]
    (d / "items.csv").write_text("\n".join(items) + "\n")
    return d


def test_generic_log_calibrates(tmp_path):
    d = _generic_log(tmp_path / "g")
    w = build_calibrated_world(MovieLensWorldConfig(data_dir=str(d), variant="generic", calibration=QUICK), seed=0)
    assert len(w.catalog) == 60 and len(w.personas) == 40 and w.personas.personas[0].id == "p0"
    assert w.catalog.topic_names == ["comedy", "drama", "news", "sport"]
    assert "has rated 12 items" in w.personas.personas[0].description


def test_implicit_log_calibrates_without_ratings(tmp_path):
    d = _generic_log(tmp_path / "g", ratings=False)
    w = build_calibrated_world(MovieLensWorldConfig(data_dir=str(d), calibration=QUICK), seed=0)
    assert np.allclose(w.catalog.quality, 0.5) and all(p.rating_bias == 0 for p in w.personas.personas)
    assert "has watched 12 items" in w.personas.personas[0].description


def test_ml1m_format_calibrates(tmp_path):
    d = tmp_path / "ml-1m"
    d.mkdir()
    rng = np.random.default_rng(0)
    (d / "movies.dat").write_text("\n".join(f"{i}::Film {i} (19{50 + i % 40})::{['Drama', 'Comedy', 'War'][i % 3]}"
                                            for i in range(1, 41)) + "\n", encoding="latin-1")
    (d / "users.dat").write_text("\n".join(f"{u}::{'MF'[u % 2]}::25::{u % 21}::0000{u}" for u in range(1, 21)) + "\n",
                                 encoding="latin-1")
    rows = [f"{u}::{i}::{int(rng.integers(1, 6))}::{1000 * u + k}" for u in range(1, 21)
            for k, i in enumerate(rng.choice(np.arange(1, 41), size=12, replace=False))]
    (d / "ratings.dat").write_text("\n".join(rows) + "\n", encoding="latin-1")
    w = build_calibrated_world(MovieLensWorldConfig(data_dir=str(d), variant="ml-1m", calibration=QUICK), seed=0)
    assert len(w.personas) == 20 and w.personas.personas[0].age == 30 and w.log.name == "ml-1m"


def test_llm_enriched_descriptions(tmp_path):
    d = _generic_log(tmp_path / "g", n_users=5)
    log = load_dataset(d)
    seen: list[str] = []

    def complete(messages):
        seen.append(messages[-1]["content"])
        return "  A rewritten\nprofile. "

    cal = calibrate(split_log(log).train, {**QUICK, "describe": "llm"}, default_choice(), complete=complete)
    assert all(p.description == "A rewritten profile." for p in cal.personas.personas)
    assert len(seen) == 5 and all("has rated" in s for s in seen)  # only the train-derived profile is sent
    pack = enrich_descriptions(cal.personas, lambda m: "")
    assert pack.personas[0].description == "A rewritten profile."  # empty reply keeps the text
    with pytest.raises(ConfigError, match="describe_llm has no base_url"):
        calibrate(split_log(log).train, {**QUICK, "describe": "llm"}, default_choice())


def test_variant_names_are_normalised():
    assert MovieLensWorldConfig(variant="ML-100K").variant == "ml-100k"
    assert MovieLensWorldConfig(variant="ml_1m").variant == "ml-1m"
    with pytest.raises(ConfigError, match="variant"):
        world_from_config(WorldConfig(kind="movielens", variant="ml-25m"))


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=2, max_size=40))
def test_percentile_ranks(xs):
    x = np.array(xs, float)
    p = percentile_ranks(x)
    assert p.min() >= 0 and p.max() <= 1
    order = np.argsort(x)
    assert np.all(np.diff(p[order]) >= -1e-12)  # monotone
    for v in np.unique(x):
        assert np.ptp(p[x == v]) == 0  # ties share a rank
    assert p.mean() == pytest.approx(0.5)
