"""The stress tests with LLM users: position bias (embedded vs LLM users) and leakage inflation.

The embedded and fake-server tests need no model (the fake OpenAI server from ``llm_servers``, scripted
where a test needs a known behaviour). The last test runs the bundled SmolLM2-135M and, like
``tests/test_llm_local.py``, FAILS (never skips) when llama-cpp-python is missing.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from llm_servers import FakeOpenAIServer, llama_server  # noqa: F401  (fixture)

from simrec.llm.local_server import local_backend_config
from simrec.llm.sanitize import REDACTED, VIOLATION_KINDS, WITHHELD, LeakageError, Sanitizer, display_title
from simrec.stress import STRESS_TESTS, get_stress_test
from simrec.stress.leakage import ROWS, LeakageInflation
from simrec.stress.position_bias import PositionBias, position_stats

DEAD_URL = "http://127.0.0.1:9/v1"  # nothing listens: a run against it must be served from the cache
QUICK = {"watch_iters": 40, "rating_iters": 4, "choice_factors": 8}


def fake_llm(url: str) -> dict[str, Any]:
    return {"base_url": url, "model": "fake-model", "api_key": "x", "max_retries": 0, "timeout_s": 5.0}


class ClickFirstServer(FakeOpenAIServer):
    """The fake server, scripted: every slate decision clicks position 1 and nothing else."""

    def _answer(self, body: dict) -> tuple[int, dict, dict[str, str]]:
        status, obj, headers = super()._answer(body)
        if status == 200:
            reply = json.loads(obj["choices"][0]["message"]["content"])
            if "leave" in reply:  # a decision (judgements and reflections have no "leave")
                k = len(reply["items"])
                reply = {"items": [{"item": j, "clicked": j == 1, "rating": 4 if j == 1 else None,
                                    "consumption": 1 if j == 1 else 0} for j in range(1, k + 1)],
                         "leave": False, "reason": "the first one"}
                obj["choices"][0]["message"]["content"] = json.dumps(reply)
        return status, obj, headers


def same(a: Any, b: Any) -> bool:
    """Equal results, NaN included."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def texts(server: FakeOpenAIServer) -> list[str]:
    return ["\n".join(m["content"] for m in body["messages"]) for body in server.requests]


def test_both_tests_are_registered_and_use_llm() -> None:
    assert get_stress_test("position_bias") is PositionBias and get_stress_test("leakage") is LeakageInflation
    assert {"position_bias", "leakage"} <= set(STRESS_TESTS)
    assert PositionBias.uses_llm and LeakageInflation.uses_llm
    assert PositionBias.default_recommenders == ("embedded", "llm") and LeakageInflation.default_recommenders == ROWS


# -- position bias ------------------------------------------------------------------------------------


def test_position_stats_on_known_clickers() -> None:
    rng = np.random.default_rng(0)
    n, o, k = 200, 4, 5
    orders = np.argsort(rng.random((n, o, k)), axis=-1)
    slot = np.zeros((n, o, k), bool)
    slot[:, :, 0] = True  # always the top slot
    s = position_stats(slot, orders)
    assert s["rate"] == [1.0, 0, 0, 0, 0] and s["top_share"] == 1.0 and s["slot_share"] == 1.0
    assert s["follows_slot"] == 1.0 and s["follows_item"] == 0.0
    item = orders == 0  # always slate item 0, wherever it is
    s = position_stats(item, orders)
    assert s["follows_item"] == 1.0 and s["follows_slot"] == 0.0 and s["slot_share"] < 0.05
    valid = np.ones((n, o), bool)
    valid[:, 1] = False  # masked presentations count nowhere
    assert position_stats(slot, orders, valid)["presentations"] == n * (o - 1)


def embedded_run(**overrides: Any) -> tuple[dict[str, Any], list[float]]:
    res = PositionBias({"recommenders": ["embedded"], "seeds": [0], "episodes": 1500, "overrides": overrides,
                        "progress": False}).run()
    return ({k: v["mean"] for k, v in res.aggregate()["embedded"].items()},
            res.mean_curves()["click rate by position"]["embedded"])


def test_embedded_users_show_the_choice_models_position_bias() -> None:
    m, rate = embedded_run()
    flat, _ = embedded_run(choice={"position_decay": 0.0})  # control: the same users without the bias
    # measured: rate 0.216 .. 0.111 (ratio 1.94), control ratio 1.01
    assert all(a > b for a, b in itertools.pairwise(rate)) and m["top_bottom_ratio"] > 1.6
    assert 0.9 < flat["top_bottom_ratio"] < 1.1 and abs(flat["top_share"] - 0.2) < 0.02
    # clicks follow the slot in part (measured slot_share 0.057 vs 0.0), the item's identity most
    assert m["slot_share"] > 0.03 and flat["slot_share"] < 0.01
    assert m["follows_item"] > m["follows_slot"] and m["peak_position"] == 1 and m["fallback_rate"] == 0


