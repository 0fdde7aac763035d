"""Matplotlib figures of trajectory logs, one function per view; each returns a ``Figure``.

Every function takes one run (:class:`~simrec.trajectory.Trajectories`) or several as a mapping
``label -> Trajectories``; several runs are drawn on the same axes, run ``i`` always in colour ``C{i}``
so a report reads consistently. A view whose data no run has (no catalog, no latent columns, no LLM
calls) raises :class:`NoDataError` (a ``ValueError``), so callers can skip it and say why.

matplotlib is imported inside the functions (it is not a core dependency) and drives the Agg canvas
directly, never pyplot: no global figure state, nothing to close, safe in threads and headless.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from simrec.analysis.exposure import exposure_counts, gini, lorenz_curve, topic_entropy_over_time
from simrec.errors import SimrecError
from simrec.trajectory import Trajectories

Runs = Trajectories | Mapping[str, Trajectories]


class MissingDependencyError(SimrecError, ImportError):
    """matplotlib is needed for plots and reports but is not installed."""


class NoDataError(SimrecError, ValueError):
    """No run has the data a figure needs (e.g. no LLM calls, no catalog)."""


# -- helpers --------------------------------------------------------------------------------------
def run_label(traj: Trajectories, default: str = "run") -> str:
    """A short label of a run: its recommender, else its directory name."""
    return str(traj.manifest.get("recommender") or (traj.path.name if traj.path else default))


def as_runs(runs: Runs, *, need_steps: bool = True) -> dict[str, Trajectories]:
    """``runs`` as an ordered ``label -> Trajectories`` dict; :class:`NoDataError` if ``need_steps``
    and no run recorded a step."""
    out = {run_label(runs): runs} if isinstance(runs, Trajectories) else dict(runs)
    if not out:
        raise ValueError("no runs to plot")
    if need_steps and not any(len(tr.steps) for tr in out.values()):
        raise NoDataError("no run recorded any step")
    return out


def _figure(ncols: int = 1, nrows: int = 1, *, panel: tuple[float, float] = (5.4, 3.6)) -> tuple[Any, np.ndarray]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError("plots need matplotlib. Fix: pip install matplotlib") from None
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas renders PNGs without pyplot or a display
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).reshape(nrows, ncols)
    return fig, axes


def _style(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.spines[["top", "right"]].set_visible(False)


def _legend(ax: Any, **kw: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, frameon=False, **kw)


def _rolling(y: pd.Series | np.ndarray, window: int) -> np.ndarray:
    # centred so a trend is not shifted right; min_periods=1 keeps the ends
    return pd.Series(np.asarray(y, dtype=float)).rolling(window, center=True, min_periods=1).mean().to_numpy()


def _auto_window(n: int, target: int = 10) -> int:
    # about `target` independent points across the x range; odd so the centred mean is symmetric
    return max(1, round(n / target)) | 1


def _stack(col: pd.Series, dtype: Any) -> np.ndarray:
    if len(col) == 0:
        return np.zeros((0, 0), dtype=dtype)
    return np.stack([np.asarray(v, dtype=dtype) for v in col.to_numpy()])


def _n_items(traj: Trajectories, catalog: Any | None) -> int:
    if catalog is not None:
        return len(catalog)
    try:
        return int(traj.manifest["spec"]["world"]["n_items"])
    except (KeyError, TypeError, ValueError):  # no size in the spec: the largest index seen bounds it
        slates = traj.steps["slate"] if len(traj.steps) else []
        return int(max((int(np.max(s)) for s in slates if len(s)), default=-1)) + 1


def _scalar_series(col: pd.Series) -> np.ndarray:
    """A latent column as one float per row (vector latents such as boredom: their mean)."""
    vals = col.to_numpy()
    if len(vals) and isinstance(vals[0], (list, tuple, np.ndarray)):
        return np.array([float(np.mean(v)) if len(v) else math.nan for v in vals])
    return pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)


# -- figures --------------------------------------------------------------------------------------
def engagement_figure(runs: Runs, *, window: int | None = None) -> Any:
    """CTR by step within a session (averaged over sessions) and by episode, raw (faint) and as a
    centred rolling mean (solid) over ``window`` points (default: a tenth of the longest run's x range,
    the same for every run so their smoothness compares)."""
    rs = as_runs(runs)
    fig, ax = _figure(2)
    a, b = ax[0, 0], ax[0, 1]
    live = {name: tr for name, tr in rs.items() if len(tr.steps)}
    w_t = window or _auto_window(max((int(tr.steps["t"].max()) for tr in live.values()), default=1))
    w_ep = window or _auto_window(max((len(tr.episodes) for tr in live.values()), default=1))
    for i, (name, tr) in enumerate(rs.items()):
        if name not in live:
            continue
        s, e, c = tr.steps, tr.episodes, f"C{i % 10}"
        clicks = np.array([np.sum(v) for v in s["clicked"].to_numpy()], dtype=float)
        shown = np.array([len(v) for v in s["clicked"].to_numpy()], dtype=float)
        by_t = pd.DataFrame({"t": s["t"].to_numpy(), "c": clicks, "n": shown}).groupby("t").sum()
        ctr_t = by_t["c"] / by_t["n"].replace(0, np.nan)
        a.plot(ctr_t.index, ctr_t.to_numpy(), color=c, alpha=0.25, linewidth=1)
        a.plot(ctr_t.index, _rolling(ctr_t, w_t), color=c, linewidth=2, label=name)
        if len(e):
            ep_ctr = (e["clicks"] / e["shown"].replace(0, np.nan)).to_numpy(dtype=float)
            x = np.arange(1, len(ep_ctr) + 1)
            b.plot(x, ep_ctr, color=c, alpha=0.25, linewidth=1)
            b.plot(x, _rolling(ep_ctr, w_ep), color=c, linewidth=2, label=name)
    _style(a, f"CTR by step within a session (rolling mean of {w_t})", "step in session (1 = first)",
           "CTR (clicks / item shown)")
    _style(b, f"CTR per session (rolling mean of {w_ep})", "session (episode) number", "CTR (clicks / item shown)")
    for x in (a, b):
        x.set_ylim(bottom=0)
        _legend(x)
    return fig


def position_figure(runs: Runs) -> Any:
    """Click rate by slate position (1 = top of the slate), one bar per run at each position."""
    rs = as_runs(runs)
    fig, ax = _figure(1, panel=(7.0, 3.6))
    a = ax[0, 0]
    rates = {name: _stack(tr.steps["clicked"], bool).mean(axis=0) for name, tr in rs.items() if len(tr.steps)}
    k = max((len(r) for r in rates.values()), default=0)
    width = 0.8 / max(len(rs), 1)
    for i, name in enumerate(rs):
        if name not in rates:
            continue
        r = rates[name]
        x = np.arange(1, len(r) + 1) + (i - (len(rs) - 1) / 2) * width
        a.bar(x, r, width=width * 0.95, color=f"C{i % 10}", label=name)
    a.set_xticks(np.arange(1, k + 1))
    _style(a, "Click rate by slate position", "slate position (1 = top)", "click rate (clicks / impressions)")
    _legend(a)
    return fig


def topic_entropy_figure(runs: Runs, catalogs: Mapping[str, Any] | Any, *, window: int | None = None) -> Any:
    """Entropy (bits) of the topics of clicked items per window of steps, with the maximum
    ``log2(n_topics)`` dashed. ``catalogs`` maps run labels to catalogs (one catalog for one run);
    runs without one are skipped. ``window`` (steps) is shared by all runs, because the plug-in entropy
    grows with the clicks in a window; it defaults to an eighth of the shortest run (at least 20).
    A last window shorter than half of ``window`` is left out (too few clicks: biased low)."""
    rs = as_runs(runs)
    cats = catalogs if isinstance(catalogs, Mapping) else {name: catalogs for name in rs}
    live = {name: tr for name, tr in rs.items() if cats.get(name) is not None and len(tr.steps)}
    if not live:
        raise NoDataError("the catalog could not be rebuilt from the log's spec (e.g. its dataset is not here)")
    w = window or max(20, min(len(tr.steps) for tr in live.values()) // 8)
    fig, ax = _figure(1, panel=(8.0, 3.8))
    a = ax[0, 0]
    maxima = set()
    for i, (name, tr) in enumerate(rs.items()):
        if name not in live:
            continue
        cat = cats[name]
        df = topic_entropy_over_time(tr, cat, w)
        if len(df) > 1 and df["stop"].iloc[-1] - df["start"].iloc[-1] < w / 2:
            df = df.iloc[:-1]
        mid = (df["start"] + df["stop"]) / 2
        a.plot(mid, df["entropy"], color=f"C{i % 10}", marker="o" if len(df) <= 60 else None, markersize=3,
               linewidth=1.8, label=name)
        maxima.add(cat.n_topics)
    for n in sorted(maxima):
        a.axhline(math.log2(n), color="0.4", linestyle="--", linewidth=1, label=f"maximum: even over {n} topics")
    _style(a, f"Topic entropy of clicked items (windows of {w} steps)", "step of the run (window centre)",
           "entropy (bits)")
    a.set_ylim(bottom=0)
    _legend(a, loc="lower right")
    return fig


def lorenz_figure(runs: Runs, catalogs: Mapping[str, Any] | None = None) -> Any:
    """Lorenz curves of item exposure, impressions (left) and clicks (right), with each run's Gini
    coefficient in the legend and the line of equal exposure dashed. The catalog size comes from
    ``catalogs`` when given, else from the log's spec."""
    rs = as_runs(runs)
    cats = catalogs or {}
    fig, ax = _figure(2, panel=(4.8, 4.5))
    for j, what in enumerate(("shown", "clicked")):
        a = ax[0, j]
        a.plot([0, 1], [0, 1], color="0.4", linestyle="--", linewidth=1, label="equal exposure (Gini 0)")
        for i, (name, tr) in enumerate(rs.items()):
            if len(tr.steps) == 0:
                continue
            counts = exposure_counts(tr, _n_items(tr, cats.get(name)), what=what)
            x, y = lorenz_curve(counts)
            a.plot(x, y, color=f"C{i % 10}", linewidth=2, label=f"{name} (Gini {gini(counts):.3f})")
        noun = "impressions" if what == "shown" else "clicks"
        _style(a, f"Exposure Lorenz curve: {noun}", "fraction of catalog items (least exposed first)",
               f"cumulative share of {noun}")
        a.set_xlim(0, 1)
        a.set_ylim(0, 1)
        a.set_aspect("equal")
        _legend(a, loc="upper left")
    return fig


