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

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from simrec.state import UserState


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

def _normalize_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.sqrt(np.einsum("bd,bd->b", x, x))[:, None], 1e-8)


def ou_drift(state: UserState, users: np.ndarray, cfg: DriftConfig, rng: np.random.Generator,
             dt: np.ndarray | float = 1.0) -> None:
    """Exact OU transition of taste toward anchor over ``dt`` steps (per user)."""
    if cfg.theta == 0 and cfg.sigma == 0:
        return
    dt = np.broadcast_to(np.asarray(dt, dtype=np.float64), users.shape)
    taste, anchor = state.taste[users], state.anchor[users]
    if cfg.theta > 0:
        decay = np.exp(-cfg.theta * dt)[:, None]
        sd = cfg.sigma * np.sqrt((1 - decay**2) / (2 * cfg.theta))
    else:
        decay = np.ones((users.size, 1))
        sd = cfg.sigma * np.sqrt(dt)[:, None]
    d = taste.shape[1]
    noise = rng.standard_normal(taste.shape) * (sd / np.sqrt(d))
    state.taste[users] = _normalize_rows(anchor + (taste - anchor) * decay + noise)


def assimilate(state: UserState, users: np.ndarray, item_features: np.ndarray, amount: np.ndarray,
               cfg: DriftConfig) -> None:
    """Pull taste and anchor toward consumed items; ``amount`` (B,) is consumption in [0, 1]."""
    a = amount[:, None]
    t = state.taste[users]
    state.taste[users] = _normalize_rows(t + cfg.assimilation * a * (item_features - t))
    if cfg.anchor_assimilation > 0:
        an = state.anchor[users]
        state.anchor[users] = _normalize_rows(an + cfg.anchor_assimilation * a * (item_features - an))


def concept_shift(state: UserState, users: np.ndarray, cfg: DriftConfig, rng: np.random.Generator,
                  directions: np.ndarray) -> np.ndarray:
    """Apply sudden preference shifts; returns the bool mask (B,) of users that shifted.

    A shifting user's anchor moves ``shift_magnitude`` of the way toward a random topic direction,
    and taste jumps halfway there: a new life phase, not a slow drift.
    """
    shifted = np.zeros(users.size, dtype=bool)
    if cfg.shift_rate > 0:
        shifted |= rng.random(users.size) < cfg.shift_rate
    if cfg.shift_schedule:
        shifted |= np.isin(state.steps_total[users], cfg.shift_schedule)
    if shifted.any():
        su = users[shifted]
        target = directions[rng.integers(0, directions.shape[0], size=su.size)]
        m = cfg.shift_magnitude
        state.anchor[su] = _normalize_rows((1 - m) * state.anchor[su] + m * target)
        state.taste[su] = _normalize_rows(0.5 * state.taste[su] + 0.5 * state.anchor[su])
    return shifted


def update_boredom(state: UserState, users: np.ndarray, consumed_topics: np.ndarray, shown_topics: np.ndarray,
                   cfg: BoredomConfig, dt: np.ndarray | float = 1.0) -> None:
    """Decay boredom over ``dt``, then add consumption (B, T) and exposure (B, T) contributions."""
    dt = np.asarray(dt, dtype=np.float64)
    keep = (1.0 - cfg.decay) ** (dt[:, None] if dt.ndim else dt)
    state.boredom[users] = state.boredom[users] * keep + cfg.growth * consumed_topics + cfg.exposure * shown_topics


def decay_boredom(state: UserState, users: np.ndarray, cfg: BoredomConfig, dt: np.ndarray) -> None:
    state.boredom[users] *= ((1.0 - cfg.decay) ** dt)[:, None]


def update_fatigue(state: UserState, users: np.ndarray, best_utility: np.ndarray, good_pick: np.ndarray,
                   cfg: FatigueConfig) -> None:
    """Fatigue grows each step, more when the best item on the slate was unappealing."""
    poor = 1.0 / (1.0 + np.exp(2.0 * best_utility))  # ~1 when the best item is bad, ~0 when great
    f = state.fatigue[users] + cfg.base + cfg.poor_slate * poor - cfg.relief * good_pick
    state.fatigue[users] = np.clip(f, 0.0, 1.0)


def update_satisfaction(state: UserState, users: np.ndarray, experience: np.ndarray, cfg: SatisfactionConfig) -> None:
    """Exponential average of ``experience`` (B,) in [-1, 1]."""
    s = (1 - cfg.rate) * state.satisfaction[users] + cfg.rate * experience
    state.satisfaction[users] = np.clip(s, -1.0, 1.0)


def experience_of(rating: np.ndarray, consumption: np.ndarray, clicked_any: np.ndarray, cfg: SatisfactionConfig) -> np.ndarray:
    """Experienced quality of a step in [-1, 1]: rating when given, else consumption; no click is negative."""
    exp = np.where(np.isnan(rating), 2.0 * consumption - 1.0, (rating - 3.0) / 2.0)
    return np.where(clicked_any, exp, cfg.no_click).astype(np.float32)


class Dynamics:
    """Applies the processes above in a fixed order after each step and between sessions."""

    def __init__(self, config: DynamicsConfig | dict | None = None) -> None:
        self.config = config if isinstance(config, DynamicsConfig) else DynamicsConfig(**(config or {}))

    def step(self, state: UserState, users: np.ndarray, *, chosen_features: np.ndarray, consumption: np.ndarray,
             consumed_topics: np.ndarray, shown_topics: np.ndarray, best_utility: np.ndarray,
             experience: np.ndarray, rng: np.random.Generator, directions: np.ndarray) -> np.ndarray:
        """Advance ``users`` one step; returns the concept-shift mask (B,)."""
        c = self.config
        state.clock[users] += 1.0
        state.steps_total[users] += 1
        ou_drift(state, users, c.drift, rng)
        clicked = consumption > 0
        if clicked.any():
            cu = users[clicked]
            assimilate(state, cu, chosen_features[clicked], consumption[clicked], c.drift)
        shifted = concept_shift(state, users, c.drift, rng, directions)
        update_boredom(state, users, consumed_topics, shown_topics, c.boredom)
        update_fatigue(state, users, best_utility, (experience > 0).astype(np.float32), c.fatigue)
        update_satisfaction(state, users, experience, c.satisfaction)
        return shifted

    def between_sessions(self, state: UserState, users: np.ndarray, activity: np.ndarray,
                         rng: np.random.Generator) -> np.ndarray:
        """Let time pass before each user's next session; returns the gaps (in steps)."""
        c = self.config
        mean_gap = c.session.gap_scale * (1.5 - activity)
        gap = rng.exponential(mean_gap)
        had_session = state.sessions[users] > 0
        gap = np.where(had_session, gap, 0.0)
        state.clock[users] += gap
        ou_drift(state, users, c.drift, rng, dt=gap)
        decay_boredom(state, users, c.boredom, gap)
        state.fatigue[users] *= 1.0 - c.fatigue.recovery
        state.sessions[users] += 1
        return gap

    def return_weights(self, state: UserState, activity: np.ndarray) -> np.ndarray:
        """Relative chance that each user starts the next session (activity x satisfaction)."""
        return (0.2 + activity) * np.exp(self.config.satisfaction.return_weight * state.satisfaction)
