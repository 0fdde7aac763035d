"""The on-disk format of trajectory logs: schema version, Parquet tables, manifest, part names."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from simrec.errors import SimrecError

#: Version of the on-disk layout. Readers refuse logs with a newer version.
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TABLES = ("steps", "episodes", "calls")
_META_KEY = b"simrec.schema_version"


class TrajectoryFormatError(SimrecError, ValueError):
    """A trajectory log is missing, damaged, or written by an incompatible simrec."""


class TrajectoryWriteError(SimrecError, OSError):
    """Writing a trajectory part failed after retries; the rows are still buffered."""


# -- schemas --------------------------------------------------------------------------------------
STEP_FIELDS: list[pa.Field] = [
    pa.field("episode", pa.int64(), nullable=False),
    pa.field("t", pa.int32(), nullable=False),  # 1 for the first step of a session
    pa.field("user", pa.string()),  # persona user id
    pa.field("user_index", pa.int64()),  # population index
    pa.field("action", pa.list_(pa.int32())),  # candidate positions, top of the slate first
    pa.field("slate", pa.list_(pa.int64())),  # catalog indices shown
    pa.field("slate_ids", pa.list_(pa.string())),  # catalog item ids shown
    pa.field("clicked", pa.list_(pa.bool_())),
    pa.field("rating", pa.list_(pa.float32())),  # NaN = not rated
    pa.field("consumption", pa.list_(pa.float32())),
    pa.field("reward", pa.float64()),
    pa.field("terminated", pa.bool_()),  # the user left
    pa.field("truncated", pa.bool_()),
    pa.field("source", pa.string()),  # embedded | llm | fallback | cache
    pa.field("concept_shift", pa.bool_()),
    pa.field("reason", pa.string()),
    pa.field("candidates", pa.list_(pa.int64())),  # catalog indices the action indexed into
]
EPISODE_FIELDS: list[pa.Field] = [
    pa.field("episode", pa.int64(), nullable=False),
    pa.field("user", pa.string()),
    pa.field("user_index", pa.int64()),
    pa.field("env_index", pa.int32()),  # vector env slot (0 for SlateEnv)
    pa.field("reset_seed", pa.int64()),  # seed passed to reset(), null when the world continued
    pa.field("reset_options", pa.string()),  # JSON
    pa.field("steps", pa.int32()),
    pa.field("return", pa.float64()),
    pa.field("clicks", pa.int64()),
    pa.field("shown", pa.int64()),
    pa.field("rated", pa.int64()),
    pa.field("mean_rating", pa.float64()),
    pa.field("terminated", pa.bool_()),
    pa.field("truncated", pa.bool_()),
    pa.field("complete", pa.bool_()),  # false: the run ended mid-session
    pa.field("started", pa.timestamp("us", tz="UTC")),
    pa.field("ended", pa.timestamp("us", tz="UTC")),
    pa.field("latent_start", pa.string()),  # JSON snapshot at session start
]
CALL_FIELDS: list[pa.Field] = [
    pa.field("episode", pa.int64()),
    pa.field("t", pa.int32()),
    pa.field("call_id", pa.string()),
    pa.field("user", pa.int64()),
    pa.field("user_id", pa.string()),
    pa.field("kind", pa.string()),
    pa.field("model", pa.string()),
    pa.field("base_url", pa.string()),
    pa.field("params", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("messages", pa.string()),
    pa.field("raw_reply", pa.string()),
    pa.field("parsed", pa.string()),
    pa.field("parse_status", pa.string()),
    pa.field("audit", pa.string()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
    pa.field("latency_s", pa.float64()),
    pa.field("cost_usd", pa.float64()),
    pa.field("cache_hit", pa.bool_()),
    pa.field("fallback", pa.bool_()),
    pa.field("error", pa.string()),
    pa.field("extra", pa.string()),  # JSON of any keys beyond the contract, so nothing is lost
]
_CALL_KEYS = {f.name for f in CALL_FIELDS} - {"episode", "t", "extra"}


def _schema(fields: list[pa.Field], table: str) -> pa.Schema:
    return pa.schema(fields, metadata={_META_KEY: str(SCHEMA_VERSION).encode(), b"simrec.table": table.encode()})


def _latent_fields(snapshot: dict[str, Any]) -> list[pa.Field]:
    """Arrow fields ``latent_<key>`` for a latent-state snapshot (types fixed by the first one seen)."""
    out = []
    for k, v in snapshot.items():
        v = np.asarray(v)
        if v.ndim >= 1:
            t = pa.list_(pa.float32())
        elif v.dtype == np.bool_:
            t = pa.bool_()
        elif np.issubdtype(v.dtype, np.integer):
            t = pa.int64()
        else:
            t = pa.float64()
        out.append(pa.field(f"latent_{k}", t))
    return out


def _latent_values(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {f"latent_{k}": (np.asarray(v).reshape(-1).tolist() if np.ndim(v) else np.asarray(v).item())
            for k, v in snapshot.items()}


class RunManifest(BaseModel):
    """``manifest.json``: who wrote a log, with what, and how it ended."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = Field(ge=1)
    simrec_version: str
    run_id: str
    created: str = Field(description="ISO 8601 UTC time the recorder started.")
    closed: str | None = Field(None, description="ISO time of close(); null if the process died.")
    env_id: str
    spec: dict[str, Any] = Field(description="The full EnvSpec as JSON (EnvSpec.parse(spec) rebuilds it).")
    seed: int | None = Field(None, description="First seed passed to reset().")
    backend: str
    backend_stats: dict[str, Any] | None = None
    recommender: str | None = None
    vector: bool = False
    num_envs: int = 1
    flush_every: int = 1
    metadata: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    episodes: int = 0
    steps: int = 0
    calls: int = 0


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _versions() -> dict[str, str]:
    import gymnasium as gym

    from simrec.version import __version__

    return {"simrec": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "gymnasium": gym.__version__, "pyarrow": pa.__version__, "pandas": pd.__version__}



_PARQUET = {"compression": "zstd", "use_dictionary": False}  # small parts: faster and smaller without dictionaries


def _part_name(a: int, b: int | None = None) -> str:
    return f"part-{a:06d}.parquet" if b is None or a == b else f"part-{a:06d}-{b:06d}.parquet"


def _part_range(name: str) -> tuple[int, int] | None:
    stem = name[len("part-"):-len(".parquet")] if name.startswith("part-") and name.endswith(".parquet") else ""
    nums = stem.split("-")
    if not 1 <= len(nums) <= 2 or not all(n.isdigit() for n in nums):
        return None
    return int(nums[0]), int(nums[-1])


def _align(tb: pa.Table, schema: pa.Schema) -> pa.Table:
    """``tb`` with ``schema``'s columns in order (missing ones null), for merging parts."""
    cols = [tb.column(f.name).cast(f.type) if f.name in tb.column_names else pa.nulls(tb.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def _call_row(c: dict[str, Any]) -> dict[str, Any]:
    row = {k: c.get(k) for k in _CALL_KEYS}
    row["episode"], row["t"] = c.get("episode"), c.get("t")
    extra = {k: v for k, v in c.items() if k not in _CALL_KEYS and k not in ("episode", "t")}
    row["extra"] = json.dumps(extra, default=_json_default) if extra else None
    for k in ("params", "messages", "parsed", "audit"):  # the contract says JSON strings; accept objects too
        if row[k] is not None and not isinstance(row[k], str):
            row[k] = json.dumps(row[k], default=_json_default)
    return row


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, datetime):
        return o.isoformat()
    return str(o)
