"""Where units of work run: in this process, in a process pool, or on Ray workers.

A grid is a list of independent *units* (one recommender and seed of ``simrec compare``, one seed of a
stress test or of the fidelity harness, one shard of a population). :class:`Executor` maps a function
over them and returns the results **in unit order**, whatever order they finished in, so everything
built from the results is deterministic.

* ``local``: one after the other in this process (the single-process reference; no dependencies).
* ``process``: a ``concurrent.futures`` pool of ``workers`` spawned interpreters (plain multiprocessing;
  a dead worker fails the grid).
* ``ray``: Ray tasks, at most ``workers`` in flight; a worker that dies (killed, out of memory, node lost)
  is retried by Ray up to ``max_retries`` times. An exception raised by the unit itself is a bug, not a
  lost worker, and is not retried. ``ray`` is imported here only, on first use.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from simrec.errors import ConfigError, SimrecError

log = logging.getLogger("simrec.distributed")

RAY_HINT = "pip install -e '.[ray]' (Ray pins its own gymnasium: use a venv of its own, see the README)"


class DistributedError(SimrecError):
    """A unit of a distributed grid failed for good (its exception or lost worker is the cause)."""


class ExecutorConfig(BaseModel):
    """How a grid's units are run. ``ExecutorConfig.parse("ray")`` and dicts of these fields also work."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "process", "ray"] = Field("ray", description="local | process | ray (see the module).")
    workers: int | None = Field(None, ge=1, description="Units in flight at once; None: every CPU (Ray: of the "
                                                        "cluster), 1 for local.")
    address: str | None = Field(None, description="Ray cluster to join ('auto', 'ray://head:10001'); None starts "
                                                  "a local runtime unless one is already initialised.")
    max_retries: int = Field(3, ge=0, description="Ray: re-runs of a unit whose worker died.")
    num_cpus: float = Field(1.0, gt=0, description="Ray: CPUs reserved per unit.")
    ray_init: dict[str, Any] = Field(default_factory=dict, description="Extra ray.init() arguments (runtime_env, ...).")

    @classmethod
    def parse(cls, value: "ExecutorConfig | str | dict[str, Any] | None", **overrides: Any) -> "ExecutorConfig":
        """An ExecutorConfig from itself, a kind name or a dict; ``overrides`` that are not None win."""
        if isinstance(value, ExecutorConfig):
            base = value.model_dump()
        elif isinstance(value, str):
            base = {"kind": value}
        elif value is None:
            base = {}
        elif isinstance(value, dict):
            base = dict(value)
        else:
            raise ConfigError(f"executor must be 'local', 'process', 'ray', a dict or an ExecutorConfig, got {value!r}")
        base.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**base)
        except ValueError as e:
            raise ConfigError(f"executor config {base}: {e}. Fix: see simrec.distributed.ExecutorConfig.") from None


