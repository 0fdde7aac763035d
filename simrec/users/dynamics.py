"""User-state dynamics: how taste, boredom, fatigue and satisfaction evolve.

Each process is a small, seeded, vectorised function of ``(state, users, ...)`` so it can be unit
tested alone; :class:`Dynamics` chains them after every step and between sessions.

* **Drift** (taste): an Ornstein-Uhlenbeck walk around a long-term ``anchor``; exposure-driven
  assimilation pulls taste (fast) and anchor (slow) toward consumed items -- the filter-bubble
  mechanism; concept shifts move the anchor suddenly, at a random hazard or on a schedule.
* **Boredom** (per topic): grows with consumption of a topic (and a little with mere exposure) and
  decays exponentially with time, including the gap between sessions.
* **Fatigue** (in-session): grows every step, more with poor slates, eases a little with a good
  pick; mostly recovered between sessions. Drives the leave decision.
* **Satisfaction** (long-term): an exponential average of experienced quality; lowers the leave
  hazard and raises the chance the user comes back.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from simrec.users.state import UserState, clip_ufunc, rows

# the single-user path's ufuncs, called with a positional ``out`` (module names: cheaper to look up than np.*)
_add, _subtract, _multiply, _divide = np.add, np.subtract, np.multiply, np.divide


class DriftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    theta: float = Field(0.02, ge=0, le=1, description="OU mean reversion per step toward the anchor.")
    sigma: float = Field(0.02, ge=0, description="OU noise per step (total over all dims).")
    assimilation: float = Field(0.05, ge=0, le=1, description="Taste pull toward a consumed item, per unit consumption.")
    anchor_assimilation: float = Field(0.005, ge=0, le=1, description="Anchor pull toward a consumed item (long-term bubble).")
    shift_rate: float = Field(0.0, ge=0, le=1, description="Per-step hazard of a sudden preference shift.")
    shift_schedule: list[int] = Field(default_factory=list, description="User step counts at which a shift happens.")
    shift_magnitude: float = Field(0.7, ge=0, le=1, description="How far the anchor moves toward a new direction.")


class BoredomConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    growth: float = Field(0.25, ge=0, description="Boredom added to a topic per unit consumption.")
    exposure: float = Field(0.02, ge=0, description="Boredom added per shown item of a topic, per step.")
    decay: float = Field(0.05, ge=0, le=1, description="Fraction of boredom that fades per unit of time.")


class FatigueConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: float = Field(0.02, ge=0, description="Fatigue added every step.")
    poor_slate: float = Field(0.08, ge=0, description="Extra fatigue for a slate with nothing appealing.")
    relief: float = Field(0.03, ge=0, description="Fatigue removed by a pick that felt good.")
    recovery: float = Field(0.9, ge=0, le=1, description="Fraction of fatigue recovered between sessions.")


class SatisfactionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rate: float = Field(0.1, ge=0, le=1, description="Weight of the newest experience in the running average.")
    no_click: float = Field(-0.3, ge=-1, le=1, description="Experience value of a step where nothing was chosen.")
    return_weight: float = Field(1.5, ge=0, description="How much satisfaction raises the odds of returning.")


class SessionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gap_scale: float = Field(200.0, gt=0, description="Mean steps between sessions for an average-activity user.")


class DynamicsConfig(BaseModel):
    """All state-dynamics parameters (one section per process)."""

    model_config = ConfigDict(extra="forbid")

    drift: DriftConfig = Field(default_factory=DriftConfig)
    boredom: BoredomConfig = Field(default_factory=BoredomConfig)
    fatigue: FatigueConfig = Field(default_factory=FatigueConfig)
    satisfaction: SatisfactionConfig = Field(default_factory=SatisfactionConfig)
    session: SessionConfig = Field(default_factory=SessionConfig)


# -- the processes ----------------------------------------------------------------------------------
# ``users`` is an index array or a ``slice`` (the single-user env passes ``slice(u, u + 1)`` so that
# reads are views); every function works with either.

def _normalize_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.sqrt(np.einsum("bd,bd->b", x, x))[:, None], 1e-8)


def as_index(users: np.ndarray | slice) -> np.ndarray:
    """Population indices of ``users`` as an array."""
    return np.arange(users.start, users.stop) if isinstance(users, slice) else np.asarray(users)


def ou_drift(state: UserState, users: np.ndarray | slice, cfg: DriftConfig, rng: np.random.Generator,
             dt: np.ndarray | float = 1.0) -> None:
    """Exact OU transition of taste toward anchor over ``dt`` steps (per user)."""
    state.taste[users] = _normalize_rows(_ou_mean_and_noise(state, users, cfg, rng, dt))


def _ou_mean_and_noise(state: UserState, users: np.ndarray | slice, cfg: DriftConfig, rng: np.random.Generator,
                       dt: np.ndarray | float) -> np.ndarray:
    taste, anchor = rows(state.taste, users), rows(state.anchor, users)
    if cfg.theta == 0 and cfg.sigma == 0:
        return taste.copy()
    if isinstance(dt, float):  # the per-step case: scalar constants
        decay = math.exp(-cfg.theta * dt)
        sd = cfg.sigma * (math.sqrt((1 - decay**2) / (2 * cfg.theta)) if cfg.theta > 0 else math.sqrt(dt))
        noise = rng.standard_normal(taste.shape, dtype=np.float32)
        noise *= sd / math.sqrt(taste.shape[1])
        return anchor + (taste - anchor) * decay + noise
    dt = np.asarray(dt, dtype=np.float64)
    if cfg.theta > 0:
        decay = np.exp(-cfg.theta * dt)
        sd = cfg.sigma * np.sqrt((1 - decay**2) / (2 * cfg.theta))
    else:
        decay, sd = np.ones_like(dt), cfg.sigma * np.sqrt(dt)
    if dt.ndim:
        decay, sd = decay[:, None], sd[:, None]
    noise = rng.standard_normal(taste.shape, dtype=np.float32) * (sd / np.sqrt(taste.shape[1]))
    return anchor + (taste - anchor) * decay + noise


def assimilate(state: UserState, users: np.ndarray | slice, item_features: np.ndarray, amount: np.ndarray,
               cfg: DriftConfig) -> None:
    """Pull taste and anchor toward consumed items; ``amount`` (B,) is consumption in [0, 1] (0 = no pull)."""
    a = amount[:, None]
    t = state.taste[users]
    state.taste[users] = _normalize_rows(t + cfg.assimilation * a * (item_features - t))
    if cfg.anchor_assimilation > 0:
        an = state.anchor[users]
        state.anchor[users] = _normalize_rows(an + cfg.anchor_assimilation * a * (item_features - an))


def concept_shift(state: UserState, users: np.ndarray | slice, cfg: DriftConfig, rng: np.random.Generator,
                  directions: np.ndarray) -> np.ndarray:
    """Apply sudden preference shifts; returns the bool mask (B,) of users that shifted.

    A shifting user's anchor moves ``shift_magnitude`` of the way toward a random topic direction,
    and taste jumps halfway there: a new life phase, not a slow drift.
    """
    steps = state.steps_total[users]
    shifted = np.zeros(steps.shape, dtype=bool)
    if cfg.shift_rate > 0:
        shifted |= rng.random(steps.shape) < cfg.shift_rate
    if cfg.shift_schedule:
        shifted |= np.isin(steps, cfg.shift_schedule)
    if shifted.any():
        su = as_index(users)[shifted]
        target = directions[rng.integers(0, directions.shape[0], size=su.size)]
        m = cfg.shift_magnitude
        state.anchor[su] = _normalize_rows((1 - m) * state.anchor[su] + m * target)
        state.taste[su] = _normalize_rows(0.5 * state.taste[su] + 0.5 * state.anchor[su])
    return shifted


def update_boredom(state: UserState, users: np.ndarray | slice, consumed_topics: np.ndarray,
                   shown_topics: np.ndarray, cfg: BoredomConfig, dt: float = 1.0) -> None:
    """Decay boredom over ``dt``, then add consumption (B, T) and exposure (B, T) contributions."""
    b = rows(state.boredom, users) * (1.0 - cfg.decay) ** dt
    b += cfg.growth * consumed_topics
    b += cfg.exposure * shown_topics
    state.boredom[users] = b


def decay_boredom(state: UserState, users: np.ndarray | slice, cfg: BoredomConfig, dt: np.ndarray) -> None:
    """Let per-topic boredom fade over per-user gaps ``dt`` (B,): ``b *= (1 - decay) ** dt``."""
    state.boredom[users] *= ((1.0 - cfg.decay) ** dt)[:, None]


def _exp(x):
    return math.exp(x) if isinstance(x, float) else np.exp(x)


def _clip(x, lo: float, hi: float):
    return min(max(x, lo), hi) if isinstance(x, float) else np.clip(x, lo, hi)


def next_fatigue(fatigue, best_utility, good_pick, cfg: FatigueConfig):
    """Fatigue grows each step, more when the best item on the slate was unappealing (floats or arrays)."""
    poor = 1.0 / (1.0 + _exp(2.0 * best_utility))  # ~1 when the best item is bad, ~0 when great
    return _clip(fatigue + cfg.base + cfg.poor_slate * poor - cfg.relief * good_pick, 0.0, 1.0)


def next_satisfaction(satisfaction, experience, cfg: SatisfactionConfig):
    """Exponential average of experienced quality in [-1, 1] (floats or arrays)."""
    return _clip((1 - cfg.rate) * satisfaction + cfg.rate * experience, -1.0, 1.0)


def update_fatigue(state: UserState, users: np.ndarray | slice, best_utility: np.ndarray, good_pick: np.ndarray,
                   cfg: FatigueConfig) -> None:
    """Advance in-session fatigue of ``users`` one step (see :func:`next_fatigue`)."""
    state.fatigue[users] = next_fatigue(state.fatigue[users], best_utility, good_pick, cfg)


def update_satisfaction(state: UserState, users: np.ndarray | slice, experience: np.ndarray,
                        cfg: SatisfactionConfig) -> None:
    """Fold one step's ``experience`` (B,) into long-term satisfaction (see :func:`next_satisfaction`)."""
    state.satisfaction[users] = next_satisfaction(state.satisfaction[users], experience, cfg)


