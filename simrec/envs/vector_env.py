"""``SlateVectorEnv``: N concurrent user sessions stepped by one vectorised call."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium.vector import VectorEnv
from gymnasium.vector.utils import batch_space

try:  # Gymnasium >= 1.1
    from gymnasium.vector import AutoresetMode
except ImportError:  # Gymnasium 1.0 has no enum (its vector envs always reset on the next step): same values

    class AutoresetMode(Enum):  # type: ignore[no-redef]
        NEXT_STEP = "NextStep"
        SAME_STEP = "SameStep"
        DISABLED = "Disabled"

from simrec.cognition import CognitionBackend
from simrec.envs.registration import build_world
from simrec.envs.simulator import Simulator
from simrec.envs.spaces import slate_action_space, validate_slates
from simrec.envs.spec import EnvSpec, resolve_spec


class SlateVectorEnv(VectorEnv):
    """A population of users, ``num_envs`` of them in a session at any time.

    Same observation, action, reward and episode semantics as :class:`~simrec.envs.slate_env.SlateEnv`, for
    ``num_envs`` slots at once, computed with batched numpy (not N Python envs). A user is in at
    most one slot at a time; the population defaults to ``max(pack size, 2 * num_envs)`` users
    (persona instances beyond the pack get their own state).

    ``autoreset_mode`` (also a ``make_vec`` keyword; ``AutoresetMode`` or its name, e.g. ``"next_step"``),
    recorded in ``metadata["autoreset_mode"]``:

    * ``SAME_STEP`` (default): when a slot's session ends, the returned observation is already the
      next user's first one; the last one is in ``info["final_obs"]`` (masked by ``info["_final_obs"]``)
      and its info in ``info["final_info"]``.
    * ``NEXT_STEP`` (what RLlib and Gymnasium's own vector envs assume): the step that ends a session
      returns its last observation; the next step ignores that slot's action and returns the next
      user's first observation with reward 0 and ``terminated``/``truncated`` False. Its info holds
      ``user``, ``t`` (0) and ``candidate_items``; the per-step keys are masked out by ``info["_<key>"]``.

    ``reset(seed=s)`` restarts the population. Create with ``gymnasium.make_vec("simrec/Synthetic-v0",
    num_envs=N, vectorization_mode="vector_entry_point", autoreset_mode="next_step")``.

    ``info`` holds batched arrays: ``user`` (population index), ``t``, ``slate_items``, ``clicked``,
    ``rating`` (0 = not rated), ``consumption``, ``leave``, ``source`` and, for logging only, ``latent`` (dict of
    arrays: fatigue, satisfaction, boredom, taste).
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 16, spec: EnvSpec | str | Path | dict = "synthetic-v0", *,
                 backend: CognitionBackend | str | None = None, population_size: int | None = None,
                 autoreset_mode: AutoresetMode | str = AutoresetMode.SAME_STEP, **overrides: Any) -> None:
        self.autoreset_mode = parse_autoreset_mode(autoreset_mode)
        # per instance: two envs in one process may use different modes
        self.metadata = {**type(self).metadata, "autoreset_mode": self.autoreset_mode}
        if isinstance(backend, str):  # a backend name ("embedded" | "llm") is a spec override
            overrides["backend"], backend = backend, None
        if num_envs < 1:
            raise ValueError("num_envs must be >= 1")
        self.sim_spec: EnvSpec = resolve_spec(spec)
        if overrides:
            self.sim_spec = self.sim_spec.with_overrides(**overrides)
        s = self.sim_spec
        world = build_world(s.world)
        n_users = population_size or s.population_size or max(len(world.personas), 2 * num_envs)
        if n_users < num_envs:
            raise ValueError(f"population_size ({n_users}) must be >= num_envs ({num_envs}): a user holds one slot at a time")
        self.sim = Simulator(s, world, backend=backend, population_size=n_users)
        self.sim_spec = s = self.sim.spec
        self.catalog = self.sim.catalog
        self.num_envs = num_envs
        self.single_observation_space = self.sim.observation_space()
        self.single_action_space = slate_action_space(s.num_candidates, s.slate_size)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.reward_bounds = self.sim.reward_bounds
        self._users = np.zeros(num_envs, dtype=np.int64)
        self._t = np.zeros(num_envs, dtype=np.int64)
        self._clicks = np.zeros(num_envs, dtype=np.int64)
        self._cands = np.zeros((num_envs, s.num_candidates), dtype=np.int64)
        self._row_offsets = (np.arange(num_envs) * s.num_candidates)[:, None]
        self._autoreset = np.zeros(num_envs, dtype=bool)  # NEXT_STEP: slots whose session ended last step
        self._started = False

    @property
    def autoreset_pending(self) -> np.ndarray:
        """Slots the next :meth:`step` resets (their action is ignored); always all False in ``SAME_STEP`` mode."""
        return self._autoreset.copy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None or not self._started:
            self.sim.reset_population(self.np_random)
            self._started = True
        else:
            open_ = (self._t > 0) & ~self._autoreset  # a pending-autoreset slot's session has already ended
            if open_.any():
                self.sim.backend.end_session(self.sim.pop, self._users[open_])
        options = options or {}
        if options.get("user_ids") is not None:
            users = np.array([self.sim.pop.index_of(u) for u in options["user_ids"]], dtype=np.int64)
            if users.shape != (self.num_envs,) or np.unique(users).size != self.num_envs:
                raise ValueError(f"options['user_ids'] must name {self.num_envs} distinct users")
        else:
            users = self.sim.pick_users(self.np_random, self.num_envs)
        self._users[:] = users
        self.sim.start_sessions(self._users, self.np_random)
        self._t[:] = 0
        self._clicks[:] = 0
        self._autoreset[:] = False
        self._cands = self.sim.candidates.draw(self.np_random, self.num_envs)
        obs = self.sim.observe(self._users, self._cands, self._t, self._clicks)
        return obs, {"user": self._users.copy(), "t": self._t.copy(), "candidate_items": self._cands}

    def step(self, actions: Any):
        if not self._started:
            raise RuntimeError("call reset() before step()")
        s = self.sim_spec
        a = np.asarray(actions)
        if s.slate_size == 1 and a.ndim == 1:
            a = a[:, None]
        if a.shape[0] != self.num_envs:
            raise ValueError(f"expected actions for {self.num_envs} envs, got shape {a.shape}")
        if self._autoreset.any():
            return self._step_with_resets(a)
        if not slates_ok(a, s.num_candidates, s.slate_size):
            a = validate_slates(a, s.num_candidates, s.slate_size)  # raises, naming the problem
        slates = self._cands.take(a + self._row_offsets)  # flat indices
        res = self.sim.step(self._users, slates, self.np_random)
        r = res.response
        self._t += 1
        self._clicks += r.clicked.sum(axis=1)
        terminated = r.leave.copy()
        truncated = ~terminated & (self._t >= s.max_steps)
        info: dict[str, Any] = {
            "user": self._users.copy(), "t": self._t.copy(), "slate_items": slates, "clicked": r.clicked,
            "rating": np.fmax(r.rating, 0.0), "consumption": r.consumption, "leave": terminated, "source": r.source,
            "concept_shift": res.shifted,
        }
        if s.log_latent:
            st, u = self.sim.pop.state, self._users
            info["latent"] = {"fatigue": st.fatigue[u], "satisfaction": st.satisfaction[u],
                              "boredom": st.boredom[u], "taste": st.taste[u]}
        self._cands = self.sim.candidates.draw(self.np_random, self.num_envs)
        info["candidate_items"] = self._cands  # what the returned observation's candidates are
        done = terminated | truncated
        if self.autoreset_mode is AutoresetMode.NEXT_STEP:
            if done.any():
                self.sim.backend.end_session(self.sim.pop, self._users[done])
                self._autoreset = done
            obs = self.sim.observe(self._users, self._cands, self._t, self._clicks)
            return obs, res.reward, terminated, truncated, info
        if done.any():
            idx = np.flatnonzero(done)
            final = self.sim.observe(self._users[idx], self._cands[idx], self._t[idx], self._clicks[idx])
            final_obs = np.full(self.num_envs, None, dtype=object)
            final_info = np.full(self.num_envs, None, dtype=object)
            for j, i in enumerate(idx):
                final_obs[i] = {k: v[j] for k, v in final.items()}
                final_info[i] = {"user": int(self._users[i]), "t": int(self._t[i]), "leave": bool(terminated[i]),
                                 "episode_clicks": int(self._clicks[i])}
            info["final_obs"], info["_final_obs"] = final_obs, done.copy()
            info["final_info"], info["_final_info"] = final_info, done.copy()
            ended = self._users[idx]
            self.sim.backend.end_session(self.sim.pop, ended)
            self._refill(idx, self._users[~done], ended)
        obs = self.sim.observe(self._users, self._cands, self._t, self._clicks)
        return obs, res.reward, terminated, truncated, info

    def _refill(self, idx: np.ndarray, busy: np.ndarray, ended: np.ndarray) -> None:
        """Start new sessions in slots ``idx``: users not ``busy`` in other slots and, if the population
        allows, not the ``ended`` ones that just left them."""
        excl = np.concatenate([busy, ended]) if self.sim.pop.n_users - busy.size - ended.size >= idx.size else busy
        new = self.sim.pick_users(self.np_random, idx.size, exclude=excl)
        self._users[idx] = new
        self.sim.start_sessions(new, self.np_random)
        self._t[idx] = 0
        self._clicks[idx] = 0

    def _step_with_resets(self, a: np.ndarray):
        """A ``NEXT_STEP`` step where some slots start a new session instead of stepping."""
        s, n = self.sim_spec, self.num_envs
        fresh = self._autoreset
        live = ~fresh
        rows = live.nonzero()[0]
        idx = fresh.nonzero()[0]
        self._refill(idx, self._users[rows], self._users[idx])
        reward = np.zeros(n, dtype=np.float64)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        slates = np.empty((n, s.slate_size), dtype=np.int64)
        slates.fill(-1)
        clicked = np.zeros((n, s.slate_size), dtype=bool)
        rating = np.zeros((n, s.slate_size), dtype=np.float32)  # ResponseBatch dtypes, as SAME_STEP returns them
        consumption = np.zeros((n, s.slate_size), dtype=np.float32)
        source = np.zeros(n, dtype=np.int8)
        shifted = np.zeros(n, dtype=bool)
        if rows.size:  # the resetting slots' actions are ignored, as in Gymnasium: not even validated
            al = a[rows]
            if not slates_ok(al, s.num_candidates, s.slate_size):
                al = validate_slates(al, s.num_candidates, s.slate_size)
            slates[rows] = self._cands.take(al + self._row_offsets[rows])
            res = self.sim.step(self._users[rows], slates[rows], self.np_random)
            r = res.response
            self._t[rows] += 1
            self._clicks[rows] += r.clicked.sum(axis=1)
            reward[rows] = res.reward
            terminated[rows] = r.leave
            truncated[rows] = ~r.leave & (self._t[rows] >= s.max_steps)
            clicked[rows], rating[rows], consumption[rows] = r.clicked, np.fmax(r.rating, 0.0), r.consumption
            source[rows], shifted[rows] = r.source, res.shifted
        info: dict[str, Any] = {
            "user": self._users.copy(), "t": self._t.copy(), "slate_items": slates, "clicked": clicked,
            "rating": rating, "consumption": consumption, "leave": terminated, "source": source,
            "concept_shift": shifted,
        }
        for k in ("slate_items", "clicked", "rating", "consumption", "leave", "source", "concept_shift"):
            info["_" + k] = live  # a reset slot's info is a reset info: these keys are not in it
        if s.log_latent:
            st, u = self.sim.pop.state, self._users
            info["latent"] = {"fatigue": st.fatigue[u], "satisfaction": st.satisfaction[u],
                              "boredom": st.boredom[u], "taste": st.taste[u]}
        self._cands = self.sim.candidates.draw(self.np_random, n)
        info["candidate_items"] = self._cands
        done = terminated | truncated
        if done.any():
            self.sim.backend.end_session(self.sim.pop, self._users[done])
        self._autoreset = done
        obs = self.sim.observe(self._users, self._cands, self._t, self._clicks)
        return obs, reward, terminated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        sim = getattr(self, "sim", None)  # None when __init__ raised (close() still runs from __del__)
        if sim is not None:
            sim.backend.close()


