"""Errors raised by simrec, and a helper that turns pydantic errors into file-level messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError


class SimrecError(Exception):
    """Base class of simrec's own errors."""


class ConfigError(SimrecError, ValueError):
    """A configuration, persona, catalog or dataset file is invalid.

    The message names the file, the field and what to do about it.
    """


class InvalidActionError(SimrecError, ValueError):
    """The recommender sent a slate that the environment cannot show."""


def read_json(path: str | Path, what: str, fix: str) -> Any:
    """Parse a JSON file; a missing file or bad syntax becomes a ``ConfigError`` naming the file."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: {what} not found. Fix: {fix}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None


def format_validation_error(source: str | Path, err: ValidationError, hint: str = "") -> ConfigError:
    """Turn a pydantic ``ValidationError`` into a ``ConfigError`` that names file and fields."""
    lines = [f"{source}: {err.error_count()} invalid field(s)"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        got: Any = e.get("input")
        got_s = repr(got)
        if len(got_s) > 60:
            got_s = got_s[:57] + "..."
        lines.append(f"  - field '{loc}': {e['msg']} (got {got_s})")
    lines.append(hint or "Fix: correct the field(s) above; see the model's docstring for allowed values.")
    return ConfigError("\n".join(lines))
