"""HTML reports: self-contained files with valid embedded PNGs; exposure and topic-entropy metrics."""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")

from simrec.analysis.exposure import (
    entropy_bits,
    exposure_counts,
    gini,
    lorenz_curve,
    topic_entropy_over_time,
)
from simrec.analysis.report import add_arguments, render_json_report, render_report, run_cli
from simrec.envs.slate_env import SlateEnv
from simrec.recommenders import make_recommender, run_episodes
from simrec.trajectory import Recorder, Trajectories, read_trajectories

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from llm_servers import CallingBackend  # noqa: E402
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class FakeLLM(CallingBackend):
    """LLM-style call records with growing prompt tokens and a cost, so the token and cost plots have data."""

    def record(self, pop, u: int, kind: str) -> dict:
        return {"model": "fake-model", "prompt_tokens": 300 + self.n, "completion_tokens": 40, "latency_s": 0.01,
                "cost_usd": 1e-4, "cache_hit": False, "fallback": False, "parse_status": "ok"}


def record(path: Path, name: str, episodes: int = 4, **env_kw) -> Path:
    env = Recorder(SlateEnv(max_steps=env_kw.pop("max_steps", 8), **env_kw), path, recommender=name)
    run_episodes(env, make_recommender(name, env.action_space, seed=0), episodes, seed=0)
    env.close()
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("runs")
    return {"linucb": record(d / "linucb", "linucb"), "random": record(d / "random", "random"),
            "llm": record(d / "llm", "popular", episodes=3, max_steps=5, backend=FakeLLM()),
            "nolatent": record(d / "nolatent", "greedy", episodes=2, log_latent=False)}


