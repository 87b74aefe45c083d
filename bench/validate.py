"""How fast `pipeline.events.Validator` is, next to a bare orjson parse of the same lines.

    python -m bench.validate [--lines 1000000] [--seed 1] [--repeats 3]

Generates a log with bench.generate into a temporary directory, reads it into memory
once, then times both loops in the same process, interleaved, and keeps the best run of
each. The goal is a validator at least half as fast as parsing alone.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench.generate import write_log
from pipeline.events import Event, Validator

GOAL_RATIO = 0.5
SAMPLE_CHECK = 10_000


def load_lines(lines: int, seed: int) -> list[bytes]:
    """Generate a log in a temporary directory and return its lines without newlines."""
    with tempfile.TemporaryDirectory(prefix="tally-bench-") as tmp:
        path = write_log(Path(tmp) / "bench.jsonl", lines, seed)[0]
        data = path.read_bytes()
    return data.split(b"\n")[:-1] if data else []


Timing = tuple[float, float]  # (wall seconds, CPU seconds of this process)


def time_loop(handle: Callable[[bytes], Any], lines: list[bytes]) -> Timing:
    """Wall and CPU seconds of one pass of `handle` over every line, GC paused like timeit."""
    gc.collect()
    gc.disable()
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        for line in lines:
            handle(line)
        return time.perf_counter() - wall, time.process_time() - cpu
    finally:
        gc.enable()


def best_times(lines: list[bytes], validator: Validator, repeats: int) -> tuple[Timing, Timing]:
    """Best (wall, CPU) seconds of orjson.loads and of Validator.validate, run alternately."""
    parse_runs, validate_runs = [], []
    for _ in range(repeats):
        # Interleaved so that a busy neighbour or a frequency change hits both alike.
        parse_runs.append(time_loop(orjson.loads, lines))
        validate_runs.append(time_loop(validator.validate, lines))
    return _best(parse_runs), _best(validate_runs)


def _best(runs: list[Timing]) -> Timing:
    return min(wall for wall, _ in runs), min(cpu for _, cpu in runs)


def rejected_in_sample(lines: list[bytes], validator: Validator) -> int:
    """Rejections among the first lines: the generator should produce none."""
    return sum(not isinstance(validator.validate(line), Event) for line in lines[:SAMPLE_CHECK])


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.validate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each loop; best counts")
    args = parser.parse_args(argv)
    if args.lines < 1 or args.repeats < 1:
        parser.error("--lines and --repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: print both rates, their ratio and a JSON summary."""
    args = _parse_args(argv)
    lines = load_lines(args.lines, args.seed)
    megabytes = sum(map(len, lines)) / 1e6
    validator = Validator()  # schemas compiled here, outside the timed loops
    rejected = rejected_in_sample(lines, validator)
    (parse_s, parse_cpu), (validate_s, validate_cpu) = best_times(lines, validator,
                                                                  args.repeats)
    parse_rate, validate_rate = len(lines) / parse_s, len(lines) / validate_s
    ratio = validate_rate / parse_rate
    # CPU time as well: on a shared machine wall time also measures the neighbours.
    cpu_ratio = parse_cpu / validate_cpu
    print(f"{len(lines):,} lines, {megabytes:,.1f} MB, seed {args.seed}, "
          f"best of {args.repeats}")
    print(f"  orjson.loads        {parse_rate:>12,.0f} lines/s"
          f"  ({len(lines) / parse_cpu:,.0f} per CPU second)")
    print(f"  Validator.validate  {validate_rate:>12,.0f} lines/s"
          f"  ({len(lines) / validate_cpu:,.0f} per CPU second)")
    verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
    print(f"  ratio validator/orjson {ratio:.2f} (goal >= {GOAL_RATIO}: {verdict}; "
          f"by CPU time {cpu_ratio:.2f})")
    if rejected:
        print(f"  warning: {rejected} of the first {SAMPLE_CHECK:,} lines were rejected")
    summary = {"bench": "validate", "lines": len(lines), "megabytes": round(megabytes, 1),
               "seed": args.seed, "repeats": args.repeats,
               "orjson_lines_per_s": round(parse_rate),
               "validator_lines_per_s": round(validate_rate), "ratio": round(ratio, 3),
               "orjson_lines_per_cpu_s": round(len(lines) / parse_cpu),
               "validator_lines_per_cpu_s": round(len(lines) / validate_cpu),
               "cpu_ratio": round(cpu_ratio, 3), "goal": GOAL_RATIO,
               "goal_met": ratio >= GOAL_RATIO, "rejected_in_sample": rejected}
    print(orjson.dumps(summary).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
