"""Export trajectory logs as `Minari <https://minari.farama.org>`_ datasets, for offline RL.

A log stores actions, slates and responses but not observations, so :func:`to_minari` rebuilds them
by replaying the log on a fresh env built from the manifest's spec (as :func:`~simrec.trajectory.replay`
does) and checks, step by step, that the replay reproduces the log; a log that does not reproduce
(an LLM run without its response cache, a different simrec, a damaged file) raises
:class:`ReplayMismatchError` naming the episode and step, and nothing is written.

Each log episode with at least one step becomes one Minari episode:

* ``observations``: the env's ``Dict`` observations (``float32``), ``steps + 1`` of them (the last is the
  observation after the final step);
* ``actions``: the logged candidate positions, in the env's action space (``MultiDiscrete`` of
  ``slate_size`` positions, ``Discrete`` when ``slate_size == 1``);
* ``rewards``, ``terminations``, ``truncations``: the log's. An episode the run cut short (``complete``
  false) gets ``truncations[-1] = True``, as Minari's ``DataCollector`` does;
* ``infos`` (``steps + 1`` rows; row ``k`` is the info that came with ``observations[k]``, so step ``k``'s
  outcome is in row ``k + 1`` and row 0 is the reset): ``t``, ``candidate_items``
  (catalog indices the next action indexes into), ``slate_items`` (catalog indices shown, -1 at reset),
  ``clicked``, ``rating`` (stars, 0 = not rated), ``consumption``, ``concept_shift`` and, with
  ``include_latent=True``, ``latent_<key>`` (the hidden user state, as in the log: for evaluation,
  never for acting).

Episode metadata holds ``seed`` and ``options`` (the reset's; a ``None`` seed means the world continued
from the previous episode), ``simrec_episode`` (the log's episode number), ``user_id`` and ``complete``.
Dataset metadata holds ``simrec_spec`` (the full :class:`~simrec.envs.spec.EnvSpec` JSON:
``SlateEnv(ds.storage.metadata["simrec_spec"])`` rebuilds the env) and ``simrec`` (provenance); the
Gymnasium ``env_spec`` points at ``SlateEnv`` with that spec, so ``ds.recover_environment()`` works.

``minari`` is an optional dependency (the ``minari`` extra), imported inside the functions only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pandas as pd

from simrec.errors import SimrecError
from simrec.trajectory.reader import Trajectories, read_trajectories
from simrec.trajectory.schema import SCHEMA_VERSION, TrajectoryFormatError

_INSTALL = "pip install -e .[minari]"
_ENTRY_POINT = "simrec.envs.slate_env:SlateEnv"


class MinariNotInstalledError(SimrecError, ImportError):
    """The optional ``minari`` package is missing."""


class ReplayMismatchError(TrajectoryFormatError):
    """Replaying a log on a fresh env did not reproduce it, so its observations cannot be rebuilt."""


def _import_minari() -> Any:
    try:
        import minari
    except ImportError as e:
        raise MinariNotInstalledError(f"exporting to Minari needs the minari package ({e}). "
                                      f"Fix: {_INSTALL}") from None
    return minari


# -- the export -----------------------------------------------------------------------------------
def to_minari(log_dir: str | Path | Trajectories, dataset_id: str | None = None, *,
              data_path: str | Path | None = None, author: str | None = None, author_email: str | None = None,
              code_permalink: str | None = None, description: str | None = None,
              algorithm_name: str | None = None, data_format: str = "arrow", include_latent: bool = False,
              overwrite: bool = False, env: gymnasium.Env | None = None, backend: Any = None,
              chunk_episodes: int = 64) -> Any:
    """Export a trajectory log as a Minari dataset and return it (a ``minari.MinariDataset``).

    Args:
        log_dir: a log directory written by :class:`~simrec.trajectory.Recorder` (or its ``Trajectories``).
        dataset_id: Minari id ``namespace/name-vN``; default :func:`default_dataset_id` of the log.
        data_path: root of the Minari datasets (default ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``).
        author, author_email, code_permalink, description, algorithm_name: Minari dataset metadata
            (``algorithm_name`` defaults to the log's recommender, ``description`` to a summary of the run).
        data_format: Minari storage, ``"arrow"`` (default), ``"parquet"`` or ``"hdf5"`` (needs h5py).
        include_latent: also store the hidden user state per step in ``infos["latent_<key>"]``.
        overwrite: replace an existing dataset with this id (only once the new one is complete).
        env: env to replay on (default: ``SlateEnv`` from the log's spec); ``backend``: its cognition backend.
        chunk_episodes: episodes held in memory before they are written.

    Raises:
        ReplayMismatchError: the replay does not reproduce the log (the message names the episode).
        FileExistsError: the dataset exists and ``overwrite`` is false.
        MinariNotInstalledError: minari is missing.
    """
    minari = _import_minari()
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from minari.dataset.minari_dataset import parse_dataset_id

    traj = log_dir if isinstance(log_dir, Trajectories) else read_trajectories(log_dir)
    where = str(traj.path or "trajectory")
    m = traj.manifest
    if m.get("vector"):
        raise TrajectoryFormatError(f"{where}: vector-env logs cannot be exported to Minari (they hold no candidate "
                                    "sets, so the observations cannot be rebuilt). Fix: record with Recorder "
                                    "around a SlateEnv.")
    if not len(traj.steps):
        raise TrajectoryFormatError(f"{where}: the log has no steps, so there is nothing to export to Minari.")
    dataset_id = dataset_id or default_dataset_id(m)
    try:
        namespace = parse_dataset_id(dataset_id)[0]
    except ValueError as e:
        raise SimrecError(f"bad Minari dataset id {dataset_id!r}: {e} Example: simrec/synthetic-linucb-v0") from None
    if chunk_episodes < 1:
        raise ValueError("chunk_episodes must be >= 1")
    root = _datasets_root(data_path)
    final = root / dataset_id
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final}: a Minari dataset {dataset_id!r} already exists. Fix: choose another id "
                              "(bump its -vN) or pass overwrite=True (--overwrite).")

    spec = traj.spec
    own_env = env is None
    if env is None:
        from simrec.envs.slate_env import SlateEnv

        env = SlateEnv(_replay_spec(spec, where) if backend is None else spec, backend=backend)
    # Write into a hidden staging root next to the final place, then move it in: a failed export
    # (a mismatch found late) leaves no half dataset and does not touch the one it would replace.
    staging = root / f".simrec-export-{uuid.uuid4().hex[:12]}"
    try:
        carrier = _SpacesOnly(env.observation_space, env.action_space, _gym_env_spec(spec))
        with _datasets_path(staging), warnings.catch_warnings():
            # minari warns for every metadata field left None; that is noise for an export
            warnings.filterwarnings("ignore", message=r".*(is set to None|env_spec is None).*", category=UserWarning)
            try:
                ds = minari.create_dataset_from_buffers(
                    dataset_id, [], env=carrier, algorithm_name=algorithm_name or m.get("recommender") or "unknown",
                    author=author, author_email=author_email, code_permalink=code_permalink,
                    description=description or _describe(m, where), data_format=data_format,
                    requirements=[f"simrec=={_simrec_version()}"])
            except ImportError as e:  # a storage backend's own dependency (h5py for hdf5)
                raise MinariNotInstalledError(f"minari's {data_format!r} storage is unavailable: {e}") from None
        # minari re-measures the dataset's size (a walk over all its files) after every episode written:
        # quadratic in episodes. Skip that while writing (on this storage object only) and measure once.
        storage = ds.storage
        storage.get_size = lambda: 0.0
        episode_meta: list[dict[str, Any]] = []
        skipped: list[int] = []
        chunk: list[Any] = []
        for ep in _episodes(traj, env, where, include_latent=include_latent, skipped=skipped):
            chunk.append(EpisodeBuffer(
                seed=ep.seed, options=ep.options, observations=ep.observations, actions=ep.actions,
                rewards=ep.rewards, terminations=ep.terminations, truncations=ep.truncations, infos=ep.infos))
            episode_meta.append(ep.metadata)
            if len(chunk) >= chunk_episodes:
                ds.update_dataset_from_buffer(chunk)
                chunk = []
        if chunk:
            ds.update_dataset_from_buffer(chunk)
        if episode_meta:
            storage.update_episode_metadata(episode_meta, range(len(episode_meta)))
        del storage.get_size
        storage.update_metadata({"simrec_spec": spec.model_dump(mode="json"), "dataset_size": storage.get_size(),
                                 "simrec": _provenance(m, where, skipped, include_latent)})
        if final.exists():  # overwrite=True; only now that the new dataset is complete
            shutil.rmtree(final)
        if namespace is not None:
            with _datasets_path(root):
                from minari.namespace import create_namespace, list_local_namespaces

                if namespace not in list_local_namespaces():
                    create_namespace(namespace)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / dataset_id, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if own_env:
            env.close()
    return minari.MinariDataset(final / "data")


def default_dataset_id(manifest: dict[str, Any]) -> str:
    """``simrec/<env name>-<recommender>-v0`` for a log's manifest, e.g. ``simrec/synthetic-linucb-v0``."""
    env_id = str(manifest.get("env_id") or "simrec/env-v0")
    name = re.sub(r"-v\d+$", "", env_id.split("/")[-1]).lower()
    rec = re.sub(r"[^\w]+", "_", str(manifest.get("recommender") or "run")).strip("_").lower() or "run"
    return f"simrec/{name}-{rec}-v0"


@dataclasses.dataclass
class _Episode:
    seed: int | None
    options: dict[str, Any] | None
    observations: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    infos: dict[str, Any]
    metadata: dict[str, Any]


def _episodes(traj: Trajectories, env: gymnasium.Env, where: str, *, include_latent: bool,
              skipped: list[int]) -> Iterator[_Episode]:
    """Replay every logged episode on ``env`` (in order: unseeded episodes continue the world), check it
    against the log and yield it with its observations; episodes without steps go to ``skipped``."""
    spec = traj.spec
    discrete = spec.slate_size == 1
    act_dtype = env.action_space.dtype
    by_ep = dict(tuple(traj.steps.groupby("episode", sort=True))) if len(traj.steps) else {}
    for _, ep in traj.episodes.sort_values("episode").iterrows():
        no, seed_raw = int(ep["episode"]), ep["reset_seed"]
        seed = None if seed_raw is None or pd.isna(seed_raw) else int(seed_raw)
        options = json.loads(ep["reset_options"]) if isinstance(ep["reset_options"], str) else None
        obs, info = env.reset(seed=seed, options=options)  # even with no steps: the reset drew random numbers
        steps = by_ep.get(ep["episode"])
        if steps is None or not len(steps):
            skipped.append(no)
            continue
        rows = steps.sort_values("t").to_dict("records")

        bad = functools.partial(_mismatch, where, traj.manifest, no, ep["user"])  # (t, what, logged, replayed)
        if str(info.get("user_id")) != str(ep["user"]):
            raise bad(0, "user", ep["user"], info.get("user_id"))
        observations, infos = [obs], [_info_row(info, None, include_latent)]
        for k, row in enumerate(rows, start=1):
            t = int(row["t"])
            if t != k:
                raise bad(t, "step number t (steps missing or duplicated)", k, t)
            cands = np.asarray(info["candidate_items"], np.int64)
            if row.get("candidates") is not None and not np.array_equal(cands, np.asarray(row["candidates"])):
                raise bad(t, "candidates", row["candidates"], cands)
            a = np.asarray(row["action"], np.int64)
            try:
                obs, reward, term, trunc, info = env.step(int(a[0]) if discrete else a)
            except (SimrecError, ValueError, IndexError) as e:  # a damaged action, a cache miss
                raise bad(t, f"step failed ({type(e).__name__}: {e}); action", row["action"], None) from None
            _check_step(row, reward, term, trunc, info, functools.partial(bad, t))
            observations.append(obs)
            infos.append(_info_row(info, info["slate_items"], include_latent))
        terminations = np.array([bool(r["terminated"]) for r in rows])
        truncations = np.array([bool(r["truncated"]) for r in rows])
        ended = terminations[-1] or truncations[-1]
        if bool(ep["complete"]) and not ended:
            raise bad(len(rows), "episode end (marked complete, but its last step is neither terminated nor "
                      "truncated)", True, False)
        if not ended:  # the run stopped mid-session: Minari marks such episodes truncated (as DataCollector)
            truncations[-1] = True
        actions = np.stack([np.asarray(r["action"], act_dtype).reshape(-1) for r in rows])
        yield _Episode(
            seed=seed, options=options,
            observations={key: np.stack([np.asarray(o[key], np.float32) for o in observations])
                          for key in observations[0]},
            actions=actions[:, 0] if discrete else actions,
            rewards=np.array([float(r["reward"]) for r in rows]), terminations=terminations, truncations=truncations,
            infos=_stack_infos(infos),
            metadata={"simrec_episode": no, "user_id": str(ep["user"]), "complete": bool(ep["complete"])})


def _check_step(row: dict[str, Any], reward: float, term: bool, trunc: bool, info: dict[str, Any], bad: Any) -> None:
    """Raise ``bad(what, logged, replayed)`` unless the replayed step equals the logged one."""
    slate = np.asarray(info["slate_items"], np.int64).reshape(-1)
    if not np.array_equal(slate, np.asarray(row["slate"], np.int64)):
        raise bad("slate", row["slate"], slate)
    clicked = np.asarray(info["clicked"], bool).reshape(-1)
    if not np.array_equal(clicked, np.asarray(row["clicked"], bool)):
        raise bad("clicked", row["clicked"], clicked)
    # exact, as `simrec replay` checks: the embedded backend reproduces bit for bit. The log writes NaN
    # for "not rated" where the env's info has 0.
    logged_rating = np.nan_to_num(np.asarray(row["rating"], np.float32), nan=0.0)
    if not np.array_equal(np.asarray(info["rating"], np.float32).reshape(-1), logged_rating):
        raise bad("rating", row["rating"], info["rating"])
    if not np.array_equal(np.asarray(info["consumption"], np.float32).reshape(-1),
                          np.asarray(row["consumption"], np.float32)):
        raise bad("consumption", row["consumption"], info["consumption"])
    if float(reward) != float(row["reward"]):
        raise bad("reward", row["reward"], reward)
    if bool(term) != bool(row["terminated"]):
        raise bad("terminated", row["terminated"], term)
    if bool(trunc) != bool(row["truncated"]):
        raise bad("truncated", row["truncated"], trunc)


def _info_row(info: dict[str, Any], slate: Any, include_latent: bool) -> dict[str, Any]:
    cands = np.asarray(info["candidate_items"], np.int64)
    if slate is None:  # the reset: nothing shown yet
        k = None
        row: dict[str, Any] = {"slate_items": None, "clicked": None, "rating": None, "consumption": None,
                               "concept_shift": False}
    else:
        k = np.asarray(slate).size
        row = {"slate_items": np.asarray(slate, np.int64).reshape(-1),
               "clicked": np.asarray(info["clicked"], bool).reshape(-1),
               "rating": np.asarray(info["rating"], np.float32).reshape(-1),
               "consumption": np.asarray(info["consumption"], np.float32).reshape(-1),
               "concept_shift": bool(info.get("concept_shift", False))}
    row.update(t=int(info["t"]), candidate_items=cands, _k=k)
    if include_latent and "latent" in info:
        row["latent"] = info["latent"]
    return row


def _stack_infos(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-step info rows -> the column dict Minari stores (arrays for vectors, lists for scalars)."""
    k = next(r["_k"] for r in rows if r["_k"] is not None)
    fill = {"slate_items": np.full(k, -1, np.int64), "clicked": np.zeros(k, bool),
            "rating": np.zeros(k, np.float32), "consumption": np.zeros(k, np.float32)}
    out: dict[str, Any] = {
        "t": [r["t"] for r in rows],
        "candidate_items": np.stack([r["candidate_items"] for r in rows]),
        **{key: np.stack([fill[key] if r[key] is None else r[key] for r in rows]) for key in fill},
        "concept_shift": [r["concept_shift"] for r in rows],
    }
    if "latent" in rows[0]:
        # flat latent_<key> columns, as in the log: minari 0.5 decodes nested info dicts as object arrays;
        # and it mis-decodes 1-D numpy infos, so scalars go in as Python lists, vectors as 2-D arrays
        for key, v in rows[0]["latent"].items():
            out[f"latent_{key}"] = (np.stack([np.asarray(r["latent"][key], np.float32) for r in rows])
                                    if np.ndim(v) else [r["latent"][key] for r in rows])
    return out


def _mismatch(where: str, manifest: dict[str, Any], episode: int, user: Any, t: int, what: str, logged: Any,
              got: Any) -> ReplayMismatchError:
    backend = manifest.get("backend")
    why = ("an LLM backend reproduces only from the response cache of the run (backend_config.cache_path)"
           if backend not in (None, "embedded") else
           f"the embedded backend reproduces exactly with the same simrec (the log was written by "
           f"{manifest.get('simrec_version')}, this is {_simrec_version()})")
    return ReplayMismatchError(
        f"{where}: episode {episode} (user {user}), step t={t}: replaying the log on a fresh env does not "
        f"reproduce it: {what} differs (logged {_short(logged)}, replayed {_short(got)}). Minari needs "
        f"observations, which the log does not store, so they are rebuilt by replay; {why}. Fix: export a log "
        "that `simrec replay DIR` reproduces (re-record the run if it was damaged).")


def _short(x: Any) -> str:
    s = repr(np.asarray(x).tolist() if isinstance(x, (np.ndarray, list)) else x)
    return s if len(s) <= 80 else s[:77] + "..."


# -- env spec and metadata ------------------------------------------------------------------------
class _SpacesOnly(gymnasium.Env):
    """Hands minari the spaces and the Gymnasium spec without it building (``gym.make``) another env."""

    def __init__(self, observation_space: gymnasium.Space, action_space: gymnasium.Space,
                 spec: gymnasium.envs.registration.EnvSpec | None) -> None:
        self.observation_space = observation_space
        self.action_space = action_space
        self.spec = spec


def _gym_env_spec(spec: Any) -> gymnasium.envs.registration.EnvSpec | None:
    """A Gymnasium ``EnvSpec`` that rebuilds this exact env: the registered id's, with the full simrec spec
    as its ``spec`` kwarg (a log may use overrides of the built-in spec, or a custom spec file)."""
    from gymnasium.envs.registration import EnvSpec as GymSpec

    kwargs = {"spec": spec.model_dump(mode="json")}
    try:
        base = gymnasium.spec(spec.id)
    except gymnasium.error.Error:
        base = None
    if base is not None and base.entry_point == _ENTRY_POINT:
        out = dataclasses.replace(base, kwargs=kwargs)
    else:  # not registered (custom spec): the entry point alone makes it buildable with gymnasium.make
        out = GymSpec(id=spec.id, entry_point=_ENTRY_POINT, kwargs=kwargs)
    try:
        out.to_json()
    except (TypeError, ValueError):
        return None
    return out


def _replay_spec(spec: Any, where: str) -> Any:
    """The spec to replay with: an LLM run is replayed from its response cache only, never a live model."""
    if spec.backend != "llm":
        return spec
    if not spec.backend_config.get("cache_path"):
        raise ReplayMismatchError(
            f"{where}: the run used the LLM backend without a response cache (backend_config.cache_path), so its "
            "responses cannot be reproduced and the observations cannot be rebuilt. Fix: record LLM runs with "
            "a cache_path, or pass backend= a backend that reproduces them.")
    return spec.with_overrides(backend_config={"cache_mode": "replay"})


def _describe(m: dict[str, Any], where: str) -> str:
    return (f"simrec {m.get('env_id')} sessions: recommender {m.get('recommender') or 'unknown'}, backend "
            f"{m.get('backend')}, {m.get('episodes')} episodes / {m.get('steps')} steps (run {m.get('run_id')}, "
            f"log {Path(where).name}). Actions are candidate positions; observations rebuilt by replay.")


def _provenance(m: dict[str, Any], where: str, skipped: list[int], include_latent: bool) -> dict[str, Any]:
    keep = ("env_id", "run_id", "simrec_version", "schema_version", "created", "closed", "seed", "backend",
            "recommender", "metadata", "versions")
    return {**{k: m.get(k) for k in keep}, "source_log": where, "exported_with": _simrec_version(),
            "log_schema_version_read": SCHEMA_VERSION, "episodes_without_steps": skipped,
            "include_latent": include_latent,
            "action": "candidate positions (indices into infos['candidate_items'] of the same row), top first",
            "infos": "row k comes with observations[k]; row 0 is the reset, row k+1 holds step k's slate and "
                     "responses; rating 0 = not rated; slate_items -1 at the reset"}


def _simrec_version() -> str:
    from simrec.version import __version__

    return __version__


def _datasets_root(data_path: str | Path | None) -> Path:
    if data_path is not None:
        return Path(data_path).expanduser().absolute()
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env).absolute() if env else Path.home() / ".minari" / "datasets"


@contextlib.contextmanager
def _datasets_path(path: Path) -> Iterator[None]:
    """Point minari at ``path`` for the duration (its create functions read only the environment)."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


# -- CLI glue (``simrec export-minari``) -----------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simrec export-minari`` arguments to ``parser``."""
    parser.add_argument("log_dir", metavar="LOG_DIR", help="trajectory log directory (written by --out of simrec run)")
    parser.add_argument("--dataset-id", help="Minari dataset id, e.g. simrec/synthetic-linucb-v0 "
                                             "(default: simrec/<env>-<recommender>-v0)")
    parser.add_argument("--data-path", metavar="DIR",
                        help="Minari datasets root (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)")
    parser.add_argument("--author", help="dataset author")
    parser.add_argument("--author-email", help="dataset author's email")
    parser.add_argument("--code-permalink", help="link to the code that produced the run")
    parser.add_argument("--description", help="dataset description (default: a summary of the run)")
    parser.add_argument("--data-format", choices=("arrow", "parquet", "hdf5"), default="arrow",
                        help="Minari storage format (default arrow; hdf5 needs h5py)")
    parser.add_argument("--include-latent", action="store_true",
                        help="also store the hidden user state per step (infos['latent_*'])")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset with this id")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``simrec export-minari`` with parsed ``args``; returns the exit status."""
    ds = to_minari(args.log_dir, args.dataset_id, data_path=args.data_path, author=args.author,
                   author_email=args.author_email, code_permalink=args.code_permalink, description=args.description,
                   data_format=args.data_format, include_latent=args.include_latent, overwrite=args.overwrite)
    skipped = ds.storage.metadata["simrec"]["episodes_without_steps"]
    print(f"exported {args.log_dir}: {ds.total_episodes} episodes, {ds.total_steps} steps -> Minari dataset "
          f"{ds.id} at {Path(ds.storage.data_path).parent}"
          + (f" ({len(skipped)} episodes without steps left out)" if skipped else "")
          + f"\nload it with: minari.load_dataset({ds.id!r})"
          + ("" if args.data_path is None else f" (MINARI_DATASETS_PATH={_datasets_root(args.data_path)})"))
    return 0
