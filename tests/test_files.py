"""Files users write (persona packs, env specs, catalogs): a bad file raises ``ConfigError`` naming the
file and the field; built-in packs and specs load; the shipped persona pack equals its generator."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import gymnasium
import numpy as np
import pytest

import simrec
from simrec.catalog import Catalog
from simrec.envs.slate_env import SlateEnv
from simrec.errors import ConfigError
from simrec.users.persona import PersonaPack, builtin_packs
from simrec.envs.spec import EnvSpec, builtin_specs, resolve_spec
from simrec.users.world import synthetic_personas

REPO = Path(__file__).resolve().parents[1]

# -- valid baselines -------------------------------------------------------------------------------

PACK: dict[str, Any] = {
    "name": "mini",
    "topics": ["drama", "comedy"],
    "personas": [
        {"id": "u1", "name": "Ada", "age": 30, "traits": {"patience": 0.2}, "interests": {"drama": 1.0}},
        {"id": "u2", "name": "Bo", "age": 41, "occupation": "nurse", "interests": {"comedy": 0.5, "drama": 0.5},
         "rating_bias": -0.5},
    ],
}

CATALOG: dict[str, Any] = {
    "name": "mini",
    "topics": ["drama", "comedy"],
    "items": [
        {"id": "a", "title": "A", "topics": ["drama"], "quality": 0.5, "features": [1.0, 0.0], "year": 1999},
        {"id": "b", "title": "B", "topics": ["comedy", "drama"], "quality": 0.9, "features": [0.0, 2.0],
         "popularity": 0.3, "attributes": {"form": "film"}},
    ],
}


def _spec_raw() -> dict[str, Any]:
    return json.loads(resources.files("simrec._envs").joinpath("synthetic-v0.json").read_text(encoding="utf-8"))


def _mutate(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set (or with value=_DEL delete) a dotted path like 'personas.0.traits.patience'."""
    d = copy.deepcopy(base)
    *head, last = path.split(".")
    node: Any = d
    for p in head:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    if value is _DEL:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return d


_DEL = object()


def _write(tmp_path: Path, data: Any, name: str = "file.json") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return p


def _expect_config_error(load: Callable[[Path], Any], path: Path, *fragments: str) -> str:
    with pytest.raises(ConfigError) as ei:
        load(path)
    msg = str(ei.value)
    assert str(path) in msg, f"error does not name the file:\n{msg}"
    for f in fragments:
        assert f in msg, f"error does not mention {f!r}:\n{msg}"
    return msg


# -- persona packs -------------------------------------------------------------------------------

def test_valid_pack_loads(tmp_path):
    pack = PersonaPack.load(_write(tmp_path, PACK))
    assert [p.id for p in pack.personas] == ["u1", "u2"]
    assert pack.personas[0].traits.patience == 0.2 and pack.personas[0].traits.activity == 0.5  # defaults
    np.testing.assert_allclose(pack.traits_array()[0], [0.5, 0.5, 0.5, 0.2, 0.5])


@pytest.mark.parametrize("path, value, fields", [
    ("personas.0.age", "old", ["personas.0.age"]),
    ("personas.0.age", 5, ["personas.0.age"]),
    ("personas.0.traits.patience", 1.5, ["personas.0.traits.patience"]),
    ("personas.1.traits", {"pickiness": -0.1}, ["personas.1.traits.pickiness"]),
    ("personas.0.traits.curiosity", 0.3, ["personas.0.traits.curiosity", "xtra"]),
    ("personas.1.favourite_color", "red", ["personas.1.favourite_color"]),
    ("owner", "me", ["owner"]),
    ("personas.0.name", "", ["personas.0.name"]),
    ("personas.0.id", _DEL, ["personas.0.id"]),
    ("personas.1.rating_bias", 7.0, ["personas.1.rating_bias"]),
    ("personas.0.interests", {"drama": -1.0}, ["interest", "drama"]),
    ("personas.0.interests", {"opera": 1.0}, ["interests", "opera"]),
    ("personas.0.interests", {"drama": "lots"}, ["personas.0.interests.drama"]),
    ("personas.0.taste", ["x", 1.0], ["personas.0.taste"]),
    ("personas.1.id", "u1", ["unique", "u1"]),
    ("personas", [], ["personas"]),
    ("personas", {"u1": {}}, ["personas"]),
])
def test_bad_persona_pack_names_file_and_field(tmp_path, path, value, fields):
    p = _write(tmp_path, _mutate(PACK, path, value), "pack.json")
    _expect_config_error(PersonaPack.load, p, *fields)


