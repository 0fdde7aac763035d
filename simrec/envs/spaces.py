"""Slate action spaces: ``slate_size`` *distinct* candidate indices, alone or batched for N users.

:class:`SlateSpace` registers with Gymnasium's vector utilities (``batch_space``, ``batch_differing_spaces``,
``iterate``, ``concatenate``, ``create_empty_array``), so a vector env built by Gymnasium (``sync``, ``async``)
or by simrec (``vector_entry_point``) has a batched action space whose ``sample()`` draws distinct
indices in every row and whose ``contains()`` checks them. (Gymnasium batches a plain
``MultiDiscrete`` into a ``Box``, whose samples repeat indices.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from copy import deepcopy
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import batch_differing_spaces, batch_space, concatenate, create_empty_array, iterate

from simrec.errors import InvalidActionError


class SlateSpace(spaces.MultiDiscrete):
    """A slate: ``slate_size`` *distinct* indices into ``num_candidates`` candidates.

    With ``batch_shape`` (e.g. ``(N,)``, what ``batch_space`` makes for a vector env of N users) the
    space holds arrays of shape ``(*batch_shape, slate_size)``, each row a slate of distinct indices.
    ``sample()`` draws without replacement and ``contains()`` rejects repeated indices; everything
    else (flattening, SB3 support) behaves as the ``MultiDiscrete`` it subclasses.
    """

    def __init__(self, num_candidates: int, slate_size: int, seed: int | np.random.Generator | None = None, *,
                 batch_shape: Sequence[int] = ()) -> None:
        if slate_size < 1 or num_candidates < 1:
            raise ValueError(f"need slate_size >= 1 and num_candidates >= 1, got {slate_size} and {num_candidates}")
        if slate_size > num_candidates:
            raise ValueError(f"slate_size ({slate_size}) > num_candidates ({num_candidates})")
        self.num_candidates = int(num_candidates)
        self.slate_size = int(slate_size)
        self.batch_shape: tuple[int, ...] = tuple(int(n) for n in batch_shape)
        super().__init__(np.full((*self.batch_shape, self.slate_size), self.num_candidates, dtype=np.int64), seed=seed)

    def sample(self, mask: Any = None, probability: Any = None) -> np.ndarray:
        if mask is not None or probability is not None:
            raise NotImplementedError("SlateSpace.sample does not support masks; sample a slate yourself")
        c, k = self.num_candidates, self.slate_size
        if not self.batch_shape:
            return self.np_random.choice(c, size=k, replace=False).astype(self.dtype)
        rows = int(np.prod(self.batch_shape))
        # The k smallest of c uniform keys, ordered by key: a uniform ordered k-subset per row.
        keys = self.np_random.random((rows, c))
        idx = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < c else np.tile(np.arange(c), (rows, 1))
        idx = np.take_along_axis(idx, np.argsort(np.take_along_axis(keys, idx, axis=1), axis=1), axis=1)
        return idx.reshape(self.shape).astype(self.dtype)

    def contains(self, x: Any) -> bool:
        if not super().contains(x):
            return False
        if self.slate_size == 1:
            return True
        return not has_repeats(np.asarray(x).reshape(-1, self.slate_size))

    def __getitem__(self, index: Any) -> Any:
        if self.batch_shape and isinstance(index, (int, np.integer)):  # one user's slate space
            if not -self.batch_shape[0] <= index < self.batch_shape[0]:
                raise IndexError(f"index {index} out of range for batch of {self.batch_shape[0]}")
            return SlateSpace(self.num_candidates, self.slate_size, batch_shape=self.batch_shape[1:])
        return super().__getitem__(index)

    def __repr__(self) -> str:
        batch = "".join(f"{n} x " for n in self.batch_shape)
        return f"SlateSpace({batch}{self.slate_size} of {self.num_candidates})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, SlateSpace) and super().__eq__(other)


def slate_action_space(num_candidates: int, slate_size: int) -> spaces.Space:
    """The single-user action space: ``Discrete`` for a slate of one (DQN-friendly), else :class:`SlateSpace`."""
    return spaces.Discrete(num_candidates) if slate_size == 1 else SlateSpace(num_candidates, slate_size)


def validate_slates(actions: np.ndarray, num_candidates: int, slate_size: int) -> np.ndarray:
    """Check a ``(B, K)`` batch of slates; raise :class:`InvalidActionError` naming the problem."""
    a = np.asarray(actions)
    if a.ndim != 2 or a.shape[-1] != slate_size or not np.issubdtype(a.dtype, np.integer):
        raise InvalidActionError(
            f"a slate must be {slate_size} integer indices into the {num_candidates} candidates, "
            f"got dtype {a.dtype} shape {a.shape}"
        )
    if a.min() < 0 or a.max() >= num_candidates:
        raise InvalidActionError(
            f"slate index out of range: got {a.min()}..{a.max()}, allowed 0..{num_candidates - 1}"
        )
    if slate_size > 1 and has_repeats(a):
        raise InvalidActionError(
            f"slate {a.tolist() if a.size <= 64 else '...'} repeats an item; a slate needs distinct indices. "
            "Wrap the env in simrec.wrappers.RepairSlate (or TopKScores) if your agent can emit repeats."
        )
    return a


def has_repeats(a: np.ndarray) -> bool:
    """Any row of ``a`` (B, K) with a repeated value. Pairwise column tests beat a row sort for small K."""
    k = a.shape[1]
    if k > 8:
        srt = np.sort(a, axis=1)
        return bool(np.any(srt[:, 1:] == srt[:, :-1]))
    return any(np.any(a[:, i] == a[:, j]) for i in range(k) for j in range(i + 1, k))


# -- Gymnasium vector utilities -----------------------------------------------------------------
@batch_space.register(SlateSpace)
def _batch_slate_space(space: SlateSpace, n: int = 1) -> SlateSpace:
    return SlateSpace(space.num_candidates, space.slate_size, seed=deepcopy(space.np_random),
                      batch_shape=(n, *space.batch_shape))


@batch_differing_spaces.register(SlateSpace)
def _batch_differing_slate_spaces(spaces_: Sequence[SlateSpace]) -> SlateSpace:
    first = spaces_[0]
    if not all(isinstance(s, SlateSpace) and s == first for s in spaces_):
        raise ValueError(f"cannot batch different slate spaces into one: {list(spaces_)}")
    return batch_space(first, len(spaces_))


@iterate.register(SlateSpace)
def _iterate_slates(space: SlateSpace, items: np.ndarray) -> Iterator[np.ndarray]:
    return iter(items)


@concatenate.register(SlateSpace)
def _concatenate_slates(space: SlateSpace, items: Iterable[np.ndarray], out: np.ndarray) -> np.ndarray:
    return np.stack(list(items), axis=0, out=out)


@create_empty_array.register(SlateSpace)
def _empty_slates(space: SlateSpace, n: int = 1, fn: Callable = np.zeros) -> np.ndarray:
    return fn((n, *space.shape), dtype=space.dtype)
