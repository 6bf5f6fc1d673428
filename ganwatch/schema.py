"""``ganwatch schema NAME``: print one of the JSON Schemas of the message contracts.

The schemas ship with the package (``detector/schema/*.json``), next to the code that emits the
messages; the tests validate the README's examples and what the worker really publishes against them.
"""

from __future__ import annotations

import argparse
import json
from importlib.resources import files
from typing import Any

SCHEMAS = {
    "reading": "a reading on an input topic (the input contract)",
    "alert": "an alert: anomaly, anomaly_start or anomaly_end",
    "score": "a record on the optional scores topic",
    "dead-letter": "a record on the dead-letter topic",
}


class SchemaError(ValueError):
    """An unknown schema name (one line, exit status 2)."""


def schema_text(name: str) -> str:
    """The JSON text of schema ``name``; raises ``SchemaError`` listing the names."""
    if name not in SCHEMAS:
        raise SchemaError(f"unknown schema {name!r}; one of: {', '.join(SCHEMAS)}")
    return (files("detector") / "schema" / f"{name}.json").read_text(encoding="utf-8")


def load_schema(name: str) -> dict[str, Any]:
    """Schema ``name`` as a dict."""
    return json.loads(schema_text(name))


def add_schema_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of a message contract",
                       description="Print the JSON Schema (draft 2020-12) of a message contract: "
                       + "; ".join(f"{k}: {v}" for k, v in SCHEMAS.items()) + ".")
    p.add_argument("name", metavar="NAME", help=f"one of {', '.join(SCHEMAS)} (required)")
    p.set_defaults(func=cmd_schema)


def cmd_schema(args: argparse.Namespace) -> int:
    print(schema_text(args.name), end="")
    return 0