@pytest.mark.parametrize("text", ['{"name": "x", "personas": [', "{'name': 'x'}", "", "[1, 2,]"])
def test_persona_pack_invalid_json_syntax(tmp_path, text):
    _expect_config_error(PersonaPack.load, _write(tmp_path, text, "broken.json"), "JSON", "line")


def test_missing_persona_pack_file(tmp_path):
    _expect_config_error(PersonaPack.load, tmp_path / "nope.json", "not found")


# -- env specs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path, value, fields", [
    ("slate_size", "five", ["slate_size"]),
    ("slate_size", 0, ["slate_size"]),
    ("slate_size", 60, ["slate_size", "num_candidates"]),
    ("slate", 5, ["slate"]),
    ("id", "my env", ["id"]),
    ("backend", "gpt", ["backend"]),
    ("max_steps", -1, ["max_steps"]),
    ("reward.bonus", 1.0, ["reward.bonus"]),
    ("reward.click", "many", ["reward.click"]),
    ("world.n_items", 5, ["world.n_items"]),
    ("world.n_items", 20, ["num_candidates"]),
    ("candidates.kind", "random", ["candidates.kind"]),
    ("dynamics.drift.theta", 2.0, ["dynamics.drift.theta"]),
    ("dynamics.fatigue.speed", 1.0, ["dynamics.fatigue.speed"]),
    ("choice.temperature", 0.0, ["choice.temperature"]),
    ("choice.affinity", "high", ["choice.affinity"]),
])
def test_bad_env_spec_names_file_and_field(tmp_path, path, value, fields):
    p = _write(tmp_path, _mutate(_spec_raw(), path, value), "env.json")
    _expect_config_error(EnvSpec.load, p, *fields)
    _expect_config_error(resolve_spec, p, *fields)
    _expect_config_error(lambda q: SlateEnv(spec=q), p, *fields)


@pytest.mark.parametrize("text", ['{"id": "simrec/X-v0",', "{id: 1}", "not json"])
def test_env_spec_invalid_json_syntax(tmp_path, text):
    _expect_config_error(EnvSpec.load, _write(tmp_path, text, "env.json"), "JSON", "line")


def test_missing_env_spec_file(tmp_path):
    _expect_config_error(EnvSpec.load, tmp_path / "missing.json", "not found")


def test_bad_overrides_name_the_field():
    with pytest.raises(ConfigError, match="slate_size"):
        SlateEnv(slate_size=0)
    with pytest.raises(ConfigError, match="reward.bonus"):
        SlateEnv(reward={"bonus": 1.0})
    with pytest.raises(ConfigError, match="no_such_option"):
        SlateEnv(no_such_option=1)


def test_valid_spec_file_round_trips(tmp_path):
    spec = EnvSpec.builtin("synthetic-v0").with_overrides(slate_size=3, reward={"rating": 0.5})
    p = _write(tmp_path, spec.model_dump_json(), "env.json")
    assert EnvSpec.load(p) == spec
    env = SlateEnv(spec=p)
    assert env.action_space.shape == (3,) and env.sim_spec.reward.rating == 0.5 and env.sim_spec.reward.click == 1.0


# -- catalogs ------------------------------------------------------------------------------------

def test_valid_catalog_loads_and_round_trips(tmp_path):
    cat = Catalog.load(_write(tmp_path, CATALOG, "cat.json"))
    assert len(cat) == 2 and cat.dim == 2 and cat.n_topics == 2
    np.testing.assert_allclose(np.linalg.norm(cat.features, axis=1), 1.0, rtol=1e-6)  # normalised
    np.testing.assert_allclose(cat.topic_weights, [[1.0, 0.0], [0.5, 0.5]])
    assert list(cat.topic) == [0, 1] and cat.year.tolist() == [1999, 0]
    out = tmp_path / "again.json"
    cat.save(out)
    again = Catalog.load(out)
    assert again.ids == cat.ids and again.item_topics == cat.item_topics and again.attributes == cat.attributes
    np.testing.assert_allclose(again.features, cat.features, rtol=1e-6)
    np.testing.assert_allclose(again.quality, cat.quality)