def experience_of(rating: np.ndarray, consumption: np.ndarray, clicked_any: np.ndarray, cfg: SatisfactionConfig) -> np.ndarray:
    """Experienced quality of a step in [-1, 1]: rating when given, else consumption; no click is negative."""
    exp = np.where(np.isnan(rating), 2.0 * consumption - 1.0, (rating - 3.0) / 2.0)
    return np.where(clicked_any, exp, cfg.no_click).astype(np.float32)


class Dynamics:
    """Applies the processes above in a fixed order after each step and between sessions."""

    def __init__(self, config: DynamicsConfig | dict | None = None) -> None:
        self.config = config if isinstance(config, DynamicsConfig) else DynamicsConfig(**(config or {}))
        c = self.config
        d = c.drift
        self._ou_decay1 = math.exp(-d.theta)
        self._ou_sd1 = d.sigma * (math.sqrt((1 - self._ou_decay1**2) / (2 * d.theta)) if d.theta > 0 else 1.0)
        # step_one's constant factors as 0-d float32 arrays: the float32 values numpy would cast the Python
        # floats to, without paying for that cast on every call
        f32 = np.float32
        self._c_decay1 = np.array(self._ou_decay1, f32)
        self._c_keep = np.array(1.0 - c.boredom.decay, f32)
        self._c_growth = np.array(c.boredom.growth, f32)
        self._c_exposure = np.array(c.boredom.exposure, f32)
        self._scratch: dict[tuple[int, int], tuple] = {}  # (taste dim, topics) -> step_one's noise scale and scratch rows
        # step_one's scalar parameters, read once like the constants above (a pydantic attribute read costs
        # several plain ones, and step_one would make about fifteen)
        fc, sc = c.fatigue, c.satisfaction
        self._p_one = (bool(d.theta or d.sigma), d.assimilation, d.anchor_assimilation,
                       d.shift_rate > 0 or bool(d.shift_schedule), fc.base, fc.poor_slate, fc.relief, 1 - sc.rate, sc.rate)
        # and a scratch 0-d float32 for per-step factors: a ufunc takes it about twice as fast as a Python
        # float, with the same result (the float is cast to float32 either way)
        self._s = np.zeros((), f32)

    def step(self, state: UserState, users: np.ndarray | slice, *, chosen_features: np.ndarray,
             consumption: np.ndarray, consumed_topics: np.ndarray, shown_topics: np.ndarray,
             best_utility: np.ndarray, experience: np.ndarray, rng: np.random.Generator,
             directions: np.ndarray) -> np.ndarray:
        """Advance ``users`` one step; returns the concept-shift mask (B,).

        Order: OU drift and assimilation (one renormalisation), concept shift, boredom, fatigue,
        satisfaction. Rows that consumed nothing have ``consumption == 0`` and are not pulled.
        """
        # The processes above, inlined with the same operations in the same order (so the same float32
        # rounding and random draws): on the small batches RL libraries step, the cost is numpy's per-call
        # overhead, so temporaries are updated in place and the constants were computed in __init__.
        c = self.config
        d = c.drift
        ou, assimilation, anchor_assimilation, shifts, f_base, f_poor, f_relief, s_keep, s_rate = self._p_one
        state.clock[users] += 1.0
        state.steps_total[users] += 1
        taste = rows(state.taste, users)
        if ou:  # _ou_mean_and_noise at dt = 1: anchor + (taste - anchor) * decay + noise
            anchor = rows(state.anchor, users)
            noise = rng.standard_normal(taste.shape, dtype=np.float32)
            noise *= self._ou_sd1 / math.sqrt(taste.shape[1])
            t = taste - anchor
            t *= self._ou_decay1
            t += anchor
            t += noise
        else:
            t = taste.copy()
        # out of place where a backend's float64 consumption would widen the product, as it did before
        pull = (chosen_features - t) * (assimilation * consumption)[:, None]
        pull += t
        state.taste[users] = _normalize_rows(pull)
        if anchor_assimilation > 0:
            an = rows(state.anchor, users)
            pull = (chosen_features - an) * (anchor_assimilation * consumption)[:, None]
            pull += an
            state.anchor[users] = _normalize_rows(pull)
        shifted = concept_shift(state, users, d, rng, directions) if shifts else np.zeros(taste.shape[0], dtype=bool)
        b = rows(state.boredom, users) * self._c_keep  # update_boredom's (1 - decay) ** dt at dt = 1, as float32
        b += c.boredom.growth * consumed_topics
        b += c.boredom.exposure * shown_topics
        state.boredom[users] = b
        # next_fatigue and next_satisfaction, with numpy's clip ufunc called directly (np.clip's wrapper
        # calls the same ufunc)
        poor = 2.0 * best_utility
        np.exp(poor, out=poor)
        poor += 1.0
        np.divide(1.0, poor, out=poor)
        poor *= f_poor
        x = rows(state.fatigue, users) + f_base
        x = x + poor  # float64 when a backend's utility is
        state.fatigue[users] = clip_ufunc(x - f_relief * (experience > 0), 0.0, 1.0)
        x = s_keep * rows(state.satisfaction, users)
        x += s_rate * experience
        state.satisfaction[users] = clip_ufunc(x, -1.0, 1.0)
        return shifted

    def __getstate__(self) -> dict:
        # scratch buffers are rebuilt on demand; nothing in them outlives a call
        return {**self.__dict__, "_scratch": {}}

    def _scratch_for(self, dim: int, n_topics: int) -> tuple:
        """step_one's per-dimension constants and buffers (values never outlive a call): the OU noise scale
        (0-d float32), a noise row, a row for the new taste, one for an assimilation pull and one for a
        boredom gain."""
        return (np.array(self._ou_sd1 / math.sqrt(dim), np.float32), np.zeros(dim, np.float32),
                np.zeros(dim, np.float32), np.zeros(dim, np.float32), np.zeros(n_topics, np.float32))

    def step_one(self, state: UserState, u: int, *, chosen_features: np.ndarray | None, consumption: float,
                 consumed_topics: np.ndarray | None, shown_topics: np.ndarray, best_utility: float,
                 experience: float, rng: np.random.Generator, directions: np.ndarray) -> bool:
        """:meth:`step` for one user (the single env's fast path): same processes, same random draws.

        The ufuncs write to preallocated rows through a positional ``out`` (in-place ``x *= y`` included): the same
        float32 operations in the same order, with less argument handling per call."""
        ou, assimilation, anchor_assimilation, shifts, f_base, f_poor, f_relief, s_keep, s_rate = self._p_one
        clock, steps = state.clock, state.steps_total
        clock[u] = clock.item(u) + 1.0
        steps[u] = steps.item(u) + 1
        taste, anchor, b = state.taste[u], state.anchor[u], state.boredom[u]  # views: updated in place
        s = self._s
        scratch = self._scratch.get((taste.size, b.size))
        if scratch is None:
            scratch = self._scratch[taste.size, b.size] = self._scratch_for(taste.size, b.size)
        scale, noise, t, pull, gain = scratch  # t: the new taste
        add, subtract, multiply, divide = _add, _subtract, _multiply, _divide
        if ou:  # OU step, as _ou_mean_and_noise with dt = 1 (same draws, same float32 rounding)
            rng.standard_normal(dtype=np.float32, out=noise)
            multiply(noise, scale, noise)
            subtract(taste, anchor, t)
            multiply(t, self._c_decay1, t)
            add(t, anchor, t)
            add(t, noise, t)
        else:
            t[...] = taste
        if chosen_features is not None and consumption > 0:
            # one row at a time: same-shape (d,) operations are about three times cheaper than broadcasting
            # over a (2, d) block of taste and anchor, with the same float32 values
            if anchor_assimilation > 0:
                subtract(chosen_features, anchor, pull)
                s[...] = anchor_assimilation * consumption
                multiply(pull, s, pull)
                add(pull, anchor, pull)  # the pulled anchor (x + y == y + x in IEEE arithmetic)
                n = math.sqrt(pull.dot(pull))  # .dot: the same BLAS product as @, cheaper to call
                s[...] = 1e-8 if 1e-8 > n else n  # max(n, 1e-8) (NaN included) without the builtin call
                divide(pull, s, anchor)
            subtract(chosen_features, t, pull)
            s[...] = assimilation * consumption
            multiply(pull, s, pull)
            add(t, pull, t)
        n = math.sqrt(t.dot(t))
        s[...] = 1e-8 if 1e-8 > n else n
        divide(t, s, taste)
        shifted = bool(concept_shift(state, slice(u, u + 1), self.config.drift, rng, directions)[0]) if shifts else False
        multiply(b, self._c_keep, b)
        if consumed_topics is not None:  # a float32 catalog row, so its product fits the float32 scratch row
            add(b, multiply(consumed_topics, self._c_growth, gain), b)
        if shown_topics.dtype == gain.dtype:
            add(b, multiply(shown_topics, self._c_exposure, gain), b)
        else:  # a backend's sums in another dtype: computed in it, as in step()
            b += shown_topics * self._c_exposure
        # next_fatigue and next_satisfaction on floats, inlined (same operations in the same order); the clips
        # are min(max(x, lo), hi) as conditionals, NaN passing through as it does there
        fatigue, satisfaction = state.fatigue, state.satisfaction
        x = fatigue.item(u) + f_base + f_poor * (1.0 / (1.0 + math.exp(2.0 * best_utility))) - f_relief * float(experience > 0)
        x = 0.0 if 0.0 > x else x
        fatigue[u] = 1.0 if 1.0 < x else x
        x = s_keep * satisfaction.item(u) + s_rate * experience
        x = -1.0 if -1.0 > x else x
        satisfaction[u] = 1.0 if 1.0 < x else x
        return shifted

    def between_sessions(self, state: UserState, users: np.ndarray | slice, activity: np.ndarray,
                         rng: np.random.Generator) -> np.ndarray:
        """Let time pass before each user's next session; returns the gaps (in steps)."""
        c = self.config
        scale = c.session.gap_scale * (1.5 - activity)
        # rng.exponential(scale), which draws scale * standard_exponential(): the same draws, without its
        # per-call broadcasting of the scale array
        gap = rng.standard_exponential(size=np.shape(scale)) * scale
        gap = np.where(state.sessions[users] > 0, gap, 0.0)  # the first session has no gap before it
        state.clock[users] += gap
        ou_drift(state, users, c.drift, rng, dt=gap)
        decay_boredom(state, users, c.boredom, gap)
        state.fatigue[users] *= 1.0 - c.fatigue.recovery
        state.sessions[users] += 1
        return gap

    def return_weights(self, state: UserState, session_rate: np.ndarray) -> np.ndarray:
        """Relative chance that each user starts the next session (``Population.session_rate`` x satisfaction)."""
        return session_rate * np.exp(self.config.satisfaction.return_weight * state.satisfaction)
