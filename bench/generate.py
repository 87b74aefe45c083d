"""Deterministic generator of realistic tally event logs, for tests and benchmarks.

    python -m bench.generate --lines 1000000 --seed 1 out.jsonl
    python -m bench.generate --lines 1000000 --seed 1 --files 8 out_dir/

The same arguments always give byte-identical files: everything is drawn from
`random.Random` instances with fixed string seeds (--seed, file index, model). Lines are
built with f-strings, the token counters of usage lines come from per-model pools drawn
once, and output is written in big chunks, so one core makes 300k+ lines per second.
"""

from __future__ import annotations

import argparse
import functools
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

DEFAULT_START = datetime(2025, 8, 1, tzinfo=UTC)
DAY_MS = 86_400_000
CHUNK_LINES = 16_384
POOL_SIZE = 4096  # token-count combinations per (model, reports cost); a line draws one

AGENT_NAMES = [
    "claude", "gemini", "codex", "cursor", "aider", "copilot", "devin", "cline", "goose",
    "amp", "opencode", "windsurf", "roo", "continue", "qwen", "kimi", "grok", "jules",
    "yolo-dev", "openhands",
]
ROLES = ["dev", "dev", "dev", "lead", "qa", "architect", "reviewer", "data"]
PHASE_LABELS = ["planning", "review", "hotfix"]
TOOLS = ["Read", "Edit", "Bash", "Grep", "shell", "apply_patch", "read_file",
         "run_shell_command", "web_search", "compile_context"]
METRICS = ["test_run", "lint", "eval_run", "latency"]
# USD per million tokens (input, output, cache read, cache write), only for the cost_usd
# some producers report themselves; tally's own pricing table lives in the package.
MODELS: dict[str, tuple[float, float, float, float]] = {
    "claude-sonnet-4-5-20250929": (3.0, 15.0, 0.30, 3.75),
    "claude-opus-4-1": (15.0, 75.0, 1.50, 18.75),
    "claude-3-5-haiku": (0.80, 4.0, 0.08, 1.0),
    "gpt-5": (1.25, 10.0, 0.125, 0.0),
    "gpt-4.1": (2.0, 8.0, 0.50, 0.0),
    "o3": (2.0, 8.0, 0.50, 0.0),
    "gemini-2.5-pro": (1.25, 10.0, 0.31, 0.0),
    "gemini-2.5-flash": (0.30, 2.50, 0.075, 0.0),
    "local-llama-3-8b": (0.0, 0.0, 0.0, 0.0),  # unpriced: its lines never carry cost_usd
}
REASONING_MODELS = {"gpt-5", "o3", "gemini-2.5-pro"}
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Maps every byte to one base-32 character; 256 is a multiple of 32, so it stays uniform.
RANDOM_TO_BASE32 = bytes(ord(CROCKFORD[b & 31]) for b in range(256))

# Event type of a line from 10 random bits: cumulative thresholds out of 1024.
NO_EVENT_ID_BELOW = 8     # ~0.8 % usage lines without event_id (the tailer derives one)
USAGE_BELOW = 870         # 85 % agent_token_usage
PROGRESS_BELOW = 922      # 5 % task_progress
TOOL_BELOW = 974          # 5 % tool_call
CONTEXT_BELOW = 1004      # 3 % context_compiled; the remaining 2 % metric


@functools.cache
def _clock_table() -> list[str]:
    """'HH:MM:SS' for every second of a day; a lookup beats formatting per line."""
    sixty = [f"{v:02d}" for v in range(60)]
    return [f"{h:02d}:{m}:{s}" for h in range(24) for m in sixty for s in sixty]


@functools.cache
def _millis_table() -> list[str]:
    return [f".{ms:03d}Z" for ms in range(1000)]


@functools.cache
def _base32_pairs() -> list[str]:
    """Two Crockford characters for each 10-bit value, for the low end of a ULID's time."""
    return [CROCKFORD[v >> 5] + CROCKFORD[v & 31] for v in range(1024)]


def _base32(value: int, width: int) -> str:
    return "".join(CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(width)))