@pytest.mark.parametrize("path, value, fields", [
    ("items.0.quality", 1.5, ["items.0.quality"]),
    ("items.0.quality", "good", ["items.0.quality"]),
    ("items.1.features", ["x", 1.0], ["items.1.features"]),
    ("items.1.features", [], ["items.1.features"]),
    ("items.0.year", 1500, ["items.0.year"]),
    ("items.0.popularity", 2.0, ["items.0.popularity"]),
    ("items.0.rating", 4, ["items.0.rating"]),
    ("items.1.topics", [], ["items.1.topics"]),
    ("items.0.title", _DEL, ["items.0.title"]),
    ("extra", True, ["extra"]),
    ("items", [], ["items"]),
    ("items.1.id", "a", ["'id'", "['a']"]),  # duplicate id
    ("items.1.topics", ["opera"], ["'opera'", "topics"]),
    ("items.1.features", [0.0, 1.0, 2.0], ["features"]),  # inconsistent lengths
])
def test_bad_catalog_names_file_and_field(tmp_path, path, value, fields):
    p = _write(tmp_path, _mutate(CATALOG, path, value), "cat.json")
    _expect_config_error(Catalog.load, p, *fields)


def test_catalog_rejects_non_finite_features(tmp_path):
    text = json.dumps(CATALOG).replace("[1.0, 0.0]", "[NaN, 0.0]")
    _expect_config_error(Catalog.load, _write(tmp_path, text, "cat.json"), "items.0.features", "finite")


@pytest.mark.parametrize("text", ['{"items": [}', "", "{\"topics\": [\"a\"] \"items\": []}"])
def test_catalog_invalid_json_syntax(tmp_path, text):
    _expect_config_error(Catalog.load, _write(tmp_path, text, "cat.json"), "JSON", "line")


# -- built-ins -----------------------------------------------------------------------------------

def test_builtin_pack_and_spec_load():
    assert "synthetic-v0" in builtin_packs() and "synthetic-v0" in builtin_specs()
    pack = PersonaPack.load("synthetic-v0")
    assert pack == PersonaPack.builtin("synthetic-v0") and len(pack) >= 200
    spec = resolve_spec("synthetic-v0")
    assert spec == EnvSpec.builtin("synthetic-v0")
    assert spec.id == "simrec/Synthetic-v0" and spec.slate_size == 5 and spec.num_candidates == 50
    assert spec.max_steps == 50 and spec.reward.click == 1.0 and spec.backend == "embedded"


@pytest.mark.parametrize("name", builtin_specs())
def test_every_shipped_spec_parses_and_is_registered(name):
    spec = EnvSpec.builtin(name)
    assert spec.id in gymnasium.registry
    assert gymnasium.registry[spec.id].kwargs == {"spec": name}


def test_unknown_builtins_list_the_choices():
    with pytest.raises(ConfigError, match="synthetic-v0"):
        PersonaPack.builtin("no-such-pack")
    with pytest.raises(ConfigError, match="synthetic-v0"):
        EnvSpec.builtin("no-such-env")
    with pytest.raises(ConfigError, match="synthetic-v0"):
        resolve_spec("no-such-env")


def test_shipped_persona_pack_equals_its_generator():
    """personas/synthetic-v0.json is synthetic_personas(0) written out: the two must never disagree."""
    generated = synthetic_personas(0)
    shipped = PersonaPack.builtin("synthetic-v0")
    assert shipped == generated
    on_disk = REPO / "personas" / "synthetic-v0.json"
    if on_disk.exists():  # source checkout: the repo file is the packaged one
        assert PersonaPack.load(on_disk) == generated


def test_pack_save_load_round_trip(tmp_path):
    pack = synthetic_personas(3, n=12)
    out = tmp_path / "pack.json"
    pack.save(out)
    assert PersonaPack.load(out) == pack
    assert simrec.PersonaPack is PersonaPack
