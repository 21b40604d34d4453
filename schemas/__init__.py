"""JSON Schemas of tillsync log-entry bodies and master-data records, and their validator.

The ``*.json`` files in this package are language-neutral (JSON Schema draft 2020-12);
see ``README.md`` here. From Python::

    from tillsync.schemas import validate_entry, SchemaViolation
    validate_entry("sale", body)   # raises SchemaViolation listing every problem
"""

from tillsync.schemas.validate import (
    COLLECTIONS,
    ENTRY_KINDS,
    SchemaViolation,
    UnknownCollection,
    UnknownKind,
    Violation,
    entry_schema,
    record_schema,
    validate_entry,
    validate_record,
)

__all__ = [
    "COLLECTIONS",
    "ENTRY_KINDS",
    "SchemaViolation",
    "UnknownCollection",
    "UnknownKind",
    "Violation",
    "entry_schema",
    "record_schema",
    "validate_entry",
    "validate_record",
]
