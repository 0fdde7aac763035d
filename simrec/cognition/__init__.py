"""Cognition backends: turn (persona, state, memory, slate) batches into responses.

``base`` (the ``CognitionBackend`` protocol: ``decide`` and ``judge``, ``ResponseBatch``), ``embedded``
(the vectorised multinomial-logit choice model, the default), ``llm`` (an LLM playing each persona, through
``simrec.llm``). A new choice model is a new module here implementing the protocol, named in
:func:`make_backend`. This package may import ``simrec.llm``, ``simrec.users`` and below.
"""

from simrec.cognition.base import CognitionBackend, JudgeBatch, ResponseBatch
from simrec.cognition.embedded import ChoiceConfig, EmbeddedCognition

__all__ = ["CognitionBackend", "JudgeBatch", "ResponseBatch", "ChoiceConfig", "EmbeddedCognition", "make_backend"]


def make_backend(name: str, config: dict | None = None) -> CognitionBackend:
    """Build a backend by name: ``"embedded"`` or ``"llm"`` (needs the LLM backend's config)."""
    if name == "embedded":
        return EmbeddedCognition(config)
    if name == "llm":
        from simrec.cognition.llm import LLMCognition  # imported lazily: the default run needs no client

        if config and "endpoints" in config:  # a pool of servers (simrec.llm.pool)
            from simrec.llm.pool import EndpointPool

            pool = EndpointPool.from_backend_config(config)
            return LLMCognition(pool.shared_config, client=pool)
        return LLMCognition.from_config(config or {})
    raise ValueError(f"unknown backend {name!r}; use 'embedded' or 'llm'")
