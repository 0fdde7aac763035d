"""The stress-test protocol: a seeded study that runs a list of recommenders on the same users and writes
JSON, plots and a table.

A stress test is a :class:`StressTest` subclass in its own module of :mod:`simrec.stress` with a ``name``,
the ``question`` it answers, its ``protocol`` and ``metric`` (all shown by ``simrec stress list`` and in the
README), default recommenders, and :meth:`StressTest.run_seed`, which measures every recommender for one
seed. The base class loops over seeds, aggregates each headline metric (mean and 95% t interval over seeds),
averages the curves, writes ``result.json`` and one PNG per curve under ``out``, and renders a table.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from simrec.evaluation.stats import ci_summary, ci_table


class StressConfig(BaseModel):
    """Settings every stress test takes; each test reads the ones it needs and documents its defaults."""

    model_config = ConfigDict(extra="forbid")

    env: str = Field("simrec/Synthetic-v0", description="Registered env id.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Env spec overrides (gym.make kwargs).")
    recommenders: list[str] | None = Field(None, description="Recommenders to run; None = the test's defaults.")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], description="Seeds; each is a full repetition.")
    episodes: int | None = Field(None, ge=1, description="Sessions per recommender and seed; None = the test's default.")
    fit_episodes: int = Field(300, ge=1, description="Logging-policy sessions fitted recommenders learn from.")
    llm: dict[str, Any] | None = Field(None, description="LLM backend config for tests with LLM users.")
    out: Path | None = Field(None, description="Directory for result.json and plots.")
    progress: bool = True


@dataclass
class StressResult:
    """What a stress test measured: headline metrics per recommender and seed, curves, settings."""

    name: str
    question: str
    metrics: dict[str, dict[str, list[float]]]
    curves: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)
    curve_axes: dict[str, tuple[str, str]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    higher_is_better: dict[str, bool] = field(default_factory=dict)

    def aggregate(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{recommender: {metric: {mean, ci_low, ci_high, values}}}``."""
        return {rec: {m: ci_summary(vals) for m, vals in per.items()} for rec, per in self.metrics.items()}

    def mean_curves(self) -> dict[str, dict[str, list[float]]]:
        """Each curve averaged over seeds (curves of unequal length are cut to the shortest)."""
        out: dict[str, dict[str, list[float]]] = {}
        for curve, per in self.curves.items():
            out[curve] = {}
            for rec, runs in per.items():
                n = min(len(r) for r in runs) if runs else 0
                out[curve][rec] = np.nanmean(np.array([r[:n] for r in runs], dtype=np.float64), axis=0).tolist() if n else []
        return out

    def markdown(self) -> str:
        agg = self.aggregate()
        metrics = list(next(iter(agg.values())).keys()) if agg else []
        return ci_table(agg, metrics, self.higher_is_better)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "question": self.question, "recommenders": self.aggregate(),
                "curves": self.mean_curves(), "curve_axes": {k: list(v) for k, v in self.curve_axes.items()},
                "info": self.info}

    def save(self, out: str | Path) -> list[Path]:
        """Write ``result.json``, ``table.md`` and one PNG per curve into ``out``; the paths written."""
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        paths = [d / "result.json", d / "table.md"]
        paths[0].write_text(json.dumps(self.to_dict(), indent=1, default=_json_default) + "\n", encoding="utf-8")
        paths[1].write_text(f"{self.question}\n\n{self.markdown()}\n", encoding="utf-8")
        try:
            paths += self._plots(d)
        except ImportError:  # plots need the report extra; the numbers are written regardless
            pass
        return paths

    def _plots(self, d: Path) -> list[Path]:
        from matplotlib.figure import Figure

        written = []
        for curve, per in self.mean_curves().items():
            fig = Figure(figsize=(6.4, 3.8), layout="constrained")
            ax = fig.add_subplot()
            for i, (rec, y) in enumerate(per.items()):
                ax.plot(np.arange(len(y)), y, label=rec, color=f"C{i % 10}", lw=1.6)
            xlabel, ylabel = self.curve_axes.get(curve, ("step", curve))
            ax.set(title=f"{self.name}: {curve}", xlabel=xlabel, ylabel=ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, frameon=False)
            path = d / f"{curve.replace(' ', '_').replace('/', '_')}.png"
            fig.savefig(path, dpi=100)
            written.append(path)
        return written


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


class StressTest:
    """Base class of the stress tests; subclasses set the class attributes and implement :meth:`run_seed`."""

    name: ClassVar[str] = ""
    question: ClassVar[str] = ""
    protocol: ClassVar[str] = ""
    metric: ClassVar[str] = ""
    default_recommenders: ClassVar[tuple[str, ...]] = ("random", "popular", "greedy", "linucb", "ease", "bad")
    default_episodes: ClassVar[int] = 100
    #: Headline metrics where larger is better (the table's arrows); others are lower-is-better or neutral.
    higher_is_better: ClassVar[Mapping[str, bool]] = {}

    def __init__(self, config: StressConfig | Mapping[str, Any] | None = None) -> None:
        self.config = config if isinstance(config, StressConfig) else StressConfig(**(config or {}))

    @property
    def recommenders(self) -> list[str]:
        return list(self.config.recommenders or self.default_recommenders)

    @property
    def episodes(self) -> int:
        return int(self.config.episodes or self.default_episodes)

    def run_seed(self, seed: int, recommenders: Sequence[str]) -> tuple[dict[str, dict[str, float]],
                                                                        dict[str, dict[str, list[float]]]]:
        """Measure every recommender for one seed: ``(metrics[rec][metric], curves[curve][rec])``."""
        raise NotImplementedError

    def curve_axes(self) -> dict[str, tuple[str, str]]:
        """``{curve: (x label, y label)}`` for the plots."""
        return {}

    def fit_data(self, seed: int, recommenders: Sequence[str]) -> Any:
        """The seed's shared fit data (:func:`~simrec.evaluation.compare.fit_interactions`), or None when no
        recommender in ``recommenders`` is fitted on logs."""
        from simrec.evaluation.compare import fit_interactions
        from simrec.recommenders import fitted_names

        if not set(recommenders) & set(fitted_names()):
            return None
        cfg = self.config
        return fit_interactions(cfg.env, cfg.overrides, seed, fit_episodes=cfg.fit_episodes)

    def run(self) -> StressResult:
        from tqdm.auto import tqdm

        names = self.recommenders
        metrics: dict[str, dict[str, list[float]]] = {n: {} for n in names}
        curves: dict[str, dict[str, list[list[float]]]] = {}
        t0 = time.perf_counter()
        for seed in tqdm(self.config.seeds, desc=self.name, unit="seed", disable=not self.config.progress,
                         file=sys.stderr, dynamic_ncols=True):
            m, c = self.run_seed(int(seed), names)
            for rec, row in m.items():
                for k, v in row.items():
                    metrics.setdefault(rec, {}).setdefault(k, []).append(float(v) if v is not None else math.nan)
            for curve, per in c.items():
                for rec, y in per.items():
                    curves.setdefault(curve, {}).setdefault(rec, []).append([float(x) for x in y])
        info = {"config": self.config.model_dump(mode="json"), "protocol": self.protocol, "metric": self.metric,
                "seconds": round(time.perf_counter() - t0, 1), "episodes": self.episodes}
        res = StressResult(self.name, self.question, metrics, curves, self.curve_axes(), info,
                           dict(self.higher_is_better))
        if self.config.out is not None:
            res.save(self.config.out)
        return res
