"""Item catalog: the documents a recommender can show.

A catalog is stored column-wise (numpy arrays) for the simulator's hot path; :class:`Item` is the
validated row format users write in catalog files (JSON).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from simrec.errors import ConfigError, format_validation_error, read_json


class Item(BaseModel):
    """One catalog item as written in a catalog file."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, description="Unique item id (never shown to an LLM).")
    title: str = Field(min_length=1)
    description: str = ""
    topics: list[str] = Field(min_length=1, description="Genres/topics; the first is the primary one.")
    year: int | None = Field(default=None, ge=1800, le=2200)
    attributes: dict[str, str | int | float | bool] = Field(default_factory=dict)
    quality: float = Field(ge=0.0, le=1.0, description="Intrinsic quality in [0, 1].")
    features: list[float] = Field(min_length=1, description="Content feature vector (observable).")
    popularity: float = Field(default=0.0, ge=0.0, le=1.0, description="Observable popularity prior in [0, 1].")

    @field_validator("features")
    @classmethod
    def _finite(cls, v: list[float]) -> list[float]:
        if not np.all(np.isfinite(v)):
            raise ValueError("features must be finite numbers")
        return v


class Domain(BaseModel):
    """The words LLM prompts use for the service, its items and the interaction, and whether users rate
    what they consume. The defaults (a film streaming service with star ratings) are the prompts'
    original wording; a calibrated music log says "listen to" tracks and asks for no stars."""

    model_config = ConfigDict(extra="forbid")

    service: str = Field("a streaming service", min_length=1)
    item: str = Field("title", min_length=1, description="One entry of a page, singular.")
    items: str = Field("titles", min_length=1)
    do: str = Field("watch", min_length=1, description="The interaction, infinitive: 'listen to'.")
    did: str = Field("watched", min_length=1, description="Past tense: 'listened to'.")
    ratings: bool = Field(True, description="Users give 1-5 stars (False: implicit feedback; replies carry none).")


class CatalogFile(BaseModel):
    """Top-level layout of a catalog JSON file."""

    model_config = ConfigDict(extra="forbid")

    name: str = "catalog"
    domain: Domain = Field(default_factory=Domain)
    topics: list[str] = Field(min_length=1, description="All topic names; item topics must be among them.")
    items: list[Item] = Field(min_length=1)
    normalize: bool = Field(True, description=(
        "Scale feature vectors to unit length on load. Files written by Catalog.save hold final features and "
        "say false (calibrated catalogs are not unit-norm)."))


