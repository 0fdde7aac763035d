"""Personas: who a simulated user is (stable traits), as opposed to how they feel now (``state``).

Persona packs are JSON files (see :class:`PersonaPack`); the built-in packs live in ``personas/``
and ship inside the wheel as ``simrec._personas``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simrec.errors import ConfigError, format_validation_error, read_json


class Traits(BaseModel):
    """Behavioural traits, each in [0, 1] (0.5 is average).

    * ``activity``: how often the user comes back and how long sessions run.
    * ``conformity``: pull toward popular items and toward the crowd's ratings.
    * ``diversity``: appetite for novel topics (diversity-seeking).
    * ``patience``: tolerance of poor slates and of fatigue before leaving.
    * ``pickiness``: rating bias; high pickiness rates lower and clicks less.
    """

    model_config = ConfigDict(extra="forbid")

    activity: float = Field(0.5, ge=0.0, le=1.0)
    conformity: float = Field(0.5, ge=0.0, le=1.0)
    diversity: float = Field(0.5, ge=0.0, le=1.0)
    patience: float = Field(0.5, ge=0.0, le=1.0)
    pickiness: float = Field(0.5, ge=0.0, le=1.0)


class Persona(BaseModel):
    """A simulated user's identity and stable preferences."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    age: int = Field(ge=10, le=110)
    occupation: str = "other"
    description: str = Field("", description="Free-text persona, shown (sanitised) to an LLM backend.")
    traits: Traits = Field(default_factory=Traits)
    interests: dict[str, float] = Field(
        default_factory=dict,
        description="Topic name -> weight (>= 0). Seeds the initial taste vector.",
    )
    taste: list[float] | None = Field(
        default=None, description="Optional calibrated initial taste vector (overrides interests)."
    )
    rating_bias: float = Field(0.0, ge=-3.0, le=3.0, description="Additive rating offset in stars (calibrated).")
    session_rate: float | None = Field(None, gt=0.0, le=1000.0, description=(
        "How often the user starts a session relative to others (calibrated worlds: the user's share of the "
        "log's interactions, mean 1). Unset: (0.2 + activity) / 0.7."))
    recent_items: list[int] | None = Field(None, description=(
        "Catalog indices of the items the user consumed last, oldest first (calibrated worlds: the end of the "
        "train history). They seed the order-aware short-term interest of worlds that have one."))

    @model_validator(mode="after")
    def _check_interests(self) -> "Persona":
        for topic, w in self.interests.items():
            if not (w >= 0.0 and np.isfinite(w)):
                raise ValueError(f"interest weight for '{topic}' must be a finite number >= 0, got {w}")
        if self.taste is not None and not np.all(np.isfinite(self.taste)):
            raise ValueError("taste must contain finite numbers")
        if self.recent_items is not None and any(i < 0 for i in self.recent_items):
            raise ValueError("recent_items must be catalog indices (>= 0)")
        return self


class PersonaPack(BaseModel):
    """A persona pack file: ``{"name": ..., "topics": [...], "personas": [...]}``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    topics: list[str] = Field(default_factory=list, description="Topic vocabulary the interests refer to.")
    personas: list[Persona] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> "PersonaPack":
        ids = [p.id for p in self.personas]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise ValueError(f"persona ids must be unique; duplicated: {dup}")
        if self.topics:
            known = set(self.topics)
            for k, p in enumerate(self.personas):
                bad = [t for t in p.interests if t not in known]
                if bad:
                    raise ValueError(f"personas.{k} ('{p.id}') has interests {bad} not in the pack's topics")
        return self

    def __len__(self) -> int:
        return len(self.personas)

    def traits_array(self) -> np.ndarray:
        """``(n_personas, 5)`` float32 in the order activity, conformity, diversity, patience, pickiness."""
        return np.array(
            [[p.traits.activity, p.traits.conformity, p.traits.diversity, p.traits.patience, p.traits.pickiness]
             for p in self.personas],
            dtype=np.float32,
        )

    # -- files ----------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "PersonaPack":
        """Load a pack from a path, or a built-in pack by name (e.g. ``"synthetic-v0"``)."""
        p = Path(path)
        if not p.suffix and not p.exists():
            return cls.builtin(str(path))
        raw = read_json(p, "persona pack", f"pass an existing file or one of {builtin_packs()}")
        return cls.parse(raw, source=str(p))

    @classmethod
    def parse(cls, raw: object, source: str = "<persona pack>") -> "PersonaPack":
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise format_validation_error(
                source, e, hint="Fix: see simrec.users.persona.Persona / Traits for the fields and their ranges."
            ) from None

    @classmethod
    def builtin(cls, name: str) -> "PersonaPack":
        ref = resources.files("simrec._personas").joinpath(f"{name}.json")
        if not ref.is_file():
            raise ConfigError(f"no built-in persona pack '{name}'. Fix: use one of {builtin_packs()} or a file path")
        return cls.parse(json.loads(ref.read_text(encoding="utf-8")), source=f"personas/{name}.json")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=1, exclude_none=True) + "\n", encoding="utf-8")


def builtin_packs() -> list[str]:
    return sorted(
        r.name[:-5] for r in resources.files("simrec._personas").iterdir() if r.name.endswith(".json")
    )
