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

import math
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from simrec.cognition.base import SOURCE_EMBEDDED, JudgeBatch, ResponseBatch
from simrec.users.state import clip_ufunc, rows

_add_reduce = np.add.reduce  # .sum() without its Python-level wrapper (the same pairwise sum)

if TYPE_CHECKING:
    from simrec.catalog import Catalog
    from simrec.users.population import Population


class ChoiceConfig(BaseModel):
    """Parameters of the embedded choice, rating and leave models."""

    model_config = ConfigDict(extra="forbid")

    affinity: float = Field(4.0, description="Weight of taste-item similarity.")
    quality: float = Field(1.5, description="Weight of intrinsic item quality.")
    conformity: float = Field(1.0, description="Weight of popularity, scaled by the conformity trait.")
    popularity_shift: float | None = Field(0.0, description=(
        "Utility added for every user as popularity_shift * max(popularity - 1/2 - popularity_knee, 0): on top of "
        "conformity, how much later choices lean away from (negative) or toward the most popular items "
        "(calibrated worlds). None: the world's calibrated value (calibration.fit_popularity_shift; 0.0 for "
        "worlds without one)."))
    popularity_knee: float | None = Field(-0.5, description=(
        "Where the popularity shift starts, on the centred popularity scale [-1/2, 1/2]: -0.5 shifts every item in "
        "proportion to its popularity, 0.3 only the items above the 80th percentile. None: the world's value."))
    novelty: float = Field(1.0, description="Weight of topic novelty, signed by the diversity trait.")
    boredom: float = Field(1.5, description="Weight of per-topic boredom.")
    temperature: float | None = Field(1.0, gt=0, description=(
        "Scale of the multinomial logit (utility / temperature); None: the world's calibrated temperature "
        "(calibration.fit_temperature; 1.0 for worlds without one)."))
    position_decay: float = Field(0.5, ge=0, description="Attention at position k is (k+1)**-position_decay.")
    no_click: float = Field(0.5, description="Base utility of choosing nothing.")
    slate_no_click: float | None = Field(0.0, description=(
        "Extra utility of choosing nothing from a slate (not in one-item judgements, whose threshold is "
        "no_click): how choosy browsing users are. None: the world's calibrated value "
        "(calibration.fit_slate_no_click; 0.0 for worlds without one)."))
    sequence: float | None = Field(None, ge=0, description=(
        "Weight of order-aware short-term interest (simrec.users.transitions) in the utility; None: the weight "
        "the world was calibrated with (worlds without transitions have none)."))
    no_click_pickiness: float = 1.5
    no_click_fatigue: float = 2.0
    consumption_scale: float = Field(1.5, gt=0)
    rate_prob: float = Field(0.9, ge=0, le=1, description="Probability a clicked item gets a rating.")
    rating_scale: float = Field(0.9, ge=0, description="Stars per unit of utility.")
    rating_pickiness: float = Field(1.0, ge=0, description="Stars between the least and most picky users.")
    rating_conformity: float = Field(0.5, ge=0, le=1, description="Max pull toward the crowd's rating.")
    rating_noise: float = Field(0.6, ge=0)
    rating_dims: int = Field(0, ge=0, description=(
        "Calibrated worlds: the last rating_dims feature dimensions say how a user rates an item and are left "
        "out of the choice utility; ratings then start from the crowd's view (1 + 4 quality) and move by "
        "rating_scale * affinity * <taste, features> over those dimensions. 0: one shared utility."))
    leave_base: float = -3.5
    leave_fatigue: float = 6.0
    leave_satisfaction: float = 1.5
    leave_no_click: float = 0.7


#: What a ``None`` (calibrated) choice setting means in a world that was not calibrated with it.
UNCALIBRATED = {"temperature": 1.0, "slate_no_click": 0.0, "popularity_shift": 0.0, "popularity_knee": -0.5}


