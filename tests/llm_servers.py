"""Local OpenAI-compatible servers for the LLM tests and benchmarks (127.0.0.1 only).

* :class:`FakeOpenAIServer`: a standard-library chat-completions server that answers with JSON
  generated from the request's JSON schema (deterministic per request), after a fixed latency,
  and injects faults at configured rates: 429 (with ``retry-after-ms``), 500, timeouts (answers
  too late), malformed JSON, schema-violating JSON and out-of-slate choices. It counts what it
  injected so tests can check that every fault was counted by the client.
* ``llama_server`` fixture: the bundled SmolLM2-135M GGUF behind ``python -m llama_cpp.server``,
  via :func:`simrec.llm.local_server.local_server`. It FAILS (never skips) when llama.cpp is missing.

Run ``python tests/llm_servers.py --latency 0.25`` to serve the fake in its own process (prints
``PORT <n>``; stops on SIGTERM, or when stdin closes with ``--watch-stdin``). The benchmarks do that so the server does
not share the client's interpreter lock.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULT_KINDS = ("rate_limit", "server_error", "timeout", "malformed", "schema_violation", "out_of_slate")
HTTP_FAULTS = ("rate_limit", "server_error", "timeout")
CONTENT_FAULTS = ("malformed", "schema_violation", "out_of_slate")


# ----------------------------------------------------------------------------------------------
# JSON-schema instances
# ----------------------------------------------------------------------------------------------
def schema_instance(schema: dict, rng: random.Random, defs: dict | None = None) -> Any:
    """A random value valid under ``schema`` (the subset simrec's schemas use)."""
    if defs is None:
        defs = schema.get("$defs", {})
    if "$ref" in schema:
        return schema_instance(defs[schema["$ref"].rsplit("/", 1)[-1]], rng, defs)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return schema_instance(rng.choice(schema[key]), rng, defs)
    if "allOf" in schema:
        merged: dict = {}
        for s in schema["allOf"]:
            merged.update(s)
        return schema_instance(merged, rng, defs)
    t = schema.get("type", "object")
    if isinstance(t, list):
        t = rng.choice(t)
    if t == "object":
        props = schema.get("properties", {})
        req = set(schema.get("required", props))
        return {k: schema_instance(v, rng, defs) for k, v in props.items() if k in req or rng.random() < 0.5}
    if t == "array":
        prefix = schema.get("prefixItems")
        if prefix:
            return [schema_instance(p, rng, defs) for p in prefix]
        lo = schema.get("minItems", 0)
        hi = schema.get("maxItems", lo + 3)
        return [schema_instance(schema.get("items", {"type": "string"}), rng, defs) for _ in range(rng.randint(lo, hi))]
    if t == "integer":
        lo = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        hi = schema.get("maximum", schema.get("exclusiveMaximum", lo + 11) - 1)
        return rng.randint(int(lo), int(hi))
    if t == "number":
        lo = schema.get("minimum", 0.0)
        hi = schema.get("maximum", lo + 1.0)
        return round(rng.uniform(lo, hi), 3)
    if t == "boolean":
        return rng.random() < 0.5
    if t == "null":
        return None
    n = max(schema.get("minLength", 0), min(schema.get("maxLength", 40), 40))
    words = ["fine", "looks", "good", "not", "for", "me", "tonight", "maybe", "later", "nice"]
    s = " ".join(rng.choice(words) for _ in range(12))
    return s[:n] if n else s[:20]


def _request_schema(body: dict) -> dict | None:
    rf = body.get("response_format") or {}
    if rf.get("type") == "json_schema":
        return (rf.get("json_schema") or {}).get("schema")
    if rf.get("type") == "json_object":
        return rf.get("schema")
    return None


# ----------------------------------------------------------------------------------------------
# The fake server
# ----------------------------------------------------------------------------------------------
class FakeOpenAIServer:
    """A fake ``/v1/chat/completions`` on 127.0.0.1 with fixed latency and injected faults.

    Args:
        latency_s: time before each answer.
        faults: rate per kind in :data:`FAULT_KINDS` (their sum <= 1).
        seed: seeds the fault draws and (with each request's content) the replies.
        retry_after_ms: sent with each 429 (None: no header).
        timeout_sleep_s: how late a "timeout" answers (set above the client's timeout).
        reject_json_schema: answer 400 to ``response_format`` type ``json_schema`` (like servers
            that only have JSON mode).
        schedule: faults for the first requests in arrival order (None = answer normally; also
            "auth" for a 401 and "bad_request" for a 400); random draws after it runs out.

    Attributes:
        counts: requests, ok, each injected fault kind, format_<type> per response format.
        max_inflight: most requests handled at the same time.
    """

    def __init__(self, *, latency_s: float = 0.0, faults: dict[str, float] | None = None, seed: int = 0,
                 model: str = "fake-model", retry_after_ms: int | None = 10, timeout_sleep_s: float = 1.0,
                 reject_json_schema: bool = False, port: int = 0, log_requests: int = 0,
                 schedule: list[str | None] | None = None) -> None:
        faults = dict(faults or {})
        bad = set(faults) - set(FAULT_KINDS)
        if bad or sum(faults.values()) > 1 + 1e-9:
            raise ValueError(f"faults must be rates over {FAULT_KINDS} summing to <= 1, got {faults}")
        self.latency_s = latency_s
        self.faults = faults
        self.seed = seed
        self.model = model
        self.retry_after_ms = retry_after_ms
        self.timeout_sleep_s = timeout_sleep_s
        self.reject_json_schema = reject_json_schema
        self.counts: Counter[str] = Counter()
        self.schedule = list(schedule or [])
        self.inflight = 0
        self.max_inflight = 0
        self.requests: list[dict] = []  # last ``log_requests`` request bodies
        self._log_requests = log_requests
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = _Server(("127.0.0.1", port), self._handler())
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FakeOpenAIServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def http_faults(self) -> int:
        return sum(self.counts[k] for k in HTTP_FAULTS)

    @property
    def content_faults(self) -> int:
        return sum(self.counts[k] for k in CONTENT_FAULTS)

    # -- behaviour -----------------------------------------------------------------------------
    def _draw_fault(self) -> str | None:
        with self._lock:
            if self.schedule:
                return self.schedule.pop(0)
            u = self._rng.random()
        acc = 0.0
        for kind in FAULT_KINDS:
            acc += self.faults.get(kind, 0.0)
            if u < acc:
                return kind
        return None

    def answer(self, body: dict) -> tuple[int, dict, dict[str, str]]:
        """(status, JSON body, headers) for one chat-completions request."""
        with self._lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            return self._answer(body)
        finally:
            with self._lock:
                self.inflight -= 1

    def _answer(self, body: dict) -> tuple[int, dict, dict[str, str]]:
        with self._lock:
            self.counts["requests"] += 1
            if self._log_requests:
                self.requests.append(body)
                del self.requests[: -self._log_requests]
        rf = (body.get("response_format") or {}).get("type", "none")
        if self.reject_json_schema and rf == "json_schema":
            with self._lock:
                self.counts["rejected_format"] += 1
            return 400, {"error": {"message": "response_format type json_schema is not supported",
                                   "type": "invalid_request_error", "param": "response_format", "code": None}}, {}
        with self._lock:
            self.counts[f"format_{rf}"] += 1
        fault = self._draw_fault()
        if self.latency_s:
            self._stop.wait(self.latency_s)
        if fault == "rate_limit":
            self._count(fault)
            hdr = {"retry-after-ms": str(self.retry_after_ms)} if self.retry_after_ms is not None else {}
            return 429, {"error": {"message": "Rate limit reached (injected)", "type": "rate_limit_error",
                                   "code": None}}, hdr
        if fault == "auth":
            self._count(fault)
            return 401, {"error": {"message": "Incorrect API key provided (injected)", "type": "invalid_request_error",
                                   "code": "invalid_api_key"}}, {}
        if fault == "bad_request":
            self._count(fault)
            return 400, {"error": {"message": "This model's maximum context length is 8 tokens (injected)",
                                   "type": "invalid_request_error", "code": "context_length_exceeded"}}, {}
        if fault == "server_error":
            self._count(fault)
            return 500, {"error": {"message": "Internal error (injected)", "type": "server_error", "code": None}}, {}
        if fault == "timeout":
            self._count(fault)
            self._stop.wait(self.timeout_sleep_s)
        schema = _request_schema(body)
        digest = hashlib.sha256(json.dumps([body.get("messages"), body.get("seed"), self.seed],
                                           sort_keys=True).encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "little"))
        value: Any = schema_instance(schema, rng) if schema else {"answer": "ok"}
        content = json.dumps(value)
        if fault == "malformed":
            content = content[: max(1, len(content) // 2)]
        elif fault == "schema_violation" or (fault == "out_of_slate" and not _has_items(value)):
            fault = "schema_violation"
            content = json.dumps({"items": "none of these", "leave": "perhaps", "mood": 7})
        elif fault == "out_of_slate":
            value["items"][0]["item"] = 99
            content = json.dumps(value)
        if fault in CONTENT_FAULTS:
            self._count(fault)
        if fault is None:
            self._count("ok")
        pt = sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4 + 8
        ct = len(content) // 4 + 1
        return 200, {
            "id": f"chatcmpl-fake-{digest[:6].hex()}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
        }, {}

    def _count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like real servers

            def setup(self) -> None:
                super().setup()
                # Without TCP_NODELAY the body write waits on the client's delayed ACK (~40 ms).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, obj: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(obj).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    self.close_connection = True

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._send(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
                    return
                status, obj, headers = server.answer(body)
                self._send(status, obj, headers)

        return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # concurrency 64 overflows the default listen backlog of 5


def _has_items(v: Any) -> bool:
    return isinstance(v, dict) and isinstance(v.get("items"), list) and bool(v["items"]) \
        and isinstance(v["items"][0], dict) and "item" in v["items"][0]


# ----------------------------------------------------------------------------------------------
# pytest fixtures
# ----------------------------------------------------------------------------------------------
try:
    import pytest
except ImportError:  # the module also runs as a plain script
    pytest = None  # type: ignore[assignment]

LLAMA_INSTALL = (
    "llama-cpp-python is required for the real-server LLM tests. Install it with:\n"
    '  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON '
    '-DLLAVA_BUILD=OFF" pip install -e ".[local-llm]"\n'
    "(the native build crashes on some CPUs, hence the flags)."
)

if pytest is not None:

    @pytest.fixture
    def fake_server():
        """Factory: ``fake_server(**kwargs)`` starts a :class:`FakeOpenAIServer`, stopped after the test."""
        started: list[FakeOpenAIServer] = []

        def make(**kw: Any) -> FakeOpenAIServer:
            s = FakeOpenAIServer(**kw).start()
            started.append(s)
            return s

        yield make
        for s in started:
            s.stop()

    @pytest.fixture(scope="module")
    def llama_server():
        """Base URL of the bundled SmolLM2-135M behind llama.cpp's OpenAI server (module-scoped)."""
        try:
            import llama_cpp  # noqa: F401
            import llama_cpp.server  # noqa: F401
        except ImportError as e:
            pytest.fail(f"{e}\n{LLAMA_INSTALL}", pytrace=False)
        from simrec.llm.local_server import local_server

        with local_server() as url:
            yield url


# ----------------------------------------------------------------------------------------------
# Stand-alone server process (benchmarks)
# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    import signal

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--faults", type=json.loads, default={}, help='JSON rates, e.g. {"rate_limit": 0.05}')
    p.add_argument("--watch-stdin", action="store_true", help="stop when stdin closes (when run by a parent)")
    a = p.parse_args(argv)
    srv = FakeOpenAIServer(latency_s=a.latency, faults=a.faults, seed=a.seed, port=a.port)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=srv.stop, daemon=True).start())
    print(f"PORT {srv.port}", flush=True)
    if a.watch_stdin:
        threading.Thread(target=lambda: (sys.stdin.read(), srv.stop()), daemon=True).start()
    srv._httpd.serve_forever(poll_interval=0.05)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


class CallingBackend:
    """The embedded model plus LLM-style call records (per the ``drain_calls`` contract), so a trajectory's
    calls table has rows without any server. Subclasses say what each record holds (:meth:`record`)."""

    name = "fake-llm"

    def __init__(self) -> None:
        from simrec.cognition.embedded import EmbeddedCognition

        self.inner = EmbeddedCognition()
        self.pending: list[dict] = []
        self.n = 0

    def record(self, pop: Any, u: int, kind: str) -> dict:
        """The fields of call ``self.n`` beyond its id, user and kind."""
        return {}

    def _call(self, pop: Any, u: int, kind: str) -> None:
        self.n += 1
        self.pending.append({"call_id": f"c{self.n}", "user": u, "user_id": pop.user_id(u), "kind": kind,
                             **self.record(pop, u, kind)})

    def decide(self, pop: Any, users: Any, slates: Any, rng: Any) -> Any:
        import numpy as np

        for u in np.arange(pop.n_users)[users]:
            self._call(pop, int(u), "decide")
        return self.inner.decide(pop, users, slates, rng)

    def judge(self, pop: Any, users: Any, items: Any, rng: Any) -> Any:
        return self.inner.judge(pop, users, items, rng)

    def end_session(self, pop: Any, users: Any) -> None:
        import numpy as np

        for u in np.arange(pop.n_users)[users]:
            self._call(pop, int(u), "reflect")

    def drain_calls(self) -> list[dict]:
        out, self.pending = self.pending, []
        return out

    def stats(self) -> dict:
        return {"calls": self.n}

    def close(self) -> None:
        pass
