"""Calibrate a simrec world (catalog + personas) from a real interaction log.

Everything is estimated from the **train split only** (each user's earlier interactions, see
:func:`simrec.data.datasets.split_log`); :func:`calibrate` never receives the test rows, and a test
shows that changing them leaves the world bit-identical.

What is estimated, and how it maps onto the embedded model (``simrec.cognition.embedded``):

* **Item statistics**: ``quality`` = the item's mean train rating shrunk toward the global mean,
  mapped to [0, 1]; ``popularity`` = the percentile of its train interaction count.
* **Session rate**: each user's share of the train interactions (mean 1), so the simulator's users
  come back as often, relative to each other, as the real ones did (shrunk toward 1 by its reliability,
  see :func:`trait_percentiles`).
* **Traits** measured as Agent4Rec does, as percentiles over users: ``activity`` from the rating
  count, ``conformity`` from how close the user's ratings are to the items' mean ratings (for
  implicit logs: how popular the user's items are), ``diversity`` from the entropy of the user's
  genres, ``pickiness`` from how far below the items' means the user rates, ``patience`` from the
  user's average session length (interactions less than an hour apart).
  Each percentile is shrunk toward 0.5 by the statistic's reliability (:func:`trait_percentiles`), so
  users who differ only by sampling noise are not ranked.
* **Choice** (watch / no watch): a logistic factor model fitted to the train interactions against
  every unobserved item (class-balanced per user) whose logit *is* the embedded model's
  ``utility - no-click utility`` for a fresh user: ``affinity * <taste, f>`` over the choice
  dimensions plus the model's fixed quality, popularity x conformity, novelty and no-click terms.
  Item choice features are ``[latent factors, genre shares, 1]``; taste is kept unit-norm and
  features inside [-1, 1], as the simulator requires. On weighted logs (play counts) a pair weighs
  ``1 + watch_confidence * ln(w)`` (log confidence). With ``watch_recency`` a user's later train
  interactions weigh more (their next choices look more like their latest ones). The all-negatives
  gradient is estimated each step from a few fresh unobserved items per positive (sampled evenly over
  the catalog) on minibatches, so time and memory grow with the log, never with users x items
  (``watch_method="dense"`` keeps the exact full-matrix gradient as the reference).
* **Ratings**: a biased factor model with unit-norm user factors fitted by alternating least
  squares (Gram matrices as sparse products, linear in the ratings), written into the last ``choice.rating_dims`` feature dimensions (the embedded model then
  rates ``crowd + (1 - w) (rating_scale * affinity * <taste, f> + bias + ...)``); the user bias
  becomes ``Persona.rating_bias``.
* **Temporal validation**: the last part of each user's train interactions is held out once to
  measure how later interactions differ (later items are less popular and rated lower); the
  decision threshold (via the negative class weight) and a rating offset are set from it, then
  everything is refitted on the whole train split.
* **Order and choice** (``sequence``, ``fit_temperature`` and ``fit_slate_no_click``, off by default and
  on in ``simrec/MovieLensSeq-v1``; also on the validation slice): on a timed log, what followed each item
  in the users' train sequences (:class:`~simrec.users.transitions.Transitions`, the simulated user's
  order-aware short-term interest), with its utility weight, the one under which the utility ranks the
  held-back items best among the user's unseen items (NDCG@10; 0 when order does not clearly help); the
  temperature of the choice model's multinomial logit, the one under which they are the most likely
  free choices at that weight (:func:`_fit_choice`); and how choosy users are among a slate, the extra
  utility of choosing nothing under which users click slates as often as real users go on to consume
  one of their items (:func:`_fit_slate_no_click`). Personas keep their last train items as
  ``recent_items``.
* **Persona descriptions** in plain language from the train history, in the log's
  :class:`~simrec.data.log.Vocabulary` (template; an OpenAI-compatible
  model may rewrite them, see :func:`enrich_descriptions`).

``world_from_config`` is the ``kind: movielens`` world builder used by ``simrec/MovieLens-v0``;
calibrated worlds are cached on disk (:class:`WorldCache`, keyed by :func:`calibration_key`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from simrec.catalog import Catalog, Domain
from simrec.cognition.embedded import ChoiceConfig, popularity_hinge
from simrec.data.datasets import (
    GenericFormat,
    InteractionLog,
    Split,
    SplitConfig,
    load_dataset,
    split_log,
)
from simrec.data.implicit import ImplicitConfig, to_implicit
from simrec.data.pairs import PairSet
from simrec.errors import ConfigError, format_validation_error
from simrec.users.persona import Persona, PersonaPack, Traits
from simrec.users.transitions import Transitions
from simrec.users.world import World

DEFAULT_DATA_DIR = "../shared/datasets/ml-100k"
SESSION_GAP_S = 3600
#: Bump when :func:`calibrate` gives a different world for the same inputs (invalidates on-disk caches).
CALIBRATION_VERSION = 6

logger = logging.getLogger(__name__)


class CalibrationConfig(BaseModel):
    """Settings of :func:`calibrate` (the ``world.calibration`` section of a movielens spec)."""

    model_config = ConfigDict(extra="forbid")

    choice_factors: int = Field(16, ge=1, description="Latent choice dimensions (before genres and the constant).")
    rating_share: float = Field(0.5, gt=0, lt=1,
                                description="Share of the taste vector's squared norm given to rating dims.")
    genre_scale: float = Field(1.0, gt=0, le=1, description="Value of an item's genre shares in its features.")
    intercept: float = Field(0.0, ge=0, le=1, description=(
        "Value of a constant feature giving each user a free watch propensity (0: no such feature; the shared "
        "direction makes taste drift raise everyone's propensity)."))
    watch_iters: int = Field(150, ge=1)
    watch_lr: float = Field(0.05, gt=0)
    watch_recency: float = Field(0.0, ge=0, description=(
        "A user's watched items weigh exp(watch_recency * (q - 1)) in the watch fit, q in [0, 1] their place in "
        "the user's own chronological order (1: latest): a user's next choices resemble their latest ones. "
        "0: equal weights."))
    watch_reg: float = Field(1e-4, ge=0, description="L2 penalty on latent item factors (per train interaction).")
    watch_confidence: float = Field(1.0, ge=0, description=(
        "Implicit logs: a watched pair weighs 1 + watch_confidence * ln(w) in the watch fit, w >= 1 its summed "
        "weight (play count; Hu, Koren & Volinsky's log confidence); 0: every pair weighs 1. Logs whose "
        "weights are all 1 (MovieLens) are unaffected."))
    watch_method: Literal["auto", "dense", "sampled"] = Field("auto", description=(
        "sampled (and auto): the all-negatives gradient estimated from watch_negatives fresh unobserved items "
        "per positive each step; cost grows with the log. dense: the exact gradient over every user x item "
        "cell (memory and time grow with users x items; kept as the reference)."))
    watch_negatives: int = Field(4, ge=1, description="Sampled negatives per positive per step (sampled).")
    watch_batch: int = Field(20_000, ge=1, description=(
        "Positives per step at least (sampled): logs with fewer positives take full batches."))
    watch_balanced: bool = Field(True, description=(
        "Sampled negatives cover the catalog evenly each step (every item drawn equally often), which cuts the "
        "noise of the item-side gradient (sampled)."))
    watch_lr_final: float = Field(0.1, gt=0, le=1, description=(
        "Learning rate at the last step, as a share of watch_lr (linear decay over the second half of the "
        "steps; sampled): a smaller step at the end averages out the sampling noise."))
    watch_epochs: float = Field(30.0, gt=0, description=(
        "Passes over the positives in watch_iters steps on logs larger than watch_batch (sampled)."))
    rating_iters: int = Field(10, ge=1)
    rating_reg: float = Field(0.2, ge=0, description="ALS ridge penalty per rating.")
    rating_bias_reg: float = Field(5.0, ge=0)
    quality_shrinkage: float = Field(5.0, ge=0, description="Pseudo-ratings at the global mean in item means.")
    validate_split: bool = Field(True, description="Set threshold and rating offset on a temporal validation slice.")
    describe: Literal["template", "llm"] = "template"
    describe_llm: dict[str, Any] = Field(default_factory=dict, description="base_url, model, api_key, ... for 'llm'.")
    max_history_titles: int = Field(3, ge=0)
    sequence: bool = Field(False, description=(
        "Timed logs: fit order-aware short-term interest (simrec.users.transitions: what followed the user's "
        "recent items in the train sequences) and pick its utility weight on the validation slice (0 when it "
        "does not help there). Logs without timestamps have no order and never get one."))
    sequence_weight_by: Literal["ndcg", "likelihood"] = Field("ndcg", description=(
        "How the validation slice picks the sequence weight: 'ndcg', the weight whose utility ranks the "
        "held-back items best (NDCG@10 over all unseen items; slates show the top of a ranking, so that is the "
        "part the choice model must get right), or 'likelihood', the weight under which they are the likeliest "
        "free choices (dominated by the long tail of unlikely items). The temperature is fitted by likelihood "
        "either way."))
    choice_scales: list[float] | None = Field(None, description=(
        "The scales 1 / temperature the validation likelihood searches (fit_temperature); None: "
        "calibration.CHOICE_SCALES, 0.1 to 1.5 in steps of 0.05."))
    sequence_window: int = Field(20, ge=1, description="Steps within which a later item counts as following one.")
    sequence_top: int = Field(100, ge=1, description="Successors kept per item (the model holds n_items x this).")
    sequence_recent: int = Field(10, ge=1, description="Recent items a simulated user keeps for the sequence score.")
    sequence_decay: float = Field(0.7, gt=0, le=1, description="Weight of each older recent item, per step back.")
    fit_temperature: bool = Field(False, description=(
        "Set the choice temperature from the validation slice (the multinomial-logit scale under which the "
        "held-back items are most likely; see the report's 'temperature'); the spec's choice.temperature must "
        "be null for the world's value to be used."))
    fit_popularity_shift: bool = Field(False, description=(
        "Timed logs, with sequence_weight_by 'ndcg': set a popularity shift for every user (choice.popularity_shift "
        "and popularity_knee: utility + shift * max(popularity - 1/2 - knee, 0)) to the pair under which the "
        "utility ranks the validation slice best, where it beats none clearly. Users pass over many of the most "
        "popular items they have not yet seen; the spec's choice.popularity_shift and popularity_knee must be null "
        "for the fitted values to be used."))
    fit_slate_no_click: bool = Field(False, description=(
        "Set how choosy users are among a slate (choice.slate_no_click, the extra utility of choosing nothing "
        "from a slate) so that simulated users click slates from the top to the tail of their own ranking as "
        "often as real users go on to consume one of the slate's items in the validation slice (see the "
        "report's 'validation_slate_hits'); the spec's choice.slate_no_click must be null for it to be used."))
    sequence_max_pairs: int = Field(20_000_000, ge=1, description=(
        "At most this many (item, later item) pairs are counted: long logs get a shorter window."))

    @field_validator("choice_scales")
    @classmethod
    def _positive_scales(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or min(v) <= 0):
            raise ValueError("choice_scales must be a non-empty list of positive scales (1 / temperature), "
                             "e.g. [0.3, 0.6, 1.0]; or null for the default grid")
        return v


@dataclass
class Calibration:
    """The output of :func:`calibrate`: the world plus what was measured on the way."""

    catalog: Catalog
    personas: PersonaPack
    user_index: np.ndarray  # population index -> log user index
    report: dict[str, Any] = field(default_factory=dict)
    transitions: Transitions | None = None  # order-aware short-term interest (timed logs)
    choice: dict[str, float] = field(default_factory=dict)  # calibrated choice settings (temperature)


@dataclass(frozen=True)
class CalibratedWorld(World):
    """A :class:`~simrec.users.world.World` built from a log, with the split it was calibrated on.

    ``user_index[u]`` is the log's user index of population user ``u``; catalog indices equal the
    log's item indices.
    """

    log: InteractionLog | None = None
    split: Split | None = None
    user_index: np.ndarray | None = None
    report: dict[str, Any] = field(default_factory=dict)


# -- small numeric helpers -------------------------------------------------------------------------


def percentile_ranks(x: np.ndarray) -> np.ndarray:
    """Percentile of each value in [0, 1] (ties share their average rank)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    if n <= 1:
        return np.full(n, 0.5)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    bounds = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1], True])
    ranks = np.empty(n)
    for s, e in zip(bounds[:-1], bounds[1:]):
        ranks[order[s:e]] = (s + e - 1) / 2.0
    return ranks / (n - 1)