def popularity_hinge(popularity: np.ndarray, knee: float | None) -> np.ndarray:
    """``max(popularity - 1/2 - knee, 0)``: what ``ChoiceConfig.popularity_shift`` multiplies (``knee`` None: -0.5,
    every item in proportion to its popularity)."""
    return np.maximum(popularity - 0.5 - (UNCALIBRATED["popularity_knee"] if knee is None else knee), 0.0)


class EmbeddedCognition:
    """Vectorised numpy cognition; see the module docstring for the model."""

    name = "embedded"

    def __init__(self, config: ChoiceConfig | dict | None = None) -> None:
        self.config = config if isinstance(config, ChoiceConfig) else ChoiceConfig(**(config or {}))
        # a spec not resolved against its world (EnvSpec.for_world): the values of a world without calibration
        unset = {k: v for k, v in UNCALIBRATED.items() if getattr(self.config, k) is None}
        if unset:
            self.config = self.config.model_copy(update=unset)
        self._logpos = -self.config.position_decay * np.log1p(np.arange(256, dtype=np.float32))
        self._logpos_list = self._logpos.tolist()
        self._blocks: dict[object, np.ndarray] = {}  # per catalog: item blocks and popularity hinges
        self.calls = 0
        # Single-user path: a ufunc takes a 0-d float32 array about twice as fast as a Python float, and
        # gives the same result (a Python float is cast to float32 first), so constants are cast once and
        # per-call scalars go through the scratch ``_s``.
        f32 = np.float32
        self._c_affinity = np.array(self.config.affinity, f32)
        self._c_neg_boredom = np.array(-self.config.boredom, f32)
        self._s = np.zeros((), f32)
        self._w: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        self._noise = np.empty(0)  # _decide_scalars' uniform draws (filled in place: cheaper than a new array)
        self._inv_t = 1.0 / self.config.temperature
        c = self.config  # and the single-user path's other scalars, read once (pydantic attribute reads are slow)
        self._p_one = (c.novelty, c.conformity, c.rating_dims, c.rating_noise, c.consumption_scale, c.rate_prob)
        self._c_no_click = (c.no_click, c.no_click_pickiness, c.no_click_fatigue)
        self._slate_no_click = c.slate_no_click
        self._popularity_shift = c.popularity_shift
        self._c_rating = (c.rating_conformity, c.rating_dims, c.rating_scale, c.rating_pickiness)
        self._c_leave = (c.leave_base, c.leave_fatigue, c.leave_satisfaction, c.leave_no_click)
        self._sequence = c.sequence

    # -- model pieces (public so analysis and fidelity can use them) ----------------------------
    # ``users`` may be an index array or a ``slice`` (the single-user env passes ``slice(u, u + 1)``
    # so that state reads are views rather than fancy-index copies).
    accepts_slices = True

    def item_block(self, catalog: "Catalog") -> np.ndarray:
        """Per-item rows ``[features, quality - 1/2, popularity - 1/2, topic weights]``, cached."""
        key = id(catalog)
        if key not in self._blocks:
            self._blocks[key] = np.ascontiguousarray(np.concatenate(
                [catalog.features, catalog.quality[:, None] - 0.5, catalog.popularity[:, None] - 0.5,
                 catalog.topic_weights], axis=1), dtype=np.float32)
        return self._blocks[key]

    def popularity_hinge(self, catalog: "Catalog") -> np.ndarray:
        """Per-item ``max(popularity - 1/2 - popularity_knee, 0)`` (float32, cached), what the popularity shift
        multiplies."""
        key = ("hinge", id(catalog))
        if key not in self._blocks:
            self._blocks[key] = popularity_hinge(catalog.popularity, self.config.popularity_knee).astype(np.float32)
        return self._blocks[key]

    def utilities(self, pop: "Population", users: np.ndarray | slice, slates: np.ndarray) -> np.ndarray:
        """Deterministic utility ``(B, K)`` of each slate item for each user.

        Every term is linear in the item block, so utility is one product of the items' block rows
        with a per-user weight vector ``[affinity * taste, quality weight, conformity weight,
        -(boredom + novelty * topic share)]``, plus the novelty offset.
        """
        c = self.config
        d = pop.catalog.dim
        tr = pop.traits[users]
        nov = c.novelty * (2.0 * tr[:, 2] - 1.0)
        tc = rows(pop.memory.topic_consumed, users)
        w = np.empty((tr.shape[0], d + 2 + tc.shape[1], 1), dtype=np.float32)
        w[:, :d, 0] = rows(pop.state.taste, users)
        w[:, :d, 0] *= c.affinity
        if c.rating_dims:  # rating-only dimensions (calibrated worlds) do not drive choice
            w[:, d - c.rating_dims:d, 0] = 0.0
        w[:, d, 0] = c.quality
        w[:, d + 1, 0] = c.conformity * tr[:, 1]
        share = tc / np.maximum(tc.sum(axis=1, keepdims=True), 1e-6)
        w[:, d + 2:, 0] = -(c.boredom * rows(pop.state.boredom, users) + nov[:, None] * share)
        blk = self.item_block(pop.catalog).take(slates, axis=0)
        self._last_block = blk  # decide() hands it on, so the simulator need not gather it again
        u = np.matmul(blk, w)[:, :, 0]
        u += nov[:, None]
        if self._popularity_shift:
            u += self._popularity_shift * self.popularity_hinge(pop.catalog).take(slates)
        if pop.transitions is not None:
            ws = self.sequence_weight(pop)
            if ws:
                u += ws * pop.transitions.scores(rows(pop.state.recent, users), slates).astype(np.float32)
        return u

    def sequence_weight(self, pop: "Population") -> float:
        """The weight of the order-aware sequence term in ``pop``'s world (0 without transitions)."""
        tr = pop.transitions
        if tr is None:
            return 0.0
        return tr.weight if self._sequence is None else self._sequence

    def utilities_one(self, pop: "Population", u: int, slate: np.ndarray) -> np.ndarray:
        """:meth:`utilities` for one user, ``(K,)`` (the single env's fast path)."""
        _, conformity, diversity, _, _ = pop.traits[u].tolist()
        return self._utilities_one(pop, u, slate, conformity, diversity)

    def _utilities_one(self, pop: "Population", u: int, slate: np.ndarray, conformity: float,
                       diversity: float) -> np.ndarray:
        novelty, conformity_w, rating_dims = self._p_one[:3]
        state = pop.state
        taste = state.taste[u]
        d = taste.size
        nov = novelty * (2.0 * diversity - 1.0)
        tc = pop.memory.topic_consumed[u]
        w = self._w.get((d, tc.size))
        if w is None:
            w = self._weights(d, tc.size)
        w, wt, wb, tmp = w
        # ufuncs with a positional ``out`` (and in place, not ``x *= y``): the same operation, with less
        # argument handling per call
        multiply = np.multiply
        multiply(taste, self._c_affinity, wt)
        if rating_dims:
            w[d - rating_dims:d] = 0.0
        w[d + 1] = conformity_w * conformity
        multiply(state.boredom[u], self._c_neg_boredom, wb)
        s = self._s
        total = float(_add_reduce(tc))
        s[...] = nov / (1e-6 if 1e-6 > total else total)  # max(total, 1e-6) without the builtin call
        np.subtract(wb, multiply(tc, s, tmp), wb)
        blk = self._blocks.get(id(pop.catalog))
        if blk is None:
            blk = self.item_block(pop.catalog)
        blk = blk.take(slate, axis=0)
        self._last_block, self._topic_col = blk, d + 2  # the block's topic columns start at d + 2
        out = blk.dot(w)  # .dot: the same BLAS product as @, with less call overhead
        s[...] = nov
        np.add(out, s, out)
        if self._popularity_shift:
            out += self._popularity_shift * self.popularity_hinge(pop.catalog).take(slate)
        if pop.transitions is not None:  # order-aware short-term interest, as in utilities()
            ws = self.sequence_weight(pop)
            if ws:
                out += ws * pop.transitions.scores(state.recent[u:u + 1], slate[None, :])[0].astype(np.float32)
        return out

    def __getstate__(self) -> dict:
        # _w holds views of its buffers, which a copy or pickle would turn into independent arrays
        return {**self.__dict__, "_w": {}}

    def _weights(self, d: int, n_topics: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """_utilities_one's weight vector (reused: it never leaves the call), its taste and topic parts and a
        scratch row for the topic part's share term; the quality weight is set once."""
        w = self._w.get((d, n_topics))
        if w is None:
            v = np.empty(d + 2 + n_topics, dtype=np.float32)
            v[d] = self.config.quality
            w = self._w[d, n_topics] = (v, v[:d], v[d + 2:], np.empty(n_topics, np.float32))
        return w

    # Formulas shared by the batched and the single-user path (work on floats and arrays alike).
    # Their coefficients are read from the config once, in __init__ (a pydantic attribute read is slow).
    def no_click_utility(self, pickiness, fatigue):
        base, w_pickiness, w_fatigue = self._c_no_click
        return base + w_pickiness * (pickiness - 0.5) + w_fatigue * fatigue

    def latent_rating(self, util, bias, pickiness, conformity, quality):
        rating_conformity, rating_dims, rating_scale, rating_pickiness = self._c_rating
        w = rating_conformity * conformity
        base = 1.0 + 4.0 * quality if rating_dims else 3.0
        own = base + rating_scale * util + bias + rating_pickiness * (0.5 - pickiness)
        return (1.0 - w) * own + w * (1.0 + 4.0 * quality)

    def leave_logit(self, fatigue, patience, satisfaction, no_click):
        base, w_fatigue, w_satisfaction, w_no_click = self._c_leave
        return (base + w_fatigue * (fatigue - 0.35 - 0.5 * patience)
                - w_satisfaction * satisfaction + w_no_click * no_click)

    def ratings(self, pop: "Population", users: np.ndarray | slice, slates: np.ndarray, util: np.ndarray,
                rng: np.random.Generator | None) -> np.ndarray:
        """Star ratings ``(B, K)`` the users would give the items (noise-free when ``rng`` is None)."""
        c = self.config
        latent = self.rating_latents(pop, users, slates, util)
        if rng is not None and c.rating_noise > 0:
            latent = latent + c.rating_noise * rng.standard_normal(latent.shape, dtype=np.float32)
        return clip_ufunc(np.rint(latent), 1.0, 5.0).astype(np.float32)

    def rating_latents(self, pop: "Population", users: np.ndarray | slice, slates: np.ndarray,
                       util: np.ndarray) -> np.ndarray:
        """The ordinal model's latent score ``(B, K)`` before noise and rounding."""
        if self.config.rating_dims:
            util = self.rating_utility(pop, users, slates)
        tr = rows(pop.traits, users)
        return self.latent_rating(util, rows(pop.rating_bias, users)[:, None], tr[:, 4:5], tr[:, 1:2],
                                  pop.catalog.quality[slates])

    def rating_utility(self, pop: "Population", users: np.ndarray | slice, items: np.ndarray) -> np.ndarray:
        """``affinity * <taste, features>`` over the last ``rating_dims`` dimensions, ``(B, K)``."""
        r, d = self.config.rating_dims, pop.catalog.dim
        f = np.take(pop.catalog.features[:, d - r:], items, axis=0)
        return self.config.affinity * np.einsum("bkr,br->bk", f, rows(pop.state.taste, users)[:, d - r:])

    # -- protocol -------------------------------------------------------------------------------
    def decide(self, pop: "Population", users: np.ndarray | slice, slates: np.ndarray,
               rng: np.random.Generator) -> ResponseBatch:
        """Choice, consumption, rating and leave for a batch. ``meta`` holds ``utility`` ``(B, K)``,
        ``shown_topics`` ``(B, T)`` and ``choice`` ``(B,)`` (the chosen slate position, ``K`` for nothing)."""
        c = self.config
        B, K = slates.shape
        self.calls += B
        util = self.utilities(pop, users, slates)
        tr = rows(pop.traits, users)
        fatigue = rows(pop.state.fatigue, users)
        z = np.empty((B, K + 1))
        z[:, :K] = util / c.temperature + self._logpos[:K]
        z[:, K] = (self.no_click_utility(tr[:, 4], fatigue) + self._slate_no_click) / c.temperature
        noise = rng.random((B, K + 4))  # gumbel for choice, then consumption, rating gate, leave
        z -= np.log(-np.log(noise[:, : K + 1]))
        choice = z.argmax(axis=1)  # K means "nothing"
        hit = choice < K
        col = np.minimum(choice, K - 1)
        ar = np.arange(B)
        uc = util[ar, col]
        e = np.log(noise[:, K + 1]) - np.log1p(-noise[:, K + 1])  # logistic noise
        clicked = np.zeros((B, K), dtype=bool)
        clicked[ar, col] = hit
        consumption = np.zeros((B, K), dtype=np.float32)
        consumption[ar, col] = hit / (1.0 + np.exp(-(c.consumption_scale * uc + e)))
        stars = self.ratings(pop, users, slates[ar, col][:, None], uc[:, None], rng)[:, 0]
        rating = np.empty((B, K), dtype=np.float32)
        rating.fill(np.nan)  # np.full without its wrapper
        rating[ar, col] = np.where(hit & (noise[:, K + 2] < c.rate_prob), stars, np.nan)
        logit = self.leave_logit(fatigue, tr[:, 3], rows(pop.state.satisfaction, users), ~hit)
        leave = noise[:, K + 3] * (1.0 + np.exp(-logit)) < 1.0  # u < sigmoid(logit)
        resp = ResponseBatch(clicked, rating, consumption, leave, np.zeros(B, np.int8))  # SOURCE_EMBEDDED
        resp.meta["utility"] = util
        resp.meta["shown_topics"] = np.einsum("bkt->bt", self._last_block[:, :, pop.catalog.dim + 2:])
        resp.meta["choice"] = choice
        return resp

    def decide_one(self, pop: "Population", u: int, slate: np.ndarray, rng: np.random.Generator) -> ResponseBatch:
        """``decide`` for a single user (the single env's fast path): same model, same random draws
        in the same order, scalar arithmetic. Returns a batch of one.

        ``meta`` also carries what the simulator's fast path needs as Python scalars: ``choice`` (slate
        position, ``K`` for nothing), ``choice_consumption`` and ``choice_rating`` (NaN when not rated) of
        that position, and ``best_utility``, the slate's highest utility."""
        choice, cons, stars, leave, best, shown, _, _ = self._decide_scalars(pop, u, slate, rng)
        K = slate.size
        clicked = np.zeros((1, K), dtype=bool)
        consumption = np.zeros((1, K), dtype=np.float32)
        rating = np.empty((1, K), dtype=np.float32)
        rating.fill(np.nan)
        if choice < K:
            clicked[0, choice] = True
            consumption[0, choice] = cons
            rating[0, choice] = stars
        return ResponseBatch(clicked, rating, consumption, np.array([leave]), np.zeros(1, np.int8), meta={
            "utility": self._last_util[None, :], "choice": choice, "shown_topics": shown, "best_utility": best,
            "choice_consumption": cons, "choice_rating": stars})

    def _decide_scalars(self, pop: "Population", u: int, slate: np.ndarray,
                        rng: np.random.Generator) -> tuple:
        """:meth:`decide_one`'s work without building the response arrays: ``(choice, consumption, stars,
        leave, best_utility, shown_topics, features, topics)``, consumption the float32 value (0.0 without a
        click), stars NaN when not rated, ``features`` and ``topics`` the chosen item's rows of the catalog's
        feature and topic-weight arrays (views of the slate's block, None without a click). The single env's
        fast path calls this directly."""
        _, _, rating_dims, rating_noise, consumption_scale, rate_prob = self._p_one
        K = slate.size
        self.calls += 1
        _, conformity, diversity, patience, pickiness = pop.traits[u].tolist()
        util = self._last_util = self._utilities_one(pop, u, slate, conformity, diversity)
        ut = util.tolist()
        state = pop.state
        fatigue = state.fatigue.item(u)
        noise = self._noise
        if noise.size != K + 4:
            noise = self._noise = np.empty(K + 4)
        noise = rng.random(out=noise).tolist()  # the same stream as decide()'s (1, K + 4) draw
        inv_t = self._inv_t
        lp = self._logpos_list
        log = math.log
        choice, best = K, (self.no_click_utility(pickiness, fatigue) + self._slate_no_click) * inv_t - log(-log(noise[K]))
        for k in range(K):  # Gumbel-max; strict ">" keeps numpy's first-maximum tie rule
            z = ut[k] * inv_t + lp[k] - log(-log(noise[k]))
            if z > best or (z == best and k < choice):
                choice, best = k, z
        hit = choice < K
        # the rating noise is drawn on every step, as decide() does, whether or not a rating comes of it
        z = float(rng.standard_normal(dtype=np.float32)) if rating_noise > 0 else 0.0  # size=None: as size=1
        cons, stars = 0.0, math.nan
        if hit:
            uc = ut[choice]
            e = log(noise[K + 1]) - math.log1p(-noise[K + 1])  # logistic noise
            s = self._s
            s[...] = 1.0 / (1.0 + math.exp(-(consumption_scale * uc + e)))
            cons = s.item()  # the float32 value the batched path sees
            if noise[K + 2] < rate_prob:
                item = slate.item(choice)
                ur = uc
                if rating_dims:
                    d = pop.catalog.dim
                    ur = self.config.affinity * float(pop.catalog.features[item, d - rating_dims:].dot(state.taste[u, d - rating_dims:]))
                latent = self.latent_rating(ur, pop.rating_bias.item(u), pickiness, conformity,
                                            pop.catalog.quality.item(item))
                if rating_noise > 0:
                    latent += rating_noise * z
                # round() halves to even, as np.rint (which also takes NaN and inf); then clipped to [1, 5]
                stars = float(round(latent) if -1e15 < latent < 1e15 else np.rint(latent))
                stars = 1.0 if 1.0 > stars else stars
                stars = 5.0 if 5.0 < stars else stars
        logit = self.leave_logit(fatigue, patience, state.satisfaction.item(u), not hit)
        leave = noise[K + 3] * (1.0 + math.exp(-logit)) < 1.0
        # axis-0 sum of the slate's topic columns
        blk, col = self._last_block, self._topic_col
        shown = _add_reduce(blk[:, col:], axis=0)
        if hit:  # the chosen item's rows, from the block just read (catalog features, topic weights)
            row = blk[choice]
            return choice, cons, stars, leave, max(ut), shown, row[:col - 2], row[col:]
        return choice, cons, stars, leave, max(ut), shown, None, None

    def judge(self, pop: "Population", users: np.ndarray, items: np.ndarray,
              rng: np.random.Generator) -> JudgeBatch:
        """Watch an item when its utility beats choosing nothing (no position bias: items are judged
        one by one); the rating is the ordinal model's noise-free prediction.

        ``meta`` also holds ``rating_sample`` (stars drawn with the model's rating noise, for rating
        distributions) and ``rating_latent`` (the score before rounding, clipped to [1, 5])."""
        util = self.utilities(pop, users, items)
        tr = pop.traits[users]
        watch = util > self.no_click_utility(tr[:, 4], pop.state.fatigue[users])[:, None]
        latent = self.rating_latents(pop, users, items, util)
        rating = np.clip(np.rint(latent), 1.0, 5.0).astype(np.float32)
        meta = {"utility": util, "rating_latent": np.clip(latent, 1.0, 5.0).astype(np.float32),
                "rating_sample": self.ratings(pop, users, items, util, rng)}
        return JudgeBatch(watch, rating, np.full(users.size, SOURCE_EMBEDDED, np.int8), meta)

    def end_session(self, pop: "Population", users: np.ndarray) -> None:
        return None

    def stats(self) -> dict[str, float]:
        return {"decisions": float(self.calls)}

    def close(self) -> None:
        return None