def test_llm_row_measures_what_the_llm_does(tmp_path: Path) -> None:
    cfg = {"recommenders": ["embedded", "llm"], "seeds": [0], "episodes": 50, "out": tmp_path, "progress": False}
    with ClickFirstServer(log_requests=1000) as srv:
        res = PositionBias({**cfg, "llm": fake_llm(srv.base_url)}).run()
        sent = texts(srv)
    row = {k: v["mean"] for k, v in res.aggregate()["llm"].items()}
    assert res.mean_curves()["click rate by position"]["llm"] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert row["top_share"] == 1.0 and row["peak_position"] == 1 and row["ctr"] == 1.0
    assert row["follows_slot"] == 1.0 and row["follows_item"] == 0.0 and row["slot_share"] == 1.0
    assert row["fallback_rate"] == 0.0
    # the server saw 3 slates, each in 3 different orders of the same titles
    pages = [tuple(re.findall(r'^\d+\. "([^"]+)"', t, re.MULTILINE)) for t in sent]
    assert len(pages) == PositionBias.llm_pairs * PositionBias.llm_orders
    by_slate: dict[tuple, set] = {}
    for p in pages:
        by_slate.setdefault(tuple(sorted(p)), set()).add(p)
    assert len(by_slate) == 3 and all(len(v) == 3 for v in by_slate.values())
    # a second run replays from OUT/llm_cache.sqlite: no server needed, same numbers
    again = PositionBias({**cfg, "llm": fake_llm(DEAD_URL)}).run()
    assert same(again.aggregate(), res.aggregate())


def test_unknown_rows_are_refused() -> None:
    from simrec.errors import ConfigError

    with pytest.raises(ConfigError, match="user backends"):
        PositionBias({"recommenders": ["random"], "seeds": [0], "progress": False}).run()


# -- the sanitiser's off mode ---------------------------------------------------------------------------


def test_off_mode_counts_but_never_withholds_redacts_or_raises(catalog) -> None:
    off = Sanitizer(catalog, {"mode": "off"}, held_out=[3])
    assert off.item_label(3) == display_title(catalog.titles[3]) and off.item_blurb(3)
    assert Sanitizer(catalog, {"mode": "redact"}, held_out=[3]).item_label(3) == WITHHELD
    text = f'Later you watched "{catalog.titles[3]}" ({catalog.ids[5]}); fatigue: 0.4'
    msgs = [{"role": "system", "content": "You are someone."}, {"role": "user", "content": text}]
    out, res = off.enforce(msgs)
    assert out == msgs and out[1] is not msgs[1] and res.redactions == 0 and not res.ok
    kinds = sorted(v.kind for v in res.violations)
    assert kinds == ["catalog_id", "held_out_title", "internal"]
    same, res2 = off.enforce_text(text)
    assert same == text and not res2.ok and res2.redactions == 0
    assert off.counts["violations_held_out_title"] == 2 and off.counts["redactions"] == 0 == off.counts["raised"]
    # the other modes are unchanged
    red, _ = Sanitizer(catalog, {"mode": "redact"}, held_out=[3]).enforce(msgs)
    assert REDACTED in red[1]["content"] and catalog.titles[3] not in red[1]["content"]
    with pytest.raises(LeakageError):
        Sanitizer(catalog, {"mode": "strict"}, held_out=[3]).enforce(msgs)


# -- leakage --------------------------------------------------------------------------------------------


class SyntheticLeakage(LeakageInflation):
    data_env: ClassVar[str | None] = None  # the configured synthetic world, designated targets


def titled_log(d: Path, n_users: int = 40, n_items: int = 60, seed: int = 0) -> Path:
    """A small generic rating log whose titles are distinct two-word names (none inside another)."""
    rng = np.random.default_rng(seed)
    first = ["Amber", "Cobalt", "Crimson", "Dusky", "Golden", "Ivory", "Jade", "Scarlet", "Silver", "Violet"]
    second = ["Falcon", "Harbor", "Lantern", "Meadow", "Orchard", "Summit"]
    titles = [f"{a} {b}" for a in first for b in second][:n_items]
    d.mkdir(parents=True, exist_ok=True)
    U, V = rng.normal(size=(n_users, 3)), rng.normal(size=(n_items, 3))
    rows, t = ["user,item,rating,timestamp"], 0
    for u in range(n_users):
        score = U[u] @ V.T
        for i in rng.choice(n_items, size=15, replace=False, p=np.exp(score) / np.exp(score).sum()):
            t += int(rng.integers(1, 5000))
            rows.append(f"p{u},it{i},{int(np.clip(np.rint(3 + score[i] + rng.normal(0, 0.7)), 1, 5))},{t}")
    (d / "interactions.csv").write_text("\n".join(rows) + "\n")
    (d / "items.csv").write_text("id,title,genres\n" + "".join(f"it{i},{titles[i]},{'ab'[i % 2]}\n"
                                                               for i in range(n_items)))
    return d


