"""tally: validated LLM-agent telemetry, from JSONL logs to a Delta Lake and reports.

The producer API is `pipeline.append_event(path, event)`; it is imported lazily so that
`import pipeline.errors` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["append_event"]


def __getattr__(name: str) -> Any:
    if name == "append_event":
        from pipeline.writer import append_event

        return append_event
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
