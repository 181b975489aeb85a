"""JSON Schema documents of every message type and version, for consumers in other languages.

`ledger schemas export` writes them to schemas/json/<type>.json; a test keeps the files equal to
the Python types, so that neither drifts from the other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from schemas.codec import ALL_TYPES
from schemas.commands import Message

JSON_DIR = Path(__file__).parent / "json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def tag_of(cls: type[Message]) -> str:
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def document(cls: type[Message]) -> dict[str, Any]:
    body = msgspec.json.schema(cls)
    return {"$schema": DIALECT, "$id": f"{tag_of(cls)}.json", "title": tag_of(cls), **body}


def render(cls: type[Message]) -> str:
    return json.dumps(document(cls), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for cls in ALL_TYPES:
        path = directory / f"{tag_of(cls)}.json"
        path.write_text(render(cls))
        written.append(path)
    return written
