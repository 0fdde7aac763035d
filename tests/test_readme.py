"""Every code block in the README runs, as written.

Python blocks run in a fresh interpreter; shell blocks run line by line in one shell session; both in a
scratch directory laid out like a checkout (``../shared`` beside it points at the real ``shared/``), so
relative paths in the README mean what they say. Lines that install packages or run the test suite
cannot run inside the test suite: they must appear verbatim in ``.ci/run``, which CI runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHARED = ROOT.parent / "shared"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
CI_ONLY = re.compile(r"\bpip install\b|\bpython -m pytest\b|^pytest\b")


def blocks(lang: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of each fenced block in ``lang``."""
    text = README.read_text(encoding="utf-8")
    return [(text[: m.start()].count("\n") + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == lang]


def shell_lines() -> list[tuple[int, str]]:
    out = []
    for start, code in blocks("bash"):
        for i, line in enumerate(code.splitlines()):
            cmd = strip_comment(line)
            if cmd:
                out.append((start + 1 + i, cmd))
    return out


def strip_comment(line: str) -> str:
    """The command without its trailing ``# comment`` (README commands put no ``#`` inside quotes)."""
    return re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    top = tmp_path_factory.mktemp("readme")
    (top / "work").mkdir()
    if SHARED.exists():
        (top / "shared").symlink_to(SHARED)
    return top / "work"


def run_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["SIMREC_CACHE_DIR"] = str(workdir.parent / "cache")  # as a user has it: the world cache on
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("SIMREC_LLM_BASE_URL", None)
    env.pop("OPENAI_BASE_URL", None)
    return env


def needs_shared(code: str) -> None:
    if "../shared" in code and not SHARED.exists():
        pytest.skip(f"MovieLens-100K is not at {SHARED}/datasets/ml-100k (its licence forbids shipping it)")


def test_readme_has_code() -> None:
    assert blocks("python") and shell_lines()


@pytest.mark.slow
@pytest.mark.parametrize("start,code", blocks("python"), ids=[f"line{n}" for n, _ in blocks("python")])
def test_python_block_runs(start: int, code: str, workdir: Path) -> None:
    needs_shared(code)
    if re.search(r"^import ray\b", code, re.M):  # run in the Ray venv by tests/test_rllib.py
        pytest.importorskip("ray", reason="needs the ray extra (README: Scale-out on RLlib)")
    r = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=run_env(workdir), capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, f"README.md python block at line {start} failed:\n{code}\n--- stderr:\n{r.stderr[-4000:]}"


SHELL = [(n, c) for n, c in shell_lines() if not CI_ONLY.search(c)]
CI = [(n, c) for n, c in shell_lines() if CI_ONLY.search(c)]


@pytest.mark.slow
@pytest.mark.parametrize("line,cmd", SHELL, ids=[c[:60] for _, c in SHELL])
def test_shell_line_runs(line: int, cmd: str, workdir: Path) -> None:
    """Lines run in README order in one directory, so ``simrec inspect runs/x`` reads what ``simrec run`` wrote."""
    needs_shared(cmd)
    r = subprocess.run(["bash", "-c", cmd], cwd=workdir, env=run_env(workdir), capture_output=True, text=True,
                       timeout=900, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"README.md line {line} failed: {cmd}\n--- stderr:\n{r.stderr[-4000:]}"


@pytest.mark.parametrize("line,cmd", CI, ids=[c[:60] for _, c in CI])
def test_install_and_test_lines_are_what_ci_runs(line: int, cmd: str) -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert cmd in [c.strip() for c in ci], f"README.md line {line} is not run verbatim by .ci/run: {cmd}"


def test_comment_stripping() -> None:
    assert strip_comment("simrec envs   # ids") == "simrec envs"
    assert strip_comment("# only a comment") == ""
    assert strip_comment('CMAKE_ARGS="-DX=ON" pip install -e ".[rl]"') == 'CMAKE_ARGS="-DX=ON" pip install -e ".[rl]"'