def slates_ok(a: np.ndarray, num_candidates: int, slate_size: int) -> bool:
    """Whether ``a`` (B, K) is a batch of valid slates: the quick test before :func:`validate_slates`.

    One row sort finds repeats; for the small batches RL libraries step (8-64 slots) that is several
    times cheaper than ``validate_slates``' pairwise column tests, which then only run to word the error.
    """
    if a.ndim != 2 or a.shape[1] != slate_size or a.dtype.kind not in "iu" or a.size == 0:
        return False
    if slate_size == 1:
        return bool(a.min() >= 0 and a.max() < num_candidates)
    srt = a.copy()  # np.sort(a, axis=1) without its wrapper
    srt.sort(axis=1)
    return bool(srt[:, 0].min() >= 0 and srt[:, -1].max() < num_candidates and not (srt[:, 1:] == srt[:, :-1]).any())


def parse_autoreset_mode(mode: AutoresetMode | str) -> AutoresetMode:
    """``AutoresetMode.NEXT_STEP``, ``"next_step"``, ``"NEXT_STEP"`` or ``"NextStep"`` -> the enum member.

    ``DISABLED`` is refused: resetting single slots needs a reset mask this env does not take.
    """
    if not isinstance(mode, AutoresetMode):
        def norm(x: str) -> str:
            return x.lower().replace("_", "").replace("-", "")

        found = [m for m in AutoresetMode if norm(str(mode)) in (norm(m.name), norm(m.value))]
        if not found:
            raise ValueError(f"unknown autoreset_mode {mode!r}; use 'same_step' (the default) or 'next_step'")
        mode = found[0]
    if mode.name not in ("SAME_STEP", "NEXT_STEP"):
        raise ValueError(f"SlateVectorEnv supports autoreset_mode 'same_step' and 'next_step', not {mode.name.lower()!r}")
    return mode
