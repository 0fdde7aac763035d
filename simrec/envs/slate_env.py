"""``SlateEnv``: one simulated user's session, as a Gymnasium environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import gymnasium
import numpy as np

from simrec.cognition import CognitionBackend
from simrec.cognition.base import SOURCE_EMBEDDED
from simrec.envs.registration import build_world
from simrec.envs.simulator import HISTORY_FEATURES, USER_FEATURES, Simulator
from simrec.envs.spaces import slate_action_space, validate_slates
from simrec.envs.spec import EnvSpec, resolve_spec


class SlateEnv(gymnasium.Env):
    """A recommender shows slates to one simulated user per episode (one session).

    The user is a persona with a hidden numeric state (taste, per-topic boredom, fatigue,
    satisfaction) and an episodic memory, all persisting across that user's sessions. Each step the
    cognition backend decides clicks, ratings, consumption and whether to leave; the dynamics
    then update the state.

    ## Observation space
    ``Dict`` (all ``float32``; ``d`` = catalog feature dim):

    * ``candidates`` ``(num_candidates, d + 1)``: each candidate's content vector (in [-1, 1]) and
      popularity prior (in [0, 1]). Candidates are re-drawn every step.
    * ``user`` ``(5,)`` in [0, 1]: age/100, log-scaled session count, session progress ``t/max_steps``,
      clicks this session ``/max_steps``, time since the previous session (scaled).
    * ``history`` ``(history_window, d + 4)``: the user's last interactions, oldest first: the
      chosen item's content vector (zeros if nothing was chosen), then clicked, rating/5 (0 if
      none), consumption, valid (0 for padding).

    The hidden state is never observed. Use ``gymnasium.wrappers.FlattenObservation`` for an
    ``MlpPolicy``, or SB3's ``MultiInputPolicy`` directly.

    ## Action space
    :class:`~simrec.envs.spaces.SlateSpace` (a ``MultiDiscrete`` of ``slate_size`` distinct candidate indices), or
    ``Discrete(num_candidates)`` when ``slate_size == 1``. Position 0 is the top of the slate.
    Repeated or out-of-range indices raise :class:`~simrec.errors.InvalidActionError`.

    ## Reward
    ``click * #clicks + consumption * sum(consumption) + rating * sum((stars - 3) / 2) + leave * left``,
    weights from the spec's ``reward`` section (default: clicks). Every reward lies in
    ``env.unwrapped.reward_bounds``.

    ## Episode end
    ``terminated`` when the user leaves; ``truncated`` after ``max_steps`` steps.

    ## Reset
    ``reset(seed=s)`` re-seeds ``self.np_random`` *and* restarts the population from its initial
    state, so the same seed and actions give the same trajectory. ``reset()`` without a seed starts
    the next session in the same, persistent world. ``options={"user_id": id}`` picks the user;
    otherwise one is drawn by activity and satisfaction.

    ## Info
    ``user_id``, ``t``, ``slate_items`` (catalog indices shown), per-item ``clicked``, ``rating``
    (stars 1-5, 0 = not rated: NaN would break equality checks), ``consumption``, ``leave``, ``source`` (backend path), ``concept_shift`` and, for
    logging only (never for acting), ``latent``: a snapshot of the hidden state.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, spec: EnvSpec | str | Path | dict = "synthetic-v0", *, backend: CognitionBackend | str | None = None,
                 render_mode: str | None = None, **overrides: Any) -> None:
        if isinstance(backend, str):  # a backend name ("embedded" | "llm") is a spec override
            overrides["backend"], backend = backend, None
        self.sim_spec: EnvSpec = resolve_spec(spec)
        if overrides:
            self.sim_spec = self.sim_spec.with_overrides(**overrides)
        s = self.sim_spec
        self.sim = Simulator(s, build_world(s.world), backend=backend)
        self.sim_spec = s = self.sim.spec  # with the choice settings the world calibrated
        self.catalog = self.sim.catalog
        self.observation_space = self.sim.observation_space()
        self.action_space = slate_action_space(s.num_candidates, s.slate_size)
        self.reward_bounds = self.sim.reward_bounds
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        self._user = np.zeros(1, dtype=np.int64)
        self._u = 0  # int(self._user[0])
        self._us = slice(0, 1)
        self._t = 0
        self._clicks = 0
        self._cands = np.zeros((1, s.num_candidates), dtype=np.int64)
        self._last: dict[str, Any] = {}
        self._started = False
        self._session_ended = False  # end_session already called for the current session
        self._spec_one = (s.slate_size, s.num_candidates, s.max_steps, s.log_latent)  # step's spec scalars, read once
        self._indices = frozenset(range(s.num_candidates))  # the valid action values, for step's check
        self._user_id = ""  # sim.pop.user_id(self._u), read once per session

    # -- Gymnasium API --------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None or not self._started:
            self.sim.reset_population(self.np_random)
            self._started = True
        elif self._t > 0 and not self._session_ended:
            self.sim.backend.end_session(self.sim.pop, self._user)
        options = options or {}
        if options.get("user_id") is not None:
            self._user = np.array([self.sim.pop.index_of(options["user_id"])])
        else:
            self._user = self.sim.pick_users(self.np_random, 1)
        u = self._u = int(self._user[0])
        self._user_id = self.sim.pop.user_id(u)
        self._us = slice(u, u + 1)  # a slice keeps per-user state reads as views (fast path)
        self.sim.start_sessions(self._us, self.np_random)
        self._t = 0
        self._clicks = 0
        self._session_ended = False
        self._cands = self.sim.candidates.draw(self.np_random, 1)
        obs = self._obs()
        info = {"user_id": self._user_id, "t": 0, "candidate_items": self._cands[0].copy()}
        if self.sim_spec.log_latent:
            info["latent"] = self.sim.pop.state.snapshot(u)
        return obs, info

    def step(self, action):
        if not self._started:
            raise RuntimeError("call reset() before step()")
        k, n, max_steps, log_latent = self._spec_one
        a = np.asarray(action)
        if k == 1 and a.size == 1:
            a = a.reshape(1)
        ok = a.shape == (k,) and a.dtype.kind in "iu"
        if ok:  # distinct, and each in [0, n): one set and a subset test (cheaper than min and max calls)
            lst = a.tolist()
            ok = len(set(lst)) == k and self._indices.issuperset(lst)
        if not ok:
            validate_slates(a[None, ...], n, k)  # raises with the precise problem
        slate = self._cands[0].take(a)
        u = self._u
        sim = self.sim
        rng = self._np_random  # what the np_random property returns once reset() has run, without its call
        scalar = sim._scalar if sim.backend is sim._scalar_for else sim._scalar_decide()
        reasons = None
        if scalar is not None:  # the embedded backend's scalar path: the response arrays are built here, once
            choice, cons, stars, terminated, best, shown, feats, topics = scalar(sim.pop, u, slate, rng)
            reward, shifted = sim._apply_one(u, slate, rng, choice, cons, stars, terminated, best, shown, feats, topics)
            clicked = np.zeros(k, bool)
            consumption = np.zeros(k, np.float32)
            rating = np.zeros(k, np.float32)  # 0 = not rated
            hit = choice < k
            if hit:
                clicked[choice] = True
                consumption[choice] = cons
                if stars == stars:
                    rating[choice] = stars
            source = SOURCE_EMBEDDED
        else:
            if hasattr(sim.backend, "decide_one"):  # the generic scalar fast path (what step_one runs, minus its wrapping)
                r, reward, shifted = sim._step_one(u, slate, rng)
                choice, stars = r.meta["choice"], r.meta.get("choice_rating")
                if stars is None:
                    hit, rating = int(np.count_nonzero(r.clicked)), np.fmax(r.rating[0], 0.0)
                else:  # one chosen item at most: the clicks and np.fmax(r.rating[0], 0.0) without ufuncs
                    hit = choice < k
                    rating = np.zeros(k, np.float32)
                    if stars == stars:
                        rating[choice] = stars
            else:
                res = sim.step_one(u, slate, rng)
                r, reward, shifted = res.response, float(res.reward[0]), bool(res.shifted[0])
                hit = int(np.count_nonzero(r.clicked))
                rating = np.fmax(r.rating[0], 0.0)
            clicked, consumption, source, reasons = r.clicked[0], r.consumption[0], int(r.source[0]), r.reasons
            terminated = bool(r.leave[0])
        self._t += 1
        self._clicks += hit
        truncated = (not terminated) and self._t >= max_steps
        info: dict[str, Any] = {
            "user_id": self._user_id, "t": self._t, "slate_items": slate,
            "clicked": clicked, "rating": rating, "consumption": consumption,
            "leave": terminated, "source": source, "concept_shift": shifted,
        }
        if reasons is not None:
            info["reason"] = reasons[0]
        if log_latent:
            info["latent"] = sim.pop.state.snapshot(u)
        self._cands = sim.candidates.draw_one(rng)
        info["candidate_items"] = cands = self._cands[0]
        self._last = info
        if (terminated or truncated) and not self._session_ended:
            sim.backend.end_session(sim.pop, self._user)
            self._session_ended = True
        return sim.observe_one(u, cands, self._t, self._clicks), reward, terminated, truncated, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        if not self._last:
            return f"user {self.sim.pop.user_id(int(self._user[0]))}: session start"
        cat, info = self.catalog, self._last
        lines = [f"user {info['user_id']} t={info['t']}"]
        for k, i in enumerate(info["slate_items"]):
            mark = "*" if info["clicked"][k] else " "
            rt = info["rating"][k]
            lines.append(f" {mark} {k}: {cat.titles[i]} [{cat.topic_names[cat.topic[i]]}]" + (f" {int(rt)}/5" if rt > 0 else ""))
        if info["leave"]:
            lines.append(" -> leaves")
        return "\n".join(lines)

    def close(self) -> None:
        self.sim.backend.close()

    # -- helpers --------------------------------------------------------------------------------
    def _obs(self) -> dict[str, np.ndarray]:
        return self.sim.observe_one(self._u, self._cands[0], self._t, self._clicks)

    @property
    def user_index(self) -> int:
        return self._u

    @staticmethod
    def feature_names(dim: int) -> dict[str, Sequence[str]]:
        """Column names of each observation part (for analysis and docs)."""
        item = [f"f{i}" for i in range(dim)]
        return {"candidates": item + ["popularity"], "user": USER_FEATURES, "history": item + list(HISTORY_FEATURES)}