@pytest.mark.parametrize("world", ["synthetic", "data"])
def test_leaky_arm_sends_real_target_titles_and_the_sanitised_arm_never(world: str, tmp_path: Path) -> None:
    if world == "data":  # the data-backed path (MovieLens-style split) on a small log, calibrated quickly
        cfg: dict[str, Any] = {"env": "simrec/MovieLens-v0", "overrides": {
            "world": {"data_dir": str(titled_log(tmp_path / "log")), "calibration": QUICK}}}
    else:
        cfg = {}
    cfg.update(seeds=[0], episodes=3, out=tmp_path / "out", progress=False)
    with FakeOpenAIServer(log_requests=1000) as srv:
        test = SyntheticLeakage({**cfg, "llm": fake_llm(srv.base_url)})
        res = test.run()
        sent = texts(srv)
    env, tasks = test.judge_tasks(0)  # the seed's pages, drawn again
    assert env.sim_spec.world.kind == ("movielens" if world == "data" else "synthetic")
    pop = env.sim.pop
    assert len(sent) == 2 * len(tasks) == 6
    for task in tasks:
        mine = [t for t in sent if t.startswith(f"You are {pop.personas[task.user].name}.")]
        sanitised = [t for t in mine if REDACTED in t]
        leaky = [t for t in mine if REDACTED not in t]
        assert len(sanitised) == len(leaky) == 1
        titles = [display_title(env.catalog.titles[i]) for i in task.targets]
        assert len(titles) == 2 and all(f'"{t}"' in leaky[0] for t in titles)  # on the page and in the leak
        assert all(leaky[0].count(t) == 2 for t in titles)
        assert not any(t in sanitised[0] for t in titles)
        check = Sanitizer.for_population(pop, {"titles": "real"}, held_out=task.targets).audit(
            sanitised[0], user_id=pop.user_id(task.user))
        assert not [v for v in check.violations if v.kind.startswith("held_out")], check
    agg = {r: {k: v["mean"] for k, v in row.items()} for r, row in res.aggregate().items()}
    assert list(agg) == list(ROWS)
    n_targets = sum(len(t.targets) for t in tasks)
    for arm in ("sanitised", "leaky"):
        assert {*VIOLATION_KINDS, "redactions", "failures"} <= set(agg[arm]) and agg[arm]["failures"] == 0
        assert 0 <= agg[arm]["acc"] <= 1
    assert agg["sanitised"]["held_out_title"] == n_targets == agg["sanitised"]["redactions"]  # the leak line
    assert agg["leaky"]["held_out_title"] == 2 * n_targets and agg["leaky"]["redactions"] == 0  # + the page
    assert agg["inflation"]["acc"] == pytest.approx(agg["leaky"]["acc"] - agg["sanitised"]["acc"])
    assert np.isnan(agg["inflation"]["held_out_title"])


def test_failed_judgements_are_counted_not_guessed(tmp_path: Path) -> None:
    with FakeOpenAIServer(faults={"malformed": 1.0}) as srv:  # every reply is cut in half
        res = SyntheticLeakage({"seeds": [0], "episodes": 2, "out": tmp_path, "progress": False,
                                "llm": fake_llm(srv.base_url)}).run()
    agg = res.aggregate()
    assert agg["sanitised"]["failures"]["mean"] == 2 == agg["leaky"]["failures"]["mean"]
    assert np.isnan(agg["sanitised"]["acc"]["mean"]) and np.isnan(agg["inflation"]["acc"]["mean"])


# -- the bundled model ----------------------------------------------------------------------------------


class SmallPositionBias(PositionBias):
    llm_pairs: ClassVar[int] = 1  # 3 calls


@pytest.mark.llm
def test_bundled_model_small_runs_and_replays(llama_server, tmp_path: Path) -> None:  # noqa: F811
    base = {"seeds": [0], "progress": False}
    pb = {**base, "recommenders": ["llm"], "out": tmp_path / "pb"}
    lk = {**base, "episodes": 1, "out": tmp_path / "lk"}
    first = SmallPositionBias({**pb, "llm": local_backend_config(llama_server)}).run()
    row = {k: v["mean"] for k, v in first.aggregate()["llm"].items()}
    rate = first.mean_curves()["click rate by position"]["llm"]
    assert row["fallback_rate"] == 0.0 and len(rate) == 5 and all(0 <= r <= 1 for r in rate)
    assert 1 <= row["peak_position"] <= 5 and 0 <= row["slot_share"] <= 1
    leak = SyntheticLeakage({**lk, "llm": local_backend_config(llama_server)}).run()
    arms = leak.aggregate()
    assert arms["sanitised"]["failures"]["mean"] == 0 == arms["leaky"]["failures"]["mean"]
    assert arms["sanitised"]["redactions"]["mean"] == 2 and arms["leaky"]["held_out_title"]["mean"] == 4
    # both replay from their caches with no server at all
    assert same(SmallPositionBias({**pb, "llm": local_backend_config(DEAD_URL)}).run().aggregate(), first.aggregate())
    assert same(SyntheticLeakage({**lk, "llm": local_backend_config(DEAD_URL)}).run().aggregate(), arms)
