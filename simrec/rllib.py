"""RLlib (new API stack) on simrec's batched population: env creator, slate repair, flat observations, PPO config.

::

    import ray
    import simrec.rllib

    ray.init()
    config = simrec.rllib.ppo_config("simrec/Synthetic-v0", num_env_runners=2, num_envs_per_env_runner=8)
    algo = config.build_algo()
    algo.train()

What it fixes, compared with ``PPOConfig().environment("simrec/Synthetic-v0")``:

* Remote env runners never import simrec, so the bare id is unknown there. The creator
  (:func:`make_env`, registered under :data:`ENV_NAME`) lives in this module, so unpickling it on a
  runner imports simrec and registers the ids.
* RLlib's runners assume Gymnasium's next-step autoreset. The creator builds the native
  :class:`~simrec.envs.vector_env.SlateVectorEnv` (one numpy pass over ``num_envs`` users) in
  ``autoreset_mode="next_step"``; with the default same-step mode every refilled slot would lose
  its first transition and end its episode on the next user's observation.
* RLlib's ``MultiCategorical`` head samples positions independently and repeats items. Slates are
  repaired (:func:`~simrec.envs.wrappers.repair_slates`, counted) or scored (``action="scores"``:
  one score per candidate, top-k shown), so no action raises ``InvalidActionError``.
* The ``Dict`` observation is flattened inside the env with one concatenation (``observation="flat"``);
  ``observation="dict"`` keeps it and adds RLlib's ``FlattenObservations`` connector instead.

Needs the ``ray`` extra (``pip install -e ".[ray]"``); only :func:`register` and :func:`ppo_config`
import Ray, so the env wrapper works (and is tested) without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import VectorEnv, VectorWrapper
from gymnasium.vector.utils import batch_space

import simrec  # noqa: F401  (registers the ids: this import is what remote runners need)
from simrec.envs.vector_env import AutoresetMode, SlateVectorEnv
from simrec.envs.wrappers import RepairSlate, TopKScores, repair_in_place

if TYPE_CHECKING:
    from ray.rllib.algorithms.ppo import PPOConfig

#: The name :func:`register` gives the env creator in RLlib's registry.
ENV_NAME = "simrec-rllib"
#: Info keys passed on to RLlib by default. RLlib copies each key of each slot into its episodes every
#: step (``DictInfoToList``), so the full info (clicks, ratings, latent state) costs env throughput.
DEFAULT_INFO_KEYS: tuple[str, ...] = ("user", "t", "slate_repairs")
ActionMode = Literal["repair", "scores"]
ObservationMode = Literal["flat", "dict"]


class RLlibSlateEnv(VectorWrapper):
    """A next-step :class:`~simrec.envs.vector_env.SlateVectorEnv` in the form RLlib's env runners take.

    * ``action="repair"``: a plain ``MultiDiscrete`` slate (``Discrete`` for slates of one); repeated
      or out-of-range indices are repaired. ``action="scores"``: ``Box(-1, 1, (num_candidates,))``, top-k shown.
    * ``observation="flat"``: a ``Box``, equal to ``gymnasium.spaces.flatten`` of the ``Dict``
      observation; ``"dict"``: the ``Dict`` as is.
    * ``info_keys``: the info keys kept (``None``: all); ``info["slate_repairs"]`` is the number of
      positions repaired in each slot's slate.

    :attr:`slate_repairs` and :attr:`slates_sent` count repaired positions and slates actually shown
    (slots being reset ignore their action and are not counted).
    """

    def __init__(self, env: VectorEnv, action: ActionMode = "repair", observation: ObservationMode = "flat",
                 info_keys: Sequence[str] | None = DEFAULT_INFO_KEYS) -> None:
        super().__init__(env)
        base = env.unwrapped
        if not isinstance(base, SlateVectorEnv):
            raise TypeError(f"RLlibSlateEnv wraps simrec's SlateVectorEnv, got {type(base).__name__}; build it with "
                            "gymnasium.make_vec(id, num_envs=N, vectorization_mode='vector_entry_point', autoreset_mode='next_step')")
        if base.autoreset_mode is not AutoresetMode.NEXT_STEP:
            raise ValueError("RLlib assumes next-step autoreset; build the env with autoreset_mode='next_step' "
                             "(in same-step mode RLlib silently drops each new session's first transition)")
        if action not in ("repair", "scores"):
            raise ValueError(f"action must be 'repair' or 'scores', got {action!r}")
        if observation not in ("flat", "dict"):
            raise ValueError(f"observation must be 'flat' or 'dict', got {observation!r}")
        self.base = base
        s = base.sim_spec
        self.num_candidates, self.slate_size = s.num_candidates, s.slate_size
        self.action_mode, self.observation_mode = action, observation
        self.info_keys = None if info_keys is None else frozenset(info_keys)
        dict_space = base.single_observation_space
        self._keys = list(dict_space.spaces)  # the order gymnasium.spaces.flatten uses
        single_obs = spaces.flatten_space(dict_space) if observation == "flat" else dict_space
        if action == "scores":
            single_act: spaces.Space = spaces.Box(-1.0, 1.0, shape=(s.num_candidates,), dtype=np.float32)
        elif s.slate_size == 1:
            single_act = spaces.Discrete(s.num_candidates)
        else:  # plain MultiDiscrete, not SlateSpace: repeats are legal here, they get repaired
            single_act = spaces.MultiDiscrete(np.full(s.slate_size, s.num_candidates))
        self.single_observation_space = single_obs
        self.observation_space = batch_space(single_obs, self.num_envs)
        self.single_action_space = single_act
        self.action_space = batch_space(single_act, self.num_envs)
        self.slate_repairs = 0
        self.slates_sent = 0
        self._logged = (0, 0)

    # -- conversion -----------------------------------------------------------------------------
    def _obs(self, obs: dict[str, np.ndarray]) -> Any:
        if self.observation_mode == "dict":
            return obs
        n = self.num_envs
        return np.concatenate([obs[k].reshape(n, -1) for k in self._keys], axis=1)

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        if self.info_keys is None:
            return info
        keep = self.info_keys
        return {k: _as_python(v) if k in keep else v for k, v in info.items()
                if k in keep or (k[:1] == "_" and k[1:] in keep)}

    def _slates(self, actions: Any) -> tuple[np.ndarray, np.ndarray]:
        n, c, k = self.num_envs, self.num_candidates, self.slate_size
        if self.action_mode == "scores":
            scores = np.asarray(actions, dtype=np.float64).reshape(n, c)
            if not np.all(np.isfinite(scores)):
                raise ValueError("RLlibSlateEnv got non-finite candidate scores; check the policy's outputs")
            top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            return (top[:, 0] if k == 1 else top), np.zeros(n, np.int64)
        a = np.asarray(actions).astype(np.int64, copy=False).reshape(n, k)
        if k == 1:
            return np.clip(a[:, 0], 0, c - 1), np.zeros(n, np.int64)
        # one row sort finds the rows to repair (most have none); the vectorised repair then runs on those only
        srt = a.copy()  # np.sort(a, axis=1) without its wrapper
        srt.sort(axis=1)
        bad = np.logical_or.reduce(srt[:, 1:] == srt[:, :-1], axis=1)
        if srt[:, 0].min() < 0 or srt[:, -1].max() >= c:
            bad |= (srt[:, 0] < 0) | (srt[:, -1] >= c)
            a = np.clip(a, 0, c - 1)
        elif not bad.any():
            return a, np.zeros(n, np.int64)
        else:
            a = a.copy()
        repairs = np.zeros(n, np.int64)
        rows = bad.nonzero()[0]
        fixed = a[rows]
        repairs[rows] = repair_in_place(fixed)
        a[rows] = fixed
        return a, repairs

    # -- VectorEnv API --------------------------------------------------------------------------
    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._obs(obs), self._info(info)

    def step(self, actions: Any):
        live = ~self.base.autoreset_pending  # these slots' slates are shown; the others are ignored
        slates, repairs = self._slates(actions)
        repairs = repairs * live
        self.slate_repairs += int(repairs.sum())
        self.slates_sent += int(live.sum())
        obs, reward, terminated, truncated, info = self.env.step(slates)
        info = self._info(info)
        if self.info_keys is None or "slate_repairs" in self.info_keys:
            info["slate_repairs"] = repairs if self.info_keys is None else _as_python(repairs)
        return self._obs(obs), reward, terminated, truncated, info

    def take_counts(self) -> tuple[int, int]:
        """``(repaired positions, slates shown)`` since the last call (what the RLlib callback logs)."""
        now = (self.slate_repairs, self.slates_sent)
        delta = (now[0] - self._logged[0], now[1] - self._logged[1])
        self._logged = now
        return delta


def _as_python(values: Any) -> Any:
    """A ``(num_envs,)`` integer or bool info array as an object array of Python scalars. RLlib keeps one info
    dict per slot and step in its episodes and pickles them back from every runner, and numpy scalars cost
    several times more to pickle than Python ones."""
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "biu":
        out = np.empty(values.shape[0], dtype=object)
        out[:] = values.tolist()
        return out
    return values


def make_env(config: Mapping[str, Any] | None = None) -> RLlibSlateEnv | gymnasium.Env:
    """The RLlib env creator: ``config`` is RLlib's ``env_config`` (an ``EnvContext``).

    Keys: ``env_id`` (default ``"simrec/Synthetic-v0"``; any simrec id), ``action``, ``observation``,
    ``info_keys`` (see :class:`RLlibSlateEnv`); every other key is a spec override (``slate_size``,
    ``reward``, ...). With ``num_envs`` (RLlib's ``vector_entry_point`` mode) it returns the native
    vector env; without (``sync``/``async`` modes) one single-user env, repaired and flattened the same way.
    """
    cfg = dict(config or {})
    env_id = cfg.pop("env_id", "simrec/Synthetic-v0")
    action: ActionMode = cfg.pop("action", "repair")
    observation: ObservationMode = cfg.pop("observation", "flat")
    info_keys = cfg.pop("info_keys", DEFAULT_INFO_KEYS)
    num_envs = cfg.pop("num_envs", None)
    if info_keys is not None and "latent" not in info_keys:
        cfg.setdefault("log_latent", False)  # nobody reads the snapshot: skip building it
    if num_envs is None:
        env: gymnasium.Env = gymnasium.make(env_id, **cfg)
        env = TopKScores(env) if action == "scores" else RepairSlate(env) if isinstance(env.action_space, spaces.MultiDiscrete) else env
        return gymnasium.wrappers.FlattenObservation(env) if observation == "flat" else env
    venv = gymnasium.make_vec(env_id, num_envs=int(num_envs), vectorization_mode="vector_entry_point",
                              autoreset_mode="next_step", **cfg)
    return RLlibSlateEnv(venv, action=action, observation=observation, info_keys=info_keys)


def register(name: str = ENV_NAME) -> str:
    """Register :func:`make_env` with RLlib (``ray.tune.registry.register_env``) as ``name``; returns it."""
    from ray.tune.registry import register_env

    register_env(name, make_env)
    return name


def log_slate_repairs(*, env_runner: Any, metrics_logger: Any, **_: Any) -> None:
    """RLlib ``on_sample_end`` callback: logs ``slate_repairs`` (positions repaired) and ``slates_sent``."""
    env = getattr(env_runner, "env", None)
    while env is not None and not isinstance(env, RLlibSlateEnv):
        env = getattr(env, "env", None)
    if env is None:
        return
    repairs, sent = env.take_counts()
    metrics_logger.log_value("slate_repairs", repairs, reduce="sum")
    metrics_logger.log_value("slates_sent", sent, reduce="sum")


def flatten_connector(env: Any = None, spaces: Any = None, device: Any = None) -> Any:
    """``env_to_module_connector`` for ``observation="dict"``: RLlib's ``FlattenObservations``."""
    from ray.rllib.connectors.env_to_module import FlattenObservations

    return FlattenObservations()


def ppo_config(env_id: str = "simrec/Synthetic-v0", *, num_env_runners: int = 2, num_envs_per_env_runner: int = 32,
               action: ActionMode = "repair", observation: ObservationMode = "flat",
               info_keys: Sequence[str] | None = DEFAULT_INFO_KEYS, **env_kwargs: Any) -> PPOConfig:
    """A ``PPOConfig`` whose env runners each step ``num_envs_per_env_runner`` simrec users in one vector env.

    The default of 32 users per runner is deliberate: one batched step costs nearly the same for 8 users
    as for 32 (``benchmarks/bench_rllib.py``), unlike CartPole-style envs, where each copy is a Python env.
    ``env_kwargs`` are spec overrides (``slate_size=3``, ``reward={...}``). Training settings are
    RLlib's defaults; chain ``.training(...)``, ``.learners(...)`` on the result as usual.
    """
    from ray.rllib.algorithms.ppo import PPOConfig

    if num_envs_per_env_runner < 1:
        raise ValueError("num_envs_per_env_runner must be >= 1")
    env_config = {"env_id": env_id, "action": action, "observation": observation,
                  "info_keys": None if info_keys is None else list(info_keys), **env_kwargs}
    make_env({**env_config, "num_envs": 1}).close()  # fail here, with simrec's message, not inside a remote runner
    config = (
        PPOConfig()
        .environment(register(), env_config=env_config)
        .env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=num_envs_per_env_runner,
                     gym_env_vectorize_mode="vector_entry_point",
                     **({"env_to_module_connector": flatten_connector} if observation == "dict" else {}))
        .callbacks(on_sample_end=log_slate_repairs)
    )
    return config