def trait_percentiles(x: np.ndarray, noise_var: np.ndarray | None = None) -> np.ndarray:
    """Percentiles of a per-user statistic in [0, 1], pulled toward 0.5 by how much of its spread is noise.

    Values equal to 9 decimals are ties, so float rounding never orders users. With ``noise_var`` (each
    value's sampling variance) the percentiles are shrunk toward 0.5 by the statistic's reliability
    ``max(0, 1 - mean(noise_var) / var(x))`` (classical test theory): when users differ no more than
    sampling noise makes them (every user with about the same count), every user gets 0.5 instead of
    an arbitrary ranking; on MovieLens, where users differ far more than that, little changes.
    """
    x = np.round(np.asarray(x, dtype=np.float64), 9)
    pct = percentile_ranks(x)
    if noise_var is None or x.size < 2:
        return pct
    return 0.5 + reliability(x, noise_var) * (pct - 0.5)


def reliability(x: np.ndarray, noise_var: np.ndarray) -> float:
    """``max(0, 1 - mean(noise_var) / var(x))``: the share of a statistic's spread across users that is
    not sampling noise (0 when the values do not spread)."""
    spread = float(np.var(x))
    return 0.0 if spread <= 0 else max(0.0, 1.0 - float(np.mean(noise_var)) / spread)


