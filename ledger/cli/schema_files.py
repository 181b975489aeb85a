"""`ledger schemas export`: the message types' JSON Schema files."""

from __future__ import annotations

import argparse
from typing import Any


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from schemas.jsonschema import JSON_DIR, export

    written = export(Path(args.directory) if args.directory else JSON_DIR)
    print(f"wrote {len(written)} JSON Schema files to {written[0].parent}")
    return 0


def add_parsers(commands: Any) -> None:
    schemas = commands.add_parser("schemas", help="the message types' JSON Schema files")
    schema_commands = schemas.add_subparsers(
        dest="schemas_command", required=True, metavar="ACTION"
    )
    export = schema_commands.add_parser("export", help="write schemas/json/<type>.json")
    export.add_argument("--directory", help="write there instead of schemas/json")
    export.set_defaults(handler=_cmd_export)