class Resources(HTMLParser):
    """Collects what a page would load: tag names and every src/href/srcset/style attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[tuple[str, str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href", "srcset", "poster", "data", "action", "style", "background"):
                self.refs.append((tag, k, v or ""))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def check_self_contained(path: Path) -> tuple[Resources, list[np.ndarray]]:
    import matplotlib.image as mpimg

    html = path.read_text(encoding="utf-8")
    p = Resources()
    p.feed(html)
    assert not {"script", "link", "iframe", "object", "embed"} & set(p.tags)
    assert "url(" not in html and "@import" not in html  # no CSS-loaded resources
    images = []
    for tag, attr, value in p.refs:
        if attr == "style":
            continue
        assert tag == "img" and attr == "src" and value.startswith("data:image/png;base64,"), (tag, attr, value[:60])
        raw = base64.b64decode(value.split(",", 1)[1], validate=True)
        assert raw.startswith(PNG_MAGIC)
        img = mpimg.imread(io.BytesIO(raw), format="png")
        h, w = img.shape[:2]
        assert 200 <= h <= 3000 and 400 <= w <= 3000, (h, w)
        assert img.std() > 0.01  # something is drawn, not a blank canvas
        images.append(img)
    return p, images


def test_comparison_report_is_self_contained(runs: dict[str, Path], tmp_path: Path) -> None:
    out = render_report([runs["linucb"], runs["random"]], tmp_path / "sub" / "cmp.html")
    assert out == tmp_path / "sub" / "cmp.html" and out.is_file()
    parser, images = check_self_contained(out)
    # engagement, position, topic entropy, Lorenz, latent state; no LLM figure without calls
    assert len(images) == 5
    text = " ".join(parser.text)
    assert "linucb" in text and "random" in text and "linucb vs random" in text
    for field in ("simrec/Synthetic-v0", "embedded", "0.1.0", "Gini", "CTR"):
        assert field in text, field
    assert "LLM tokens and cost: omitted" in text


def test_single_llm_run_report_has_cost_plot(runs: dict[str, Path], tmp_path: Path) -> None:
    out = render_report(runs["llm"], tmp_path / "llm.html", title="An <LLM> run & more")
    parser, images = check_self_contained(out)
    assert len(images) == 6
    text = " ".join(parser.text)
    assert "An <LLM> run & more" in text  # the title is escaped in the file and reads back verbatim
    assert "<LLM>" not in out.read_text(encoding="utf-8")
    assert "fake-model" in text and "fake-llm" in text and "LLM tokens and cost" in text


def test_report_without_latent_state_says_what_it_omitted(runs: dict[str, Path], tmp_path: Path) -> None:
    out = render_report(str(runs["nolatent"]), tmp_path / "r.html")
    parser, images = check_self_contained(out)
    text = " ".join(parser.text)
    assert "Satisfaction and fatigue: omitted" in text and len(images) == 4
    assert "greedy on simrec/Synthetic-v0" in text  # default title
    out = render_report([runs["nolatent"], runs["random"]], tmp_path / "two.html")
    text = " ".join(check_self_contained(out)[0].text)
    assert "greedy: not in the satisfaction and fatigue plots" in text and "random: not in" not in text


def test_json_report_renders_tables_and_series(tmp_path: Path) -> None:
    res = {"command": "compare", "seed": 3,
           "results": {"linucb": {"ctr": 0.21, "mean_return": 12.5, "ctr_curve": [0.1, 0.2, 0.25]},
                       "<random>": {"ctr": 0.12, "mean_return": 7.0, "ctr_curve": [0.1, 0.11, None]}},
           "returns": {"linucb": [1, 2, 3], "random": [1, 1, 1]},
           "records": [{"name": "t1", "p": 0.04}, {"name": "t2", "p": 0.5}],
           "matrix": [[1, 2], [3, 4]]}
    (tmp_path / "r.json").write_text(json.dumps(res))
    out = render_json_report(tmp_path / "r.json", tmp_path / "r.html")
    parser, images = check_self_contained(out)
    assert len(images) == 2  # ctr_curve (a line per name) and returns
    text = " ".join(parser.text)
    for s in ("compare", "linucb", "<random>", "0.21", "12.5", "mean_return", "t2", "[[1, 2], [3, 4]]"):
        assert s in text, s


def test_cli_glue(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([str(runs["random"])]).out == "report.html"
    args = parser.parse_args([str(runs["linucb"]), str(runs["random"]), "--out", str(tmp_path / "c.html"),
                              "--title", "T"])
    assert run_cli(args) == 0 and (tmp_path / "c.html").is_file() and "c.html" in capsys.readouterr().out
    (tmp_path / "x.json").write_text(json.dumps({"a": {"m": 1}, "b": {"m": 2}}))
    assert run_cli(parser.parse_args([str(tmp_path / "x.json"), "--out", str(tmp_path / "j.html")])) == 0
    assert "<title>x</title>" in (tmp_path / "j.html").read_text()


def test_core_modules_import_without_matplotlib() -> None:
    code = ("import sys; sys.modules['matplotlib'] = None\n"  # None: any matplotlib import fails
            "import simrec.analysis, simrec.analysis.exposure, simrec.analysis.plots, simrec.analysis.report\n"
            "import pandas as pd\nfrom simrec.trajectory import Trajectories\n"
            "from simrec.analysis.plots import MissingDependencyError, position_figure\n"
            "tr = Trajectories(pd.DataFrame({'t': [1], 'clicked': [[True]]}), pd.DataFrame(), pd.DataFrame(), {})\n"
            "try:\n    position_figure(tr)\nexcept MissingDependencyError as e:\n    print('ok', e)\n")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("ok") and "pip install matplotlib" in r.stdout, r.stderr


# -- metrics --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 5, 100])
def test_gini_known_answers(n: int) -> None:
    assert gini(np.full(n, 7)) == pytest.approx(0.0, abs=1e-12)
    one = np.zeros(n)
    one[-1] = 42
    assert gini(one) == pytest.approx((n - 1) / n)
    assert gini(np.random.default_rng(n).permutation(one) * 3) == pytest.approx((n - 1) / n)  # order, scale free
    assert math.isnan(gini(np.zeros(n)))


def test_gini_is_twice_the_area_between_diagonal_and_lorenz() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        c = rng.poisson(rng.uniform(0.1, 5), size=rng.integers(1, 60))  # small rates: many zeros
        if c.sum() == 0:
            continue
        x, y = lorenz_curve(c)
        area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
        assert gini(c) == pytest.approx(1 - 2 * area, abs=1e-9)


def test_lorenz_curve() -> None:
    x, y = lorenz_curve([3, 0, 1, 0])
    assert (x[0], y[0]) == (0.0, 0.0) and (x[-1], y[-1]) == (1.0, 1.0)
    assert np.allclose(x, [0, 0.25, 0.5, 0.75, 1]) and np.allclose(y, [0, 0, 0, 0.25, 1])
    assert np.all(np.diff(y) >= 0) and np.all(y <= x + 1e-12)
    x, y = lorenz_curve(np.zeros(3))
    assert np.allclose(x, y) and y[-1] == 1.0


def fake_traj(slates: list[list[int]], clicked: list[list[bool]]) -> Trajectories:
    steps = pd.DataFrame({"episode": [i // 2 for i in range(len(slates))], "t": [i % 2 + 1 for i in range(len(slates))],
                          "slate": slates, "clicked": clicked})
    return Trajectories(steps, pd.DataFrame(), pd.DataFrame(), {})


def test_topic_entropy_single_topic_is_zero_and_even_split_is_one_bit() -> None:
    tw = np.zeros((6, 3))
    tw[[0, 1, 2], 0] = 1  # items 0-2: topic 0; item 3: topic 1; item 4: topic 2; item 5: topics 1 and 2
    tw[3, 1] = tw[4, 2] = 1
    tw[5, [1, 2]] = 0.5
    cat = SimpleNamespace(topic_weights=tw, n_topics=3)
    tr = fake_traj([[0, 1], [2, 3], [1, 2], [3, 4], [5, 0]],
                   [[True, True], [True, False], [False, True], [True, True], [True, False]])
    df = topic_entropy_over_time(tr, cat, window=2)
    assert list(df["start"]) == [0, 2, 4] and list(df["stop"]) == [2, 4, 5] and list(df["clicks"]) == [3, 3, 1]
    assert df["entropy"].iloc[0] == 0.0  # three clicks, all topic 0
    assert df["entropy"].iloc[1] == pytest.approx(entropy_bits([1, 1, 1]))  # topics 0, 1, 2
    assert df["entropy"].iloc[2] == pytest.approx(1.0)  # one click split evenly over two topics
    assert df["entropy_norm"].iloc[1] == pytest.approx(1.0)
    by_ep = topic_entropy_over_time(tr, cat, window=1, by="episode")
    assert list(by_ep["clicks"]) == [3, 3, 1] and by_ep["entropy"].iloc[0] == 0.0
    empty = topic_entropy_over_time(fake_traj([[0, 1]], [[False, False]]), cat, window=5)
    assert empty["clicks"].tolist() == [0] and math.isnan(empty["entropy"].iloc[0])


def test_exposure_counts_match_the_log(runs: dict[str, Path]) -> None:
    tr = read_trajectories(runs["random"])
    slates, clicked = np.stack(tr.steps["slate"].to_numpy()), np.stack(tr.steps["clicked"].to_numpy())
    shown = exposure_counts(tr, 1200)
    assert shown.shape == (1200,) and shown.sum() == slates.size and shown[slates[0, 0]] >= 1
    clicks = exposure_counts(tr, 1200, what="clicked")
    assert clicks.sum() == clicked.sum() and np.all(clicks <= shown)
    with pytest.raises(ValueError, match="outside a catalog"):
        exposure_counts(tr, 10)
