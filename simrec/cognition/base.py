"""The cognition protocol: how a batch of users responds to a batch of slates.

Data flows one way: persona + state + memory + slate -> ``decide`` -> :class:`ResponseBatch`
-> dynamics update -> log. Backends never mutate state; the environment applies dynamics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from simrec.users.population import Population

#: ``ResponseBatch.source`` codes.
SOURCE_EMBEDDED, SOURCE_LLM, SOURCE_FALLBACK, SOURCE_CACHE = 0, 1, 2, 3
SOURCE_NAMES = {SOURCE_EMBEDDED: "embedded", SOURCE_LLM: "llm", SOURCE_FALLBACK: "fallback", SOURCE_CACHE: "cache"}


@dataclass
class ResponseBatch:
    """Responses of ``B`` users to slates of ``K`` items.

    * ``clicked``: ``(B, K)`` bool.
    * ``rating``: ``(B, K)`` float32 stars in {1..5}, NaN where not rated (always NaN when not clicked).
    * ``consumption``: ``(B, K)`` float32 fraction consumed in [0, 1], 0 where not clicked.
    * ``leave``: ``(B,)`` bool, the user ends the session after this step.
    * ``source``: ``(B,)`` int8, which path produced each row (see ``SOURCE_*``).
    * ``reasons``: optional short free-text reason per row (LLM backends).
    * ``meta``: optional extras the simulator reads: ``utility`` ``(B, K)`` (else the embedded model's is
      computed for the dynamics), ``shown_topics`` ``(B, T)``, and ``choice`` ``(B,)``: set it only when each
      row clicks one item at most, at that slate position (``K``: none); the simulator then skips finding it.
    """

    clicked: np.ndarray
    rating: np.ndarray
    consumption: np.ndarray
    leave: np.ndarray
    source: np.ndarray
    reasons: list[str | None] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def validate(self, batch: int, slate: int) -> "ResponseBatch":
        """Raise ``ValueError`` unless shapes, dtypes and ranges hold; returns self."""
        if self.clicked.shape != (batch, slate) or self.clicked.dtype != np.bool_:
            raise ValueError(f"clicked must be bool ({batch}, {slate}), got {self.clicked.dtype} {self.clicked.shape}")
        for name in ("rating", "consumption"):
            a = getattr(self, name)
            if a.shape != (batch, slate):
                raise ValueError(f"{name} must have shape ({batch}, {slate}), got {a.shape}")
        if self.leave.shape != (batch,) or self.leave.dtype != np.bool_:
            raise ValueError(f"leave must be bool ({batch},), got {self.leave.dtype} {self.leave.shape}")
        r = self.rating[~np.isnan(self.rating)]
        if r.size and (np.any(r < 1) or np.any(r > 5) or np.any(r != np.round(r))):
            raise ValueError("ratings must be whole stars in [1, 5] or NaN")
        if np.any(~np.isnan(self.rating) & ~self.clicked):
            raise ValueError("an item that was not clicked cannot be rated")
        c = self.consumption
        if not np.all(np.isfinite(c)) or np.any(c < 0) or np.any(c > 1) or np.any((c > 0) & ~self.clicked):
            raise ValueError("consumption must be in [0, 1] and 0 for items not clicked")
        return self

    @classmethod
    def empty(cls, batch: int, slate: int) -> "ResponseBatch":
        return cls(
            clicked=np.zeros((batch, slate), bool),
            rating=np.full((batch, slate), np.nan, np.float32),
            consumption=np.zeros((batch, slate), np.float32),
            leave=np.zeros(batch, bool),
            source=np.zeros(batch, np.int8),
        )


@dataclass
class JudgeBatch:
    """Item-wise judgements (Agent4Rec's protocol): would the user watch each item, and the rating
    they would give it if they did.

    * ``watch``: ``(B, K)`` bool.
    * ``rating``: ``(B, K)`` float32 stars in {1..5} for *every* item (NaN only if the backend cannot say).
    * ``source``: ``(B,)`` int8, see ``SOURCE_*``.
    """

    watch: np.ndarray
    rating: np.ndarray
    source: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class CognitionBackend(Protocol):
    """What every backend implements. ``users`` are population indices, ``slates`` catalog indices."""

    name: str

    def decide(self, pop: "Population", users: np.ndarray, slates: np.ndarray,
               rng: np.random.Generator) -> ResponseBatch:
        """Return validated responses of ``users`` (B,) to ``slates`` (B, K)."""
        ...

    def judge(self, pop: "Population", users: np.ndarray, items: np.ndarray,
              rng: np.random.Generator) -> JudgeBatch:
        """Watch / no-watch and a rating for each of ``items`` (B, K), without changing any state.

        Used by the fidelity harness; the page of items is shown the same way a slate is.
        """
        ...

    def end_session(self, pop: "Population", users: np.ndarray) -> None:
        """Hook called when sessions of ``users`` end (e.g. memory reflection)."""
        ...

    def stats(self) -> dict[str, float]:
        """Counters for the run (calls, tokens, cost, failures, fallbacks...)."""
        ...

    def close(self) -> None:
        ...
