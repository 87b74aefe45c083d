"""The JSON Schemas of the event types: where they live, which exist, what they say."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson

from pipeline.errors import UnknownEventType

ENVELOPE = "envelope"
_TYPE_KEYWORDS = {"$schema", "$id", "$ref", "title", "description", "type", "properties",
                  "required", "unevaluatedProperties"}
_FILE_NAME = re.compile(r"^(?P<type>[a-z][a-z0-9_]*)\.v(?P<version>[0-9]+)\.schema\.json$")


def schema_dir() -> Path:
    """The schemas shipped in the wheel, else those of the source checkout."""
    packaged = Path(__file__).parent / "schemas"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "schemas"


@dataclass(frozen=True)
class SchemaSet:
    """Every schema document, keyed by (event type, version), plus the shared envelope."""

    documents: dict[tuple[str, int], dict[str, Any]]
    envelope: dict[str, Any]

    @property
    def types(self) -> list[str]:
        """Registered event types, sorted."""
        return sorted({t for t, _ in self.documents})

    def versions(self, event_type: str) -> list[int]:
        """Versions that exist for a type, ascending."""
        return sorted(v for t, v in self.documents if t == event_type)

    def get(self, event_type: str, version: int | None = None) -> dict[str, Any]:
        """The schema of a type at a version (default: the latest)."""
        versions = self.versions(event_type)
        if not versions:
            raise UnknownEventType(event_type, version or 1, self.types)
        chosen = versions[-1] if version is None else version
        if chosen not in versions:
            raise UnknownEventType(event_type, chosen, self.types)
        return self.documents[(event_type, chosen)]

    def resources(self) -> list[tuple[str, dict[str, Any]]]:
        """(URI, document) pairs for a validator registry."""
        docs = [self.envelope, *self.documents.values()]
        return [(str(doc["$id"]), doc) for doc in docs]

    def flattened(self, event_type: str, version: int) -> dict[str, Any]:
        """The type schema with the envelope merged in and every $ref inlined.

        Equivalent to the original for the shape our schemas have (a `$ref` to the envelope,
        `properties`, `required`, `unevaluatedProperties: false`), and 2.5x faster to check
        in jsonschema-rs. The differential test keeps it honest.
        """
        document = self.get(event_type, version)
        unexpected = set(document) - _TYPE_KEYWORDS
        if unexpected or document.get("$ref") != f"{ENVELOPE}.v1.schema.json":
            raise ValueError(f"{event_type} v{version}: cannot flatten keywords {unexpected}")
        merged = dict(self.envelope["properties"])
        for name, spec in document["properties"].items():
            merged[name] = spec if name not in merged else self._narrow(merged[name], spec)
        return {
            "$schema": document["$schema"],
            "type": "object",
            "required": sorted({*self.envelope["required"], *document.get("required", [])}),
            "properties": {name: self._inline(spec) for name, spec in merged.items()},
            "additionalProperties": False,
        }

    def _narrow(self, wide: dict[str, Any], narrow: dict[str, Any]) -> dict[str, Any]:
        """Both specs must hold; a const that satisfies the wide spec is enough alone."""
        if set(narrow) == {"const"} and jsonschema_rs.Draft202012Validator(
                self.resolve(wide)).is_valid(narrow["const"]):
            return narrow
        return {"allOf": [wide, narrow]}

    def _inline(self, spec: Any) -> Any:
        if isinstance(spec, list):
            return [self._inline(item) for item in spec]
        if not isinstance(spec, dict):
            return spec
        return {key: self._inline(value) for key, value in self.resolve(spec).items()}

    def properties(self, event_type: str, version: int | None = None) -> dict[str, Any]:
        """Every property an event of this type may carry, envelope included, resolved."""
        merged = dict(self.envelope["properties"])
        merged.update(self.get(event_type, version)["properties"])
        return {name: self.resolve(spec) for name, spec in merged.items()}

    def resolve(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A property schema with a `$ref` into the envelope's $defs replaced by its target."""
        ref = spec.get("$ref")
        if not isinstance(ref, str) or "#/$defs/" not in ref:
            return spec
        target = self.envelope["$defs"][ref.rsplit("/", 1)[1]]
        return self.resolve({**target, **{k: v for k, v in spec.items() if k != "$ref"}})


@functools.cache
def load_schemas(directory: Path | None = None) -> SchemaSet:
    """Read every `<type>.v<N>.schema.json` of the directory once."""
    directory = directory or schema_dir()
    documents: dict[tuple[str, int], dict[str, Any]] = {}
    envelope: dict[str, Any] | None = None
    for path in sorted(directory.glob("*.schema.json")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            continue
        document = orjson.loads(path.read_bytes())
        if match["type"] == ENVELOPE:
            envelope = document
        else:
            documents[(match["type"], int(match["version"]))] = document
    if envelope is None:
        raise FileNotFoundError(f"no envelope.v1.schema.json in {directory}")
    return SchemaSet(documents, envelope)
