"""The batched simulation core shared by :class:`~simrec.envs.slate_env.SlateEnv` and the vector env.

One call to :meth:`Simulator.step` runs the whole data flow for a batch of users:
persona + state + memory + slate -> cognition -> response -> dynamics update -> memory write.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

from simrec.cognition import CognitionBackend, ResponseBatch, make_backend
from simrec.envs.candidates import CandidateGenerator
from simrec.users.dynamics import Dynamics, as_index, experience_of
from simrec.users.population import Population
from simrec.users.state import rows
from simrec.users.transitions import push_recent, push_recent_one
from simrec.envs.spec import EnvSpec
from simrec.users.world import World

#: Columns of the ``user`` observation.
USER_FEATURES = ("age", "sessions", "session_progress", "session_clicks", "days_since_last")
#: Extra columns of each ``history`` row after the item's features.
HISTORY_FEATURES = ("clicked", "rating", "consumption", "valid")


@dataclass
class StepResult:
    response: ResponseBatch
    reward: np.ndarray  # (B,)
    slates: np.ndarray  # (B, K) catalog indices
    shifted: np.ndarray  # (B,) concept shift happened


class Simulator:
    """A catalog, a population, a cognition backend and the dynamics, stepped in batches."""

    def __init__(self, spec: EnvSpec, world: World, backend: CognitionBackend | None = None,
                 population_size: int | None = None) -> None:
        self.spec = spec = spec.for_world(world)  # choice settings the spec leaves to the world
        self.catalog = world.catalog
        self.pop = Population(world.catalog, world.personas, population_size or spec.population_size,
                              spec.slate_size, spec.memory_capacity, getattr(world, "transitions", None))
        if backend is None:
            cfg = spec.choice.model_dump() if spec.backend == "embedded" else dict(spec.backend_config)
            backend = make_backend(spec.backend, cfg)
        self.backend = backend
        self.dynamics = Dynamics(spec.dynamics)
        self.candidates = CandidateGenerator(self.catalog, spec.num_candidates, spec.candidates)
        cat = self.catalog
        d = cat.dim
        # Observable item features: content vector + popularity prior. Row n is the "no item" pad.
        self.item_obs = np.zeros((len(cat) + 1, d + 1), dtype=np.float32)
        self.item_obs[:-1, :d] = cat.features
        self.item_obs[:-1, d] = cat.popularity
        # Rows [features, quality, topic weights] for the dynamics; the last row is the "nothing chosen" pad.
        self.item_rows = np.zeros((len(cat) + 1, d + 1 + cat.n_topics), dtype=np.float32)
        self.item_rows[:-1, :d] = cat.features
        self.item_rows[:-1, d] = cat.quality
        self.item_rows[:-1, d + 1:] = cat.topic_weights
        self._inv_log_sessions = 1.0 / np.log(1000.0)
        self.reward_bounds = spec.reward.bounds(spec.slate_size)
        self._ages = np.array([p.age for p in self.pop.personas], dtype=np.float32) / 100.0
        self._last_gap = np.zeros(self.pop.n_users, dtype=np.float32)
        # Observation history as a ring of ready-made rows per user, so observe() is one gather.
        self._hist = np.zeros((self.pop.n_users, spec.history_window, d + len(HISTORY_FEATURES)), np.float32)
        self._hist_order = np.arange(spec.history_window)
        # Single-user fast path: per-item views and history-row templates (features, clicked 1, rating and
        # consumption filled per step, valid 1; the last row is "nothing chosen"), and the ring's
        # oldest-first order for each write position.
        self._d = d
        self._item_feats, self._item_topics = self.item_rows[:, :d], self.item_rows[:, d + 1:]
        self._hist_rows = np.zeros((len(cat) + 1, d + len(HISTORY_FEATURES)), np.float32)
        self._hist_rows[:-1, :d] = cat.features
        self._hist_rows[:-1, d] = 1.0
        self._hist_rows[:, d + 3] = 1.0
        w = spec.history_window
        self._ring_orders = [np.r_[k:w, 0:k] for k in range(w)]
        self._scalar_for: object = None  # the backend _scalar_decide was last looked up for
        # the fast path's spec scalars, read once (a pydantic attribute read costs several plain ones)
        r = spec.reward
        self._one = (r.click, r.leave, r.consumption, r.rating, w, 1.0 / spec.max_steps,
                     self.dynamics.config.satisfaction.no_click)
        self._obs_one = (w, 1.0 / spec.max_steps, float(self._inv_log_sessions))  # as a float: cheaper products
        self._scalar = None

    # -- spaces ---------------------------------------------------------------------------------
    def observation_space(self) -> spaces.Dict:
        s, d = self.spec, self.catalog.dim
        lo_item = np.full(d + 1, -1.0, np.float32)
        lo_item[d] = 0.0
        lo_hist = np.concatenate([lo_item[:d], np.zeros(len(HISTORY_FEATURES), np.float32)])
        return spaces.Dict({
            "candidates": spaces.Box(np.tile(lo_item, (s.num_candidates, 1)), 1.0,
                                     shape=(s.num_candidates, d + 1), dtype=np.float32),
            "user": spaces.Box(0.0, 1.0, shape=(len(USER_FEATURES),), dtype=np.float32),
            "history": spaces.Box(np.tile(lo_hist, (s.history_window, 1)), 1.0,
                                  shape=(s.history_window, d + len(HISTORY_FEATURES)), dtype=np.float32),
        })

    # -- lifecycle ------------------------------------------------------------------------------
    def reset_population(self, rng: np.random.Generator) -> None:
        self.pop.reset(rng)
        self.candidates.reset()
        self._last_gap[:] = 0
        self._hist[:] = 0

    def start_sessions(self, users: np.ndarray | slice, rng: np.random.Generator) -> None:
        act = self.pop.traits[users, 0]
        gap = self.dynamics.between_sessions(self.pop.state, users, act, rng)
        self._last_gap[users] = gap

    def pick_users(self, rng: np.random.Generator, count: int, exclude: np.ndarray | None = None) -> np.ndarray:
        """Draw ``count`` distinct users to start sessions, weighted by session rate and satisfaction."""
        w = self.dynamics.return_weights(self.pop.state, self.pop.session_rate)
        keys = np.log(w) + rng.gumbel(size=w.size)
        if exclude is not None and exclude.size:
            keys[exclude] = -np.inf
        if count == 1:
            return np.array([int(keys.argmax())])
        if count > np.isfinite(keys).sum():
            raise ValueError(f"need {count} idle users but the population has only {np.isfinite(keys).sum()}")
        return (-keys).argpartition(count - 1)[:count]

    # -- one step -------------------------------------------------------------------------------
    def step(self, users: np.ndarray | slice, slates: np.ndarray, rng: np.random.Generator) -> StepResult:
        """Run one step for ``users`` (index array, or ``slice(u, u + 1)`` for one user)."""
        pop, cat, r = self.pop, self.catalog, self.spec.reward
        B, K = slates.shape
        backend = self.backend
        resp = backend.decide(pop, users if getattr(backend, "accepts_slices", False) else as_index(users), slates, rng)
        ar = np.arange(B)
        choice = resp.meta.get("choice")
        if choice is None:  # any backend: the chosen item is the most-consumed clicked one (LLM replies may click several)
            clicked_any = resp.clicked.any(axis=1)
            pos = np.argmax(np.where(resp.clicked, resp.consumption + 1.0, 0.0), axis=1)
        else:  # one click at most, at slate position choice (K: none); pos as the argmax above finds it
            clicked_any = choice < K
            pos = np.where(clicked_any, choice, 0)
        chosen = np.where(clicked_any, slates[ar, pos], -1)
        cons = resp.consumption[ar, pos] * clicked_any
        rating = resp.rating[ar, pos]
        exp = experience_of(rating, cons, clicked_any, self.dynamics.config.satisfaction)
        util = resp.meta.get("utility")
        if util is None:
            util = self.backend_free_utility(users, slates)
        d = cat.dim
        chosen_row = self.item_rows.take(chosen, axis=0)  # the pad row (zeros) when nothing was chosen
        consumed_topics = chosen_row[:, d + 1:]
        shown_topics = resp.meta.get("shown_topics")
        if shown_topics is None:
            shown_topics = np.take(self.item_rows, slates, axis=0)[:, :, d + 1:].sum(axis=1)
        shifted = self.dynamics.step(
            pop.state, users, chosen_features=chosen_row[:, :d], consumption=cons,
            consumed_topics=consumed_topics, shown_topics=shown_topics, best_utility=util.max(axis=1),
            experience=exp, rng=rng, directions=pop.directions,
        )
        pop.memory.write(users, slates, chosen, rating, cons, exp, pop.state.clock[users], consumed_topics)
        if pop.state.recent.shape[1]:  # the clicked items become the users' newest recent items
            push_recent(pop.state.recent, as_index(users)[clicked_any], chosen[clicked_any])
        # the history rows: each item's template row ("nothing chosen" for -1), then rating and consumption
        row = self._hist_rows.take(chosen, axis=0)
        row[:, d + 1] = np.where(np.isnan(rating), 0.0, rating / 5.0)
        row[:, d + 2] = cons
        self._hist[users, (pop.memory.count[users] - 1) % self.spec.history_window] = row
        reward = r.click * (clicked_any if choice is not None else resp.clicked.sum(axis=1)) + r.leave * resp.leave
        if r.consumption:
            reward = reward + r.consumption * resp.consumption.sum(axis=1)
        if r.rating:
            reward = reward + r.rating * np.nansum((resp.rating - 3.0) / 2.0, axis=1)
        return StepResult(resp, reward.astype(np.float64), slates, shifted)

    def step_one(self, u: int, slate: np.ndarray, rng: np.random.Generator) -> StepResult:
        """:meth:`step` for one user: the single env's fast path (same model, same random draws)."""
        if not hasattr(self.backend, "decide_one"):
            return self.step(slice(u, u + 1), slate[None, :], rng)
        resp, reward, shifted = self._step_one(u, slate, rng)
        return StepResult(resp, np.array([reward]), slate[None, :], np.array([shifted]))

    def _step_one(self, u: int, slate: np.ndarray, rng: np.random.Generator) -> tuple[ResponseBatch, float, bool]:
        """The fast path's work, returning the reward and concept shift as Python scalars. Needs a backend
        with ``decide_one`` whose ``meta`` has ``choice``, ``shown_topics`` and ``utility``; the embedded
        backend's extra scalars (``best_utility``, ``choice_consumption``, ``choice_rating``) save reading them
        back from the arrays."""
        resp = self.backend.decide_one(self.pop, u, slate, rng)
        meta = resp.meta
        choice = meta["choice"]
        if choice < slate.size:
            cons = meta.get("choice_consumption")
            if cons is None:  # a decide_one that hands on only the arrays
                cons, rating = resp.consumption.item(choice), resp.rating.item(choice)
            else:
                rating = meta["choice_rating"]
        else:
            cons, rating = 0.0, math.nan
        best = meta["best_utility"] if "best_utility" in meta else max(meta["utility"][0].tolist())
        reward, shifted = self._apply_one(u, slate, rng, choice, cons, rating, bool(resp.leave[0]), best,
                                          meta["shown_topics"])
        return resp, reward, shifted

    def _scalar_decide(self):
        """The embedded backend's ``_decide_scalars`` (``decide_one`` without building the response arrays),
        or None for any other backend (including a subclass with its own ``decide_one``)."""
        backend = self.backend
        if backend is not self._scalar_for:
            from simrec.cognition.embedded import EmbeddedCognition

            ok = getattr(type(backend), "decide_one", None) is EmbeddedCognition.decide_one
            self._scalar = backend._decide_scalars if ok else None
            self._scalar_for = backend
        return self._scalar

    def _apply_one(self, u: int, slate: np.ndarray, rng: np.random.Generator, choice: int, cons: float,
                   rating: float, leave: bool, best_utility: float, shown_topics: np.ndarray,
                   feats: np.ndarray | None = None, topics: np.ndarray | None = None) -> tuple[float, bool]:
        """Dynamics, memory and history for one user's response (``choice`` a slate position, ``K`` for nothing;
        ``cons`` 0.0 and ``rating`` NaN without a click); returns the reward and the concept shift. ``feats`` and
        ``topics``: the chosen item's feature and topic-weight rows when the caller has them at hand."""
        pop = self.pop
        click_w, leave_w, consumption_w, rating_w, window, _, no_click = self._one
        hit = choice < slate.size
        if hit:
            item = slate.item(choice)
            if feats is None:
                feats, topics = self._item_feats[item], self._item_topics[item]
            exp = (rating - 3.0) / 2.0 if rating == rating else 2.0 * cons - 1.0
        else:
            item, feats, topics = -1, None, None
            exp = no_click
        state = pop.state
        shifted = self.dynamics.step_one(
            state, u, chosen_features=feats, consumption=cons, consumed_topics=topics, shown_topics=shown_topics,
            best_utility=best_utility, experience=exp, rng=rng, directions=pop.directions,
        )
        if hit and pop.transitions is not None and state.recent.shape[1]:  # the click: the newest recent item
            push_recent_one(state.recent, u, item)
        mem = pop.memory
        mem.write_one(u, slate, item, rating, cons, exp, state.clock.item(u), topics)
        # the history row: the item's template row ("nothing chosen" for item -1), then rating and consumption
        row, d = self._hist[u, (mem.count.item(u) - 1) % window], self._d  # a view
        row[...] = self._hist_rows[item]
        if hit:
            row[d + 1] = rating / 5.0 if rating == rating else 0.0
            row[d + 2] = cons
        reward = click_w * hit + leave_w * leave
        if consumption_w:
            reward += consumption_w * cons
        if rating_w and rating == rating:
            reward += rating_w * (rating - 3.0) / 2.0
        return float(reward), shifted

    def observe_one(self, u: int, cands: np.ndarray, t: int, clicks: int) -> dict[str, np.ndarray]:
        """:meth:`observe` for one user, without the batch dimension."""
        window, inv, inv_log_sessions = self._obs_one
        pop = self.pop
        # min(x, 1.0) as a conditional (NaN passes, as with min)
        sessions = math.log1p(pop.state.sessions.item(u)) * inv_log_sessions
        clicked = clicks * inv
        gap = self._last_gap.item(u) * 1e-3
        user = np.array([self._ages.item(u), 1.0 if 1.0 < sessions else sessions, t * inv,
                         1.0 if 1.0 < clicked else clicked, 1.0 if 1.0 < gap else gap], dtype=np.float32)
        k = pop.memory.count.item(u) % window  # the oldest record sits at slot k
        return {"candidates": self.item_obs.take(cands, axis=0), "user": user,
                "history": self._hist[u].take(self._ring_orders[k], axis=0)}

    def backend_free_utility(self, users: np.ndarray | slice, slates: np.ndarray) -> np.ndarray:
        """Utility under the embedded model, for dynamics when a backend (e.g. an LLM) gives none."""
        from simrec.cognition.embedded import EmbeddedCognition

        if not hasattr(self, "_ref_model"):
            self._ref_model = EmbeddedCognition(self.spec.choice)
        return self._ref_model.utilities(self.pop, users, slates)

    # -- observations ---------------------------------------------------------------------------
    def observe(self, users: np.ndarray | slice, cands: np.ndarray, t: np.ndarray, clicks: np.ndarray) -> dict[str, np.ndarray]:
        """Batched observation dict; leading dim B."""
        st, (window, inv) = self.pop.state, self._obs_one[:2]
        user = np.empty((cands.shape[0], len(USER_FEATURES)), np.float32)
        user[:, 0] = rows(self._ages, users)
        user[:, 1] = np.minimum(np.log1p(rows(st.sessions, users)) * self._inv_log_sessions, 1.0)
        user[:, 2] = t * inv
        user[:, 3] = np.minimum(clicks * inv, 1.0)
        user[:, 4] = np.minimum(rows(self._last_gap, users) * 1e-3, 1.0)
        # oldest first: ring slots count, count + 1, ... (mod window)
        flat = as_index(users)[:, None] * window + (rows(self.pop.memory.count, users)[:, None] + self._hist_order) % window
        hist = self._hist.reshape(-1, self._hist.shape[2]).take(flat, axis=0)
        cand = self.item_obs.take(cands, axis=0)
        return {"candidates": cand, "user": user, "history": hist}
