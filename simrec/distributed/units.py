"""What a unit of work returns, and where it writes its log."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class UnitResult:
    """One finished unit: its value (metrics, a seed's result, shard counts), its attempt's log, and
    where and how long it ran (provenance; never used for ordering)."""

    key: str
    value: Any
    log: str | None = None  # attempt directory of the unit's trajectory log, if it wrote one
    digest: str | None = None  # content digest of that log (simrec.distributed.merge)
    seconds: float = 0.0
    host: str = ""
    pid: int = 0

    def where(self) -> dict[str, Any]:
        return {"key": self.key, "host": self.host, "pid": self.pid, "seconds": round(self.seconds, 3)}


def safe_key(key: str) -> str:
    """A unit key as one directory name."""
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in key)


def attempt_dir(staging: str | Path, key: str) -> Path:
    """A fresh directory for this attempt of unit ``key``: a retried unit never writes into the parts of
    an attempt that died, and only the attempt that returns is merged."""
    name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return Path(staging) / safe_key(key) / name


def provenance() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}
