"""Summary metrics over trajectory logs (:class:`~simrec.trajectory.Trajectories`).

:func:`summarize` returns one flat dict of floats per run, :func:`per_user` a DataFrame with a row
per user, :func:`format_summary` / :func:`format_table` render them for the terminal.

Definitions (``shown`` = slate items displayed, summed over steps):

* ``ctr``: clicks / shown; ``clicks_per_step``: clicks / steps.
* ``mean_rating``: mean stars over rated items; ``mean_consumption``: over clicked items.
* ``mean_session_length``: steps per finished session (all sessions if none finished).
* ``leave_rate``: fraction of finished sessions the user ended by leaving (vs. the step limit).
* ``catalog_coverage``: distinct items shown / catalog size; ``click_coverage``: distinct items clicked / catalog size.
* ``intra_list_diversity``: mean pairwise cosine distance ``1 - cos(f_i, f_j)`` within a slate.
* ``novelty``: mean self-information ``-log2(popularity)`` of shown items, popularity read as the
  share of users who know an item (floored at ``1 / n_items``); higher = further into the long tail.
* ``user_return_*``: distribution over users of each user's mean episode return.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from simrec.errors import SimrecError
from simrec.trajectory import Trajectories


def _stack(col: pd.Series, dtype: Any) -> np.ndarray:
    if len(col) == 0:
        return np.zeros((0, 0), dtype=dtype)
    return np.stack([np.asarray(v, dtype=dtype) for v in col.to_numpy()])


def load_catalog(traj: Trajectories) -> Any | None:
    """The catalog a log was recorded on, rebuilt from its spec (``None`` if that is impossible,
    e.g. a dataset-backed world whose data is not on this machine)."""
    try:
        from simrec.envs.registration import build_world

        return build_world(traj.spec.world).catalog
    except (SimrecError, OSError, ImportError, ValueError):  # e.g. a dataset not on this machine
        return None


def summarize(traj: Trajectories, *, catalog: Any | None = None, use_catalog: bool = True) -> dict[str, float]:
    """Headline metrics of a run (see the module docstring for definitions).

    ``catalog`` is needed for diversity and novelty; by default it is rebuilt from the log's spec.
    """
    steps, eps = traj.steps, traj.episodes
    if catalog is None and use_catalog and traj.manifest.get("spec"):
        catalog = load_catalog(traj)
    out: dict[str, float] = {"episodes": float(len(eps)), "steps": float(len(steps)),
                             "users": float(eps["user"].nunique()) if len(eps) else 0.0}
    if len(steps) == 0:
        return out
    clicked = _stack(steps["clicked"], bool)
    rating = _stack(steps["rating"], np.float32)
    cons = _stack(steps["consumption"], np.float32)
    slates = _stack(steps["slate"], np.int64)
    shown, clicks = clicked.size, int(clicked.sum())
    rated = ~np.isnan(rating)
    out["ctr"] = clicks / shown if shown else math.nan
    out["clicks_per_step"] = clicks / len(steps)
    out["mean_rating"] = float(rating[rated].mean()) if rated.any() else math.nan
    out["mean_consumption"] = float(cons[clicked].mean()) if clicks else math.nan
    out["mean_reward"] = float(steps["reward"].mean())

    done = eps[eps["terminated"] | eps["truncated"]] if len(eps) else eps
    basis = done if len(done) else eps
    out["mean_session_length"] = float(basis["steps"].mean()) if len(basis) else math.nan
    out["leave_rate"] = float(done["terminated"].mean()) if len(done) else math.nan
    out["mean_return"] = float(basis["return"].mean()) if len(basis) else math.nan
    out["std_return"] = float(basis["return"].std(ddof=0)) if len(basis) else math.nan

    n_items = len(catalog) if catalog is not None else _n_items(traj)
    if n_items:
        out["catalog_coverage"] = np.unique(slates).size / n_items
        out["click_coverage"] = np.unique(slates[clicked]).size / n_items
    if catalog is not None:
        if slates.shape[1] >= 2:
            out["intra_list_diversity"] = intra_list_diversity(slates, catalog.features)
        out["novelty"] = novelty(slates, catalog.popularity)

    users = per_user(traj)
    if len(users):
        r = users["mean_return"].to_numpy(dtype=float)
        out["sessions_per_user"] = float(users["sessions"].mean())
        out["user_return_mean"] = float(r.mean())
        out["user_return_std"] = float(r.std(ddof=0))
        out["user_return_p10"] = float(np.percentile(r, 10))
        out["user_return_p90"] = float(np.percentile(r, 90))
    if "latent_satisfaction" in steps.columns:
        last = steps.groupby("episode", sort=False)["latent_satisfaction"].last()
        out["final_satisfaction"] = float(pd.to_numeric(last, errors="coerce").mean())
    if len(traj.calls):
        out.update(call_stats(traj.calls))
    return out


def _n_items(traj: Trajectories) -> int:
    try:
        return int(traj.manifest["spec"]["world"]["n_items"])
    except (KeyError, TypeError, ValueError):
        return 0


def intra_list_diversity(slates: np.ndarray, features: np.ndarray) -> float:
    """Mean pairwise cosine distance between the items of each slate, averaged over slates."""
    f = np.asarray(features, dtype=np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    k = slates.shape[1]
    if k < 2 or slates.shape[0] == 0:
        return math.nan
    total = 0.0
    for lo in range(0, slates.shape[0], 20_000):  # chunks keep memory small on long logs
        x = f[slates[lo:lo + 20_000]]
        g = np.einsum("nkd,njd->nkj", x, x)
        total += float((g.sum(axis=(1, 2)) - np.trace(g, axis1=1, axis2=2)).sum())
    mean_cos = total / (slates.shape[0] * k * (k - 1))
    return 1.0 - mean_cos


def novelty(slates: np.ndarray, popularity: np.ndarray) -> float:
    """Mean ``-log2(popularity)`` of shown items (popularity floored at ``1 / n_items``)."""
    pop = np.maximum(np.asarray(popularity, dtype=np.float64), 1.0 / max(len(popularity), 1))
    return float(-np.log2(pop[slates]).mean()) if slates.size else math.nan


def call_stats(calls: pd.DataFrame) -> dict[str, float]:
    """Totals over an LLM ``calls`` table."""
    out = {"llm_calls": float(len(calls))}
    for col, key in (("prompt_tokens", "prompt_tokens"), ("completion_tokens", "completion_tokens"),
                     ("cost_usd", "cost_usd")):
        if col in calls:
            out[key] = float(pd.to_numeric(calls[col], errors="coerce").fillna(0).sum())
    if "latency_s" in calls:
        out["mean_latency_s"] = float(pd.to_numeric(calls["latency_s"], errors="coerce").mean())
    for col in ("cache_hit", "fallback"):
        if col in calls:
            out[f"{col}_rate"] = float(calls[col].fillna(False).astype(bool).mean())
    if "parse_status" in calls:
        out["parse_failed_rate"] = float((calls["parse_status"] == "failed").mean())
    return out


def per_user(traj: Trajectories) -> pd.DataFrame:
    """One row per user: sessions, steps, clicks, CTR, mean rating, mean session length and the
    mean / std / total of their episode returns."""
    eps = traj.episodes
    cols = ["user", "sessions", "steps", "clicks", "ctr", "mean_rating", "mean_session_length",
            "mean_return", "std_return", "total_return"]
    if len(eps) == 0:
        return pd.DataFrame(columns=cols)
    e = eps.assign(rating_sum=eps["mean_rating"].fillna(0.0) * eps["rated"])
    g = e.groupby("user", sort=True)
    out = pd.DataFrame({
        "sessions": g.size(),
        "steps": g["steps"].sum(),
        "clicks": g["clicks"].sum(),
        "ctr": g["clicks"].sum() / g["shown"].sum().replace(0, np.nan),
        "mean_rating": g["rating_sum"].sum() / g["rated"].sum().replace(0, np.nan),
        "mean_session_length": g["steps"].mean(),
        "mean_return": g["return"].mean(),
        "std_return": g["return"].std(ddof=0),
        "total_return": g["return"].sum(),
    }).reset_index()
    return out[cols]


# -- rendering ------------------------------------------------------------------------------------
#: Metrics shown first, with labels.
HEADLINE = {
    "ctr": "CTR (clicks / shown item)",
    "clicks_per_step": "clicks / step",
    "mean_rating": "mean rating (stars)",
    "mean_session_length": "mean session length",
    "mean_return": "mean return",
    "catalog_coverage": "catalog coverage",
    "intra_list_diversity": "intra-list diversity",
    "novelty": "novelty (bits)",
    "leave_rate": "leave rate",
    "final_satisfaction": "final satisfaction",
}


def _fmt(v: Any) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "-"
    if isinstance(v, (int, np.integer)) or (isinstance(v, float) and v.is_integer() and abs(v) >= 10):
        return f"{int(v):,}"
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.1f}"


def format_summary(summary: Mapping[str, float], title: str | None = None) -> str:
    """Aligned ``label: value`` lines, headline metrics first."""
    rows = [(HEADLINE[k], summary[k]) for k in HEADLINE if k in summary]
    rows += [(k.replace("_", " "), v) for k, v in summary.items() if k not in HEADLINE]
    w = max(len(r[0]) for r in rows) if rows else 0
    lines = [title] if title else []
    lines += [f"  {label:<{w}}  {_fmt(v)}" for label, v in rows]
    return "\n".join(lines)


def format_table(summaries: Mapping[str, Mapping[str, float]], metrics: Sequence[str] | None = None) -> str:
    """A comparison table: one row per run, one column per metric."""
    metrics = list(metrics or ["ctr", "clicks_per_step", "mean_rating", "mean_session_length", "mean_return",
                               "catalog_coverage", "intra_list_diversity", "novelty"])
    metrics = [m for m in metrics if any(m in s for s in summaries.values())]
    head = ["run"] + metrics
    body = [[name] + [_fmt(s.get(m, math.nan)) for m in metrics] for name, s in summaries.items()]
    widths = [max(len(str(r[i])) for r in [head] + body) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(widths[0]) if i == 0 else str(c).rjust(widths[i])
                               for i, c in enumerate(r))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in body])
