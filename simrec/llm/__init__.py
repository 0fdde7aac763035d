"""Talking to language models: the OpenAI-compatible client, its record/replay cache, the bundled local
server, prompt rendering and the leakage sanitiser.

``client`` (``LLMConfig``, ``LLMClient``: async OpenAI client with retries, concurrency limit, accounting),
``cache`` (SQLite record/replay), ``endpoint`` (which server ``--backend llm`` uses), ``local_server``
(llama.cpp with the bundled SmolLM2), ``prompting`` (state as plain language, reply schemas), ``sanitize``
(leakage sanitiser and auditor). This package may import ``simrec.users``, ``simrec.catalog`` and
``simrec.errors``; the LLM *cognition backend* that uses it lives in ``simrec.cognition.llm``.

The client's names are re-exported here (``from simrec.llm import LLMConfig``) and imported on first use,
so ``simrec.llm.sanitize`` does not pull in the ``openai`` client.
"""

from __future__ import annotations

import importlib
from typing import Any

_CLIENT_NAMES = ("AsyncRunner", "ClientCounters", "Completion", "LLMCallError", "LLMClient", "LLMConfig",
                 "LLMFatalError", "ModelPrice", "PriceTable", "DEFAULT_PRICES")

__all__ = list(_CLIENT_NAMES)


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        return getattr(importlib.import_module("simrec.llm.client"), name)
    raise AttributeError(f"module 'simrec.llm' has no attribute {name!r}")
