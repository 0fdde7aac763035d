"""The embedded cognition backend: a vectorised numpy choice model (no LLM, no network).

For user ``i`` and slate item ``j`` at position ``k``::

    u_ij = a * <taste_i, f_j> + q * (quality_j - 1/2) + c * conformity_i * (pop_j - 1/2)
           + n * (2 diversity_i - 1) * novelty_ij - b * boredom_i . topics_j

Choice is multinomial logit over the slate plus a no-click option, with attention falling with
position (position bias ``log (k + 1) ** -position_decay`` added to each logit); the no-click
utility rises with pickiness and fatigue. A chosen item's consumption is ``sigmoid(s * u + e)``.
Ratings follow an ordinal model: a latent score around 3 stars moved by utility, per-user bias
and pickiness, pulled toward the crowd's view by conformity, plus Gaussian noise, cut at
1.5/2.5/3.5/4.5. The user leaves with probability ``sigmoid(l0 + lf (fatigue - threshold(patience))
- ls satisfaction + lnc [no click])``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from simrec.cognition.base import SOURCE_EMBEDDED, JudgeBatch, ResponseBatch

if TYPE_CHECKING:
    from simrec.population import Population


class ChoiceConfig(BaseModel):
    """Parameters of the embedded choice, rating and leave models."""

    model_config = ConfigDict(extra="forbid")

    affinity: float = Field(4.0, description="Weight of taste-item similarity.")
    quality: float = Field(1.5, description="Weight of intrinsic item quality.")
    conformity: float = Field(1.0, description="Weight of popularity, scaled by the conformity trait.")
    novelty: float = Field(1.0, description="Weight of topic novelty, signed by the diversity trait.")
    boredom: float = Field(1.5, description="Weight of per-topic boredom.")
    temperature: float = Field(1.0, gt=0)
    position_decay: float = Field(0.5, ge=0, description="Attention at position k is (k+1)**-position_decay.")
    no_click: float = Field(0.5, description="Base utility of choosing nothing.")
    no_click_pickiness: float = 1.5
    no_click_fatigue: float = 2.0
    consumption_scale: float = Field(1.5, gt=0)
    rate_prob: float = Field(0.9, ge=0, le=1, description="Probability a clicked item gets a rating.")
    rating_scale: float = Field(0.9, ge=0, description="Stars per unit of utility.")
    rating_pickiness: float = Field(1.0, ge=0, description="Stars between the least and most picky users.")
    rating_conformity: float = Field(0.5, ge=0, le=1, description="Max pull toward the crowd's rating.")
    rating_noise: float = Field(0.6, ge=0)
    leave_base: float = -3.5
    leave_fatigue: float = 6.0
    leave_satisfaction: float = 1.5
    leave_no_click: float = 0.7


class EmbeddedCognition:
    """Vectorised numpy cognition; see the module docstring for the model."""

    name = "embedded"

    def __init__(self, config: ChoiceConfig | dict | None = None) -> None:
        self.config = config if isinstance(config, ChoiceConfig) else ChoiceConfig(**(config or {}))
        self._logpos = -self.config.position_decay * np.log1p(np.arange(256, dtype=np.float32))
        self.calls = 0

    # -- model pieces (public so analysis and fidelity can use them) ----------------------------
    def utilities(self, pop: "Population", users: np.ndarray, slates: np.ndarray) -> np.ndarray:
        """Deterministic utility ``(B, K)`` of each slate item for each user."""
        c = self.config
        cat = pop.catalog
        tr = pop.traits[users]
        f = cat.features[slates]
        tw = cat.topic_weights[slates]
        u = c.affinity * np.einsum("bkd,bd->bk", f, pop.state.taste[users])
        u += c.quality * (cat.quality[slates] - 0.5)
        u += (c.conformity * tr[:, 1:2]) * (cat.popularity[slates] - 0.5)
        if c.novelty:
            u += (c.novelty * (2.0 * tr[:, 2:3] - 1.0)) * pop.memory.topic_novelty(users, tw)
        u -= c.boredom * np.einsum("bkt,bt->bk", tw, pop.state.boredom[users])
        return u

    def ratings(self, pop: "Population", users: np.ndarray, slates: np.ndarray, util: np.ndarray,
                rng: np.random.Generator | None) -> np.ndarray:
        """Star ratings ``(B, K)`` the users would give the items (noise-free when ``rng`` is None)."""
        c = self.config
        tr = pop.traits[users]
        latent = 3.0 + c.rating_scale * util + pop.rating_bias[users, None]
        latent += c.rating_pickiness * (0.5 - tr[:, 4:5])
        crowd = 1.0 + 4.0 * pop.catalog.quality[slates]
        w = c.rating_conformity * tr[:, 1:2]
        latent = (1.0 - w) * latent + w * crowd
        if rng is not None and c.rating_noise > 0:
            latent = latent + c.rating_noise * rng.standard_normal(latent.shape)
        return np.clip(np.rint(latent), 1.0, 5.0).astype(np.float32)

    # -- protocol -------------------------------------------------------------------------------
    def decide(self, pop: "Population", users: np.ndarray, slates: np.ndarray,
               rng: np.random.Generator) -> ResponseBatch:
        c = self.config
        B, K = slates.shape
        self.calls += B
        util = self.utilities(pop, users, slates)
        tr = pop.traits[users]
        fatigue = pop.state.fatigue[users]
        nc = c.no_click + c.no_click_pickiness * (tr[:, 4] - 0.5) + c.no_click_fatigue * fatigue
        z = np.empty((B, K + 1))
        z[:, :K] = util / c.temperature + self._logpos[:K]
        z[:, K] = nc / c.temperature
        noise = rng.random((B, K + 4))  # gumbel for choice, then consumption, rating-gate, leave
        z -= np.log(-np.log(noise[:, : K + 1]))
        choice = z.argmax(axis=1)
        rows = np.flatnonzero(choice < K)
        cols = choice[rows]
        clicked = np.zeros((B, K), dtype=bool)
        clicked[rows, cols] = True
        consumption = np.zeros((B, K), dtype=np.float32)
        rating = np.full((B, K), np.nan, dtype=np.float32)
        if rows.size:
            uc = util[rows, cols]
            e = np.log(noise[rows, K + 1]) - np.log1p(-noise[rows, K + 1])  # logistic noise
            consumption[rows, cols] = 1.0 / (1.0 + np.exp(-(c.consumption_scale * uc + e)))
            gate = noise[rows, K + 2] < c.rate_prob
            rr, rc = rows[gate], cols[gate]
            if rr.size:
                stars = self.ratings(pop, users[rr], slates[rr, rc][:, None], uc[gate][:, None], rng)
                rating[rr, rc] = stars[:, 0]
        threshold = 0.35 + 0.5 * tr[:, 3]
        logit = (c.leave_base + c.leave_fatigue * (fatigue - threshold)
                 - c.leave_satisfaction * pop.state.satisfaction[users] + c.leave_no_click * (choice == K))
        leave = noise[:, K + 3] * (1.0 + np.exp(-logit)) < 1.0  # u < sigmoid(logit)
        resp = ResponseBatch(clicked, rating, consumption, leave, np.full(B, SOURCE_EMBEDDED, np.int8))
        resp.meta["utility"] = util
        return resp

    def judge(self, pop: "Population", users: np.ndarray, items: np.ndarray,
              rng: np.random.Generator) -> JudgeBatch:
        """Watch an item when its utility beats choosing nothing (no position bias: items are judged
        one by one); the rating is the ordinal model's noise-free prediction."""
        c = self.config
        util = self.utilities(pop, users, items)
        tr = pop.traits[users]
        nc = c.no_click + c.no_click_pickiness * (tr[:, 4] - 0.5) + c.no_click_fatigue * pop.state.fatigue[users]
        watch = util > nc[:, None]
        rating = self.ratings(pop, users, items, util, None)
        return JudgeBatch(watch, rating, np.full(users.size, SOURCE_EMBEDDED, np.int8), {"utility": util})

    def end_session(self, pop: "Population", users: np.ndarray) -> None:
        return None

    def stats(self) -> dict[str, float]:
        return {"decisions": float(self.calls)}

    def close(self) -> None:
        return None