def latent_figure(runs: Runs, latents: Sequence[str] = ("satisfaction", "fatigue")) -> Any:
    """User-state trajectories from the steps' ``latent_<name>`` columns (vector latents averaged):
    top, the mean by step within a session with the interquartile range shaded; bottom, the value at
    the end of each session by session number, as a rolling mean."""
    rs = as_runs(runs)
    names = [n for n in latents if any(f"latent_{n}" in tr.steps.columns and len(tr.steps) for tr in rs.values())]
    if not names:
        raise NoDataError(f"no run logged the latent state {', '.join(latents)} (the spec's log_latent is off)")
    fig, ax = _figure(len(names), 2, panel=(5.2, 3.3))
    w_used = _auto_window(max(len(tr.episodes) for tr in rs.values()))
    for j, n in enumerate(names):
        top, bottom = ax[0, j], ax[1, j]
        for i, (name, tr) in enumerate(rs.items()):
            col = f"latent_{n}"
            if col not in tr.steps.columns or len(tr.steps) == 0:
                continue
            c = f"C{i % 10}"
            df = pd.DataFrame({"t": tr.steps["t"].to_numpy(), "v": _scalar_series(tr.steps[col]),
                               "episode": tr.steps["episode"].to_numpy()})
            g = df.groupby("t")["v"]
            q = g.quantile([0.25, 0.75]).unstack()
            top.fill_between(q.index, q[0.25], q[0.75], color=c, alpha=0.15, linewidth=0)
            top.plot(g.mean().index, g.mean().to_numpy(), color=c, linewidth=2, label=name)
            end = df.groupby("episode", sort=True)["v"].last().to_numpy()
            x = np.arange(1, len(end) + 1)
            bottom.plot(x, end, color=c, alpha=0.25, linewidth=1)
            bottom.plot(x, _rolling(end, w_used), color=c, linewidth=2, label=name)
        unit = f"{n} (mean over topics)" if n == "boredom" else n
        _style(top, f"{n.capitalize()} within a session (mean, IQR shaded)", "step in session (1 = first)", unit)
        _style(bottom, f"{n.capitalize()} at session end (rolling mean of {w_used})", "session (episode) number", unit)
        _legend(top)
        _legend(bottom)
    return fig