def _mean_and_noise(idx: np.ndarray, vals: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-group mean of ``vals`` and its sampling variance (within-group variance / count)."""
    c = np.maximum(np.bincount(idx, minlength=n), 1).astype(np.float64)
    m = np.bincount(idx, vals, n) / c
    var = np.maximum(np.bincount(idx, vals * vals, n) / c - m * m, 0.0)
    return m, var / c


def _group_sum(idx: np.ndarray, vals: np.ndarray, n: int) -> np.ndarray:
    if vals.ndim == 1:
        return np.bincount(idx, vals, n)
    out = np.zeros((n, vals.shape[1]), dtype=np.float64)
    np.add.at(out, idx, vals)
    return out


def _ridge_by_group(group: np.ndarray, other: np.ndarray, F: np.ndarray, y: np.ndarray, w: np.ndarray, n: int,
                    lam: np.ndarray) -> np.ndarray:
    """Weighted ridge regressions, one per group: row ``r`` of group ``group[r]`` has features
    ``F[other[r]]``, target ``y[r]`` and weight ``w[r]``; solves ``(X_g' W X_g + lam_g I) b = X_g' W y_g``
    for every group and returns ``(n, k)``.

    The Gram matrices are one sparse product ``W @ (F_j F_j')`` (``W``: groups x others, entries the row
    weights; the outer products formed once per *other*), so time grows with the rows and memory with
    the groups and others, never with a ``(rows, k, k)`` array.
    """
    k = F.shape[1]
    shape = (n, F.shape[0])
    W = sp.csr_matrix((w.astype(np.float64), (group, other)), shape=shape)
    Wy = sp.csr_matrix((w * y, (group, other)), shape=shape)
    outer = (F[:, :, None] * F[:, None, :]).reshape(F.shape[0], k * k)
    A = np.asarray(W @ outer).reshape(n, k, k) + lam[:, None, None] * np.eye(k)
    B = np.asarray(Wy @ F)
    return np.linalg.solve(A, B[..., None])[..., 0]


class _Adam:
    def __init__(self, params: list[np.ndarray], lr: float) -> None:
        self.params, self.lr, self.t = params, lr, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads: list[np.ndarray]) -> None:
        self.t += 1
        c1, c2 = 1 - 0.9**self.t, 1 - 0.999**self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            p -= (self.lr / c1) * m / (np.sqrt(v / c2) + 1e-8)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# -- item statistics and traits --------------------------------------------------------------------


@dataclass
class _Stats:
    item_count: np.ndarray
    popularity: np.ndarray
    crowd: np.ndarray  # shrunk mean rating per item (stars)
    quality: np.ndarray
    global_mean: float
    user_count: np.ndarray
    traits: np.ndarray  # (n_users, 5) in TRAIT_NAMES order
    genre_share: np.ndarray  # (n_users, n_genres)
    user_mean: np.ndarray  # mean rating (NaN without ratings)
    crowd_of_user: np.ndarray  # mean crowd rating of the user's items
    session_rate: np.ndarray  # relative interaction rate (mean 1 over active users), shrunk by its reliability


def _statistics(train: InteractionLog, cfg: CalibrationConfig) -> _Stats:
    nu, ni = train.n_users, train.n_items
    u, i = train.user.astype(np.int64), train.item.astype(np.int64)
    rated = np.isfinite(train.rating)
    item_count = np.bincount(i, minlength=ni).astype(np.float64)
    user_count = np.bincount(u, minlength=nu).astype(np.float64)
    popularity = percentile_ranks(item_count)
    if rated.any():
        r = train.rating[rated].astype(np.float64)
        ur, ir = u[rated], i[rated]
        mu = float(r.mean())
        s_i = np.bincount(ir, r, ni)
        n_i = np.bincount(ir, minlength=ni).astype(np.float64)
        m = cfg.quality_shrinkage
        crowd = (s_i + m * mu) / (n_i + m)
        # Leave-one-out item means: a user is not "conforming" with an item mean made of their own rating.
        loo = (s_i[ir] - r + m * mu) / (n_i[ir] - 1 + m)
        dev, dev_noise = _mean_and_noise(ur, (r - loo) ** 2, nu)
        resid, resid_noise = _mean_and_noise(ur, r - loo, nu)
        has = np.bincount(ur, minlength=nu) > 0
        conformity = np.full(nu, 0.5)
        conformity[has] = 1.0 - trait_percentiles(dev[has], dev_noise[has])
        pickiness = np.full(nu, 0.5)
        pickiness[has] = 1.0 - trait_percentiles(resid[has], resid_noise[has])
        user_mean = np.where(has, np.bincount(ur, r, nu) / np.maximum(np.bincount(ur, minlength=nu), 1), np.nan)
        crowd_of_user = np.where(has, np.bincount(ur, crowd[ir], nu) / np.maximum(np.bincount(ur, minlength=nu), 1),
                                 np.nan)
    else:
        mu = 3.0
        crowd = np.full(ni, 3.0)
        has = user_count > 0
        mean_pop, pop_noise = _mean_and_noise(u, popularity[i], nu)
        conformity = np.full(nu, 0.5)
        conformity[has] = trait_percentiles(mean_pop[has], pop_noise[has])
        pickiness = np.full(nu, 0.5)
        user_mean = np.full(nu, np.nan)
        crowd_of_user = np.full(nu, np.nan)
    active = user_count > 0
    activity = np.full(nu, 0.5)
    # a count's sampling variance is about the count itself (Poisson)
    activity[active] = trait_percentiles(user_count[active], user_count[active])
    session_rate = np.ones(nu)
    if active.any():
        c = user_count[active]
        session_rate[active] = 1.0 + reliability(c, c) * (c / c.mean() - 1.0)
    G = train.items.genre_matrix().astype(np.float64)
    share = _group_sum(u, G[i], nu)
    share /= np.maximum(share.sum(axis=1, keepdims=True), 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(share > 0, np.log(share), 0.0)
    ent = -(share * logs).sum(axis=1)
    # the plug-in entropy's sampling variance (Basharin): (sum p ln^2 p - H^2) / n
    ent_noise = np.maximum((share * logs * logs).sum(axis=1) - ent**2, 0.0) / np.maximum(user_count, 1)
    norm = max(math.log(max(G.shape[1], 2)), 1e-12)
    diversity = np.full(nu, 0.5)
    diversity[active] = trait_percentiles(ent[active] / norm, ent_noise[active] / norm**2)
    patience = np.full(nu, 0.5)
    if train.timed and train.timestamp.size and np.ptp(train.timestamp) > len(train):  # real times
        order = train.chronological_order()
        uo, to = u[order], train.timestamp[order]
        new_session = np.r_[True, (uo[1:] != uo[:-1]) | (np.diff(to) > SESSION_GAP_S)]
        sid = np.cumsum(new_session) - 1
        length = np.bincount(sid).astype(np.float64)
        mean_len, len_noise = _mean_and_noise(uo[new_session], length, nu)
        patience[active] = trait_percentiles(mean_len[active], len_noise[active])
    traits = np.stack([activity, conformity, diversity, patience, pickiness], axis=1)
    quality = np.clip((crowd - 1.0) / 4.0, 0.0, 1.0)
    return _Stats(item_count, popularity, crowd, quality, mu, user_count, traits, share, user_mean, crowd_of_user,
                  session_rate)


# -- the rating model ------------------------------------------------------------------------------


@dataclass
class _RatingFit:
    user: np.ndarray  # (nu, R) unit rows
    item: np.ndarray  # (ni, R) in rating units (stars per unit of the user's unit vector)
    bias: np.ndarray  # (nu,)


def _fit_ratings(train: InteractionLog, st: _Stats, choice: ChoiceConfig, cfg: CalibrationConfig,
                 rng: np.random.Generator) -> _RatingFit:
    """ALS for ``(r - crowd) / (1 - w) - pickiness term = <t, g> + b`` with unit-norm ``t``.

    Rows are weighted by ``(1 - w)^2`` (``w`` = the user's pull toward the crowd) so that the fit is
    least squares in stars.
    """
    R = choice.rating_dims
    nu, ni = train.n_users, train.n_items
    ok = np.isfinite(train.rating)
    u, i, r = train.user[ok].astype(np.int64), train.item[ok].astype(np.int64), train.rating[ok].astype(np.float64)
    w = choice.rating_conformity * st.traits[:, 1]
    y = (r - st.crowd[i]) / (1.0 - w[u]) - choice.rating_pickiness * (0.5 - st.traits[u, 4])
    wt = (1.0 - w[u]) ** 2
    n_u = np.bincount(u, minlength=nu).astype(np.float64)
    n_i = np.bincount(i, minlength=ni).astype(np.float64)
    T = _unit_rows(rng.standard_normal((nu, R)))
    b = np.zeros(nu)
    G = np.zeros((ni, R))
    lam_i = cfg.rating_reg * np.maximum(n_i, 1)
    lam_u = np.r_[cfg.rating_reg * np.maximum(n_u, 1)]
    for _ in range(cfg.rating_iters):
        G = _ridge_by_group(i, u, T, y - b[u], wt, ni, lam_i)
        G1 = np.concatenate([G, np.ones((ni, 1))], axis=1)  # the user's bias rides along as a feature
        sol = _ridge_by_group(u, i, G1, y, wt, nu, lam_u)
        T = np.where(n_u[:, None] > 0, _unit_rows(sol[:, :R]), T)
        b = np.bincount(u, wt * (y - np.einsum("nr,nr->n", T[u], G[i])), nu) / (
            np.bincount(u, wt, nu) + cfg.rating_bias_reg)
    G = _ridge_by_group(i, u, T, y - b[u], wt, ni, lam_i)
    return _RatingFit(T, G, b)


def _user_position(log: InteractionLog, mask: np.ndarray) -> np.ndarray:
    """Place in ``[0, 1]`` of each ``mask`` row in its user's chronological order (1: the user's latest)."""
    idx = np.flatnonzero(mask)
    u = log.user[idx].astype(np.int64)
    order = np.lexsort((idx, log.timestamp[idx], u))  # by user, then time (row order breaks ties)
    n_u = np.bincount(u, minlength=log.n_users)
    start = np.concatenate([[0], np.cumsum(n_u)[:-1]])
    rank = np.empty(idx.size, dtype=np.float64)
    rank[order] = np.arange(idx.size) - start[u[order]]
    return rank / np.maximum(n_u[u] - 1, 1)


def _predict_ratings(fit: _RatingFit, st: _Stats, choice: ChoiceConfig, u: np.ndarray, i: np.ndarray,
                     offset: float = 0.0) -> np.ndarray:
    w = choice.rating_conformity * st.traits[u, 1]
    own = np.einsum("nr,nr->n", fit.user[u], fit.item[i]) + fit.bias[u] + offset
    own = own + choice.rating_pickiness * (0.5 - st.traits[u, 4])
    return st.crowd[i] + (1.0 - w) * own


# -- the choice (watch) model ----------------------------------------------------------------------


@dataclass
class _WatchFit:
    user: np.ndarray  # (nu, Dc) unit rows
    item: np.ndarray  # (ni, Dc) in [-1, 1]
    scale: float  # logit per unit of <user, item>


def _offsets_parts(st: _Stats, choice: ChoiceConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The embedded model's fixed utility terms for a fresh user: ``user_const (nu,)``,
    ``item_const (ni,)`` and the conformity x popularity outer product factors."""
    tr = st.traits
    user_const = choice.novelty * (2.0 * tr[:, 2] - 1.0) - (
        choice.no_click + choice.no_click_pickiness * (tr[:, 4] - 0.5))
    item_const = choice.quality * (st.quality - 0.5)
    return user_const, item_const, choice.conformity * tr[:, 1]


def _positive_pairs(train: InteractionLog, cfg: CalibrationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``user * n_items + item`` keys of ``train`` and each pair's weight (mean 1).

    On a weighted log (play counts) a pair weighs ``1 + watch_confidence * ln(w)``, ``w`` its summed weight;
    with ``watch_recency`` it also weighs ``exp(watch_recency * (q - 1))``, ``q`` the place of its latest
    interaction in the user's chronological order."""
    ni = train.n_items
    u, i = train.user.astype(np.int64), train.item.astype(np.int64)
    key = u * ni + i
    uniq, inv = np.unique(key, return_inverse=True)  # repeated interactions count once
    wpos = np.ones(len(uniq), dtype=np.float32)
    if cfg.watch_confidence > 0 and not np.all(train.weight == 1):
        total = np.bincount(inv.ravel(), train.weight.astype(np.float64), len(uniq))
        wpos = (1.0 + cfg.watch_confidence * np.log(np.maximum(total, 1.0))).astype(np.float32)
    if cfg.watch_recency > 0:
        q = _user_position(train, np.ones(len(train), dtype=bool))
        qmax = np.zeros(len(uniq))
        np.maximum.at(qmax, inv.ravel(), q)
        wpos = wpos * np.exp(cfg.watch_recency * (qmax - 1.0)).astype(np.float32)
    wpos *= len(wpos) / wpos.sum()
    return uniq, wpos


def _fit_watch(train: InteractionLog, st: _Stats, choice: ChoiceConfig, cfg: CalibrationConfig, scale: float,
               neg_weight: float, rng: np.random.Generator) -> _WatchFit:
    """Logistic factor model of watch / no watch: train pairs against every unobserved pair.

    ``sampled`` (the default) estimates the all-negatives gradient by ``watch_negatives`` uniform
    unobserved items per positive, drawn afresh each step, on minibatches of at most ``watch_batch``
    positives: memory and time per step grow with the log, never with users x items. ``dense`` is the
    exact full-batch gradient over the users x items matrix (the reference it was checked against).
    """
    nu, ni = train.n_users, train.n_items
    k = cfg.choice_factors
    fixed = train.items.genre_matrix() * cfg.genre_scale
    if cfg.intercept > 0:
        fixed = np.concatenate([fixed, np.full((ni, 1), cfg.intercept, dtype=np.float32)], axis=1)
    D = k + fixed.shape[1]
    T = _unit_rows(rng.standard_normal((nu, D))).astype(np.float32)
    L = (0.1 * rng.standard_normal((ni, k))).astype(np.float32)
    user_const, item_const, conf = _offsets_parts(st, choice)
    user_const, item_const, conf = (x.astype(np.float32) for x in (user_const, item_const, conf))
    pop_c = (st.popularity - 0.5).astype(np.float32)
    opt = _Adam([T, L], cfg.watch_lr)
    uniq, wpos = _positive_pairs(train, cfg)
    pu, pi = uniq // ni, uniq % ni
    n_pos_u = np.bincount(pu, wpos, minlength=nu).astype(np.float64)
    n_total = float(wpos.sum())
    F = np.empty((ni, D), dtype=np.float32)
    F[:, k:] = fixed
    if cfg.watch_method == "dense":
        active = n_pos_u > 0
        # Negatives get weight (positives / negatives) per user: a class-balanced loss, times neg_weight.
        wneg = (neg_weight * n_pos_u / np.maximum(ni - n_pos_u, 1)).astype(np.float32)
        pos = np.zeros((nu, ni), dtype=bool)
        pos[pu, pi] = True
        posw = np.zeros((nu, ni), dtype=np.float32)
        posw[pu, pi] = wpos
        chunk = max(1, int(4_000_000 // max(ni, 1)))
        for _ in range(cfg.watch_iters):
            F[:, :k] = L
            gT = np.zeros_like(T)
            gF = np.zeros((ni, D), dtype=np.float32)
            for s in range(0, nu, chunk):
                sl = slice(s, min(s + chunk, nu))
                S = scale * (T[sl] @ F.T)
                S += user_const[sl, None] + item_const[None, :] + conf[sl, None] * pop_c[None, :]
                P = 1.0 / (1.0 + np.exp(-S))
                Y = pos[sl]
                Gm = np.where(Y, (P - 1.0) * posw[sl], P * wneg[sl, None]).astype(np.float32)
                Gm[~active[sl]] = 0.0
                gT[sl] = scale * (Gm @ F)
                gF += scale * (Gm.T @ T[sl])
            gT /= n_total
            gL = gF[:, :k] / n_total + cfg.watch_reg * L
            opt.step([gT, gL])
            T[:] = _unit_rows(T)
            np.clip(L, -1.0, 1.0, out=L)
        F[:, :k] = L
        return _WatchFit(T, F.copy(), scale)

    # Each negative stands for (unobserved items / m) of the user's negatives; with the class-balanced
    # weight that is neg_weight * (the user's mean positive weight) / m per sampled negative.
    m = cfg.watch_negatives
    wbar = (n_pos_u / np.maximum(np.bincount(pu, minlength=nu), 1)).astype(np.float32)
    P_ = len(uniq)
    seen = PairSet(pu, pi, ni)
    # Minibatches of watch_epochs passes over the positives in watch_iters steps (full batches when small):
    # the cost grows with the log, and every user still gets watch_iters updates.
    batch = min(P_, max(cfg.watch_batch, math.ceil(P_ * cfg.watch_epochs / cfg.watch_iters)))
    perm = np.arange(P_)
    at = P_
    half = cfg.watch_iters // 2
    for step in range(cfg.watch_iters):
        F[:, :k] = L
        if step >= half:
            opt.lr = cfg.watch_lr * (1.0 - (1.0 - cfg.watch_lr_final) * (step - half + 1) / max(cfg.watch_iters - half, 1))
        if batch == P_:
            b = perm
        else:
            if at + batch > P_:
                perm, at = rng.permutation(P_), 0
            b = np.sort(perm[at: at + batch])  # sorted: rows stay grouped by user, so M below is CSR as built
            at += batch
        bu, bw = pu[b], wpos[b]
        # row r: its positive item, then m negatives for the same user
        items = np.empty((b.size, 1 + m), dtype=np.int64)
        items[:, 0] = pi[b]
        items[:, 1:] = seen.draw_unseen(np.repeat(bu, m), rng, balanced=cfg.watch_balanced).reshape(b.size, m)
        S = scale * _row_dots(T, F, bu, items)
        S += user_const[bu][:, None] + item_const[items] + conf[bu][:, None] * pop_c[items]
        Pr = 1.0 / (1.0 + np.exp(-S))
        denom = float(bw.sum())
        g = Pr * ((neg_weight / m) * wbar[bu] / denom)[:, None]
        g[:, 0] = (Pr[:, 0] - 1.0) * bw / denom
        indptr = np.concatenate([[0], np.cumsum(np.bincount(bu, minlength=nu) * (1 + m))])
        M = sp.csr_matrix((g.ravel(), items.ravel(), indptr), shape=(nu, ni))
        gT = scale * np.asarray(M @ F)
        gL = scale * np.asarray(M.T @ np.ascontiguousarray(T[:, :k])) + cfg.watch_reg * L
        opt.step([gT.astype(np.float32, copy=False), gL.astype(np.float32, copy=False)])
        T[:] = _unit_rows(T)
        np.clip(L, -1.0, 1.0, out=L)
    F[:, :k] = L
    return _WatchFit(T, F.copy(), scale)


def _row_dots(T: np.ndarray, F: np.ndarray, users: np.ndarray, items: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """``<T[users[r]], F[items[r, j]]>`` as ``items.shape``, in chunks of rows (bounded memory)."""
    out = np.empty(items.shape, dtype=np.float32)
    for s in range(0, users.size, chunk):
        e = min(s + chunk, users.size)
        out[s:e] = np.einsum("bd,bjd->bj", T[users[s:e]], F[items[s:e]])
    return out


def _watch_logits(fit: _WatchFit, st: _Stats, choice: ChoiceConfig, u: np.ndarray, i: np.ndarray) -> np.ndarray:
    """The embedded utility minus the no-click utility; with ``choice.popularity_shift`` (a post-fit adjustment
    the watch fit never sees) its hinge term too."""
    user_const, item_const, conf = _offsets_parts(st, choice)
    out = (fit.scale * np.einsum("nd,nd->n", fit.user[u], fit.item[i]) + user_const[u] + item_const[i]
           + conf[u] * (st.popularity[i] - 0.5))
    if choice.popularity_shift:
        out = out + choice.popularity_shift * popularity_hinge(st.popularity[i], choice.popularity_knee)
    return out


def _best_shift(fit: _WatchFit, st: _Stats, choice: ChoiceConfig, fit_log: InteractionLog, val: InteractionLog,
                rng: np.random.Generator,
                extra: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> tuple[float, float]:
    """The logit shift that maximises per-user 1:1 accuracy on the validation slice, and that accuracy
    (``extra(users, items)``, when given, is added to the logits: the sequence term)."""
    ni = val.n_items
    u, i = val.user.astype(np.int64), val.item.astype(np.int64)
    seen = PairSet(np.concatenate([fit_log.user, u]), np.concatenate([fit_log.item, i]), ni)
    neg = seen.draw_unseen(u, rng, tries=50)
    lp = _watch_logits(fit, st, choice, u, i)
    ln = _watch_logits(fit, st, choice, u, neg)
    if extra is not None:
        lp, ln = lp + extra(u, i), ln + extra(u, neg)
    n_u = np.bincount(u, minlength=val.n_users)
    has = n_u > 0
    best, best_acc = 0.0, -1.0
    for shift in np.linspace(-3.0, 3.0, 61):
        acc = (np.bincount(u, lp + shift > 0, val.n_users) + np.bincount(u, ln + shift <= 0, val.n_users))[has]
        a = float(np.mean(acc / (2.0 * n_u[has])))
        if a > best_acc + 1e-9 or (abs(a - best_acc) <= 1e-9 and abs(shift) < abs(best)):
            best, best_acc = float(shift), a
    return best, best_acc


SEQUENCE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def _fit_transitions(log: InteractionLog, cfg: CalibrationConfig, weight: float) -> tuple[Transitions, list[np.ndarray]]:
    """The sequence model of ``log`` (each user's items in time order) and those sequences."""
    order = log.chronological_order()
    counts = np.bincount(log.user, minlength=log.n_users)
    seqs = np.split(log.item[order].astype(np.int64), np.cumsum(counts)[:-1])
    window = max(1, min(cfg.sequence_window, cfg.sequence_max_pairs // max(len(log), 1)))
    return Transitions.fit(seqs, log.n_items, window=window, top=cfg.sequence_top, weight=weight,
                           decay=cfg.sequence_decay, recent=cfg.sequence_recent), seqs


CHOICE_SCALES = tuple(round(x, 2) for x in np.arange(0.1, 1.51, 0.05))


def _fit_choice(fit: _WatchFit, st: _Stats, choice: ChoiceConfig, fit_log: InteractionLog, val: InteractionLog,
                trans: Transitions | None, recent: np.ndarray | None, rng: np.random.Generator,
                exact_items: int = 4096, sample_items: int = 2048, max_users: int = 5_000,
                chunk: int = 256, by: str = "ndcg", rank_users: int = 1000,
                scales: Sequence[float] = CHOICE_SCALES, shifts: Sequence[float] = (0.0,),
                knees: Sequence[float] = (-0.5,),
                ) -> tuple[float, tuple[float, float], float, dict[str, dict[str, float]]]:
    """The sequence weight, the popularity shift and the choice temperature, fitted on the validation slice.

    The embedded model's free choice is a multinomial logit over ``utility / temperature``; each held-back
    item is a choice from every item its user had not interacted with in ``fit_log`` (``recent``: the end
    of ``fit_log``, every user's recent items). The sequence weight (one of :data:`SEQUENCE_WEIGHTS`, 0
    only without ``trans``) is the one whose utility ranks the held-back items best (``by="ndcg"``:
    NDCG@10 over every unseen item, at most ``rank_users`` users; a larger weight must beat the best
    smaller one by two paired standard errors) or under which they are most likely (``by="likelihood"``).
    With ``by="ndcg"``, the popularity shift and knee (``ChoiceConfig.popularity_shift`` / ``popularity_knee``,
    every pair of ``shifts`` x ``knees``) are then the pair that ranks them best at that weight, where it beats
    no shift by two paired standard errors.
    The temperature is ``1 / scale`` for the scale in ``scales`` that maximises the mean log-likelihood
    at that weight and shift. Catalogs past ``exact_items`` items estimate each user's normaliser from
    ``sample_items`` uniformly drawn items; at most ``max_users`` users enter. Returns the weight, the
    (shift, knee), the temperature and tables: per weight, the log-likelihood of the best scale (``"loglik"``),
    and with ``by="ndcg"`` the NDCG@10 per weight (``"ndcg@10"``) and per shift (``"shift_ndcg@10"``)."""
    seen, users, vu, vi = _validation_pairs(fit_log, val, max_users, rng)
    ni = val.n_items
    weights = SEQUENCE_WEIGHTS if trans is not None else (0.0,)
    scales = np.asarray(scales, dtype=np.float64)
    tables: dict[str, dict[str, float]] = {}

    def clearly_better(nd: np.ndarray, j: int, k: int) -> bool:  # paired over users
        d = nd[:, j] - nd[:, k]
        return bool(d.mean() > 2.0 * d.std() / math.sqrt(max(d.size, 1)))

    k, shift, knee = 0, 0.0, -0.5
    if by == "ndcg" and (len(weights) > 1 or len(shifts) > 1):
        rank_u = users if users.size <= rank_users else np.sort(rng.choice(users, rank_users, replace=False))
        nd = _rank_weights(fit, st, choice, seen, vu, vi, trans, recent, weights, rank_u)
        tables["ndcg@10"] = {f"{w:g}": round(float(v), 5) for w, v in zip(weights, nd.mean(axis=0))}
        for j in range(1, len(weights)):  # a larger weight must beat the best smaller one clearly
            if clearly_better(nd, j, k):
                k = j
        if len(shifts) > 1:
            grid = [(0.0, -0.5)] + [(float(g), float(q)) for g in shifts if g != 0 for q in knees]
            nd = np.concatenate([_rank_weights(fit, st, choice.model_copy(update={"popularity_shift": g,
                                                                                  "popularity_knee": q}),
                                               seen, vu, vi, trans, recent, (weights[k],), rank_u)
                                 for g, q in grid], axis=1)
            tables["shift_ndcg@10"] = {f"{g:g} above {q:g}": round(float(v), 5) for (g, q), v in zip(grid, nd.mean(axis=0))}
            best = int(np.argmax(nd.mean(axis=0)))
            if best and clearly_better(nd, best, 0):
                shift, knee = grid[best]
    ch = choice.model_copy(update={"popularity_shift": shift, "popularity_knee": knee}) if shift else choice
    # per (weight, scale): sum over positives of a * s_pos, and of each positive's user's log normaliser
    pos_sum = np.zeros((len(weights), scales.size))
    lse_sum = np.zeros((len(weights), scales.size))
    n_pos = 0
    starts, ends = np.searchsorted(vu, users), np.searchsorted(vu, users, side="right")
    n_seen = np.bincount(seen.keys // ni, minlength=val.n_users)  # distinct items per user in fit_log
    for c in range(0, users.size, chunk):
        u = users[c:c + chunk]
        items = np.arange(ni) if ni <= exact_items else np.sort(rng.choice(ni, sample_items, replace=False))
        U, M = u.size, items.size
        logit = _watch_logits(fit, st, ch, np.repeat(u, M), np.tile(items, U)).reshape(U, M)
        unseen = ~seen.contains_keys(u[:, None] * ni + items[None, :])
        # the sampled unseen items stand for all of the user's unseen items, in proportion
        log_ratio = np.log(np.maximum(ni - n_seen[u], 1)) - np.log(np.maximum(unseen.sum(axis=1), 1))
        seq_all = trans.scores(recent[u], np.broadcast_to(items, (U, M))) if trans is not None else None
        idx = np.concatenate([np.arange(a_, b_) for a_, b_ in zip(starts[c:c + chunk], ends[c:c + chunk])])
        owner = np.repeat(np.arange(U), ends[c:c + chunk] - starts[c:c + chunk])  # row of each positive's user
        pu, pi = vu[idx], vi[idx]
        lp = _watch_logits(fit, st, ch, pu, pi)
        sp = trans.scores(recent[pu], pi[:, None])[:, 0] if trans is not None else None
        n_pos += pu.size
        for a_w, w in enumerate(weights):
            z = logit + w * seq_all if w else logit
            zp = lp + w * sp if w else lp
            zmax = np.where(unseen, z, -np.inf).max(axis=1, keepdims=True)
            for a_s, a in enumerate(scales):
                e = np.where(unseen, np.exp(a * (z - zmax)), 0.0).sum(axis=1)
                lse = a * zmax[:, 0] + np.log(np.maximum(e, 1e-300)) + log_ratio
                pos_sum[a_w, a_s] += a * zp.sum()
                lse_sum[a_w, a_s] += lse[owner].sum()
    ll = (pos_sum - lse_sum) / max(n_pos, 1)
    best_per_weight = ll.max(axis=1)
    tables["loglik"] = {f"{w:g}": round(float(v), 5) for w, v in zip(weights, best_per_weight)}
    if by == "likelihood":
        for j in range(1, len(weights)):  # a larger weight must beat the best smaller one clearly
            if best_per_weight[j] > best_per_weight[k] + 1e-3:
                k = j
    scale = float(scales[int(np.argmax(ll[k]))])
    return float(weights[k]), (shift, knee), round(1.0 / scale, 4), tables


def _validation_pairs(fit_log: InteractionLog, val: InteractionLog, max_users: int,
                      rng: np.random.Generator) -> tuple[PairSet, np.ndarray, np.ndarray, np.ndarray]:
    """What the validation fits share: ``fit_log``'s pairs as a set, the validation users (at most ``max_users``,
    drawn with ``rng`` past that, sorted) and the validation pairs ``(vu, vi)`` sorted by user."""
    users = np.flatnonzero(np.bincount(val.user, minlength=val.n_users))
    if users.size > max_users:
        users = np.sort(rng.choice(users, max_users, replace=False))
    vu, vi = val.user.astype(np.int64), val.item.astype(np.int64)
    order = np.argsort(vu, kind="stable")
    return PairSet(fit_log.user, fit_log.item, val.n_items), users, vu[order], vi[order]


def _unseen_logits(fit: _WatchFit, st: _Stats, choice: ChoiceConfig, seen: PairSet, vu: np.ndarray,
                   vi: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Watch logits ``(U, n_items)`` of users ``u`` for every item, -inf where ``seen``, and which items are
    the users' validation items (``vu``/``vi`` sorted by user)."""
    ni = fit.item.shape[0]
    items = np.arange(ni)
    logit = _watch_logits(fit, st, choice, np.repeat(u, ni), np.tile(items, u.size)).reshape(u.size, ni)
    logit[seen.contains_keys(u[:, None] * ni + items[None, :])] = -np.inf
    rel = np.zeros(logit.shape, bool)
    a_, b_ = np.searchsorted(vu, u), np.searchsorted(vu, u, side="right")
    rel[np.repeat(np.arange(u.size), b_ - a_), vi[np.concatenate([np.arange(x, y) for x, y in zip(a_, b_)])]] = True
    return logit, rel


#: The popularity shifts and knees :func:`_fit_choice` tries (``ChoiceConfig.popularity_shift`` and
#: ``popularity_knee``): utility moves by ``shift * max(popularity - 1/2 - knee, 0)``, popularity a percentile,
#: so knee -0.5 shifts every item in proportion and 0.3 only those above the 80th percentile.
POPULARITY_SHIFTS = (-12.0, -8.0, -5.0, -3.0, -1.0, 1.0, 3.0)
POPULARITY_KNEES = (-0.5, 0.0, 0.2, 0.3, 0.4)


#: The slates :func:`_fit_slate_no_click` shows: blocks of 5 of the model's own ranking starting at these ranks
#: (the top of the ranking, where recommenders' slates come from, down to the tail), and 5 random unseen items.
SLATE_RANKS = (0, 5, 10, 20, 50, 100, 200, 400)


def _fit_slate_no_click(fit: _WatchFit, st: _Stats, choice: ChoiceConfig, fit_log: InteractionLog,
                        val: InteractionLog, trans: Transitions | None, recent: np.ndarray | None,
                        seq_weight: float, shift: float, temperature: float, rng: np.random.Generator,
                        max_users: int = 1000, chunk: int = 32) -> tuple[float, dict[str, list[float]]]:
    """The extra utility of choosing nothing from a slate (``ChoiceConfig.slate_no_click``) under which a
    simulated user clicks a slate as often as real users go on to consume one of its items.

    Every validation user (at most ``max_users``) is shown the slates of :data:`SLATE_RANKS` from the
    inner fit's utility (``shift``: the validation logit shift the final fit builds in; the sequence term at
    ``seq_weight``). A slate is a real hit when it holds one of the user's validation items; the
    simulated user's first-step click probability is the embedded multinomial logit's, at ``temperature``,
    with the position decay. Its log-odds are ``L - slate_no_click / temperature``, so the value is the
    intercept of a one-parameter logistic regression of hits on ``L`` (concave: a bounded 1-D search).
    Returns it and, per slate, the real hit rate and the fitted click probability."""
    from scipy.optimize import minimize_scalar

    ni = val.n_items
    seen, users, vu, vi = _validation_pairs(fit_log, val, max_users, rng)
    lp = -choice.position_decay * np.log1p(np.arange(5))
    ranks = [r for r in SLATE_RANKS if r + 5 <= ni]
    L_all, H_all = [], []
    for c in range(0, users.size, chunk):
        u = users[c:c + chunk]
        logit, rel = _unseen_logits(fit, st, choice, seen, vu, vi, u)
        if trans is not None and seq_weight:
            logit += seq_weight * trans.scores(recent[u], np.broadcast_to(np.arange(ni), logit.shape))
        logit += shift
        top = np.argsort(-logit, axis=1)[:, :ranks[-1] + 5] if ranks else np.zeros((u.size, 0), np.int64)
        slates = [top[:, r:r + 5] for r in ranks]
        unseen_rows = [np.flatnonzero(np.isfinite(row)) for row in logit]
        slates.append(np.stack([rng.choice(x, 5, replace=x.size < 5) for x in unseen_rows]))
        sl = np.stack(slates, axis=1)  # (U, S, 5)
        z = np.take_along_axis(logit[:, None, :], sl, axis=2)
        ok = np.isfinite(z).all(axis=2)  # users with too few unseen items skip the deepest blocks
        L = np.logaddexp.reduce(np.where(np.isfinite(z), z / temperature + lp, -np.inf), axis=2)
        H = np.take_along_axis(rel[:, None, :], sl, axis=2).any(axis=2)
        L_all.append(np.where(ok, L, np.nan))
        H_all.append(H)
    L, H = np.concatenate(L_all), np.concatenate(H_all)
    ok = np.isfinite(L)

    def nll(c: float) -> float:
        x = L[ok] - c
        return float(np.mean(np.logaddexp(0.0, -x) * H[ok] + np.logaddexp(0.0, x) * ~H[ok]))

    best = minimize_scalar(nll, bounds=(-50.0, 50.0), method="bounded", options={"xatol": 1e-4})
    c = float(best.x)
    p_click = np.where(ok, 1.0 / (1.0 + np.exp(-(L - c))), np.nan)
    labels = [f"ranks {r + 1}-{r + 5}" for r in ranks] + ["random"]
    table = {lab: [round(float(np.nanmean(np.where(ok[:, j], H[:, j], np.nan))), 4),
                   round(float(np.nanmean(p_click[:, j])), 4)] for j, lab in enumerate(labels)}
    return round(c * temperature, 4), table


def _rank_weights(fit: _WatchFit, st: _Stats, choice: ChoiceConfig, seen: PairSet, vu: np.ndarray, vi: np.ndarray,
                  trans: Transitions | None, recent: np.ndarray | None, weights: Sequence[float], users: np.ndarray,
                  chunk: int = 32) -> np.ndarray:
    """Validation NDCG@10 ``(len(users), len(weights))`` of each user's ranking of every unseen item by
    ``logit + weight * sequence`` (``vu``/``vi``: the validation pairs sorted by user)."""
    gain = 1.0 / np.log2(np.arange(2, 12))
    out = np.zeros((users.size, len(weights)))
    for c in range(0, users.size, chunk):
        u = users[c:c + chunk]
        U = u.size
        logit, rel = _unseen_logits(fit, st, choice, seen, vu, vi, u)
        seq = (trans.scores(recent[u], np.broadcast_to(np.arange(logit.shape[1]), logit.shape)) if trans is not None
               else np.zeros(logit.shape))
        ideal = np.cumsum(gain)[np.minimum(rel.sum(axis=1), 10) - 1]
        for j, w in enumerate(weights):
            z = logit + w * seq if w else logit
            top = np.argpartition(-z, 10, axis=1)[:, :10]
            top = np.take_along_axis(top, np.argsort(-np.take_along_axis(z, top, axis=1), axis=1), axis=1)
            out[c:c + U, j] = (np.take_along_axis(rel, top, axis=1) * gain).sum(axis=1) / ideal
    return out


def _best_noise(pred: np.ndarray, real: np.ndarray, seed: int) -> float:
    """The rating noise whose sampled star histogram is closest (total variation) to ``real``'s."""
    z = np.random.default_rng([seed, 4]).standard_normal(pred.size)

    def hist(x: np.ndarray) -> np.ndarray:
        return np.bincount(np.clip(np.rint(x), 1, 5).astype(int), minlength=6)[1:] / max(x.size, 1)

    target = hist(real)
    grid = np.round(np.arange(0.3, 1.61, 0.05), 2)
    tv = [0.5 * np.abs(hist(pred + s * z) - target).sum() for s in grid]
    return float(grid[int(np.argmin(tv))])


# -- descriptions ----------------------------------------------------------------------------------


def _level(x: float, words: tuple[str, str, str]) -> str:
    return words[0] if x < 1 / 3 else words[1] if x < 2 / 3 else words[2]


def _title(t: str) -> str:
    try:
        from simrec.llm.sanitize import (
            display_title,  # "Usual Suspects, The (1995)" -> "The Usual Suspects (1995)"
        )
    except ImportError:  # pragma: no cover
        return t
    return display_title(t)


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" and {words[-1]}"


def describe_user(log: InteractionLog, user: int, rows: np.ndarray, st: _Stats, max_titles: int = 3,
                  titles: list[str] | None = None, has_ratings: bool | None = None) -> str:
    """A plain-language profile of ``user`` from their (train) rows of ``log``, in the log's
    :class:`~simrec.data.log.Vocabulary`: stars only where the log has ratings, play counts ("listened to X
    40 times") where its weights count plays, "most recently" only where it has real times.

    ``titles`` are the display titles of the items and ``has_ratings`` is ``log.has_ratings`` (default:
    computed from ``log``; pass both when describing many users, each costs a pass over the log).
    """
    rated = log.has_ratings if has_ratings is None else has_ratings
    words = log.vocabulary
    counted = not rated and log.weights_are_counts
    users = log.users
    who = []
    age = int(users.ages[user])
    if age:
        who.append(f"{age}-year-old")
    if users.genders[user]:
        who.append(users.genders[user])
    occ = users.occupations[user]
    who.append(occ if occ and occ not in ("none", "other") else words.user)
    distinct = np.unique(log.item[rows]) if counted else None  # repeated plays of an item count once
    n = int(distinct.size) if distinct is not None else len(rows)
    verb = "rated" if rated else words.did
    first = f"A {' '.join(who)} who has {verb} {n:,} {words.plural(n)} so far"
    if counted:
        total = int(round(float(log.weight[rows].sum())))
        first += f", {total:,} time{'s' if total != 1 else ''} in all"
    parts = [first + "."]
    share = st.genre_share[user]
    names = log.items.genre_names
    top = [k for k in np.argsort(-share, kind="stable")[:3] if share[k] >= 0.05 and names[k] != "unknown"]
    if top:
        parts.append("Favourite genres: " + _join([f"{names[k]} ({share[k]:.0%})" for k in top]) + ".")
    tr = st.traits[user]
    if rated and np.isfinite(st.user_mean[user]):
        diff = float(st.user_mean[user] - st.crowd_of_user[user])
        tone = "generously" if diff > 0.25 else "harshly" if diff < -0.25 else "about like everyone else"
        parts.append(f"Rates {tone}: {st.user_mean[user]:.1f} stars on average where others give the same "
                     f"{words.item}s {st.crowd_of_user[user]:.1f}.")
    if titles is None:
        titles = [_title(t) for t in log.items.titles]
    if max_titles and n:
        if rated:
            order = rows[np.lexsort((-log.timestamp[rows], -np.nan_to_num(log.rating[rows], nan=0.0)))]
            loved = [titles[log.item[j]] for j in order if log.rating[j] >= 4][:max_titles]
            hated = [titles[log.item[j]] for j in order[::-1] if log.rating[j] <= 2][: max(1, max_titles - 1)]
            if loved:
                parts.append("Loved " + _join(loved) + ".")
            if hated:
                parts.append("Disliked " + _join(hated) + ".")
        elif distinct is not None:
            plays = np.bincount(np.searchsorted(distinct, log.item[rows]), log.weight[rows], distinct.size)
            best = np.argsort(-plays, kind="stable")[:max_titles]
            parts.append(f"Most {words.did}: " + _join([f"{titles[distinct[k]]} ({int(round(plays[k])):,} "
                                                         f"time{'s' if round(plays[k]) != 1 else ''})"
                                                         for k in best]) + ".")
        if log.timed:
            recent = [titles[log.item[j]] for j in rows[np.argsort(-log.timestamp[rows], kind="stable")][:max_titles]]
            parts.append("Most recently: " + _join(recent) + ".")
        elif not rated and not counted:  # no times, no counts: the strongest interactions, in file order
            strongest = rows[np.argsort(-log.weight[rows], kind="stable")][:max_titles]
            parts.append(f"{words.did.capitalize()} " + _join([titles[log.item[j]] for j in strongest])
                         + ", among others.")
    often = _level(tr[0], ("occasionally", "regularly", "a lot"))
    crowd = _level(tr[1], ("has tastes of their own", "agrees with the crowd now and then", "likes what everyone likes"))
    spread = _level(tr[2], ("sticks to a few genres", "tries other genres now and then", "enjoys many different genres"))
    parts.append(f"{words.does.capitalize()} {often}, {crowd} and {spread}.")
    return " ".join(parts)


def enrich_descriptions(pack: PersonaPack, complete: Callable[[list[dict[str, str]]], str],
                        max_chars: int = 800) -> PersonaPack:
    """Rewrite each persona's template description with a language model.

    ``complete(messages) -> str`` sends OpenAI-style chat messages (see :func:`openai_completer`).
    Only the persona's own (train-derived) description is sent; a reply that is empty keeps the
    template text.
    """
    out = []
    for p in pack.personas:
        messages = [
            {"role": "system", "content": "You write short, vivid third-person profiles of movie viewers for a "
                                          "user simulation. Keep every fact, invent nothing, no numbers other "
                                          "than the ones given, at most 4 sentences."},
            {"role": "user", "content": f"Profile facts: {p.description}\nWrite the profile."},
        ]
        text = " ".join(complete(messages).split())[:max_chars]
        out.append(p.model_copy(update={"description": text or p.description}))
    return pack.model_copy(update={"personas": out})


def openai_completer(base_url: str, model: str, api_key: str = "not-needed", temperature: float = 0.3,
                     max_tokens: int = 200, timeout: float = 60.0) -> Callable[[list[dict[str, str]]], str]:
    """A ``complete(messages)`` for :func:`enrich_descriptions` against an OpenAI-compatible server."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout)

    def complete(messages: list[dict[str, str]]) -> str:
        r = client.chat.completions.create(model=model, messages=messages, temperature=temperature,
                                           max_tokens=max_tokens)
        return r.choices[0].message.content or ""

    return complete


# -- calibration -----------------------------------------------------------------------------------


def persona_id(raw: str) -> str:
    """The persona id of a log's raw user id (what the env reports as ``info['user_id']``)."""
    # Numeric ids ("196") would collide with numbers in prompts; the sanitizer treats user ids as secrets.
    return raw if raw[:1].isalpha() else f"u{raw}"


def _fit_all(train: InteractionLog, st: _Stats, choice: ChoiceConfig, cfg: CalibrationConfig, scale: float,
             neg_weight: float, seed: int) -> tuple[_WatchFit, _RatingFit | None]:
    watch = _fit_watch(train, st, choice, cfg, scale, neg_weight, np.random.default_rng([seed, 1]))
    ratings = None
    if choice.rating_dims and train.has_ratings:
        ratings = _fit_ratings(train, st, choice, cfg, np.random.default_rng([seed, 2]))
    return watch, ratings


def calibrate(train: InteractionLog, config: CalibrationConfig | dict | None = None,
              choice: ChoiceConfig | dict | None = None, seed: int = 0,
              complete: Callable[[list[dict[str, str]]], str] | None = None,
              validation: SplitConfig | None = None) -> Calibration:
    """Build a catalog and personas from ``train`` (the train split only).

    ``validation`` is how the validation slice is cut from ``train`` (default: each user's last 20%;
    :func:`build_calibrated_world` passes the test split's own settings).

    ``choice`` is the embedded model the world will run under (its fixed weights, ``affinity`` and
    ``rating_dims`` shape the fit); ``seed`` sets factor initialisation and sampling. With
    ``config.describe == "llm"`` descriptions are rewritten by ``complete`` (or by an
    OpenAI-compatible server from ``config.describe_llm``).
    """
    cfg = config if isinstance(config, CalibrationConfig) else CalibrationConfig(**(config or {}))
    ch = choice if isinstance(choice, ChoiceConfig) else ChoiceConfig(**(choice or {}))
    if len(train) == 0:
        raise ConfigError(f"{train.name}: the train split is empty; nothing to calibrate from")
    t0 = time.perf_counter()
    report: dict[str, Any] = {"train_interactions": len(train)}
    a_c = math.sqrt(1.0 - cfg.rating_share) if ch.rating_dims else 1.0
    a_r = math.sqrt(cfg.rating_share)
    scale = ch.affinity * a_c
    st = _statistics(train, cfg)

    neg_weight, offset, seq_weight = 1.0, 0.0, 0.0
    if cfg.validate_split:
        inner = split_log(train, (validation or SplitConfig()).model_copy(update={"seed": seed}))
        if len(inner.test) and len(inner.train):
            st_in = _statistics(inner.train, cfg)
            wf, rf = _fit_all(inner.train, st_in, ch, cfg, scale, 1.0, seed + 7919)
            extra, tr_in, rec_in = None, None, None
            if cfg.sequence and train.timed:
                tr_in, seqs_in = _fit_transitions(inner.train, cfg, 1.0)
                rec_in = tr_in.recent_of(seqs_in)
            ch_in = ch  # the choice model on the validation slice, with the popularity shift once it is fitted
            fit_pop = cfg.fit_popularity_shift and train.timed
            if cfg.fit_temperature or tr_in is not None or fit_pop:
                seq_weight, (pop_shift, pop_knee), temperature, tables = _fit_choice(
                    wf, st_in, ch, inner.train, inner.test, tr_in, rec_in, np.random.default_rng([seed, 5]),
                    by=cfg.sequence_weight_by, scales=cfg.choice_scales or CHOICE_SCALES,
                    shifts=POPULARITY_SHIFTS if fit_pop else (0.0,), knees=POPULARITY_KNEES)
                report["validation_choice_loglik"] = tables["loglik"]
                for k_, name in (("ndcg@10", "validation_sequence_ndcg@10"),
                                 ("shift_ndcg@10", "validation_popularity_shift_ndcg@10")):
                    if k_ in tables:
                        report[name] = tables[k_]
                report["sequence_weight"] = seq_weight
                if cfg.fit_temperature:
                    report["temperature"] = temperature
                if fit_pop:
                    report["popularity_shift"], report["popularity_knee"] = pop_shift, pop_knee
                    ch_in = ch.model_copy(update={"popularity_shift": pop_shift, "popularity_knee": pop_knee})
                if seq_weight > 0:
                    extra = lambda uu, ii: seq_weight * tr_in.scores(rec_in[uu], ii[:, None])[:, 0]  # noqa: E731
            shift, val_acc = _best_shift(wf, st_in, ch_in, inner.train, inner.test, np.random.default_rng([seed, 3]),
                                         extra)
            neg_weight = math.exp(-shift)
            report["validation_logit_shift"] = shift
            report["validation_accuracy"] = val_acc
            if cfg.fit_slate_no_click:
                t_used = temperature if cfg.fit_temperature else (ch.temperature or 1.0)
                slate_nc, report["validation_slate_hits"] = _fit_slate_no_click(
                    wf, st_in, ch_in, inner.train, inner.test, tr_in, rec_in, seq_weight, shift, t_used,
                    np.random.default_rng([seed, 6]))
                report["slate_no_click"] = slate_nc
            if rf is not None:
                ok = np.isfinite(inner.test.rating)
                vu, vi = inner.test.user[ok].astype(np.int64), inner.test.item[ok].astype(np.int64)
                pred = _predict_ratings(rf, st_in, ch, vu, vi)
                resid = inner.test.rating[ok] - pred
                offset = float(resid.mean())
                report["validation_rating_offset"] = offset
                report["validation_rating_rmse"] = float(np.sqrt(np.mean((resid - offset) ** 2)))
                shifted = pred + offset * (1.0 - ch.rating_conformity * st_in.traits[vu, 1])
                report["suggested_rating_noise"] = _best_noise(shifted, inner.test.rating[ok], seed)
    watch, rfit = _fit_all(train, st, ch, cfg, scale, neg_weight, seed)
    report["fit_seconds"] = round(time.perf_counter() - t0, 2)

    nu, ni = train.n_users, train.n_items
    R = ch.rating_dims
    Dc = watch.item.shape[1]
    features = np.zeros((ni, Dc + R), dtype=np.float32)
    features[:, :Dc] = watch.item
    taste = np.zeros((nu, Dc + R), dtype=np.float64)
    taste[:, :Dc] = a_c * watch.user
    bias = np.zeros(nu)
    if R:
        if rfit is not None:
            unit = ch.rating_scale * ch.affinity * a_r  # stars per unit of <taste_R, f_R>
            g = rfit.item / max(unit, 1e-12)
            report["rating_features_clipped"] = float(np.mean(np.abs(g) > 1.0))
            features[:, Dc:] = np.clip(g, -1.0, 1.0)
            taste[:, Dc:] = a_r * rfit.user
            bias = rfit.bias + offset
        else:  # no ratings: the rating dimensions stay neutral
            taste[:, Dc:] = a_r / math.sqrt(R)
    elif train.has_ratings:  # shared utility: only a bias to fit
        bias = _shared_bias(train, st, ch, features, taste)
    report["rating_bias_clipped"] = float(np.mean(np.abs(bias) > 3.0))
    bias = np.clip(bias, -3.0, 3.0)

    catalog = _build_catalog(train, st, features)
    transitions, recent = None, None
    if seq_weight > 0:
        transitions, seqs = _fit_transitions(train, cfg, seq_weight)
        recent = transitions.recent_of(seqs)
        report["sequence_pairs"] = len(transitions)
    order = train.chronological_order()
    counts = np.bincount(train.user, minlength=nu)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keep = np.flatnonzero(counts > 0)
    titles = [_title(t) for t in train.items.titles]
    rated = train.has_ratings
    personas = []
    for uidx in keep:
        rows = order[starts[uidx]: starts[uidx] + counts[uidx]]
        tr = st.traits[uidx]
        interests = {train.items.genre_names[k]: round(float(v), 4)
                     for k, v in enumerate(st.genre_share[uidx]) if v >= 0.01}
        raw = train.users.ids[uidx]
        age = int(train.users.ages[uidx])
        personas.append(Persona(
            id=persona_id(raw), name=f"{train.vocabulary.user.capitalize()} {raw}", age=min(max(age, 10), 110) if age else 35,
            occupation=train.users.occupations[uidx] or "other",
            description=describe_user(train, int(uidx), rows, st, cfg.max_history_titles, titles, rated),
            traits=Traits(**{k: round(float(v), 6) for k, v in zip(("activity", "conformity", "diversity",
                                                                      "patience", "pickiness"), tr)}),
            interests=interests, taste=[float(x) for x in taste[uidx].astype(np.float32)],
            rating_bias=float(bias[uidx]), session_rate=round(float(st.session_rate[uidx]), 6),
            recent_items=None if recent is None else [int(x) for x in recent[uidx] if x >= 0],
        ))
    pack = PersonaPack(name=f"{train.name.split('/')[0]}-calibrated",
                       description=f"{len(personas)} personas calibrated from {train.summary()} (seed {seed}).",
                       topics=list(train.items.genre_names), personas=personas)
    if cfg.describe == "llm":
        if complete is None:
            if not cfg.describe_llm.get("base_url") or not cfg.describe_llm.get("model"):
                raise ConfigError("calibration.describe is 'llm' but describe_llm has no base_url/model. "
                                  "Fix: set describe_llm={'base_url': ..., 'model': ...} or describe='template'")
            complete = openai_completer(**cfg.describe_llm)
        pack = enrich_descriptions(pack, complete)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    choice_settings = {k: report[k] for k in ("temperature", "slate_no_click", "popularity_shift", "popularity_knee")
                       if k in report}
    return Calibration(catalog, pack, keep.astype(np.int64), report, transitions, choice_settings)


def _shared_bias(train: InteractionLog, st: _Stats, ch: ChoiceConfig, features: np.ndarray,
                 taste: np.ndarray) -> np.ndarray:
    """User bias when ratings share the choice utility (``rating_dims == 0``)."""
    ok = np.isfinite(train.rating)
    u, i, r = train.user[ok].astype(np.int64), train.item[ok].astype(np.int64), train.rating[ok].astype(np.float64)
    tr = st.traits
    user_const, item_const, conf = _offsets_parts(st, ch)
    nc = ch.no_click + ch.no_click_pickiness * (tr[:, 4] - 0.5)
    util = ch.affinity * np.einsum("nd,nd->n", taste[u], features[i]) + item_const[i] + conf[u] * (
        st.popularity[i] - 0.5) + (user_const[u] + nc[u])
    w = ch.rating_conformity * tr[u, 1]
    need = (r - w * st.crowd[i]) / (1.0 - w) - 3.0 - ch.rating_scale * util - ch.rating_pickiness * (0.5 - tr[u, 4])
    return np.bincount(u, need, train.n_users) / np.maximum(np.bincount(u, minlength=train.n_users), 1)


def _build_catalog(train: InteractionLog, st: _Stats, features: np.ndarray) -> Catalog:
    items, words = train.items, train.vocabulary
    descs = []
    for i in range(len(items)):
        gs = [g for g in items.genres[i] if g != "unknown"]
        what = (_join(gs).lower() + " ") if gs else ""
        kind = train.vocabulary.item
        year = f" from {items.years[i]}" if items.years[i] else ""
        text = f" {items.texts[i]}" if items.texts[i] else ""
        phrase = f"{what}{kind}{year}"
        descs.append(f"{'An' if phrase[:1].lower() in 'aeiou' else 'A'} {phrase}.{text}")
    return Catalog(
        ids=items.ids, titles=items.titles, descriptions=descs, topic_names=items.genre_names,
        item_topics=items.genres, features=features, quality=st.quality.astype(np.float32), year=items.years,
        popularity=st.popularity.astype(np.float32),
        attributes=[{k: v for k, v in a.items() if isinstance(v, (str, int, float, bool))} for a in items.attributes],
        name=f"{train.name.split('/')[0]}-calibrated", normalize=False,
        domain=Domain(service=words.service, item=words.title, items=words.title + "s", do=words.do, did=words.did,
                      ratings=train.has_ratings),
    )


# -- world builder ---------------------------------------------------------------------------------


class MovieLensWorldConfig(BaseModel):
    """The extra fields of a ``kind: movielens`` world section (all optional)."""

    model_config = ConfigDict(extra="forbid")

    data_dir: str = Field(DEFAULT_DATA_DIR, description="Dataset directory, relative to the working directory.")
    variant: Literal["auto", "ml-100k", "ml-1m", "generic"] = "auto"
    format: dict[str, Any] | None = Field(None, description="simrec.data.datasets.GenericFormat for variant 'generic'.")
    implicit: ImplicitConfig | None = Field(None, description=(
        "Turn a rated log into implicit feedback before splitting (simrec.data.implicit.to_implicit: ratings >= "
        "min_rating are the positives, weights = stars, no timestamps); pair it with split kind 'random'."))
    split: SplitConfig = Field(default_factory=SplitConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    choice: dict[str, Any] | None = Field(
        None, description="The choice model to calibrate for; default: the movielens-v0 spec's 'choice' section.")
    max_users: int | None = Field(None, ge=1, description="Keep only the first max_users users (quick experiments).")
    cache: bool = Field(True, description=(
        "Reuse a calibrated world from the on-disk cache when every input of the calibration (train split, "
        "settings, choice model, seed, simrec's calibration version) is the same."))
    cache_dir: str | None = Field(None, description=(
        "Cache directory; default: $SIMREC_CACHE_DIR, else $XDG_CACHE_HOME/simrec or ~/.cache/simrec. "
        "SIMREC_CACHE_DIR=off disables caching."))

    @field_validator("variant", mode="before")
    @classmethod
    def _variant(cls, v: Any) -> Any:  # accept "ML-100K", "ml_1m", "MovieLens-1M", ...
        if isinstance(v, str):
            v = v.strip().lower().replace("_", "-")
            v = {"ml100k": "ml-100k", "movielens-100k": "ml-100k", "ml1m": "ml-1m", "movielens-1m": "ml-1m"}.get(v, v)
        return v


_IGNORED = {"kind", "seed", "n_items", "n_topics", "dim", "personas", "n_personas"}


def movielens_settings(cfg: Any) -> MovieLensWorldConfig:
    """Validate the movielens-specific fields of a ``WorldConfig`` (its extra fields)."""
    data = {k: v for k, v in cfg.model_dump().items() if k not in _IGNORED}
    try:
        return MovieLensWorldConfig.model_validate(data)
    except ValidationError as e:
        raise format_validation_error("world section of a movielens spec", e,
                                      hint="Fix: see simrec.data.calibration.MovieLensWorldConfig.") from None


def default_choice() -> ChoiceConfig:
    """The choice section of the built-in ``movielens-v0`` spec."""
    from simrec.envs.spec import EnvSpec

    return EnvSpec.builtin("movielens-v0").choice


def resolve_data_dir(data_dir: str | Path) -> Path:
    p = Path(data_dir).expanduser()
    if not p.exists():
        raise ConfigError(
            f"MovieLens data not found at {data_dir} (resolved to {p.resolve()}). Fix: pass data_dir= pointing at "
            f"an unpacked ml-100k / ml-1m directory or a generic log, e.g. gymnasium.make('simrec/MovieLens-v0', "
            f"data_dir='path/to/ml-100k'); paths are relative to the working directory. "
            f"simrec.data.datasets.fetch_movielens can verify (and, with download=True, fetch) the official archive."
        )
    return p


def load_and_split(settings: MovieLensWorldConfig) -> tuple[InteractionLog, Split]:
    path = resolve_data_dir(settings.data_dir)
    fmt = GenericFormat.model_validate(settings.format) if settings.format else None
    log = load_dataset(path, settings.variant, fmt)
    if settings.implicit is not None:
        log = to_implicit(log, settings.implicit)
    if settings.max_users is not None and settings.max_users < log.n_users:
        log = log.select(log.user < settings.max_users)
    return log, split_log(log, settings.split)


def build_calibrated_world(settings: MovieLensWorldConfig, seed: int = 0,
                           choice: ChoiceConfig | None = None) -> CalibratedWorld:
    """Load, split and calibrate (or reuse the on-disk cache, see :class:`WorldCache`); the world keeps
    the log and split for evaluation."""
    log, split = load_and_split(settings)
    ch = choice or (ChoiceConfig(**settings.choice) if settings.choice else default_choice())
    store = WorldCache.from_settings(settings)
    key = calibration_key(split.train, settings, ch, seed)
    cal = store.load(key) if store is not None else None
    if cal is None:
        cal = calibrate(split.train, settings.calibration, ch, seed=seed, validation=settings.split)
        if store is not None:
            store.save(key, cal)
    return CalibratedWorld(cal.catalog, cal.personas, cal.transitions, cal.choice, log=log, split=split, user_index=cal.user_index,
                           report={**cal.report, "split": split.summary(), "cache_key": key})


def world_from_config(cfg: Any) -> World:  # cfg: simrec.envs.spec.WorldConfig
    """World builder for ``kind: movielens`` specs (``simrec/MovieLens-v0``)."""
    return build_calibrated_world(movielens_settings(cfg), seed=cfg.seed)


def save_calibration(world: CalibratedWorld, directory: str | Path) -> None:
    """Write the calibrated catalog and persona pack as JSON (for inspection or reuse)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    world.catalog.save(d / "catalog.json")
    world.personas.save(d / "personas.json")
    if world.transitions is not None:
        world.transitions.save(d / "transitions.npz")
    (d / "report.json").write_text(json.dumps(world.report, indent=1, default=str), encoding="utf-8")


# -- on-disk cache ---------------------------------------------------------------------------------


def log_fingerprint(log: InteractionLog) -> str:
    """SHA-256 of everything :func:`calibrate` can read from ``log`` (rows, item and user tables)."""
    h = hashlib.sha256()
    for a in (log.user, log.item, log.rating, log.weight, log.timestamp, log.items.years, log.users.ages):
        h.update(np.ascontiguousarray(a).tobytes())
        h.update(b"|")
    tables = [log.name, log.timed, log.vocabulary.model_dump(), log.items.ids, log.items.titles, log.items.texts, log.items.genres, log.items.genre_names,
              log.items.attributes, log.users.ids, log.users.genders, log.users.occupations, log.users.attributes]
    h.update(json.dumps(tables, sort_keys=True, default=str).encode("utf-8"))
    return h.hexdigest()


def calibration_key(train: InteractionLog, settings: MovieLensWorldConfig, choice: ChoiceConfig, seed: int) -> str:
    """Cache key of a calibration: the train split's content and every setting that shapes the result.

    Only the train split enters (as in :func:`calibrate`): the key, like the world, cannot depend on
    test rows. Paths do not enter, so a moved dataset still hits.
    """
    inputs = {"version": CALIBRATION_VERSION, "train": log_fingerprint(train), "seed": seed,
              "calibration": settings.calibration.model_dump(), "validation": settings.split.model_dump(),
              "choice": choice.model_dump()}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:32]


def default_cache_dir() -> Path | None:
    """``$SIMREC_CACHE_DIR`` (``off``/``0``/``none``/empty: no cache), else the user's cache directory."""
    env = os.environ.get("SIMREC_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "none", "false") else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "simrec"


class WorldCache:
    """Calibrated worlds on disk, one directory per :func:`calibration_key`.

    An entry is the catalog and persona pack (the same JSON files :func:`save_calibration` writes,
    readable with ``Catalog.load``/``PersonaPack.load``) plus ``meta.json``. Entries are written to a
    temporary directory and renamed into place, so readers never see half an entry; an unreadable
    entry is reported, removed and recalibrated.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser() / "worlds"

    @classmethod
    def from_settings(cls, settings: MovieLensWorldConfig) -> "WorldCache | None":
        if not settings.cache:
            return None
        root = Path(settings.cache_dir) if settings.cache_dir else default_cache_dir()
        return cls(root) if root is not None else None

    def path(self, key: str) -> Path:
        return self.root / key

    def entries(self) -> list[Path]:
        """Complete entries (directories being written are hidden until renamed)."""
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if self.root.is_dir() else []

    def load(self, key: str) -> Calibration | None:
        d = self.path(key)
        if not d.is_dir():
            return None
        try:
            meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
            if meta.get("key") != key:
                raise ValueError(f"meta.json holds key {meta.get('key')!r}")
            cal = Calibration(Catalog.load(d / "catalog.json"), PersonaPack.load(d / "personas.json"),
                              np.asarray(meta["user_index"], dtype=np.int64),
                              {**meta["report"], "cache": "hit", "cache_path": str(d)},
                              Transitions.load(d / "transitions.npz") if meta.get("transitions") else None,
                              {k: float(v) for k, v in meta.get("choice", {}).items()})
            if len(cal.user_index) != len(cal.personas.personas):
                raise ValueError("user_index and personas differ in length")
            return cal
        except Exception as e:  # a damaged entry must not stop a run: recalibrate and overwrite it
            msg = f"calibration cache entry {d} is unreadable ({type(e).__name__}: {e}); recalibrating"
            logger.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            shutil.rmtree(d, ignore_errors=True)
            return None

    def save(self, key: str, cal: Calibration) -> Path | None:
        """Write an entry; a failure (read-only disk, ...) is logged and the run goes on uncached."""
        final = self.path(key)
        tmp = self.root / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"  # unique per writer
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            cal.catalog.save(tmp / "catalog.json")
            cal.personas.save(tmp / "personas.json")
            if cal.transitions is not None:
                cal.transitions.save(tmp / "transitions.npz")
            meta = {"key": key, "version": CALIBRATION_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "user_index": cal.user_index.tolist(), "report": cal.report,
                    "transitions": cal.transitions is not None, "choice": cal.choice}
            (tmp / "meta.json").write_text(json.dumps(meta, default=str), encoding="utf-8")
            try:
                os.replace(tmp, final)
            except OSError:  # another process wrote the same entry first: theirs is as good
                shutil.rmtree(tmp, ignore_errors=True)
            cal.report["cache"] = "stored"
            return final
        except OSError as e:
            logger.warning("could not write calibration cache entry %s: %s", final, e)
            shutil.rmtree(tmp, ignore_errors=True)
            return None

    def clear(self) -> int:
        """Remove every entry; returns how many there were."""
        n = len(self.entries())
        shutil.rmtree(self.root, ignore_errors=True)
        return n