class Catalog:
    """Column-wise item store.

    Attributes:
        ids, titles, descriptions: per-item strings.
        topic_names: the topic vocabulary.
        features: ``(n_items, dim)`` float32 content vectors (unit norm unless ``normalize=False``).
        quality: ``(n_items,)`` float32 in [0, 1], hidden from recommenders.
        topic: ``(n_items,)`` primary topic index.
        topic_weights: ``(n_items, n_topics)`` float32, rows sum to 1 (multi-genre items split).
        year: ``(n_items,)`` int32, 0 when unknown.
        popularity: ``(n_items,)`` float32 in [0, 1], an observable prior.
    """

    def __init__(
        self,
        ids: Sequence[str],
        titles: Sequence[str],
        descriptions: Sequence[str],
        topic_names: Sequence[str],
        item_topics: Sequence[Sequence[str]],
        features: np.ndarray,
        quality: np.ndarray,
        year: np.ndarray | None = None,
        popularity: np.ndarray | None = None,
        attributes: Sequence[dict[str, Any]] | None = None,
        name: str = "catalog",
        normalize: bool = True,
        domain: Domain | None = None,
    ) -> None:
        n = len(ids)
        if len(set(ids)) != n:
            from collections import Counter

            dup = sorted(str(k) for k, c in Counter(ids).items() if c > 1)[:5]
            raise ConfigError(f"catalog '{name}': item ids (field 'id') must be unique; duplicated: {dup}")
        self.name = name
        self.domain = domain or Domain()
        self.ids = list(ids)
        self.titles = list(titles)
        self.descriptions = list(descriptions)
        self.topic_names = list(topic_names)
        self.item_topics = [list(t) for t in item_topics]
        self.attributes = [dict(a) for a in attributes] if attributes is not None else [{} for _ in range(n)]
        tindex = {t: i for i, t in enumerate(self.topic_names)}
        self.topic = np.empty(n, dtype=np.int64)
        self.topic_weights = np.zeros((n, len(self.topic_names)), dtype=np.float32)
        for i, ts in enumerate(self.item_topics):
            try:
                idx = [tindex[t] for t in ts]
            except KeyError as e:
                raise ConfigError(
                    f"catalog '{name}': item '{ids[i]}' has topic {e} not in the topic list; add it to 'topics'"
                ) from None
            self.topic[i] = idx[0]
            self.topic_weights[i, idx] = 1.0 / len(idx)
        f = np.asarray(features, dtype=np.float32)
        if f.shape[0] != n or f.ndim != 2:
            raise ConfigError(f"catalog '{name}': features must have shape (n_items, dim), got {f.shape}")
        if normalize:  # unit vectors make taste . features a cosine similarity
            f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-8)
        self.features = np.ascontiguousarray(f, dtype=np.float32)
        self.quality = np.asarray(quality, dtype=np.float32).reshape(n)
        self.year = np.zeros(n, dtype=np.int32) if year is None else np.asarray(year, dtype=np.int32).reshape(n)
        self.popularity = (
            np.zeros(n, dtype=np.float32) if popularity is None else np.asarray(popularity, dtype=np.float32).reshape(n)
        )
        self._index = {item_id: i for i, item_id in enumerate(self.ids)}

    # -- basic protocol -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def n_topics(self) -> int:
        return len(self.topic_names)

    def index_of(self, item_id: str) -> int:
        return self._index[item_id]

    def item(self, i: int) -> Item:
        return Item(
            id=self.ids[i],
            title=self.titles[i],
            description=self.descriptions[i],
            topics=self.item_topics[i],
            year=int(self.year[i]) or None,
            attributes=self.attributes[i],
            quality=float(self.quality[i]),
            features=self.features[i].tolist(),
            popularity=float(self.popularity[i]),
        )

    # -- files ----------------------------------------------------------------------------------
    @classmethod
    def from_items(cls, items: Sequence[Item], topics: Sequence[str], name: str = "catalog",
                   normalize: bool = True, domain: Domain | None = None) -> "Catalog":
        dims = {len(it.features) for it in items}
        if len(dims) != 1:
            raise ConfigError(f"catalog '{name}': all items need features of one length, found lengths {sorted(dims)}")
        return cls(
            ids=[it.id for it in items],
            titles=[it.title for it in items],
            descriptions=[it.description for it in items],
            topic_names=topics,
            item_topics=[it.topics for it in items],
            features=np.array([it.features for it in items], dtype=np.float32),
            quality=np.array([it.quality for it in items], dtype=np.float32),
            year=np.array([it.year or 0 for it in items], dtype=np.int32),
            popularity=np.array([it.popularity for it in items], dtype=np.float32),
            attributes=[it.attributes for it in items],
            name=name,
            normalize=normalize,
            domain=domain,
        )

    @classmethod
    def load(cls, path: str | Path) -> "Catalog":
        """Load and validate a catalog JSON file (see :class:`CatalogFile`)."""
        path = Path(path)
        raw = read_json(path, "catalog file", "pass an existing catalog JSON file (see simrec.catalog.CatalogFile)")
        try:
            cf = CatalogFile.model_validate(raw)
        except ValidationError as e:
            raise format_validation_error(path, e) from None
        try:
            return cls.from_items(cf.items, cf.topics, name=cf.name, normalize=cf.normalize, domain=cf.domain)
        except ConfigError as e:  # cross-item checks: name the file too
            raise ConfigError(f"{path}: {e}") from None

    def save(self, path: str | Path) -> None:
        cf = CatalogFile(name=self.name, domain=self.domain, topics=self.topic_names,
                         items=[self.item(i) for i in range(len(self))], normalize=False)
        Path(path).write_text(cf.model_dump_json(indent=1), encoding="utf-8")

    def __repr__(self) -> str:
        return f"Catalog(name={self.name!r}, n_items={len(self)}, n_topics={self.n_topics}, dim={self.dim})"