@functools.cache
def usage_pool(model: str, costed: bool) -> list[tuple[str, int, int]]:
    """Token fields of usage lines for one model: (JSON fragment, prompt, completion)."""
    # Independent of the seed, so a process builds each pool once; the seed picks from it.
    rng = random.Random(f"tally-bench-pool:{model}:{costed}")
    p_in, p_out, p_read, p_write = MODELS[model]
    costed = costed and any(MODELS[model])
    bits = rng.getrandbits
    pool = []
    for _ in range(POOL_SIZE):
        # Products of uniforms give the long tail real token counts have.
        inp = bits(10) * bits(5) + 12
        out = bits(7) * bits(5) + 1
        read = bits(14) * bits(4) if bits(2) else 0
        write = bits(11) * bits(3) if bits(2) == 0 else 0
        text = (f'"input_tokens":{inp},"output_tokens":{out},'
                f'"cache_read_tokens":{read},"cache_write_tokens":{write}')
        if model in REASONING_MODELS:
            text += f',"reasoning_tokens":{out * (1 + bits(1)) // 3}'
        if costed:
            usd = (inp * p_in + out * p_out + read * p_read + write * p_write) / 1e6
            text += f',"cost_usd":{usd:.6f}'
        pool.append((text + "}", inp + read + write, out))
    return pool


@functools.cache
def tool_call_pool() -> list[str]:
    """Type-specific fields of tool_call lines."""
    bits = random.Random("tally-bench-tools").getrandbits
    return [f'"tool":"{TOOLS[bits(8) % len(TOOLS)]}","duration_ms":{bits(6) * bits(7)},'
            f'"output_length":{bits(8) * bits(8)},"ok":{"false" if bits(4) == 0 else "true"}}}'
            for _ in range(POOL_SIZE)]


@functools.cache
def metric_pool() -> list[str]:
    """Type-specific fields of metric lines: a name and a flat object of scalars."""
    bits = random.Random("tally-bench-metrics").getrandbits
    return [f'"name":"{METRICS[bits(2)]}","data":{{"value":{bits(16)},'
            f'"p95_ms":{bits(10)}.5,"ok":{"true" if bits(3) else "false"},"note":null}}}}'
            for _ in range(POOL_SIZE)]


@dataclass
class Agent:
    """One producer: its name, the roles and models it uses, and its current work."""

    name: str
    roles: list[str]
    models: list[str]
    reports_cost: bool
    session: str = ""
    task: str = ""
    tasks_started: int = 0
    task_tokens: list[int] = field(default_factory=lambda: [0, 0, 0])  # prompt, completion, %
    prefixes: dict[str, tuple[str, int]] = field(default_factory=dict)


def pick_agents(seed: int, count: int | None = None) -> list[Agent]:
    """The fleet of a seed: 8 to 20 agents unless a count is given."""
    rng = random.Random(f"tally-bench-agents:{seed}")
    count = count or rng.randint(8, 20)
    names = rng.sample(AGENT_NAMES, min(count, len(AGENT_NAMES)))
    names += [f"agent-{i:02d}" for i in range(len(names), count)]
    return [Agent(name, rng.sample(ROLES, rng.randint(1, 3)),
                  rng.sample(list(MODELS), rng.randint(1, 3)), rng.random() < 0.4)
            for name in names]


def _file_agents(agents: list[Agent], file_index: int, files: int) -> list[Agent]:
    """The agents writing one file: a share of the fleet, or one agent if files outnumber them."""
    share = agents[file_index::files]
    return share or [agents[file_index % len(agents)]]


def _lines_in_file(n: int, file_index: int, files: int) -> int:
    return n // files + (1 if file_index < n % files else 0)


