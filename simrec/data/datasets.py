"""Dataset loading by name: the loader registry, format detection, and one import point for the data API.

Every loader returns an :class:`~simrec.data.log.InteractionLog`: column-wise interactions (user, item,
rating or weight, timestamp) plus the item and user tables. Malformed files raise
:class:`~simrec.data.log.DataFormatError` naming the file, the line and the problem. Nothing here touches
the network except :func:`~simrec.data.movielens.fetch_movielens` with ``download=True``.

Loaders, one module each: :mod:`simrec.data.movielens` (``ml-100k``, ``ml-1m``) and
:mod:`simrec.data.generic` (``generic``: ``interactions.csv`` with optional ``items.csv``/``users.csv``,
column names configurable with :class:`~simrec.data.generic.GenericFormat`). A new loader is a new module
with a ``load(path) -> InteractionLog`` function and one entry in :data:`LOADERS`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from simrec.data.generic import GenericFormat, load_generic
from simrec.data.log import DataFormatError, InteractionLog, ItemTable, UserTable
from simrec.data.movielens import (
    ARCHIVES,
    fetch_movielens,
    load_movielens_1m,
    load_movielens_100k,
    verify_movielens,
)
from simrec.data.split import Split, SplitConfig, split_log
from simrec.errors import ConfigError

#: Variant name -> ``"module:function"`` loading a directory (``generic`` also takes a format).
LOADERS: dict[str, str] = {
    "ml-100k": "simrec.data.movielens:load_movielens_100k",
    "ml-1m": "simrec.data.movielens:load_movielens_1m",
    "generic": "simrec.data.generic:load_generic",
}
VARIANTS = tuple(LOADERS)
_ALIASES = {"ml100k": "ml-100k", "movielens-100k": "ml-100k", "ml1m": "ml-1m", "movielens-1m": "ml-1m"}


def detect_variant(path: str | Path) -> str:
    """``ml-100k``, ``ml-1m`` or ``generic`` from the files present in ``path``."""
    p = Path(path)
    if (p / "u.data").is_file():
        return "ml-100k"
    if (p / "ratings.dat").is_file():
        return "ml-1m"
    return "generic"


def load_dataset(path: str | Path, variant: str = "auto", fmt: GenericFormat | dict | None = None) -> InteractionLog:
    """Load a registered variant (see :data:`LOADERS`) from ``path``; ``auto`` detects it from the files."""
    p = Path(path).expanduser()
    v = variant.lower().replace("_", "-")
    v = _ALIASES.get(v, v)
    if not p.exists():
        raise ConfigError(
            f"dataset directory {p} (resolved: {p.resolve()}) does not exist. Fix: pass data_dir= pointing at an "
            f"unpacked MovieLens directory (e.g. ../shared/datasets/ml-100k) or a generic log; "
            f"see simrec.data.datasets.fetch_movielens"
        )
    if v == "auto":
        v = detect_variant(p)
    if v not in LOADERS:
        raise ConfigError(f"unknown dataset variant {variant!r}. Fix: use one of {VARIANTS} or 'auto'")
    mod, fn = LOADERS[v].split(":")
    loader: Callable[..., InteractionLog] = getattr(importlib.import_module(mod), fn)
    return loader(p, fmt) if v == "generic" else loader(p)


__all__ = [
    "LOADERS", "VARIANTS", "detect_variant", "load_dataset", "InteractionLog", "ItemTable", "UserTable",
    "DataFormatError", "GenericFormat", "load_generic", "ARCHIVES", "fetch_movielens", "verify_movielens",
    "load_movielens_100k", "load_movielens_1m", "Split", "SplitConfig", "split_log",
]
