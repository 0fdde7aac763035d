"""Declarative environment specs: the JSON files in ``envs/`` (shipped as ``simrec._envs``)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simrec.cognition.embedded import UNCALIBRATED, ChoiceConfig
from simrec.users.dynamics import DynamicsConfig
from simrec.errors import ConfigError, format_validation_error, read_json


class RewardConfig(BaseModel):
    """Reward = weighted sum over the slate of clicks, consumption and centred ratings, plus a leave term.

    ``reward = click * #clicks + consumption * sum(consumption) + rating * sum((stars - 3) / 2) + leave * left``
    """

    model_config = ConfigDict(extra="forbid")

    click: float = 1.0
    consumption: float = 0.0
    rating: float = 0.0
    leave: float = 0.0

    def bounds(self, slate_size: int) -> tuple[float, float]:
        """Closed interval every per-step reward lies in, for any backend."""
        lo = slate_size * (min(0.0, self.click) + min(0.0, self.consumption) - abs(self.rating)) + min(0.0, self.leave)
        hi = slate_size * (max(0.0, self.click) + max(0.0, self.consumption) + abs(self.rating)) + max(0.0, self.leave)
        return lo, hi


class CandidateConfig(BaseModel):
    """How the candidate set is drawn from the catalog each step.

    * ``uniform``: distinct items uniformly at random.
    * ``popular_mix``: a ``popular_fraction`` of the candidates drawn in proportion to popularity,
      the rest uniformly.
    * ``catalog``: the whole catalog, in index order, every step (``num_candidates`` must equal the
      catalog size): the recommender ranks the same pool an offline metric ranks.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["uniform", "popular_mix", "catalog"] = "uniform"
    popular_fraction: float = Field(0.5, ge=0, le=1)


class WorldConfig(BaseModel):
    """Where the catalog and population come from. ``kind`` selects a builder in ``simrec.envs.registration``."""

    model_config = ConfigDict(extra="allow")

    kind: str = "synthetic"
    seed: int = 0
    n_items: int = Field(1200, ge=10)
    n_topics: int = Field(20, ge=1)
    dim: int = Field(16, ge=2)
    personas: str | None = Field("synthetic-v0", description="Built-in pack name or path; None to generate.")
    n_personas: int = Field(256, ge=1)


class EnvSpec(BaseModel):
    """Everything that defines a simrec environment. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^simrec/[A-Za-z0-9\-]+-v\d+$")
    description: str = ""
    world: WorldConfig = Field(default_factory=WorldConfig)
    slate_size: int = Field(5, ge=1)
    num_candidates: int = Field(50, ge=1)
    max_steps: int = Field(50, ge=1, description="Session length limit (truncation).")
    history_window: int = Field(10, ge=1)
    memory_capacity: int = Field(32, ge=1)
    population_size: int | None = Field(None, ge=1, description="Users in the population; default: the pack size.")
    reward: RewardConfig = Field(default_factory=RewardConfig)
    candidates: CandidateConfig = Field(default_factory=CandidateConfig)
    dynamics: DynamicsConfig = Field(default_factory=DynamicsConfig)
    choice: ChoiceConfig = Field(default_factory=ChoiceConfig)
    backend: Literal["embedded", "llm"] = "embedded"
    backend_config: dict[str, Any] = Field(default_factory=dict, description="Passed to the backend (see its config).")
    log_latent: bool = Field(True, description="Put a latent-state snapshot in info (for logging only).")

    @model_validator(mode="after")
    def _check(self) -> "EnvSpec":
        if self.slate_size > self.num_candidates:
            raise ValueError(f"slate_size ({self.slate_size}) cannot exceed num_candidates ({self.num_candidates})")
        if self.num_candidates > self.world.n_items and self.world.kind == "synthetic":
            raise ValueError(f"num_candidates ({self.num_candidates}) exceeds the catalog size ({self.world.n_items})")
        return self

    # -- files ----------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "EnvSpec":
        p = Path(path)
        raw = read_json(p, "env spec", f"pass a JSON file or a built-in name {builtin_specs()}")
        return cls.parse(raw, source=str(p))

    @classmethod
    def parse(cls, raw: Any, source: str = "<env spec>") -> "EnvSpec":
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise format_validation_error(source, e, hint="Fix: see simrec.envs.spec.EnvSpec for fields and allowed values.") from None

    @classmethod
    def builtin(cls, name: str) -> "EnvSpec":
        ref = resources.files("simrec._envs").joinpath(f"{name}.json")
        if not ref.is_file():
            raise ConfigError(f"no built-in env spec '{name}'. Fix: use one of {builtin_specs()} or a file path")
        return cls.parse(json.loads(ref.read_text(encoding="utf-8")), source=f"envs/{name}.json")

    def with_overrides(self, **overrides: Any) -> "EnvSpec":
        """A copy with top-level fields replaced (nested dicts are merged), re-validated.

        ``data_dir=`` and ``variant=`` are shortcuts for the same keys of ``world`` (data-backed worlds).
        """
        shortcuts = {k: overrides.pop(k) for k in WORLD_SHORTCUTS if k in overrides}
        if shortcuts:
            w = overrides.get("world") or {}
            overrides["world"] = {**(w.model_dump() if isinstance(w, BaseModel) else w), **shortcuts}
        data = self.model_dump()
        for k, v in overrides.items():
            if isinstance(v, BaseModel):
                v = v.model_dump()
            if isinstance(v, dict) and isinstance(data.get(k), dict):
                data[k] = _deep_merge(data[k], v)
            else:
                data[k] = v
        return EnvSpec.parse(data, source=f"{self.id} with overrides {sorted(overrides)}")

    def for_world(self, world: Any) -> "EnvSpec":
        """This spec with the choice settings it leaves to the world filled in: ``choice.sequence`` None takes
        the weight of the world's transitions (0 where it has none); ``temperature``, ``slate_no_click``,
        ``popularity_shift`` and ``popularity_knee`` None the world's calibrated values (where it has none,
        :data:`~simrec.cognition.embedded.UNCALIBRATED`). Simulators run the result."""
        c = self.choice
        if c.sequence is not None and all(getattr(c, k) is not None for k in UNCALIBRATED):
            return self
        tr = getattr(world, "transitions", None)
        fitted = getattr(world, "choice", None) or {}
        update = {"sequence": c.sequence if c.sequence is not None else (tr.weight if tr is not None else 0.0),
                  **{k: getattr(c, k) if getattr(c, k) is not None else float(fitted.get(k, default))
                     for k, default in UNCALIBRATED.items()}}
        return self.model_copy(update={"choice": c.model_copy(update=update)})


#: Top-level override keys that set world fields: ``gymnasium.make("simrec/MovieLens-v0", data_dir=...)``.
WORLD_SHORTCUTS = ("data_dir", "variant")


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def builtin_specs() -> list[str]:
    return sorted(r.name[:-5] for r in resources.files("simrec._envs").iterdir() if r.name.endswith(".json"))


def resolve_spec(spec: "EnvSpec | str | Path | dict") -> EnvSpec:
    """Accept a spec object, a dict, a built-in name (``synthetic-v0``) or a file path."""
    if isinstance(spec, EnvSpec):
        return spec
    if isinstance(spec, dict):
        return EnvSpec.parse(spec)
    p = Path(spec)
    if p.suffix == ".json" or p.exists():
        return EnvSpec.load(p)
    return EnvSpec.builtin(str(spec))
