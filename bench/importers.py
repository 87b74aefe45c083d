"""Benchmark of the Claude Code importer against ccusage 20.0.24 (three runs each; medians count):

    python -m bench.importers                  # the issue's sizes: a 1 GB corpus, 10,000 files
    python -m bench.importers --quick          # one short run on a 20 MB corpus (smoke test)
    TALLY_BENCH_CORPUS_MB=200 python -m bench.importers --corpus-mb 200

The corpus: ClaudeCorpus writes Claude Code transcripts under <corpus>/.claude/projects/
(`<project>/<session>.jsonl`, `<project>/<session>/subagents/agent-<id>.jsonl`) in the
shape /work/shared/agent-logs.md §2 gives: compact JSON lines; one line per content block
(thinking, text, tool_use) with the same message.id and requestId and a growing
output_tokens; user lines with a tool_result (and its toolUseResult copy) of varied size;
summary and file-history-snapshot lines without usage; subagent transcripts
(isSidechain) started by Task calls, half of them relayed as agent_progress lines in the
parent; 4 models over 4 days of November 2026. It is generated once per spec (size, seed,
the generator's source) and cached under $TMPDIR/tally-bench-importers-*; each run works
on a copy made of hard links, where the files it appends to are real copies.

first import: `tally import claude-code --path <corpus>/.claude --home H` into a fresh
home (`tally init` before it, not timed) against `ccusage claude daily --json --offline
-z UTC` with HOME=<corpus> and a clean environment (no CLAUDE_CONFIG_DIR), alternately
first, --runs rounds; wall seconds spawn to exit, CPU and peak RSS from os.wait4
(bench.common.run_child). Goal: tally <= 2x ccusage (median of the per-round ratios).
After each round `tally report --by day --format json` (not timed) must give every day
the token counts ccusage gave it; a difference is printed loudly (exit status 1).
incremental: on the last round's home, before each round a new turn (a prompt, a
streamed response with a tool call, its result) is appended to --appended transcripts;
then `tally import ...` plus `tally report --by day --format json` (two processes, wall
seconds summed) against ccusage over the whole corpus again. Goal: >= 10x faster.
tail: a home following a corpus of --tail-files small transcripts (`[[sources]]
kind = "claude-code"`, the shipped config otherwise) with `tally tail --quiet`; once
`tally sources` says nothing is unread (the catch-up time is printed), --runs rounds of:
CPU of the tailer and its children (utime + stime + cutime + cstime of the process tree,
/proc/PID/stat) over --window s of idle, in % of one core (goal <= 2 %); then one usage
line appended to an existing transcript and a new transcript (a new session of the same
project) holding one, each on a day of its own, and the seconds from the end of the
writes until a `tally report --by day` (run back to back) counts each (goal <= 2 s).
Beside it, the seconds until the checkpoint covers the new bytes (polled every 20 ms):
how much of the latency is the report's own run.

A shared 2-core machine: nothing is asserted. The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import log, precompile, run_child, settle_sizes, sized_parser

TALLY = str(Path(sys.executable).with_name("tally"))
CCUSAGE_VERSION = "20.0.24"
GOALS = {"first_ratio": 2.0, "incremental_speedup": 10.0, "idle_cpu_pct": 2.0,
         "latency_s": 2.0}
TOKEN_PAIRS = (("inputTokens", "input_tokens"), ("outputTokens", "output_tokens"),
               ("cacheCreationTokens", "cache_write_tokens"),
               ("cacheReadTokens", "cache_read_tokens"), ("totalTokens", "total_tokens"))
EXIT_DISAGREE, EXIT_FAILED = 1, 2


# ---------------------------------------------------------------- the corpus


@dataclass
class Context:
    """One transcript being written: the fields every line repeats, the clock, the model."""

    session_id: str
    cwd: str
    version: str
    branch: str
    model: str
    clock: float  # epoch seconds
    agent_id: str | None = None
    parent: str | None = None

    def fixed(self) -> str:
        """The fields after parentUuid, the same on every line of the transcript."""
        side = "true" if self.agent_id else "false"
        agent = f',"agentId":"{self.agent_id}"' if self.agent_id else ""
        return (f',"isSidechain":{side},"userType":"external","cwd":"{self.cwd}",'
                f'"sessionId":"{self.session_id}","version":"{self.version}",'
                f'"gitBranch":"{self.branch}"{agent}')


class ClaudeCorpus:
    """Deterministic Claude Code transcripts: the same seed and sizes give the same bytes.

    Everything the output depends on lives in this class, so a digest of its source keys
    the cache. Text comes from a pool of JSON-safe words (no quote, no backslash but the
    `\\n` escapes), sliced; ids and token counts are drawn from one random.Random.
    """

    MODELS = ("claude-sonnet-4-5-20250929", "claude-opus-4-1-20250805",
              "claude-opus-4-5-20251101", "claude-haiku-4-5-20251001")
    MAIN_WEIGHTS = (55, 12, 23, 10)
    VERSIONS = ("2.0.14", "2.0.31", "2.0.42", "2.0.55")
    BRANCHES = ("main", "main", "main", "feature/importers", "fix/flaky-ci", "dev")
    TOOLS = ("Bash", "Read", "Read", "Edit", "Grep", "Glob", "Bash", "Write", "TodoWrite")
    START = datetime(2026, 11, 16, tzinfo=UTC)
    DAYS = 4
    PROJECTS = 48
    WORDS = ("def", "return", "self", "import", "from", "class", "assert", "None", "True",
             "False", "async", "await", "for", "in", "if", "else", "raise", "with", "yield",
             "tests/test_cli.py::test_report", "PASSED", "FAILED", "src/pipeline/tailer.py",
             "0.42s", "=", "==", "(", ")", "[", "]", "{", "}", ":", ",", "+", "-", "*",
             "value", "result", "config", "home", "lines", "events", "offset", "batch",
             "tokens", "model", "usage", "session", "error:", "warning:", "ok", "1", "42",
             "1024", "3.14", "# comment", "TODO", "npm", "run", "build", "git", "diff",
             "--stat", "README.md", "Makefile", "the", "a", "to", "of", "and", "is", "it")
    ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

    def __init__(self, seed: int, small: bool = False) -> None:
        self.rng = random.Random(f"claude-corpus:{seed}:{small}")
        self.small = small
        rng = random.Random(f"claude-corpus-pool:{seed}")
        lines = (" ".join(rng.choices(self.WORDS, k=rng.randint(2, 14))) for _ in range(60_000))
        self.pool = "\\n".join(lines)
        self.b64 = "".join(rng.choices(self.ALNUM + "+/", k=8192))
        self.projects = [f"/home/dev/{rng.choice(('tally', 'web', 'infra', 'api', 'ml'))}-{k}"
                         for k in range(self.PROJECTS)]

    # ---- small pieces

    def ident(self, prefix: str, length: int) -> str:
        return prefix + "".join(self.rng.choices(self.ALNUM, k=length))

    def uuid(self) -> str:
        n = self.rng.getrandbits(128)
        h = f"{n:032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"

    def text(self, size: int) -> str:
        """About `size` characters of pool text, safe inside a JSON string."""
        size = max(1, min(size, len(self.pool) - 2))
        start = self.rng.randrange(len(self.pool) - size)
        found = self.pool[start:start + size]
        return found[:-1] if found.endswith("\\") else found

    def result_size(self) -> int:
        median, cap = (300, 4_000) if self.small else (1_400, 200_000)
        return min(cap, int(self.rng.lognormvariate(0, 1.5) * median) + 20)

    @staticmethod
    def stamp(clock: float) -> str:
        whole = int(clock)
        return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
                + f".{int((clock - whole) * 1000):03d}Z")

    def advance(self, ctx: Context, low: float, high: float) -> str:
        ctx.clock += self.rng.uniform(low, high)
        return self.stamp(ctx.clock)

    def head(self, ctx: Context) -> tuple[str, str]:
        """The start of a line (parentUuid and the fixed fields) and the line's own uuid."""
        parent = "null" if ctx.parent is None else f'"{ctx.parent}"'
        uid = self.uuid()
        ctx.parent = uid
        return f'{{"parentUuid":{parent}{ctx.fixed()}', uid

    # ---- lines

    def summary(self) -> str:
        return (f'{{"type":"summary","summary":"{self.text(60)}",'
                f'"leafUuid":"{self.uuid()}"}}')

    def snapshot(self, ctx: Context) -> str:
        mid, ts = self.uuid(), self.stamp(ctx.clock)
        backups = ",".join(
            f'"src/mod_{self.rng.randrange(400)}.py":{{"backupFileName":"'
            f'{self.ident("", 16).lower()}@v{v}","version":{v},"backupTime":"{ts}"}}'
            for v in range(1, self.rng.randint(1, 4)))
        return (f'{{"type":"file-history-snapshot","messageId":"{mid}","snapshot":'
                f'{{"messageId":"{mid}","trackedFileBackups":{{{backups}}},"timestamp":"{ts}"}},'
                f'"isSnapshotUpdate":false}}')

    def prompt(self, ctx: Context, words: int = 0) -> str:
        head, uid = self.head(ctx)
        ts = self.advance(ctx, 5, 240)
        body = self.text(words or self.rng.randint(20, 600))
        return (f'{head},"type":"user","message":{{"role":"user","content":"{body}"}},'
                f'"uuid":"{uid}","timestamp":"{ts}"}}')

    def tool_input(self, name: str) -> str:
        if name == "Bash":
            return (f'{{"command":"{self.text(self.rng.randint(10, 120))}",'
                    f'"description":"{self.text(30)}"}}')
        if name in ("Read", "Write"):
            extra = f',"content":"{self.text(self.rng.randint(200, 6000))}"' \
                if name == "Write" else ""
            return f'{{"file_path":"/home/dev/src/mod_{self.rng.randrange(400)}.py"{extra}}}'
        if name == "Edit":
            return (f'{{"file_path":"/home/dev/src/mod_{self.rng.randrange(400)}.py",'
                    f'"old_string":"{self.text(self.rng.randint(20, 800))}",'
                    f'"new_string":"{self.text(self.rng.randint(20, 1200))}"}}')
        if name in ("Grep", "Glob"):
            return f'{{"pattern":"{self.text(20)}","path":"/home/dev/src"}}'
        if name == "Task":
            return (f'{{"description":"{self.text(30)}","prompt":"{self.text(400)}",'
                    f'"subagent_type":"general-purpose"}}')
        items = ",".join(f'{{"content":"{self.text(40)}","status":"pending"}}'
                         for _ in range(self.rng.randint(1, 6)))
        return f'{{"todos":[{items}]}}'

    def usage(self, output: int, reads: int) -> tuple[str, int]:
        """message.usage with a final output_tokens of `output`, and its total."""
        inp = self.rng.randint(1, 60)
        write = self.rng.choice((0, 0, 0, self.rng.randint(100, 25_000)))
        hour = write if write and self.rng.random() < 0.15 else 0
        fixed = (f'{{"input_tokens":{inp},"cache_creation_input_tokens":{write},'
                 f'"cache_read_input_tokens":{reads},"cache_creation":{{'
                 f'"ephemeral_5m_input_tokens":{write - hour},'
                 f'"ephemeral_1h_input_tokens":{hour}}},"output_tokens":')
        return fixed, output

    def response(self, ctx: Context, blocks: list[str], reads: int) -> tuple[list[str], str]:
        """One API response as Claude Code logs it: a line per content block, the ids the
        same, output_tokens growing to its final value; and the message JSON of the last."""
        message_id, request_id = self.ident("msg_01", 22), self.ident("req_011C", 18)
        fixed, output = self.usage(self.rng.randint(8, 2_500), reads)
        lines, message = [], ""
        for k, block in enumerate(blocks):
            head, uid = self.head(ctx)
            ts = self.advance(ctx, 0.2, 4.0)
            grown = output if k == len(blocks) - 1 else max(1, output * (k + 1) // len(blocks))
            message = (f'{{"id":"{message_id}","type":"message","role":"assistant",'
                       f'"model":"{ctx.model}","content":[{block}],"stop_reason":null,'
                       f'"stop_sequence":null,"usage":{fixed}{grown},'
                       f'"service_tier":"standard"}}}}')
            lines.append(f'{head},"message":{message},"requestId":"{request_id}",'
                         f'"type":"assistant","uuid":"{uid}","timestamp":"{ts}"}}')
        return lines, message

    def tool_result(self, ctx: Context, call: str, body: str) -> str:
        head, uid = self.head(ctx)
        ts = self.advance(ctx, 0.5, 40)
        return (f'{head},"type":"user","message":{{"role":"user","content":[{{'
                f'"tool_use_id":"{call}","type":"tool_result","content":"{body}",'
                f'"is_error":false}}]}},"uuid":"{uid}","timestamp":"{ts}",'
                f'"toolUseResult":{{"stdout":"{body}","stderr":"","interrupted":false,'
                f'"isImage":false}}}}')

    def progress(self, ctx: Context, relayed: str, call: str, agent: str) -> str:
        """A parent's agent_progress line relaying one subagent line."""
        data = json.loads(relayed)
        inner = {k: data[k] for k in ("type", "message", "requestId", "uuid", "timestamp",
                                      "isSidechain")}
        head, uid = self.head(ctx)
        relay = json.dumps({"message": inner, "type": "agent_progress", "prompt": "",
                            "agentId": agent}, separators=(",", ":"))
        return (f'{head},"type":"progress","data":{relay},"toolUseID":"agent_msg_{call}",'
                f'"parentToolUseID":"{call}","uuid":"{uid}","timestamp":"{data["timestamp"]}"}}')

    # ---- transcripts

    def step(self, ctx: Context, out: list[str], reads: int, last: bool,
             subagents: list[tuple[Context, list[str]]] | None) -> int:
        """One response and the results of its tool calls; the cache reads it ends with."""
        rng, blocks, calls = self.rng, [], []
        if rng.random() < 0.3:
            blocks.append(f'{{"type":"thinking","thinking":"{self.text(rng.randint(80, 3000))}"'
                          f',"signature":"{self.b64[:rng.randint(200, 800)]}"}}')
        if last or rng.random() < 0.7:
            blocks.append(f'{{"type":"text","text":"{self.text(rng.randint(30, 1500))}"}}')
        if not last:
            for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
                name = "Task" if subagents is not None and rng.random() < 0.03 else \
                    rng.choice(self.TOOLS)
                call = self.ident("toolu_01", 22)
                calls.append((call, name))
                blocks.append(f'{{"type":"tool_use","id":"{call}","name":"{name}",'
                              f'"input":{self.tool_input(name)}}}')
        lines, _ = self.response(ctx, blocks, reads)
        out += lines
        for call, name in calls:
            if name == "Task" and subagents is not None:
                body = self.subagent(ctx, out, call, subagents)
            else:
                body = self.text(self.result_size())
            out.append(self.tool_result(ctx, call, body))
        return reads + rng.randint(200, 6_000)

    def subagent(self, parent: Context, out: list[str], call: str,
                 subagents: list[tuple[Context, list[str]]]) -> str:
        """A Task call's transcript (subagents/agent-<id>.jsonl); its final text."""
        agent = f"{self.rng.getrandbits(32):08x}"
        model = self.MODELS[3] if self.rng.random() < 0.6 else parent.model
        ctx = Context(parent.session_id, parent.cwd, parent.version, parent.branch, model,
                      parent.clock, agent)
        lines = [self.prompt(ctx, 400)]
        reads, relay = self.rng.randint(5_000, 20_000), self.rng.random() < 0.5
        steps = self.rng.randint(1, 3) if self.small else self.rng.randint(2, 10)
        for k in range(steps):
            first = len(lines)
            reads = self.step(ctx, lines, reads, k == steps - 1, None)
            if relay:
                for line in lines[first:]:
                    if '"type":"assistant"' in line:
                        out.append(self.progress(parent, line, call, agent))
        subagents.append((ctx, lines))
        parent.clock = max(parent.clock, ctx.clock)
        return self.text(self.rng.randint(200, 3000))

    def turn(self, ctx: Context, out: list[str], reads: int,
             subagents: list[tuple[Context, list[str]]] | None) -> int:
        """A prompt (after its file-history snapshot) and the responses until the answer."""
        if ctx.agent_id is None:
            out.append(self.snapshot(ctx))
        out.append(self.prompt(ctx))
        steps = self.rng.randint(1, 3) if self.small else \
            min(40, int(self.rng.lognormvariate(1.3, 0.8)) + 1)
        for k in range(steps):
            reads = self.step(ctx, out, reads, k == steps - 1, subagents)
        return reads

    def session(self) -> list[tuple[str, str]]:
        """One session's files: (path below projects/, text)."""
        rng = self.rng
        cwd = rng.choice(self.projects)
        ctx = Context(self.uuid(), cwd, rng.choice(self.VERSIONS), rng.choice(self.BRANCHES),
                      rng.choices(self.MODELS, self.MAIN_WEIGHTS)[0],
                      self.START.timestamp() + rng.uniform(0, self.DAYS * 86_400))
        out = [self.summary() for _ in range(rng.choice((0, 0, 0, 0, 0, 1, 2)))]
        subagents: list[tuple[Context, list[str]]] = []
        reads = rng.randint(8_000, 30_000)
        turns = 1 if self.small else min(30, int(rng.lognormvariate(0.4, 0.9)) + 1)
        for _ in range(turns):
            reads = self.turn(ctx, out, reads, subagents)
            ctx.clock += rng.uniform(60, 3_600)
        project = "".join(c if c.isalnum() else "-" for c in cwd)
        files = [(f"{project}/{ctx.session_id}.jsonl", "\n".join(out) + "\n")]
        files += [(f"{project}/{ctx.session_id}/subagents/agent-{sub.agent_id}.jsonl",
                   "\n".join(lines) + "\n") for sub, lines in subagents]
        return files


def generator_digest() -> str:
    """What the corpus depends on: the source of the classes that write it."""
    source = inspect.getsource(Context) + inspect.getsource(ClaudeCorpus)
    return hashlib.sha256(source.encode()).hexdigest()[:12]


def write_corpus(home: Path, *, seed: int, size_mb: float | None = None,
                 files: int | None = None, small: bool = False) -> dict[str, Any]:
    """Sessions under home/.claude/projects/ until `size_mb` MB or `files` files are written."""
    corpus = ClaudeCorpus(seed, small)
    projects = home / ".claude" / "projects"
    target = None if size_mb is None else int(size_mb * 2**20)
    written = count = sessions = 0
    made: set[Path] = set()
    began = time.perf_counter()
    while (target is not None and written < target) or (files is not None and count < files):
        for relative, body in corpus.session():
            path = projects / relative
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            data = body.encode()
            path.write_bytes(data)
            written += len(data)
            count += 1
        sessions += 1
        if sessions % 500 == 0:
            log(f"  {sessions:,} sessions, {count:,} files, {written / 2**20:,.0f} MB")
    return {"sessions": sessions, "files": count, "bytes": written,
            "generate_s": round(time.perf_counter() - began, 1)}


def cached_corpus(spec: dict[str, Any], where: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """A corpus home (holding .claude/) for `spec`, generated once and reused."""
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    root = where or Path(tempfile.gettempdir()) / f"tally-bench-importers-{key}"
    marker = root / "prepared.json"
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("spec") == spec:
            log(f"reusing the corpus generated in {root} on {done['prepared_at']}")
            return root / "corpus", {**done, "reused": True}
    shutil.rmtree(root, ignore_errors=True)
    log(f"generating {spec} into {root}")
    figures = write_corpus(root / "corpus", seed=spec["seed"], size_mb=spec.get("size_mb"),
                           files=spec.get("files"), small=spec["small"])
    done = {"spec": spec, "prepared_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **figures}
    marker.write_text(json.dumps(done))
    log(f"generated {figures['files']:,} files, {figures['bytes'] / 2**20:,.0f} MB "
        f"in {figures['generate_s']} s")
    return root / "corpus", {**done, "reused": False}


def transcripts(corpus: Path) -> list[Path]:
    """The main session files (not subagents), sorted."""
    return sorted((corpus / ".claude" / "projects").glob("*/*.jsonl"))


def work_copy(corpus: Path, target: Path, private: list[Path]) -> Path:
    """`corpus` as hard links under `target`, but for `private` files: real copies, so
    appending to them leaves the cached corpus as generated."""
    shutil.copytree(corpus, target, copy_function=os.link)
    for path in private:
        copy = target / path.relative_to(corpus)
        spare = copy.with_name(copy.name + ".copy")
        shutil.copyfile(path, spare)
        os.replace(spare, copy)
    return target


def context_of(path: Path, clock: float | None = None) -> Context:
    """A Context continuing a transcript, from its last line with a sessionId."""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - (1 << 20)))
        tail = handle.read().splitlines()
    for raw in reversed(tail):
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and "sessionId" in line and "uuid" in line:
            last = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()
            return Context(line["sessionId"], line["cwd"], line["version"], line["gitBranch"],
                           ClaudeCorpus.MODELS[0], last + 60 if clock is None else clock,
                           line.get("agentId"), line["uuid"])
    raise ValueError(f"no transcript line with a sessionId in {path}")


def append_turn(path: Path, seed: int) -> int:
    """A new turn (no subagent) at the end of a transcript; the bytes appended."""
    corpus = ClaudeCorpus(seed)
    ctx = context_of(path)
    lines: list[str] = []
    corpus.turn(ctx, lines, corpus.rng.randint(20_000, 90_000), None)
    data = ("\n".join(lines) + "\n").encode()
    with open(path, "ab") as handle:
        handle.write(data)
    return len(data)


def probe_line(ctx: Context, message_id: str, tokens: int) -> bytes:
    """One assistant usage line of `tokens` tokens (input 1, output the rest) at ctx.clock."""
    head = f'{{"parentUuid":{"null" if ctx.parent is None else chr(34) + ctx.parent + chr(34)}'
    ts = ClaudeCorpus.stamp(ctx.clock)
    return (f'{head}{ctx.fixed()},"message":{{"id":"{message_id}","type":"message",'
            f'"role":"assistant","model":"{ctx.model}","content":[{{"type":"text","text":"ok"}}],'
            f'"stop_reason":null,"stop_sequence":null,"usage":{{"input_tokens":1,'
            f'"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":'
            f'{tokens - 1},"service_tier":"standard"}}}},"requestId":"req_{message_id}",'
            f'"type":"assistant","uuid":"probe-{message_id}","timestamp":"{ts}"}}\n').encode()


# ---------------------------------------------------------------- the commands


def ccusage_launcher(given: str | None) -> str:
    """The ccusage launcher: --ccusage, else $TALLY_BENCH_CCUSAGE, else one installed with
    npm into $TMPDIR/tally-bench-ccusage-<version> on first use."""
    chosen = given or os.environ.get("TALLY_BENCH_CCUSAGE")
    if chosen:
        return chosen
    root = Path(tempfile.gettempdir()) / f"tally-bench-ccusage-{CCUSAGE_VERSION}"
    launcher = root / "node_modules" / ".bin" / "ccusage"
    manifest = root / "node_modules" / "ccusage" / "package.json"
    if not (launcher.exists() and manifest.is_file()
            and json.loads(manifest.read_text()).get("version") == CCUSAGE_VERSION):
        log(f"installing ccusage@{CCUSAGE_VERSION} into {root}")
        subprocess.run(["npm", "install", "--prefix", str(root), "--no-audit", "--no-fund",
                        "--loglevel=error", f"ccusage@{CCUSAGE_VERSION}"], check=True)
    return str(launcher)


def ccusage_command(launcher: str, corpus: Path) -> list[str]:
    """`ccusage claude daily` on the corpus, with a clean environment (HOME, PATH, LANG)."""
    return ["env", "-i", f"PATH={os.environ.get('PATH', '/usr/bin:/bin')}", f"HOME={corpus}",
            "LANG=C.UTF-8", "NO_COLOR=1", launcher, "claude", "daily", "--json", "--offline",
            "-z", "UTC"]


def import_command(corpus: Path, home: Path) -> list[str]:
    return [TALLY, "import", "claude-code", "--path", str(corpus / ".claude"),
            "--home", str(home)]


def report_command(home: Path, *extra: str) -> list[str]:
    return [TALLY, "report", "--by", "day", "--format", "json", "--home", str(home), *extra]


def init_home(home: Path) -> Path:
    subprocess.run([TALLY, "init", "--home", str(home)], check=True, capture_output=True)
    return home


def tally_days(rows: Any) -> dict[str, dict[str, int]]:
    """`tally report --by day --format json` rows as {day: {ccusage's key: tokens}}."""
    return {str(row["day"])[:10]: {cc: int(row.get(ours) or 0) for cc, ours in TOKEN_PAIRS}
            for row in rows}


def ccusage_days(output: Any) -> dict[str, dict[str, int]]:
    rows = output.get("daily", []) if isinstance(output, dict) else output
    return {row["date"]: {cc: int(row.get(cc) or 0) for cc, _ in TOKEN_PAIRS} for row in rows}


def compare(tally: dict[str, dict[str, int]], ccusage: dict[str, dict[str, int]]) -> list[str]:
    """The days whose token counts differ, one line each ([] when they all agree)."""
    differ = []
    for day in sorted(set(tally) | set(ccusage)):
        ours, theirs = tally.get(day), ccusage.get(day)
        if ours != theirs:
            delta = "" if ours is None or theirs is None else " (" + ", ".join(
                f"{k} {ours[k] - theirs[k]:+,}" for k in ours if ours[k] != theirs[k]) + ")"
            differ.append(f"{day}: tally {ours} ccusage {theirs}{delta}")
    return differ


def figures_of(run: dict[str, Any]) -> dict[str, float]:
    return {"seconds": round(run["seconds"], 3), "cpu": round(run["cpu"], 2),
            "rss_mb": round(run["rss_mb"], 1)}


def brief(error: object, limit: int = 400) -> str:
    """The start of an error's text (a Polars error goes on with its whole query plan)."""
    text = str(error).strip()
    return text if len(text) <= limit else text[:limit] + " [...]"


def say_disagreement(where: str, differ: list[str]) -> None:
    if differ:
        print(f"!!! TALLY AND CCUSAGE DISAGREE ({where}) on {len(differ)} days:", flush=True)
        for line in differ[:10]:
            print(f"!!!   {line}", flush=True)
    else:
        log(f"{where}: tally and ccusage agree on every day's tokens")


# ---------------------------------------------------------------- first import, incremental


def first_import(corpus: Path, scratch: Path, ccusage: str, runs: int) -> dict[str, Any]:
    """`tally import` into a fresh home against ccusage, alternately first; the last home kept."""
    out: dict[str, Any] = {"tally": [], "ccusage": [], "ratios": [], "agree": []}
    home = scratch / "home-first"
    for number in range(1, runs + 1):
        shutil.rmtree(home, ignore_errors=True)
        init_home(home)
        measured: dict[str, dict[str, Any]] = {}
        for side in ("tally", "ccusage") if number % 2 else ("ccusage", "tally"):
            command = import_command(corpus, home) if side == "tally" else \
                ccusage_command(ccusage, corpus)
            measured[side] = run_child(command)
        tally, cc = measured["tally"], measured["ccusage"]
        out["tally"].append(figures_of(tally))
        out["ccusage"].append(figures_of(cc))
        out["ratios"].append(round(tally["seconds"] / cc["seconds"], 3))
        said = tally["stdout"].strip().splitlines()
        out["summary"] = said[-1] if said else ""
        log(f"first import round {number}: tally {tally['seconds']:.2f} s ({tally['cpu']:.1f} "
            f"CPU s, {tally['rss_mb']:,.0f} MB), ccusage {cc['seconds']:.2f} s "
            f"({cc['cpu']:.1f} CPU s, {cc['rss_mb']:,.0f} MB): ratio {out['ratios'][-1]}; "
            f"tally said: {out['summary']}")
        if tally["stderr"].strip():
            log(f"  tally import stderr: {brief(tally['stderr'])}")
        try:  # the check is not timed: a report that fails leaves the figures standing
            report = run_child(report_command(home))
        except RuntimeError as exc:
            out["agree"].append(None)
            out["report_error"] = brief(exc, 2000)
            print(f"!!! first import, round {number}: tokens not compared, "
                  f"tally report failed: {brief(exc)}", flush=True)
            continue
        differ = compare(tally_days(json.loads(report["stdout"])),
                         ccusage_days(json.loads(cc["stdout"])))
        say_disagreement(f"first import, round {number}", differ)
        out["agree"].append(not differ)
        out["differ"] = differ[:10]
    out["home"] = str(home)
    return out


def incremental(corpus: Path, home: Path, targets: list[Path], ccusage: str,
                runs: int) -> dict[str, Any]:
    """Append a turn to each target, then `tally import` + `tally report` against ccusage."""
    out: dict[str, Any] = {"tally": [], "import": [], "report": [], "ccusage": [],
                           "speedups": [], "agree": [], "appended_bytes": []}
    for number in range(1, runs + 1):
        appended = sum(append_turn(path, 1000 * number + k) for k, path in enumerate(targets))
        out["appended_bytes"].append(appended)
        measured: dict[str, Any] = {}
        for side in ("tally", "ccusage") if number % 2 else ("ccusage", "tally"):
            if side == "tally":
                measured["import"] = run_child(import_command(corpus, home))
                measured["report"] = run_child(report_command(home))
            else:
                measured["ccusage"] = run_child(ccusage_command(ccusage, corpus))
        imported, report, cc = measured["import"], measured["report"], measured["ccusage"]
        total = imported["seconds"] + report["seconds"]
        out["tally"].append(round(total, 3))
        out["import"].append(figures_of(imported))
        out["report"].append(figures_of(report))
        out["ccusage"].append(figures_of(cc))
        out["speedups"].append(round(cc["seconds"] / total, 2))
        log(f"incremental round {number} ({len(targets)} transcripts, {appended:,} bytes "
            f"appended): tally import {imported['seconds']:.2f} s + report "
            f"{report['seconds']:.2f} s = {total:.2f} s; ccusage {cc['seconds']:.2f} s: "
            f"{out['speedups'][-1]}x; import said: {imported['stdout'].strip()[-200:]}")
        differ = compare(tally_days(json.loads(report["stdout"])),
                         ccusage_days(json.loads(cc["stdout"])))
        say_disagreement(f"incremental, round {number}", differ)
        out["agree"].append(not differ)
        out["differ"] = differ[:10]
    return out


# ---------------------------------------------------------------- the following tailer


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants, the reaped ones included (utime +
    stime + cutime + cstime of each live process of the tree)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for member in process_tree(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += sum(int(f) for f in fields[11:15]) / tick
    return total


def process_tree(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [p for c in (task / "children").read_text().split()
                      for p in process_tree(int(c))]
    return found


def caught_up(home: Path) -> dict[str, Any] | None:
    """The claude-code source of `tally sources`, if nothing of it is unread."""
    done = subprocess.run([TALLY, "sources", "--format", "json", "--home", str(home)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return None
    for row in json.loads(done.stdout):
        if row["kind"] == "claude-code" and row["configured"]:
            return row if row["unread_bytes"] == 0 and row["unread_files"] == 0 else None
    return None


def checkpoint_offsets(home: Path) -> dict[str, int]:
    try:
        body = json.loads((home / "state" / "checkpoint.json").read_bytes())
    except (OSError, ValueError):
        return {}
    return {state["path"]: state["offset"] for state in body.get("files", {}).values()}


def probe(home: Path, corpus: Path, existing: Path, number: int,
          timeout: float = 60.0) -> dict[str, Any]:
    """A usage line appended to `existing` and a new transcript with one: the seconds until
    the checkpoint covers each, and until `tally report --by day` counts each."""
    days = [datetime(2026, 10, 1 + 2 * number, 12, tzinfo=UTC),
            datetime(2026, 10, 2 + 2 * number, 12, tzinfo=UTC)]
    tokens = [1_000 + number, 2_000 + number]
    old = context_of(existing, days[0].timestamp())
    new_session = f"{number:08x}-0000-4000-8000-{os.getpid():012x}"
    fresh = existing.with_name(f"{new_session}.jsonl")  # a new session of the same project
    new = Context(new_session, old.cwd, old.version, old.branch, ClaudeCorpus.MODELS[0],
                  days[1].timestamp())
    lines = [probe_line(old, f"msg_probe_old_{number}_{os.getpid()}", tokens[0]),
             probe_line(new, f"msg_probe_new_{number}_{os.getpid()}", tokens[1])]
    ends = [existing.stat().st_size + len(lines[0]), len(lines[1])]
    staged: list[float | None] = [None, None]
    stop = threading.Event()

    def watch() -> None:  # the checkpoint, every 20 ms
        while not stop.wait(0.02):
            offsets = checkpoint_offsets(home)
            for k, path in enumerate((existing, fresh)):
                if staged[k] is None and offsets.get(str(path), 0) >= ends[k]:
                    staged[k] = time.monotonic() - written
            if None not in staged:
                return

    with open(existing, "ab") as handle:
        handle.write(lines[0])
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, lines[1])
    os.close(fd)
    written = time.monotonic()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    wanted = [d.date().isoformat() for d in days]
    seen: list[float | None] = [None, None]
    reports = []
    try:
        while None in seen and time.monotonic() - written < timeout:
            began = time.monotonic()
            done = subprocess.run(report_command(home, "--since", wanted[0], "--until",
                                                 wanted[1]), capture_output=True, text=True)
            now = time.monotonic()
            reports.append(now - began)
            if done.returncode != 0:
                raise RuntimeError(f"tally report failed ({done.returncode}): "
                                   f"{brief(done.stderr, 2000)}")
            counted = tally_days(json.loads(done.stdout))
            for k, day in enumerate(wanted):
                if seen[k] is None and counted.get(day, {}).get("totalTokens") == tokens[k]:
                    seen[k] = now - written
    finally:
        stop.set()
        watcher.join()
    result = {"existing_s": seen[0], "new_file_s": seen[1], "existing_staged_s": staged[0],
              "new_file_staged_s": staged[1],
              "report_run_s": round(statistics.median(reports), 3) if reports else None}
    log(f"latency probe {number}: counted by tally report after {_secs(seen[0])} (append) and "
        f"{_secs(seen[1])} (new file); in the checkpoint after {_secs(staged[0])} / "
        f"{_secs(staged[1])}; a report run takes {result['report_run_s']} s")
    return result


def _secs(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def following(corpus: Path, scratch: Path, runs: int, settle: float, window: float,
              catch_up_timeout: float) -> dict[str, Any]:
    """A `tally tail` following the corpus: catch-up, then idle CPU and latency rounds."""
    home = init_home(scratch / "home-tail")
    with open(home / "config.toml", "a", encoding="utf-8") as config:
        config.write(f'\n[[sources]]\nkind = "claude-code"\npath = "{corpus / ".claude"}"\n')
    existing = transcripts(corpus)[0]
    errors = scratch / "tail.err"
    with open(errors, "wb") as handle:
        tailer = subprocess.Popen([TALLY, "tail", "--quiet", "--home", str(home)],
                                  stdout=subprocess.DEVNULL, stderr=handle)
    out: dict[str, Any] = {"idle_cpu_pct": [], "probes": []}
    try:
        began = time.monotonic()
        row = None
        while row is None:
            if tailer.poll() is not None:
                raise RuntimeError(f"tally tail exited {tailer.returncode}: "
                                   f"{brief(errors.read_text(errors='replace'), 2000)}")
            if time.monotonic() - began > catch_up_timeout:
                raise RuntimeError(f"tally tail had not caught up after {catch_up_timeout:g} s")
            time.sleep(2.0)
            row = caught_up(home)
        out["catch_up_s"] = round(time.monotonic() - began, 1)
        out["files"], out["bytes"] = row["files"], row["bytes"]
        log(f"tally tail caught up on {row['files']:,} files ({row['bytes'] / 2**20:,.0f} MB) "
            f"within {out['catch_up_s']} s (polled every 2 s)")
        time.sleep(settle)
        for number in range(1, runs + 1):
            before, start = tree_cpu(tailer.pid), time.monotonic()
            time.sleep(window)
            used, wall = tree_cpu(tailer.pid) - before, time.monotonic() - start
            out["idle_cpu_pct"].append(round(used / wall * 100, 3))
            log(f"idle window {number}: {used:.2f} CPU s over {wall:.0f} s = "
                f"{out['idle_cpu_pct'][-1]} % of a core "
                f"({len(process_tree(tailer.pid))} processes)")
            try:
                out["probes"].append(probe(home, corpus, existing, number))
            except RuntimeError as exc:
                out["probes"].append({"error": brief(exc, 2000)})
                print(f"!!! latency probe {number} failed: {brief(exc)}", flush=True)
            time.sleep(settle)
    finally:
        tailer.terminate()
        try:
            tailer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            tailer.kill()
            tailer.wait()
    said = errors.read_text(errors="replace").strip()
    if said:
        log(f"tally tail said: {brief(said, 1000)}")
    return out


# ---------------------------------------------------------------- main


# Option: (full, --quick) defaults.
SIZES = {"runs": (3, 1), "corpus_mb": (1024.0, 20.0), "tail_files": (10_000, 300),
         "appended": (5, 5), "window": (60.0, 5.0), "settle": (5.0, 2.0)}


def median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return round(statistics.median(got), 3) if got else None


def rows_of(figures: dict[str, Any]) -> list[tuple[str, float | None, list[Any], str, str]]:
    """(label, median, runs, unit, goal) for the table."""
    rows: list[tuple[str, float | None, list[Any], str, str]] = []
    first, inc, tail = (figures.get(k) or {} for k in ("first", "incremental", "tail"))
    if first.get("ratios"):
        secs = [r["seconds"] for r in first["tally"]]
        cc = [r["seconds"] for r in first["ccusage"]]
        rows += [("first import: tally import", median(secs), secs, "s", ""),
                 ("first import: ccusage claude daily", median(cc), cc, "s", ""),
                 ("first import: tally / ccusage", median(first["ratios"]), first["ratios"],
                  "x", f"<= {GOALS['first_ratio']:g}"),
                 ("  tally import CPU", median([r["cpu"] for r in first["tally"]]),
                  [r["cpu"] for r in first["tally"]], "s", ""),
                 ("  tally import peak RSS", median([r["rss_mb"] for r in first["tally"]]),
                  [r["rss_mb"] for r in first["tally"]], "MB", "")]
    if inc.get("speedups"):
        cc = [r["seconds"] for r in inc["ccusage"]]
        rows += [("incremental: tally import + report", median(inc["tally"]), inc["tally"],
                  "s", ""),
                 ("  of which import", median([r["seconds"] for r in inc["import"]]),
                  [r["seconds"] for r in inc["import"]], "s", ""),
                 ("  of which report", median([r["seconds"] for r in inc["report"]]),
                  [r["seconds"] for r in inc["report"]], "s", ""),
                 ("incremental: ccusage claude daily", median(cc), cc, "s", ""),
                 ("incremental: ccusage / tally", median(inc["speedups"]), inc["speedups"],
                  "x", f">= {GOALS['incremental_speedup']:g}")]
    if tail.get("idle_cpu_pct"):
        probes = tail["probes"]
        rows += [(f"tail: idle CPU, {tail['files']:,} files", median(tail["idle_cpu_pct"]),
                  tail["idle_cpu_pct"], "%", f"<= {GOALS['idle_cpu_pct']:g}")]
        for key, label, goal in (
                ("existing_s", "tail: append -> counted by report", f"<= {GOALS['latency_s']:g}"),
                ("new_file_s", "tail: new file -> counted by report",
                 f"<= {GOALS['latency_s']:g}"),
                ("existing_staged_s", "  append -> in the checkpoint", ""),
                ("new_file_staged_s", "  new file -> in the checkpoint", ""),
                ("report_run_s", "  one tally report run", "")):
            values = [None if p.get(key) is None else round(p[key], 3) for p in probes]
            rows.append((label, median(values), values, "s", goal))
    return rows


def verdict(value: float | None, goal: str, runs: list[Any]) -> str:
    if not goal:
        return ""
    if value is None or None in runs:
        return f"{goal}: NOT MET (not measured in every run)" if runs else f"{goal}: -"
    op, bound = goal.split()
    met = value <= float(bound) if op == "<=" else value >= float(bound)
    return f"{goal}: {'met' if met else 'NOT MET'}"


def print_table(figures: dict[str, Any]) -> None:
    print(f"{'measure':<42} {'median':>11}   {'runs':<30} goal")
    for label, value, runs, unit, goal in rows_of(figures):
        shown = "-" if value is None else f"{value:g} {unit}"
        each = ", ".join("-" if r is None else f"{r:g}" for r in runs)
        print(f"{label:<42} {shown:>11}   {'[' + each + ']':<30} {verdict(value, goal, runs)}")
    for part in ("first", "incremental"):
        agree = (figures.get(part) or {}).get("agree")
        if agree:
            checked = [a for a in agree if a is not None]
            print(f"{part}: tokens per day equal to ccusage's in {sum(checked)} of "
                  f"{len(agree)} runs" + (f" ({len(agree) - len(checked)} not compared)"
                                          if len(checked) < len(agree) else "")
                  + ("" if all(checked) else "  <-- !!! MISMATCH"))
    for part, failure in figures["failures"].items():
        print(f"!!! {part} FAILED: {brief(failure)}")
    corpus = figures["corpus"]
    print(f"corpus: {corpus['files']:,} files, {corpus['bytes'] / 2**20:,.0f} MB, "
          f"{corpus['sessions']:,} sessions; tail corpus: {figures['tail_corpus']['files']:,} "
          f"files, {figures['tail_corpus']['bytes'] / 2**20:,.0f} MB")
    print("reproduce: " + " ".join([".venv/bin/python -m bench.importers", *figures["argv"]]))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = sized_parser("python -m bench.importers", __doc__, SIZES)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ccusage", default=None,
                        help="the ccusage launcher [default: $TALLY_BENCH_CCUSAGE, else "
                             f"ccusage@{CCUSAGE_VERSION} installed with npm under $TMPDIR]")
    parser.add_argument("--catch-up-timeout", type=float, default=1800.0,
                        help="seconds the tailer may take to catch up")
    parser.add_argument("--skip", action="append", default=[],
                        choices=("first", "incremental", "tail"), help="leave a part out")
    args = parser.parse_args(argv)
    env = os.environ.get("TALLY_BENCH_CORPUS_MB")
    if args.corpus_mb is None and env:
        args.corpus_mb = float(env)
    return settle_sizes(args, SIZES)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    from bench.report import tally_source

    package, digest = tally_source()
    log(f"tally: {TALLY}, package {package} (source {digest})")
    precompile(package)
    ccusage = ccusage_launcher(args.ccusage)
    log(f"ccusage: {ccusage}")
    generator = generator_digest()
    corpus, prepared = cached_corpus({"size_mb": args.corpus_mb, "seed": args.seed,
                                      "small": False, "generator": generator})
    tail_corpus, tail_prepared = cached_corpus({"files": args.tail_files, "seed": args.seed,
                                                "small": True, "generator": generator})
    scratch = Path(tempfile.mkdtemp(prefix="tally-bench-importers-run-"))
    figures: dict[str, Any] = {
        "argv": sys.argv[1:] if argv is None else argv, "cpus": os.cpu_count(),
        "tally_package": package, "tally_source": digest, "ccusage": ccusage,
        **{name: getattr(args, name) for name in SIZES}, "goals": GOALS,
        "corpus": {k: prepared[k] for k in ("files", "bytes", "sessions", "prepared_at")},
        "tail_corpus": {k: tail_prepared[k] for k in ("files", "bytes", "sessions")},
        "failures": {}}
    try:
        pick = random.Random(args.seed).sample(transcripts(corpus), args.appended)
        work = work_copy(corpus, scratch / "corpus", pick)
        targets = [work / p.relative_to(corpus) for p in pick]
        first: dict[str, Any] | None = None
        if "first" not in args.skip or "incremental" not in args.skip:
            try:
                first = first_import(work, scratch, ccusage, args.runs)
                figures["first"] = first
                if first.get("report_error"):
                    figures["failures"]["tally report after the first import"] = \
                        first["report_error"]
            except (RuntimeError, ValueError) as exc:
                figures["failures"]["first import"] = brief(exc, 2000)
                print(f"!!! first import failed: {brief(exc)}", flush=True)
        if "incremental" not in args.skip and first is not None:
            try:
                figures["incremental"] = incremental(work, Path(first["home"]), targets,
                                                     ccusage, args.runs)
            except (RuntimeError, ValueError) as exc:
                figures["failures"]["incremental"] = brief(exc, 2000)
                print(f"!!! incremental failed: {brief(exc)}", flush=True)
        shutil.rmtree(scratch / "home-first", ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        if "tail" not in args.skip:
            tail_work = work_copy(tail_corpus, scratch / "tail-corpus",
                                  transcripts(tail_corpus)[:1])
            try:
                figures["tail"] = following(tail_work, scratch, args.runs, args.settle,
                                            args.window, args.catch_up_timeout)
                for number, said in enumerate(figures["tail"]["probes"], 1):
                    if "error" in said:
                        figures["failures"][f"latency probe {number}"] = said["error"]
            except (RuntimeError, ValueError) as exc:
                figures["failures"]["tail"] = brief(exc, 2000)
                print(f"!!! tail failed: {brief(exc)}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_table(figures)
    print(json.dumps(figures))
    if figures["failures"]:
        return EXIT_FAILED
    agree = [a for part in ("first", "incremental") for a in (figures.get(part) or {})
             .get("agree", [])]
    return 0 if all(a is not False for a in agree) else EXIT_DISAGREE


if __name__ == "__main__":
    sys.exit(main())
