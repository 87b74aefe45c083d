"""schemas/ and pipeline.schemas: every file is a sound draft 2020-12 schema in the shape the
pipeline relies on, and the six DESIGN.md types exist at version 1."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import jsonschema
import pytest
from jsonschema import Draft202012Validator

from pipeline.errors import UnknownEventType
from pipeline.schemas import load_schemas, schema_dir

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
FILES = sorted(SCHEMA_DIR.glob("*.json"))
TYPE_FILES = [p for p in FILES if not p.name.startswith("envelope.")]
DESIGN_TYPES = {"agent_token_usage", "task_progress", "context_compiled", "tool_call",
                "budget_alert", "metric"}
NAME = re.compile(r"(?P<type>[a-z][a-z0-9_]*)\.v(?P<version>[1-9][0-9]*)\.schema\.json")


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_there_are_schema_files() -> None:
    assert len(TYPE_FILES) >= len(DESIGN_TYPES)
    assert (SCHEMA_DIR / "envelope.v1.schema.json") in FILES


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_file_is_a_valid_draft_2020_12_schema(path: Path) -> None:
    assert NAME.fullmatch(path.name), "file names are <type>.v<N>.schema.json"
    document = load(path)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(document)
    assert jsonschema.validators.validator_for(document) is Draft202012Validator


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_id_matches_file_name(path: Path) -> None:
    schema_id = load(path)["$id"]
    assert schema_id.startswith("https://")
    assert schema_id.rsplit("/", 1)[1] == path.name


def test_ids_are_unique_and_share_a_base() -> None:
    all_ids = [load(p)["$id"] for p in FILES]
    assert len(set(all_ids)) == len(all_ids)
    assert len({i.rsplit("/", 1)[0] for i in all_ids}) == 1


@pytest.mark.parametrize("path", TYPE_FILES, ids=ids(TYPE_FILES))
def test_type_schema_refs_envelope_and_closes_properties(path: Path) -> None:
    document = load(path)
    envelope = load(SCHEMA_DIR / "envelope.v1.schema.json")
    assert urljoin(document["$id"], document["$ref"]) == envelope["$id"]
    assert document["unevaluatedProperties"] is False
    assert "additionalProperties" not in document  # it would hide the envelope's fields
    match = NAME.fullmatch(path.name)
    assert match
    assert document["properties"]["event_type"] == {"const": match["type"]}
    assert document["properties"]["schema_version"] == {"const": int(match["version"])}
    # envelope fields are referenced, not copied
    for name in ("ts", "agent", "role", "session_id", "task", "model", "phase", "event_id"):
        assert name not in document["properties"], name
    # every $ref resolves to a definition of the envelope
    for ref in re.findall(r'"\$ref": "([^"]+)"', json.dumps(document)):
        target = urljoin(document["$id"], ref)
        assert target.startswith(envelope["$id"])
        if "#" in target:
            pointer = target.split("#", 1)[1]
            assert pointer.startswith("/$defs/")
            assert pointer.rsplit("/", 1)[1] in envelope["$defs"]
    # required fields are declared, here or in the envelope
    declared = set(document["properties"]) | set(envelope["properties"])
    assert set(document.get("required", [])) <= declared


def test_envelope_fields() -> None:
    envelope = load(SCHEMA_DIR / "envelope.v1.schema.json")
    assert set(envelope["required"]) == {"event_type", "ts", "agent"}
    assert set(envelope["properties"]) >= {"event_type", "schema_version", "event_id", "ts",
                                            "agent", "role", "session_id", "task", "model",
                                            "phase"}
    assert envelope["properties"]["schema_version"]["default"] == 1
    assert "unevaluatedProperties" not in envelope  # closing it would reject type fields


def test_the_six_design_types_exist_at_version_1() -> None:
    schemas = load_schemas()
    assert set(schemas.types) >= DESIGN_TYPES
    for event_type in DESIGN_TYPES:
        assert 1 in schemas.versions(event_type)
        assert schemas.get(event_type, 1) == load(SCHEMA_DIR / f"{event_type}.v1.schema.json")
    assert "envelope" not in schemas.types


def test_loader_reads_every_file() -> None:
    schemas = load_schemas()
    assert schema_dir().resolve() == SCHEMA_DIR.resolve()
    assert {f"{t}.v{v}.schema.json" for t, v in schemas.documents} == set(ids(TYPE_FILES))


def test_unknown_type_or_version_raises() -> None:
    schemas = load_schemas()
    with pytest.raises(UnknownEventType):
        schemas.get("agent_tokens")
    with pytest.raises(UnknownEventType):
        schemas.get("metric", 99)


@pytest.mark.parametrize("event_type", sorted(DESIGN_TYPES))
def test_properties_resolve_envelope_refs(event_type: str) -> None:
    properties = load_schemas().properties(event_type, 1)
    assert properties["agent"]["type"] == "string"
    assert properties["ts"]["format"] == "date-time"
    assert all("$ref" not in spec for spec in properties.values())
    for name, spec in load(SCHEMA_DIR / f"{event_type}.v1.schema.json")["properties"].items():
        if spec.get("$ref", "").endswith("/$defs/count"):
            assert properties[name]["type"] == "integer" and properties[name]["minimum"] == 0
