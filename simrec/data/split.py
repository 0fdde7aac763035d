"""Per-user train/test splits: temporal ratio, leave-last-k, or random."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from simrec.data.log import InteractionLog


class SplitConfig(BaseModel):
    """How each user's interactions are divided into train (earlier) and test (later).

    * ``ratio``: the first ``train_ratio`` of each user's interactions (by time) are train.
    * ``last_k``: each user's last ``k`` interactions are test.
    * ``random``: a random ``1 - train_ratio`` of each user's interactions are test (not temporal;
      for comparison with papers that split at random).

    Every user keeps at least ``min_train`` train interactions; users with fewer interactions than
    that are train only.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["ratio", "last_k", "random"] = "ratio"
    train_ratio: float = Field(0.8, gt=0, lt=1)
    k: int = Field(10, ge=1)
    min_train: int = Field(1, ge=1)
    seed: int = 0


@dataclass
class Split:
    """A per-user split: ``train`` and ``test`` logs over the same user and item tables."""

    train: InteractionLog
    test: InteractionLog
    config: SplitConfig
    test_mask: np.ndarray  # (len(full log),) bool, in the full log's row order

    def summary(self) -> str:
        return f"train: {self.train.summary()}; test: {self.test.summary()}"


def split_log(log: InteractionLog, config: SplitConfig | dict | None = None) -> Split:
    """Split every user's interactions into train (earlier) and test (later); see :class:`SplitConfig`."""
    cfg = config if isinstance(config, SplitConfig) else SplitConfig(**(config or {}))
    order = log.chronological_order()
    users = log.user[order]
    n = np.bincount(users, minlength=log.n_users)
    start = np.concatenate([[0], np.cumsum(n)[:-1]])
    pos = np.arange(len(order)) - start[users]  # position within the user's history
    if cfg.kind == "last_k":
        n_test = np.minimum(cfg.k, n)
    else:
        n_test = np.rint(n * (1.0 - cfg.train_ratio)).astype(np.int64)
    n_test = np.clip(n_test, 0, np.maximum(n - cfg.min_train, 0))
    if cfg.kind == "random":
        rng = np.random.default_rng([cfg.seed, 11])
        keys = rng.random(len(order))
        # rank of each row's key within its user: the n_test smallest keys are test
        o2 = np.lexsort((keys, users))
        rank = np.empty(len(order), np.int64)
        rank[o2] = np.arange(len(order)) - start[users[o2]]
        is_test_sorted = rank < n_test[users]
    else:
        is_test_sorted = pos >= (n - n_test)[users]
    test_mask = np.zeros(len(log), bool)
    test_mask[order] = is_test_sorted
    return Split(log.select(~test_mask, f"{log.name}/train"), log.select(test_mask, f"{log.name}/test"), cfg, test_mask)