def llm_figure(runs: Runs) -> Any:
    """LLM usage from the ``calls`` table: cumulative prompt (solid) and completion (dashed) tokens,
    cumulative cost in USD, and mean tokens per call by call kind (prompt, completion stacked lighter)."""
    rs = as_runs(runs, need_steps=False)
    with_calls = {name: tr.calls for name, tr in rs.items() if len(tr.calls)}
    if not with_calls:
        raise NoDataError("no run made LLM calls")
    fig, ax = _figure(3, panel=(4.6, 3.6))
    tok, cost, kinds_ax = ax[0, 0], ax[0, 1], ax[0, 2]
    num = lambda c, col: pd.to_numeric(c[col], errors="coerce").fillna(0).to_numpy(dtype=float) if col in c \
        else np.zeros(len(c))
    any_cost = False
    kinds = sorted({str(k) for c in with_calls.values() for k in c.get("kind", pd.Series(dtype=str)).dropna()})
    width = 0.8 / max(len(rs), 1)
    top = 0.0
    for i, name in enumerate(rs):
        if name not in with_calls:
            continue
        c, col = with_calls[name], f"C{i % 10}"
        x = np.arange(1, len(c) + 1)
        p, q, usd = num(c, "prompt_tokens"), num(c, "completion_tokens"), num(c, "cost_usd")
        tok.plot(x, np.cumsum(p), color=col, linewidth=2, label=f"{name}: prompt")
        tok.plot(x, np.cumsum(q), color=col, linewidth=2, linestyle="--", label=f"{name}: completion")
        any_cost |= bool(usd.sum() > 0)
        cost.plot(x, np.cumsum(usd), color=col, linewidth=2, label=f"{name} (${usd.sum():.4g})")
        if kinds and "kind" in c:
            k = c["kind"].astype(str).to_numpy()
            mp = np.array([p[k == kd].mean() if (k == kd).any() else 0.0 for kd in kinds])
            mq = np.array([q[k == kd].mean() if (k == kd).any() else 0.0 for kd in kinds])
            xs = np.arange(len(kinds)) + (i - (len(rs) - 1) / 2) * width
            kinds_ax.bar(xs, mp, width=width * 0.95, color=col, label=f"{name}: prompt")
            kinds_ax.bar(xs, mq, bottom=mp, width=width * 0.95, color=col, alpha=0.45, label=f"{name}: completion")
            top = max(top, float((mp + mq).max()))
    _style(tok, "Cumulative tokens", "LLM call number", "tokens")
    _style(cost, "Cumulative cost", "LLM call number", "cost (USD)")
    if not any_cost:
        cost.text(0.5, 0.5, "no cost recorded\n(local model or unpriced)", transform=cost.transAxes,
                  ha="center", va="center", color="0.35")
    _style(kinds_ax, "Mean tokens per call by kind", "call kind", "tokens per call (stacked)")
    kinds_ax.set_xticks(np.arange(len(kinds)), kinds)
    if top > 0:  # headroom so the legend sits above the bars
        kinds_ax.set_ylim(0, top * (1.15 + 0.1 * len(with_calls)))
    for a in (tok, cost, kinds_ax):
        _legend(a)
    return fig
