"""Every producer snippet in docs/producers.md ("Writing events from any language") works.

Each fenced block tagged bash, python, javascript, go or rust is extracted, written to a
temporary directory and run (twice, to show it appends) with TALLY_HOME pointing at a
fresh home. The lines it leaves in logs/ must pass the same validator as the tailer.
Toolchains that are not installed (go, rustc, node) skip their snippets.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.events import Event, Validator

REPO = Path(__file__).resolve().parent.parent
PRODUCERS = REPO / "docs" / "producers.md"
LANGUAGES = ("bash", "python", "javascript", "go", "rust")
FENCE = re.compile(r"^```([a-z]+)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
MAX_SNIPPET_LINES = 36  # short enough to read at a glance (Rust needs its own calendar)
SHARED_FILE_LINE_LIMIT = 4096
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


@dataclass(frozen=True)
class Snippet:
    language: str
    index: int  # 1-based among the snippets of its language
    code: str

    @property
    def id(self) -> str:
        return f"{self.language}-{self.index}"


def snippets() -> list[Snippet]:
    found: list[Snippet] = []
    counts: dict[str, int] = {}
    for match in FENCE.finditer(PRODUCERS.read_text(encoding="utf-8")):
        language, code = match.group(1), match.group(2)
        if language in LANGUAGES:
            counts[language] = counts.get(language, 0) + 1
            found.append(Snippet(language, counts[language], code))
    return found


SNIPPETS = snippets()


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator()


def which(tool: str) -> str | None:
    """A tool on PATH, or in the per-user install directories that PATH may lack."""
    found = shutil.which(tool)
    if found:
        return found
    for directory in (Path.home() / ".cargo" / "bin", Path.home() / "go" / "bin",
                      Path("/usr/local/go/bin"), Path("/usr/lib/go/bin")):
        candidate = directory / tool
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def tool_or_skip(tool: str, why: str) -> str:
    found = which(tool)
    if found is None:
        pytest.skip(f"{tool} is not installed (not on PATH): {why}")
    return found


def environment(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["TALLY_HOME"] = str(home)
    # The venv's bin first so `tally` is this checkout's; PYTHONPATH so `pipeline` imports.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> None:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, (
        f"{' '.join(argv)} exited {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")


def prepare(snippet: Snippet, work: Path, env: dict[str, str]) -> Callable[[], None]:
    """Write the snippet to `work`, compile it if needed; return a function that runs it."""
    if snippet.language == "bash":
        bash = tool_or_skip("bash", "the shell snippets need bash")
        script = work / "snippet.sh"
        script.write_text(snippet.code, encoding="utf-8")
        if re.search(r"^tally ", snippet.code, re.MULTILINE) and not shutil.which(
                "tally", path=env["PATH"]):
            pytest.skip("the `tally` console script is not installed next to this Python")
        return lambda: run([bash, str(script)], work, env)
    if snippet.language == "python":
        script = work / "snippet.py"
        script.write_text(snippet.code, encoding="utf-8")
        return lambda: run([sys.executable, str(script)], work, env)
    if snippet.language == "javascript":
        node = tool_or_skip("node", "the Node snippet needs node")
        script = work / "snippet.js"
        script.write_text(snippet.code, encoding="utf-8")
        return lambda: run([node, str(script)], work, env)
    if snippet.language == "go":
        go = tool_or_skip("go", "the Go snippet needs the go toolchain")
        source, binary = work / "main.go", work / "snippet-go"
        source.write_text(snippet.code, encoding="utf-8")
        # `go build` + run is `go run` without compiling twice for the two runs.
        run([go, "build", "-o", str(binary), str(source)], work, env, timeout=300)
        return lambda: run([str(binary)], work, env)
    if snippet.language == "rust":
        rustc = tool_or_skip("rustc", "the Rust snippet needs rustc")
        source, binary = work / "main.rs", work / "snippet-rs"
        source.write_text(snippet.code, encoding="utf-8")
        run([rustc, "--edition", "2021", "-o", str(binary), str(source)], work, env,
            timeout=300)
        return lambda: run([str(binary)], work, env)
    raise AssertionError(f"no runner for {snippet.language}")


def logged_lines(home: Path) -> list[bytes]:
    files = sorted((home / "logs").rglob("*.jsonl"))
    assert [f.name for f in files] == ["claude.jsonl"], f"expected logs/claude.jsonl: {files}"
    data = files[0].read_bytes()
    assert data.endswith(b"\n"), f"{files[0]} does not end with a newline: {data[-80:]!r}"
    return data[:-1].split(b"\n")


def check_line(validator: Validator, line: bytes, *, shared_file: bool = False) -> Event:
    result = validator.validate(line)
    assert isinstance(result, Event), f"{result.describe()}\nline: {line!r}"
    data = result.data
    assert data["event_type"] == "agent_token_usage"
    assert data["agent"] == "claude"
    assert data["model"] == "claude-sonnet-4-5"
    assert data.get("event_id"), f"no event_id in {line!r}"
    assert {name: data[name] for name in TOKEN_FIELDS} == {
        "input_tokens": 5000, "output_tokens": 1200,
        "cache_read_tokens": 3000, "cache_write_tokens": 800}
    if shared_file:
        assert len(line) + 1 < SHARED_FILE_LINE_LIMIT
    return result


def test_every_language_has_a_snippet() -> None:
    assert {s.language for s in SNIPPETS} == set(LANGUAGES)


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.id for s in SNIPPETS])
def test_snippet_is_short(snippet: Snippet) -> None:
    lines = snippet.code.count("\n")
    assert lines <= MAX_SNIPPET_LINES, f"{snippet.id} has {lines} lines"


def _params() -> list[object]:
    params: list[object] = []
    for snippet in SNIPPETS:
        # rustc builds the snippet in about 2 s; a cold Go build cache compiles the standard
        # library first (Go >= 1.20 ships it as source), which takes well over 5 s.
        marks = [pytest.mark.slow] if snippet.language == "go" else []
        params.append(pytest.param(snippet, id=snippet.id, marks=marks))
    return params


@pytest.mark.parametrize("snippet", _params())
def test_snippet_appends_valid_events(snippet: Snippet, tmp_path: Path,
                                      validator: Validator) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    env = environment(home)
    run_once = prepare(snippet, work, env)

    run_once()
    run_once()  # a second run appends; it neither truncates nor rewrites the first line

    lines = logged_lines(home)
    assert len(lines) == 2, lines
    events = [check_line(validator, line, shared_file=True) for line in lines]
    first, second = (event.data for event in events)
    assert first["event_id"] != second["event_id"], "event ids must be unique"


def test_concurrent_shell_appends_stay_whole(tmp_path: Path, validator: Validator) -> None:
    """Many processes appending to one shared file leave whole lines only."""
    snippet = next(s for s in SNIPPETS if s.language == "bash" and "printf" in s.code)
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    env = environment(home)
    run_once = prepare(snippet, work, env)
    writers = 24
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(run_once) for _ in range(writers)]:
            future.result()
    assert time.monotonic() - started < 60
    lines = logged_lines(home)
    assert len(lines) == writers
    ids = {check_line(validator, line, shared_file=True).data["event_id"] for line in lines}
    assert len(ids) == writers

