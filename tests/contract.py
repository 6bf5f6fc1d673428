"""Validation against the shipped JSON Schemas (``ganwatch schema NAME``), for the tests.

``check`` is stricter than the schemas: they let consumers meet fields added later, while the tests
also refuse any top-level field the schema does not name, so the code cannot drift from them.
"""

from __future__ import annotations

import functools
from typing import Any

import jsonschema

from ganwatch.schema import load_schema

# topic role in the end-to-end tests -> schema of what is published there
TOPIC_SCHEMA = {"readings": "reading", "alerts": "alert", "scores": "score", "dead": "dead-letter"}


@functools.cache
def validator(name: str, strict: bool = True) -> jsonschema.protocols.Validator:
    schema = load_schema(name)
    if strict:
        schema = {**schema, "additionalProperties": False}
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def check(doc: Any, name: str) -> Any:
    """``doc`` if it satisfies schema ``name`` with no field the schema lacks; else raise."""
    validator(name).validate(doc)
    return doc


def problems(doc: Any, name: str) -> list[str]:
    """What is wrong with ``doc`` under schema ``name`` (empty when it is valid)."""
    return [e.message for e in validator(name).iter_errors(doc)]
