"""Turn a rated log into an implicit-feedback one, the way implicit benchmarks are built from ratings.

``to_implicit(log, ImplicitConfig(min_rating=4))`` keeps the rows rated ``min_rating`` stars or more as
positives, drops the stars (``rating`` becomes NaN), keeps the stars as the interaction ``weight``
(or sets every weight to 1) and, by default, drops the timestamps (row order, ``timed=False``), so the
log looks like a play-count log without times and is split at random. Used by ``world.implicit``
in a movielens spec and ``simrec fidelity --implicit``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from simrec.data.log import InteractionLog
from simrec.errors import ConfigError


class ImplicitConfig(BaseModel):
    """How :func:`to_implicit` turns ratings into implicit feedback."""

    model_config = ConfigDict(extra="forbid")

    min_rating: float = Field(4.0, ge=1, le=5, description="Rows rated at least this many stars are the positives.")
    weight: Literal["rating", "one"] = Field("rating", description="The positives' weight: their stars, or 1.")
    drop_timestamps: bool = Field(True, description="Replace times by row order (a log without a time column).")


def to_implicit(log: InteractionLog, config: ImplicitConfig | dict | None = None) -> InteractionLog:
    """The rows of ``log`` rated ``min_rating`` or more, as implicit feedback (see the module doc)."""
    cfg = config if isinstance(config, ImplicitConfig) else ImplicitConfig(**(config or {}))
    if not log.has_ratings:
        raise ConfigError(f"{log.name}: has no ratings to turn into implicit feedback. Fix: drop the 'implicit' "
                          "setting, the log is implicit already")
    keep = np.isfinite(log.rating) & (log.rating >= cfg.min_rating)
    if not keep.any():
        raise ConfigError(f"{log.name}: no rating reaches min_rating={cfg.min_rating:g}. Fix: lower min_rating")
    out = log.select(keep, f"{log.name}-implicit")
    weight = out.rating.copy() if cfg.weight == "rating" else np.ones(len(out), np.float32)
    ts = np.arange(len(out), dtype=np.int64) if cfg.drop_timestamps else out.timestamp
    return replace(out, rating=np.full(len(out), np.nan, np.float32), weight=weight, timestamp=ts,
                   timed=log.timed and not cfg.drop_timestamps,
                   vocabulary=log.vocabulary.model_copy(update={"counts": False}))
