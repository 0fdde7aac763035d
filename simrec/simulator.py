"""The batched simulation core shared by :class:`~simrec.env.SlateEnv` and the vector env.

One call to :meth:`Simulator.step` runs the whole data flow for a batch of users:
persona + state + memory + slate -> cognition -> response -> dynamics update -> memory write.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

from simrec.cognition import CognitionBackend, ResponseBatch, make_backend
from simrec.candidates import CandidateGenerator
from simrec.dynamics import Dynamics, experience_of
from simrec.population import Population
from simrec.spec import EnvSpec
from simrec.world import World

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
        self.spec = spec
        self.catalog = world.catalog
        self.pop = Population(world.catalog, world.personas, population_size or spec.population_size,
                              spec.slate_size, spec.memory_capacity)
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
        self._zero_topics = np.zeros((1, cat.n_topics), np.float32)
        self.reward_bounds = spec.reward.bounds(spec.slate_size)
        self._ages = np.array([p.age for p in self.pop.personas], dtype=np.float32) / 100.0
        self._last_gap = np.zeros(self.pop.n_users, dtype=np.float32)

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
        self._last_gap[:] = 0

    def start_sessions(self, users: np.ndarray, rng: np.random.Generator) -> None:
        gap = self.dynamics.between_sessions(self.pop.state, users, self.pop.trait("activity")[users], rng)
        self._last_gap[users] = gap

    def pick_users(self, rng: np.random.Generator, count: int, exclude: np.ndarray | None = None) -> np.ndarray:
        """Draw ``count`` distinct users to start sessions, weighted by activity and satisfaction."""
        w = self.dynamics.return_weights(self.pop.state, self.pop.trait("activity"))
        keys = np.log(w) + rng.gumbel(size=w.size)
        if exclude is not None and exclude.size:
            keys[exclude] = -np.inf
        if count == 1:
            return np.array([int(np.argmax(keys))])
        if count > np.isfinite(keys).sum():
            raise ValueError(f"need {count} idle users but the population has only {np.isfinite(keys).sum()}")
        return np.argpartition(-keys, count - 1)[:count]

    # -- one step -------------------------------------------------------------------------------
    def step(self, users: np.ndarray, slates: np.ndarray, rng: np.random.Generator) -> StepResult:
        pop, cat, r = self.pop, self.catalog, self.spec.reward
        B, K = slates.shape
        resp = self.backend.decide(pop, users, slates, rng)
        clicked_any = resp.clicked.any(axis=1)
        # The chosen item: the most-consumed clicked one (LLM replies may click several).
        pos = np.where(clicked_any, np.argmax(np.where(resp.clicked, resp.consumption + 1.0, 0.0), axis=1), 0)
        rows = np.arange(B)
        chosen = np.where(clicked_any, slates[rows, pos], -1)
        cons = np.where(clicked_any, resp.consumption[rows, pos], 0.0).astype(np.float32)
        rating = np.where(clicked_any, resp.rating[rows, pos], np.nan).astype(np.float32)
        exp = experience_of(rating, cons, clicked_any, self.dynamics.config.satisfaction)
        util = resp.meta.get("utility")
        if util is None:
            util = self.backend_free_utility(users, slates)
        consumed_topics = cat.topic_weights[np.maximum(chosen, 0)] * clicked_any[:, None]
        shown_topics = cat.topic_weights[slates].sum(axis=1)
        shifted = self.dynamics.step(
            pop.state, users, chosen_features=cat.features[np.maximum(chosen, 0)], consumption=cons,
            consumed_topics=consumed_topics, shown_topics=shown_topics, best_utility=util.max(axis=1),
            experience=exp, rng=rng, directions=pop.directions,
        )
        pop.memory.write(users, slates, chosen, rating, cons, exp, pop.state.clock[users], consumed_topics)
        reward = r.click * resp.clicked.sum(axis=1) + r.leave * resp.leave
        if r.consumption:
            reward = reward + r.consumption * resp.consumption.sum(axis=1)
        if r.rating:
            reward = reward + r.rating * np.nansum((resp.rating - 3.0) / 2.0, axis=1)
        return StepResult(resp, reward.astype(np.float64), slates, shifted)

    def backend_free_utility(self, users: np.ndarray, slates: np.ndarray) -> np.ndarray:
        """Utility under the embedded model, for dynamics when a backend (e.g. an LLM) gives none."""
        from simrec.cognition.embedded import EmbeddedCognition

        if not hasattr(self, "_ref_model"):
            self._ref_model = EmbeddedCognition(self.spec.choice)
        return self._ref_model.utilities(self.pop, users, slates)

    # -- observations ---------------------------------------------------------------------------
    def observe(self, users: np.ndarray, cands: np.ndarray, t: np.ndarray, clicks: np.ndarray) -> dict[str, np.ndarray]:
        """Batched observation dict; leading dim B."""
        s, mem = self.spec, self.pop.memory
        st = self.pop.state
        user = np.empty((users.size, len(USER_FEATURES)), np.float32)
        user[:, 0] = self._ages[users]
        user[:, 1] = np.minimum(np.log1p(st.sessions[users]) / np.log(1000.0), 1.0)
        user[:, 2] = t / s.max_steps
        user[:, 3] = np.minimum(clicks / s.max_steps, 1.0)
        user[:, 4] = np.minimum(self._last_gap[users] / 1000.0, 1.0)
        slots, valid = mem.recent_slots(users, s.history_window)
        ur = users[:, None]
        chosen = mem.chosen[ur, slots]
        d = self.catalog.dim
        hist = np.zeros((users.size, s.history_window, d + 4), np.float32)
        ok = valid & (chosen >= 0)
        hist[..., :d] = self.item_obs[np.where(ok, chosen, -1), :d]
        hist[..., d] = ok
        rt = mem.rating[ur, slots]
        hist[..., d + 1] = np.where(ok & ~np.isnan(rt), rt / 5.0, 0.0)
        hist[..., d + 2] = np.where(ok, mem.consumption[ur, slots], 0.0)
        hist[..., d + 3] = valid
        return {"candidates": self.item_obs[cands], "user": user, "history": hist}
