"""Re-running a logged run on a fresh env and checking it reproduces."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pandas as pd

from simrec.trajectory.reader import Trajectories, read_trajectories
from simrec.trajectory.recorder import Recorder
from simrec.trajectory.schema import TrajectoryFormatError


# -- replay ---------------------------------------------------------------------------------------
def replay(source: Trajectories | str | Path, *, env: gymnasium.Env | None = None, backend: Any = None,
           path: str | Path | None = None, overwrite: bool = False) -> Trajectories:
    """Re-run a log's actions on a fresh env built from its spec and return the new log.

    Each episode is reset with its recorded seed and options and stepped with its recorded
    candidate positions. With the embedded backend the result equals the original (same users,
    candidates, responses, rewards and latent states). ``path`` writes the replay to disk.
    """
    traj = source if isinstance(source, Trajectories) else read_trajectories(source)
    if traj.manifest.get("vector"):
        raise TrajectoryFormatError("vector-env logs cannot be replayed step by step (no candidate sets); "
                                    "record with Recorder around a SlateEnv to replay.")
    if env is None:
        from simrec.envs.slate_env import SlateEnv

        env = SlateEnv(traj.spec, backend=backend)
    rec = Recorder(env, path, overwrite=overwrite, recommender=f"replay of {traj.manifest.get('run_id')}",
                   metadata={"replay_of": traj.manifest.get("run_id")}, fsync=False)
    discrete = traj.spec.slate_size == 1
    by_ep = dict(tuple(traj.steps.groupby("episode", sort=True))) if len(traj.steps) else {}
    try:
        for _, ep in traj.episodes.sort_values("episode").iterrows():
            seed = ep["reset_seed"]
            opts = json.loads(ep["reset_options"]) if isinstance(ep["reset_options"], str) else None
            rec.reset(seed=None if seed is None or pd.isna(seed) else int(seed), options=opts)
            steps = by_ep.get(ep["episode"])
            if steps is None:
                continue
            for a in steps.sort_values("t")["action"]:
                a = np.asarray(a, dtype=np.int64)
                rec.step(int(a[0]) if discrete else a)
    finally:
        rec.close()
    return rec.trajectories()