class _FileWriter:
    """Builds the lines of one file: `chunks` is the hot loop, the rest runs once per burst."""

    def __init__(self, n: int, seed: int, agents: list[Agent], start: datetime, days: int,
                 invalid_ratio: float, file_index: int) -> None:
        self.n = n
        self.rng = random.Random(f"tally-bench:{seed}:{file_index}")
        self.agents = agents
        midnight = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        self.epoch_ms = int(midnight.timestamp() * 1000)
        self.first_ms = int((start - midnight).total_seconds() * 1000)
        # Steps are random around the mean, so the log may run past `days`; leave room.
        self.dates = [(midnight + timedelta(days=d)).strftime("%Y-%m-%dT")
                      for d in range(days * 3 // 2 + 3)]
        self.step_ms = max(days * DAY_MS // max(n, 1), 2)
        self.invalid_ratio = invalid_ratio
        self.agent = agents[0]
        self.envelope = self.envelope_model = self.role = self.model = ""
        self.pool: list[tuple[str, int, int]] = []
        self.tools, self.metrics = tool_call_pool(), metric_pool()

    def chunks(self) -> Iterator[list[str]]:
        """Lists of at most CHUNK_LINES lines (without newlines), ts strictly ascending."""
        # One long loop on purpose: local names, one 32-bit draw and one f-string per usage
        # line are what make 300k+ lines/s possible in CPython. Rare types call methods.
        getrandbits, random_unit = self.rng.getrandbits, self.rng.random
        clock, millis, pairs, dates = _clock_table(), _millis_table(), _base32_pairs(), self.dates
        invalid_ratio, step = self.invalid_ratio, self.step_ms
        low, spread = step - step // 2, step  # a step is uniform in [step/2, 3*step/2)
        offset = self.first_ms  # milliseconds since the first day's midnight
        ulid_top, ulid_top_key, epoch_ms = "", -1, self.epoch_ms
        burst_left = prompt = completion = day_start = day_end = 0
        envelope = today = ""
        pool = self.pool
        for chunk_start in range(0, self.n, CHUNK_LINES):
            size = min(CHUNK_LINES, self.n - chunk_start)
            # One random block per chunk; each event_id takes 16 base-32 characters of it.
            noise = self.rng.randbytes(16 * size).translate(RANDOM_TO_BASE32).decode("ascii")
            lines: list[str] = []
            append = lines.append
            for j in range(size):
                if burst_left == 0:
                    self._add_task_tokens(prompt, completion)
                    prompt = completion = 0
                    burst_left = self._new_burst(offset)
                    envelope, pool = self.envelope_model, self.pool
                burst_left -= 1
                q = getrandbits(32)
                offset += low + ((q & 1023) * spread >> 10)
                second, ms = divmod(offset, 1000)
                if second >= day_end:  # cheaper than dividing by 86400 on every line
                    day_start = second - second % 86400
                    day_end, today = day_start + 86400, dates[day_start // 86400]
                kind = (q >> 10) & 1023
                unix_ms = epoch_ms + offset
                if unix_ms >> 20 != ulid_top_key:  # the first 6 ULID characters: ~17 minutes
                    ulid_top_key = unix_ms >> 20
                    ulid_top = _base32(ulid_top_key, 6)
                if NO_EVENT_ID_BELOW <= kind < USAGE_BELOW:  # 84 % of lines: keep it lean
                    tokens, used_prompt, used_completion = pool[q >> 20]
                    prompt += used_prompt
                    completion += used_completion
                    line = (f'{{"event_type":"agent_token_usage","event_id":"{ulid_top}'
                            f'{pairs[(unix_ms >> 10) & 1023]}{pairs[unix_ms & 1023]}'
                            f'{noise[16 * j:16 * j + 16]}","ts":"{today}'
                            f'{clock[second - day_start]}{millis[ms]}",{envelope}{tokens}')
                else:
                    self._add_task_tokens(prompt, completion)
                    prompt = completion = 0
                    event_id = (f"{ulid_top}{pairs[(unix_ms >> 10) & 1023]}"
                                f"{pairs[unix_ms & 1023]}{noise[16 * j:16 * j + 16]}")
                    ts = f"{today}{clock[second - day_start]}{millis[ms]}"
                    line = self._other_line(kind, q, ts, event_id)
                if invalid_ratio and random_unit() < invalid_ratio:
                    line = self._corrupt(line)
                append(line)
            yield lines

    def _other_line(self, kind: int, q: int, ts: str, event_id: str) -> str:
        """Every line but a usage line with an event_id: 16 % of them, so a method call."""
        if kind >= NO_EVENT_ID_BELOW:
            head = f'"event_id":"{event_id}","ts":"{ts}",'
        else:  # ~0.8 % usage lines without event_id: the tailer derives one
            head = f'"ts":"{ts}",'
        if kind < USAGE_BELOW:
            tokens, prompt, completion = self.pool[q >> 20]
            self._add_task_tokens(prompt, completion)
            return f'{{"event_type":"agent_token_usage",{head}{self.envelope_model}{tokens}'
        if kind < PROGRESS_BELOW:
            return self._progress(head)
        if kind < TOOL_BELOW:
            return f'{{"event_type":"tool_call",{head}{self.envelope}{self.tools[q >> 20]}'
        if kind < CONTEXT_BELOW:
            return self._context(head)
        return f'{{"event_type":"metric",{head}{self.envelope}{self.metrics[q >> 20]}'

    def _add_task_tokens(self, prompt: int, completion: int) -> None:
        tokens = self.agent.task_tokens
        tokens[0] += prompt
        tokens[1] += completion

    def _new_burst(self, offset: int) -> int:
        """Switch to another agent's stretch of work; return how many lines it lasts."""
        rng = self.rng
        agent = self.agent = self.agents[rng.randrange(len(self.agents))]
        if not agent.session or rng.random() < 0.25:
            agent.session = f"{agent.name}-{rng.getrandbits(48):012x}"
        if not agent.task or rng.random() < 0.35 or agent.task_tokens[2] >= 100:
            agent.tasks_started += 1
            agent.task = f"{agent.name[:3].upper()}-{agent.tasks_started:04d}"
            agent.task_tokens = [0, 0, 0]
        self.role = rng.choice(agent.roles)
        self.model = rng.choice(agent.models)
        self.pool = usage_pool(self.model, agent.reports_cost)
        envelope = (f'"agent":"{agent.name}","role":"{self.role}",'
                    f'"session_id":"{agent.session}","task":"{agent.task}",')
        phase = self._phase(offset)
        tail = f'"phase":{phase},' if phase else ""
        self.envelope = envelope + tail
        self.envelope_model = f'{envelope}"model":"{self.model}",{tail}'
        return 5 + rng.getrandbits(7)

    def _phase(self, offset: int) -> str:
        """Mostly a number that grows every five days, sometimes a label, sometimes none."""
        r = self.rng.random()
        if r < 0.1:
            return ""
        if r < 0.13:
            return f'"{self.rng.choice(PHASE_LABELS)}"'
        return str(1 + offset // (5 * DAY_MS))

    def _progress(self, head: str) -> str:
        tokens = self.agent.task_tokens
        prompt, completion = tokens[0], tokens[1]
        tokens[2] = percent = min(tokens[2] + 1 + self.rng.getrandbits(5), 100)
        status = "completed" if percent == 100 else "in_progress"
        return (f'{{"event_type":"task_progress",{head}{self.envelope}"status":"{status}",'
                f'"progress":{percent},"tokens_used":{{"prompt":{prompt},'
                f'"completion":{completion},"total":{prompt + completion},'
                f'"model":"{self.model}"}}}}')

    def _context(self, head: str) -> str:
        r = self.rng.getrandbits(32)
        prefixes = self.agent.prefixes
        if self.role not in prefixes or r & 7 == 0:  # the plan changed: a new prefix
            prefixes[self.role] = (f"{self.rng.getrandbits(64):016x}", 4000 + (r >> 3 & 0x7FFF))
        prefix_hash, prefix_bytes = prefixes[self.role]
        volatile = 500 + (r >> 18 & 0x1FFF)
        return (f'{{"event_type":"context_compiled",{head}{self.envelope}'
                f'"prefix_bytes":{prefix_bytes},"volatile_bytes":{volatile},'
                f'"prefix_hash":"{prefix_hash}",'
                f'"input_tokens_estimate":{prefix_bytes + volatile}}}')

    def _corrupt(self, line: str) -> str:
        """A realistic defect, chosen so that the Validator must reject the line."""
        defect = self.rng.randrange(7)
        if defect == 0:
            return line[: len(line) // 2]  # a torn write
        if defect == 1:
            return line.replace('"event_type":"', '"event_type":"x_', 1)  # unknown type
        if defect == 2:
            return line.replace('"agent":', '"agnet":', 1)  # a typo: agent is missing
        if defect == 3:
            return line[:-1] + ',"unexpected_field":1}'
        if defect == 4:
            t = line.index('"ts":"') + 16  # the T between date and time
            return line[:t] + " " + line[t + 1:]
        if defect == 5:
            return f"[{line}]"
        return '{"event_type":7,' + line[line.index(",") + 1:]


def generate_chunks(n: int, seed: int, *, file_index: int = 0, files: int = 1,
                    agents: int | None = None, days: int = 30, start: datetime = DEFAULT_START,
                    invalid_ratio: float = 0.0) -> Iterator[bytes]:
    """The lines of one file as newline-terminated byte blocks of up to CHUNK_LINES lines."""
    fleet = _file_agents(pick_agents(seed, agents), file_index, files)
    count = _lines_in_file(n, file_index, files)
    writer = _FileWriter(count, seed, fleet, start, days, invalid_ratio, file_index)
    for lines in writer.chunks():
        lines.append("")
        yield "\n".join(lines).encode()


def generate_lines(n: int, seed: int, *, file_index: int = 0, files: int = 1,
                   agents: int | None = None, days: int = 30, start: datetime = DEFAULT_START,
                   invalid_ratio: float = 0.0) -> Iterator[bytes]:
    """The lines of one file, one at a time, without their newline."""
    for chunk in generate_chunks(n, seed, file_index=file_index, files=files, agents=agents,
                                 days=days, start=start, invalid_ratio=invalid_ratio):
        yield from chunk[:-1].split(b"\n")


def write_log(path: str | Path, n: int, seed: int, *, files: int = 1, agents: int | None = None,
              days: int = 30, start: datetime = DEFAULT_START,
              invalid_ratio: float = 0.0) -> list[Path]:
    """Write n lines to a file, or split over `files` files agent-NN.jsonl in a directory."""
    path = Path(path)
    if files == 1 and not path.is_dir():
        targets = [path]
    else:
        targets = [path / f"agent-{k:02d}.jsonl" for k in range(files)]
    for index, target in enumerate(targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb", buffering=0) as out:
            for chunk in generate_chunks(n, seed, file_index=index, files=len(targets),
                                         agents=agents, days=days, start=start,
                                         invalid_ratio=invalid_ratio):
                out.write(chunk)
    return targets


def append_in_slices(directory: str | Path, n: int, seed: int, boundaries: Sequence[datetime], *,
                     files: int, agents: int | None = None, days: int = 30,
                     start: datetime = DEFAULT_START) -> Iterator[datetime | None]:
    """Write what `write_log(directory, n, seed, files=files, ...)` writes, in time slices,
    as producers would append it: after the k-th yield, each file holds exactly its lines
    stamped before boundaries[k] (the value yielded); the last yield (None) follows the
    rest. All files are open at once, so at most one chunk per file is held in memory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fleet = pick_agents(seed, agents)
    sources = []
    for index in range(files):
        writer = _FileWriter(_lines_in_file(n, index, files), seed,
                             _file_agents(fleet, index, files), start, days, 0.0, index)
        target = directory / f"agent-{index:02d}.jsonl"
        target.write_bytes(b"")
        sources.append(_SlicedFile(target, writer.chunks()))
    for boundary in boundaries:
        stamp = boundary.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        for source in sources:
            source.append_before(stamp)
        yield boundary
    for source in sources:
        source.append_before(None)
    yield None


class _SlicedFile:
    """One file of `append_in_slices`: its line iterator and the chunk it is part way through."""

    def __init__(self, path: Path, chunks: Iterator[list[str]]) -> None:
        self.path = path
        self.chunks = chunks
        self.pending: list[str] = []

    def append_before(self, stamp: str | None) -> None:
        """Append the lines stamped before `stamp` (every line if None)."""
        with open(self.path, "ab") as out:
            while True:
                if not self.pending:
                    self.pending = next(self.chunks, [])
                    if not self.pending:
                        return
                cut = len(self.pending) if stamp is None else _first_at(self.pending, stamp)
                if cut:
                    out.write(("\n".join(self.pending[:cut]) + "\n").encode())
                    del self.pending[:cut]
                if self.pending:
                    return


def _first_at(lines: list[str], stamp: str) -> int:
    """Index of the first line whose ts is at or after `stamp` (lines ascend by ts)."""
    # Generated timestamps all have the width of `stamp`, so strings compare as times.
    def ts(line: str) -> str:
        at = line.index('"ts":"') + 6
        return line[at:at + len(stamp)]

    low, high = 0, len(lines)
    while low < high:
        middle = (low + high) // 2
        if ts(lines[middle]) < stamp:
            low = middle + 1
        else:
            high = middle
    return low


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output file, or directory with --files")
    parser.add_argument("--lines", type=int, default=100_000, help="lines in total")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--files", type=int, default=1, help="split over K files agent-NN.jsonl")
    parser.add_argument("--agents", type=int, default=None, help="fleet size (default 8-20)")
    parser.add_argument("--days", type=int, default=30, help="time span of the log")
    parser.add_argument("--invalid-ratio", type=float, default=0.0,
                        help="share of lines made invalid, for quarantine tests")
    args = parser.parse_args(argv)
    if args.lines < 0 or args.files < 1 or args.days < 1 or not 0 <= args.invalid_ratio <= 1:
        parser.error("need --lines >= 0, --files >= 1, --days >= 1, 0 <= --invalid-ratio <= 1")
    if args.agents is not None and args.agents < 1:
        parser.error("--agents must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = _parse_args(argv)
    began, began_cpu = time.perf_counter(), time.process_time()
    targets = write_log(args.out, args.lines, args.seed, files=args.files, agents=args.agents,
                        days=args.days, invalid_ratio=args.invalid_ratio)
    seconds = max(time.perf_counter() - began, 1e-9)
    cpu_seconds = max(time.process_time() - began_cpu, 1e-9)
    size = sum(t.stat().st_size for t in targets)
    # CPU time too: on a shared machine it says what the generator itself costs.
    print(f"wrote {args.lines:,} lines ({size / 1e6:,.1f} MB) to {len(targets)} file(s) "
          f"in {seconds:.2f} s: {args.lines / seconds:,.0f} lines/s "
          f"({args.lines / cpu_seconds:,.0f} per CPU second)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