class Executor:
    """Maps a function over argument tuples; results come back in input order."""

    def __init__(self, config: ExecutorConfig | str | dict[str, Any] | None = None) -> None:
        self.config = ExecutorConfig.parse(config)
        self._pool: Any = None

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def workers(self) -> int:
        """Units in flight at once (Ray: resolved against the cluster once it is up)."""
        c = self.config
        if c.kind == "local":
            return 1
        if c.workers is not None:
            return c.workers
        if c.kind == "ray":
            ray = _ray()
            self._init_ray()
            return max(1, int(ray.cluster_resources().get("CPU", 1) // c.num_cpus))
        return os.cpu_count() or 1

    def share(self, value: Any) -> Any:
        """A handle to pass ``value`` to many units cheaply (Ray: one copy in the object store)."""
        if self.kind == "ray":
            self._init_ray()
            return _ray().put(value)
        return value

    def map(self, fn: Callable[..., Any], args: Sequence[tuple], *, keys: Sequence[str] | None = None,
            on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        """``[fn(*a) for a in args]``, run by this executor. ``keys`` name the units in errors;
        ``on_result(index, result)`` is called as each unit finishes (in completion order)."""
        keys = list(keys) if keys is not None else [str(i) for i in range(len(args))]
        if len(keys) != len(args):
            raise ValueError("keys and args differ in length")
        if not args:
            return []
        runner = {"local": self._map_local, "process": self._map_process, "ray": self._map_ray}[self.kind]
        return runner(fn, list(args), keys, on_result or (lambda i, r: None))

    # -- local -------------------------------------------------------------------------------------
    def _map_local(self, fn: Callable[..., Any], args: list[tuple], keys: list[str],
                   on_result: Callable[[int, Any], None]) -> list[Any]:
        out = []
        for i, a in enumerate(args):
            out.append(fn(*a))
            on_result(i, out[-1])
        return out

    # -- process pool ------------------------------------------------------------------------------
    def _map_process(self, fn: Callable[..., Any], args: list[tuple], keys: list[str],
                     on_result: Callable[[int, Any], None]) -> list[Any]:
        import concurrent.futures as cf
        import multiprocessing as mp

        if self._pool is None:
            # spawn: fresh interpreters like Ray's workers (fork would copy the driver's threads and sockets)
            self._pool = cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"))
        futures = {self._pool.submit(fn, *a): i for i, a in enumerate(args)}
        out: list[Any] = [None] * len(args)
        try:
            for f in cf.as_completed(futures):
                i = futures[f]
                try:
                    out[i] = f.result()
                except Exception as e:
                    raise DistributedError(f"unit {keys[i]} failed in a worker process: {type(e).__name__}: {e}") from e
                on_result(i, out[i])
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        return out

    # -- Ray ---------------------------------------------------------------------------------------
    def _init_ray(self) -> None:
        ray = _ray()
        if ray.is_initialized():
            return
        c = self.config
        kw: dict[str, Any] = {"include_dashboard": False, **c.ray_init}
        if c.address is not None:
            kw["address"] = c.address
        elif c.workers is not None:
            kw.setdefault("num_cpus", max(1, int(round(c.workers * c.num_cpus))))
        log.info("starting Ray (%s)", kw)
        ray.init(**kw)

    def _map_ray(self, fn: Callable[..., Any], args: list[tuple], keys: list[str],
                 on_result: Callable[[int, Any], None]) -> list[Any]:
        ray = _ray()
        from ray.exceptions import RayError, RayTaskError

        self._init_ray()
        c = self.config
        task = ray.remote(num_cpus=c.num_cpus, max_retries=c.max_retries, retry_exceptions=False)(fn)
        window = self.workers
        out: list[Any] = [None] * len(args)
        pending: dict[Any, int] = {}
        nxt = 0
        try:
            while nxt < len(args) or pending:
                # at most `window` units in flight: --workers caps the load even on a large cluster
                while nxt < len(args) and len(pending) < window:
                    pending[task.remote(*args[nxt])] = nxt
                    nxt += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    i = pending.pop(ref)
                    try:
                        out[i] = ray.get(ref)
                    except RayTaskError as e:  # the unit raised: a bug or bad input, not a lost worker
                        cause = e.cause if getattr(e, "cause", None) is not None else e
                        raise DistributedError(f"unit {keys[i]} failed: {type(cause).__name__}: {cause}") from cause
                    except RayError as e:  # its worker died more than max_retries times
                        raise DistributedError(
                            f"unit {keys[i]} lost its worker {c.max_retries + 1} time(s): {type(e).__name__}: {e}. "
                            "Fix: check the workers' memory and logs (/tmp/ray/session_latest/logs), or raise "
                            "max_retries.") from e
                    on_result(i, out[i])
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return out

    def close(self) -> None:
        """Stop the process pool, if any (a Ray runtime is left up for later grids; ``ray.shutdown()`` ends it)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _ray() -> Any:
    try:
        import ray
        import ray.exceptions
    except ImportError as e:
        # (a bare namespace package, e.g. Ray's own /tmp/ray session directory on sys.path, lands here too)
        raise ConfigError(f"the 'ray' executor needs Ray ({e}). Fix: {RAY_HINT}; or run without --ray "
                          "(from Python: executor='process').") from None
    return ray

