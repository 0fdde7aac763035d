"""What the stress tests with LLM users share: an endpoint for the whole run and a response cache.

``simrec stress run`` starts an endpoint for tests with ``uses_llm = True`` and passes its config as
``StressConfig.llm``; run from Python without one, :class:`LLMUsersTest` starts the bundled local model
itself (:func:`simrec.llm.endpoint.llm_endpoint`), once for all seeds. Every LLM call is recorded in a
SQLite cache, ``OUT/llm_cache.sqlite`` (or the config's own ``cache_path``; a temporary file when there is
no output directory), so a second run with the same settings replays instead of asking the model again.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from simrec.llm.endpoint import llm_endpoint
from simrec.stress.base import StressResult, StressTest

CACHE_FILE = "llm_cache.sqlite"


class LLMUsersTest(StressTest):
    """A stress test some of whose rows are LLM users; subclasses call :meth:`llm_config` in ``run_seed``."""

    uses_llm: ClassVar[bool] = True
    _llm: dict[str, Any] | None = None  # this run's LLM config, set while run() runs

    def needs_llm(self) -> bool:
        """Whether the rows asked for need an LLM (an endpoint is started only then)."""
        return True

    def run(self) -> StressResult:
        with contextlib.ExitStack() as stack:
            llm = self.config.llm
            if llm is None and self.needs_llm():
                llm = stack.enter_context(llm_endpoint("llm"))
            out = self.config.out
            if out is None:
                out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"simrec-{self.name}-")))
            self._llm = {"cache_path": str(Path(out) / CACHE_FILE), **(llm or {})}
            try:
                return super().run()
            finally:
                self._llm = None

    def llm_config(self, **overrides: Any) -> dict[str, Any]:
        """The LLM backend config of this run (an :class:`~simrec.llm.LLMConfig` mapping) with ``overrides``."""
        if self._llm is None:
            raise RuntimeError(f"{type(self).__name__}.llm_config() is only available inside run()")
        return {**self._llm, **overrides}
